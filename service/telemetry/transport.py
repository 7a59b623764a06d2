"""Tracing and metrics around a :class:`~bus.base.Transport`, as a decorator of it.

Publishing makes a PRODUCER span ``publish {type}`` (messaging semantic conventions: the
destination is the event type, the routing key every backend uses) and writes its context into
the envelope's ``traceparent``/``tracestate`` (W3C) before the inner transport sends it, so the
span is the message's creation context. Its parent is the current span when there is one (the
handler that publishes a follow-up); otherwise the context the envelope already carries (an
event the coordinator emits from a timer, or re-publishes from its outbox, carries its saga's),
otherwise none: a new trace.

Handling makes a CONSUMER span ``process {type}`` whose parent is the context extracted from
the envelope, current while the handler runs, so whatever the handler publishes is its child.
The context lives in the message body, so a retried or re-driven message is handled in the
trace it was published in.

What the inner transport then does with a failed message is not seen from the handler: it
reports it to a :class:`DeliveryMetrics` observer (:class:`~bus.base.DeliveryObserver`),
registered on the inner transport, which counts retries, dead letters (undecodable messages
included: they never reach a handler) and the drops of ephemeral groups.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.contextvars import bind_contextvars, reset_contextvars

from bus.base import DeadLetter, DeliveryObserver, Handler, ObservableTransport, Transport, observe
from events.envelope import Envelope
from service.telemetry.otel import Instruments, record_error
from service.telemetry.redaction import Redactor
from service.telemetry.saga import SagaObserver

_PROPAGATOR = TraceContextTextMapPropagator()
_SYSTEMS = {
    "RabbitMQTransport": "rabbitmq", "ServiceBusTransport": "servicebus",
    "InMemoryTransport": "ai_apps.memory",
}
EPHEMERAL_GROUP = "(ephemeral)"
"""The group label in metrics of every ephemeral group (their names are random)."""


def messaging_system(transport: object) -> str:
    """``messaging.system`` for a transport: ``rabbitmq``, ``servicebus``, ``ai_apps.memory``."""
    return _SYSTEMS.get(type(transport).__name__, type(transport).__name__.lower())


def extract(envelope: Envelope) -> Context:
    """The trace context an envelope carries (an empty context when it carries none)."""
    if not envelope.traceparent:
        return Context()
    carrier = {"traceparent": envelope.traceparent}
    if envelope.tracestate:
        carrier["tracestate"] = envelope.tracestate
    return _PROPAGATOR.extract(carrier, context=Context())


class DeliveryMetrics:
    """A :class:`~bus.base.DeliveryObserver` counting retries, dead letters and drops
    (``ai_apps.messaging.retried``, ``.dead_lettered``, ``.dropped``) by event type, subscriber
    group and error class. Only ephemeral groups drop, and their names are random: drops are
    labelled :data:`EPHEMERAL_GROUP`, as the other metrics label those groups."""

    def __init__(self, instruments: Instruments, system: str) -> None:
        self.system = system
        self._instruments = instruments

    def _labels(self, group: str, event_type: str, error_class: str) -> dict[str, str]:
        return {
            "messaging.system": self.system, "messaging.destination.name": event_type,
            "messaging.consumer.group.name": group, "error.type": error_class,
        }

    def retried(
        self, group: str, event_type: str, *, attempt: int, delay: float, error_class: str
    ) -> None:
        self._instruments.retried.add(1, self._labels(group, event_type, error_class))

    def dead_lettered(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self._instruments.dead_lettered.add(1, self._labels(group, event_type, error_class))

    def dropped(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self._instruments.dropped.add(1, self._labels(EPHEMERAL_GROUP, event_type, error_class))


class InstrumentedTransport:
    """``inner`` with a span around every publish and every handler, and the bus metrics.

    With ``recording`` false (no span exporter) no spans are made: a publish made while a
    trace context is current and an envelope that carries none gets the current one, and a
    handler runs in the context its envelope carries. Anything else (``idle()``,
    ``publish_raw()``, …) is the inner transport's.

    Retries, dead letters and drops are counted by a :class:`DeliveryMetrics` observer added to
    ``inner`` when it reports them (:class:`~bus.base.ObservableTransport`; every backend here
    does); ``add_observer`` adds other observers to ``inner`` too."""

    def __init__(
        self,
        inner: Transport,
        tracer: Tracer,
        instruments: Instruments,
        *,
        sagas: SagaObserver | None = None,
        system: str | None = None,
        recording: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        self.inner = inner
        self.system = system or messaging_system(inner)
        self.recording = recording
        self.redactor = redactor or Redactor()
        """What an exception recorded on a span is passed through (spans are exported)."""
        self._tracer = tracer
        self._instruments = instruments
        self._sagas = sagas
        self.delivery_metrics = DeliveryMetrics(instruments, self.system)
        observe(inner, self.delivery_metrics)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, envelope: Envelope) -> None:
        labels = {"messaging.system": self.system, "messaging.destination.name": envelope.type}
        if self._sagas is not None:
            self._sagas.published(envelope)
        try:
            if self.recording:
                await self._publish_in_span(envelope)
            else:
                if envelope.traceparent is None:
                    envelope = _with_current_context(envelope)
                await self.inner.publish(envelope)
        except Exception as exc:
            self._instruments.sent.add(1, {**labels, "error.type": type(exc).__name__})
            raise
        self._instruments.sent.add(1, labels)

    async def _publish_in_span(self, envelope: Envelope) -> None:
        current = trace.get_current_span().get_span_context().is_valid
        with self._tracer.start_as_current_span(
            f"publish {envelope.type}", context=None if current else extract(envelope),
            kind=SpanKind.PRODUCER, attributes={
                "messaging.system": self.system,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": envelope.type,
                "messaging.message.id": envelope.id,
                "messaging.message.conversation_id": envelope.correlationid,
            }, record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                await self.inner.publish(_with_current_context(envelope))
            except Exception as exc:
                record_error(span, exc, self.redactor)
                raise

    async def subscribe(
        self,
        group: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        concurrency: int | None = None,
        ephemeral: bool = False,
    ) -> None:
        await self.inner.subscribe(
            group, event_types, self._instrumented(group, handler, ephemeral),
            concurrency=concurrency, ephemeral=ephemeral,
        )

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        return await self.inner.dead_letters(group)

    def add_observer(self, observer: DeliveryObserver) -> None:
        """Add ``observer`` to the inner transport (a :class:`TypeError` if it reports
        nothing)."""
        if not isinstance(self.inner, ObservableTransport):
            raise TypeError(f"{type(self.inner).__name__} reports no deliveries to observers")
        self.inner.add_observer(observer)

    def remove_observer(self, observer: DeliveryObserver) -> None:
        if isinstance(self.inner, ObservableTransport):
            self.inner.remove_observer(observer)

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        moved = await self.inner.redrive(ids, group)
        if moved:
            self._instruments.redriven.add(moved, {"messaging.system": self.system})
        return moved

    def _instrumented(self, group: str, handler: Handler, ephemeral: bool) -> Handler:
        tracer, instruments, sagas, system = self._tracer, self._instruments, self._sagas, self.system
        redactor = self.redactor
        group_label = EPHEMERAL_GROUP if ephemeral else group
        recording = self.recording

        async def in_span(envelope: Envelope) -> None:
            attributes: dict[str, str | bool] = {
                "messaging.system": system,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": envelope.type,
                "messaging.consumer.group.name": group,
                "messaging.message.id": envelope.id,
                "messaging.message.conversation_id": envelope.correlationid,
            }
            if ephemeral:
                attributes["messaging.destination.temporary"] = True
            with tracer.start_as_current_span(
                f"process {envelope.type}", context=extract(envelope), kind=SpanKind.CONSUMER,
                attributes=attributes, record_exception=False, set_status_on_exception=False,
            ) as span:
                try:
                    await handler(envelope)
                except Exception as exc:
                    record_error(span, exc, redactor)
                    raise

        async def in_context(envelope: Envelope) -> None:
            token = context.attach(extract(envelope))
            try:
                await handler(envelope)
            finally:
                context.detach(token)

        run = in_span if recording else in_context

        async def instrumented(envelope: Envelope) -> None:
            labels = {
                "messaging.system": system, "messaging.destination.name": envelope.type,
                "messaging.consumer.group.name": group_label,
            }
            if sagas is not None:
                sagas.consumed(envelope)
            # the saga's ids on every line the handler logs (the actors' middleware adds more)
            tokens = bind_contextvars(correlation_id=envelope.correlationid, tenant=envelope.tenant)
            started = time.perf_counter()
            try:
                await run(envelope)
            except Exception as exc:
                labels["error.type"] = type(exc).__name__
                instruments.handler_errors.add(1, labels)
                raise
            finally:
                reset_contextvars(**tokens)
                instruments.consumed.add(1, labels)
                instruments.process_duration.record(time.perf_counter() - started, labels)

        return instrumented


def _with_current_context(envelope: Envelope) -> Envelope:
    """``envelope`` carrying the current trace context (W3C), if there is one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if "traceparent" not in carrier:
        return envelope
    return envelope.model_copy(
        update={"traceparent": carrier["traceparent"], "tracestate": carrier.get("tracestate")}
    )
