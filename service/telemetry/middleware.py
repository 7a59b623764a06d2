"""The actor middleware: one :class:`ProviderCall` record per provider call, handed to sinks
(the health recorder always; spans and metrics when OpenTelemetry is on).

It reads what the runtime did from :func:`actors.runtime.current_handling` once the handler
returns: the call's start and end, and the result (the provider's, or the classified
``StepFailed``). A request answered from the inbox made no call; it is reported to
``on_replay`` instead. A result from the result cache is a call with ``cached`` set.

A delivery cancelled while its provider call runs (the broker dropped the connection) does not
end the call: the runtime lets it finish and record its result, and the redelivery answers from
the inbox. The call is reported when it finishes, in the cancelled delivery's context (its
span the parent), so it keeps its client span, cost and health record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from actors.runtime import Actor, Handling, Middleware, current_handling
from bus.base import Handler
from events.common import ProviderInfo, Usage
from events.envelope import Envelope
from events.support import StepFailed
from saga.cost import PriceTable
from service.telemetry.health import operation_of

log = structlog.get_logger("service.telemetry")

_FAMILIES = {"openai_compat": "openai", "fake_imagegen": "fake"}


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One call of an actor's provider, as the telemetry sinks see it."""

    service: str
    operation: str
    """The saga step the request belongs to (its fan-out item removed), else the request type."""
    request_type: str
    started_ns: int
    ended_ns: int
    ok: bool
    error_class: str | None
    message: str
    provider: str
    """The provider's name as the price table knows it: local, azure, azure-openai, openai,
    fake."""
    model: str | None
    """The model the call is priced at: the one that answered, else the one asked for."""
    usage: Usage | None
    correlation_id: str
    tenant: str
    cached: bool = False
    """Answered by the result cache: no provider was called, nothing was paid."""
    cost: float = 0.0
    """Priced by the price table given to :func:`provider_calls` (0 without one, or for a
    provider it does not list)."""
    currency: str = "USD"
    request_model: str | None = None
    """The model (or deployment) asked for: the request's, else the provider's configured
    one, else the one that answered (a provider of one model); None when none is known."""
    response_model: str | None = None
    """The model the provider reported answering with (None without an answer)."""
    saved: float = 0.0
    """A cache hit: what the call not made would have cost (its original usage, priced)."""

    @property
    def duration_s(self) -> float:
        return max(self.ended_ns - self.started_ns, 0) / 1e9


CallSink = Callable[[ProviderCall], None]
ReplaySink = Callable[[str], None]


def provider_calls(
    sinks: Sequence[CallSink], on_replay: Sequence[ReplaySink] = (),
    *, pricing: PriceTable | None = None,
) -> Middleware:
    """A middleware for :class:`~actors.runtime.ActorRuntime` that reports each provider call
    to ``sinks``, priced by ``pricing``. A sink that raises is logged and ignored: telemetry
    never fails a request."""

    def emit(call: ProviderCall) -> None:
        for sink in sinks:
            try:
                sink(call)
            except Exception:
                log.exception("telemetry sink failed", sink=repr(sink))

    def when_done(envelope: Envelope, handling: Handling) -> None:
        work = handling.work
        if work is None or not handling.started_ns:
            return  # cancelled before the provider was called: nothing to report

        def report(task: asyncio.Task[Envelope | None]) -> None:
            if task.cancelled():
                return  # cut short at close: its claim runs out, another worker calls again
            error = task.exception()
            if error is None and task.result() is None:
                return  # its claim was lost and the call cut short: the new holder reports
            emit(_call(envelope, handling, error, pricing))

        # a done callback runs in a copy of the current context: the delivery's span
        work.add_done_callback(report)

    async def observe(envelope: Envelope, call_next: Handler) -> None:
        try:
            await call_next(envelope)
        except asyncio.CancelledError:
            handling = current_handling()
            if handling is not None:
                when_done(envelope, handling)
            raise
        except Exception as exc:
            handling = current_handling()
            if handling is not None and handling.started_ns:
                emit(_call(envelope, handling, exc, pricing))
            raise
        handling = current_handling()
        if handling is None:
            return
        if handling.replayed:
            for replay in on_replay:
                replay(handling.actor.service)
            return
        if handling.started_ns and handling.result is not None:
            # (no result: its claim was lost and the call cut short; the new holder reports)
            emit(_call(envelope, handling, None, pricing))

    return observe


def _call(
    envelope: Envelope, handling: Handling, exc: BaseException | None, pricing: PriceTable | None
) -> ProviderCall:
    result = handling.result
    if exc is not None and result is None:
        # the provider raised something the runtime does not classify (a bug): the bus retries
        ok, error_class, message = False, type(exc).__name__, str(exc)
    elif isinstance(result, StepFailed):
        ok, error_class, message = False, result.error_class, result.message
    else:
        ok, error_class, message = True, None, ""
    provider, model = provider_of(handling.actor, result)
    answered = getattr(result, "provider", None) if ok else None
    response_model = answered.model if isinstance(answered, ProviderInfo) else None
    configured = getattr(handling.actor.provider, "provider", None)
    asked = getattr(envelope.data, "model", None)
    request_model = (
        asked if isinstance(asked, str) and asked
        else configured.model if isinstance(configured, ProviderInfo) and configured.model
        else response_model
    )
    usage = getattr(result, "usage", None)
    usage = usage if isinstance(usage, Usage) else None
    cost = saved = 0.0
    if pricing is not None and usage is not None and ok:
        cost = float(pricing.cost(ProviderInfo(name=provider, model=model), usage))
    info = getattr(result, "provider", None)
    if pricing is not None and isinstance(info, ProviderInfo) and info.saved is not None:
        saved = float(pricing.cost(info, info.saved))
    return ProviderCall(
        service=handling.actor.service,
        operation=operation_of(envelope.subject) if envelope.subject else envelope.type,
        request_type=envelope.type,
        started_ns=handling.started_ns,
        ended_ns=handling.ended_ns or handling.started_ns,
        ok=ok,
        error_class=error_class,
        message=message,
        provider=provider,
        model=model,
        usage=usage,
        correlation_id=envelope.correlationid,
        tenant=envelope.tenant,
        cached=bool(getattr(getattr(result, "provider", None), "cached", False)),
        cost=cost,
        currency=pricing.currency if pricing is not None else "USD",
        request_model=request_model,
        response_model=response_model,
        saved=saved,
    )


def provider_of(actor: Actor, result: object) -> tuple[str, str | None]:
    """The provider family and model: from the result, else from the provider object (a
    failed call has no result), else from the provider's module (``actors.providers.azure``)."""
    for info in (getattr(result, "provider", None), getattr(actor.provider, "provider", None)):
        if isinstance(info, ProviderInfo):
            return info.name, info.model
    parts = type(actor.provider).__module__.split(".")
    if parts[:2] == ["actors", "providers"] and len(parts) > 2:
        return _FAMILIES.get(parts[2], parts[2]), None
    return "unknown", None
