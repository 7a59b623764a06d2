"""One span per saga, without touching the coordinator: when the coordinator publishes a
terminal event (no ``subject``, source the coordinator's, a ``processing_time_ms`` field: every
workflow's completed, failed and cancelled events have one) a span ``saga {workflow}`` is
recorded after the fact, from terminal time minus ``processing_time_ms`` to the terminal time, in
the request's trace; and the saga outcome and duration metrics.

The workflow is known from the start event the coordinator in this process consumed (the
workflows' ``starts_on`` types, see :meth:`SagaObserver.observe_workflows`); a saga started
before a restart is named by its terminal event type.

Why the saga span does not enclose its steps (they are its siblings, children of the request's
first publish, and it covers their time): a saga outlives processes. It is started by one
coordinator and may be finished by another, after a restart, minutes later; a span cannot be
held open across that, and a span made at the start would have to be ended by whoever ends the
saga. Parenting the steps under it would mean minting its span id at the start and storing it
in the saga state, for a tree that says no more than the trace already does (every step is in
the request's trace, under the coordinator's consumer spans). So it is recorded once, at the
end, with its true start and end times.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from events.envelope import Envelope
from saga.coordinator import SOURCE as COORDINATOR_SOURCE
from saga.observe import StepEvent
from saga.workflow import Workflow
from service.telemetry.otel import Instruments, extract

_REMEMBERED = 10_000


class SagaObserver:
    """Watches the events crossing an :class:`~service.telemetry.transport.InstrumentedTransport`."""

    def __init__(self, tracer: Tracer, instruments: Instruments, *, recording: bool = True) -> None:
        self._tracer = tracer
        self._recording = recording
        self._instruments = instruments
        self._starts: dict[str, str] = {}
        self._workflow_of: OrderedDict[str, str] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()

    def observe_workflows(self, workflows: Iterable[Workflow]) -> None:
        """The workflows the coordinator runs: their start event types name the sagas."""
        self._starts.update({w.starts_on.event_type: w.name for w in workflows})

    def step_event(self, event: StepEvent) -> None:
        """A coordinator observer (:meth:`~saga.coordinator.SagaCoordinator.add_observer`):
        the step retry, timeout and fallback counters."""
        counter = {"retry": self._instruments.step_retries,
                   "timeout": self._instruments.step_timeouts,
                   "fallback": self._instruments.step_fallbacks}[event.kind]
        counter.add(1, {"ai_apps.workflow": event.workflow, "ai_apps.step": event.step,
                        "ai_apps.service": event.service, "ai_apps.reason": event.reason})

    def consumed(self, envelope: Envelope) -> None:
        workflow = self._starts.get(envelope.type)
        if workflow is not None:
            _remember(self._workflow_of, envelope.correlationid, workflow)

    def published(self, envelope: Envelope) -> None:
        """``envelope`` as the coordinator built it (its traceparent the saga's start's)."""
        if envelope.subject is not None or envelope.source != COORDINATOR_SOURCE:
            return
        elapsed_ms = getattr(envelope.data, "processing_time_ms", None)
        if not isinstance(elapsed_ms, int | float) or envelope.id in self._ended:
            return
        _remember(self._ended, envelope.id, None)
        workflow = self._workflow_of.pop(envelope.correlationid, None) or envelope.type
        outcome = _outcome(envelope.type)
        end = time.time_ns()
        start = end - int(elapsed_ms * 1_000_000)
        parent = extract(envelope) if envelope.traceparent else None
        degraded = tuple(getattr(envelope.data, "degraded", ()) or ())
        attributes: dict[str, Any] = {
            "ai_apps.workflow": workflow,
            "ai_apps.saga.id": envelope.correlationid,
            "ai_apps.saga.outcome": outcome,
            "ai_apps.saga.terminal": envelope.type,
            "ai_apps.tenant": envelope.tenant,
        }
        if degraded:
            attributes["ai_apps.saga.degraded"] = list(degraded)
        cost = getattr(envelope.data, "cost", None)
        total = getattr(cost, "total", None)
        if total is not None:
            currency = str(getattr(cost, "currency", "USD"))
            attributes |= {"ai_apps.cost": float(total), "ai_apps.currency": currency}
            self._instruments.saga_cost.add(
                float(total), {"ai_apps.workflow": workflow, "ai_apps.currency": currency}
            )
        if self._recording:
            span = self._tracer.start_span(
                f"saga {workflow}", context=parent, kind=SpanKind.INTERNAL,
                attributes=attributes, start_time=start,
            )
            if outcome == "failed":
                span.set_status(Status(StatusCode.ERROR, "saga failed"))
            span.end(end_time=end)
        labels: dict[str, str | bool] = {"ai_apps.workflow": workflow, "ai_apps.saga.outcome": outcome,
                  "ai_apps.saga.degraded": bool(degraded)}
        self._instruments.saga_outcomes.add(1, labels)
        self._instruments.saga_duration.record(
            elapsed_ms / 1000, {"ai_apps.workflow": workflow, "ai_apps.saga.outcome": outcome}
        )


def _outcome(event_type: str) -> str:
    if event_type.endswith("Failed"):
        return "failed"
    if event_type.endswith("Cancelled"):
        return "cancelled"
    return "completed"


def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > _REMEMBERED:
        memory.popitem(last=False)
