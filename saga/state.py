"""A saga's persisted state: one record per correlation id, versioned for optimistic
concurrency, serialisable as JSON."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.base import Event, registry
from events.envelope import Envelope


class StepStatus(StrEnum):
    PENDING = "pending"  # not evaluated yet (its needs are not settled)
    DISPATCHED = "dispatched"  # request published, waiting for the result or the deadline
    WAITING_RETRY = "waiting_retry"  # failed, a retry timer is set
    SUCCEEDED = "succeeded"
    FALLBACK = "fallback"  # failed or skipped by an open circuit; the fallback's result is used
    SKIPPED = "skipped"  # its condition was false
    FAILED = "failed"  # failed with no fallback
    CANCELLED = "cancelled"  # the saga ended before it did
    EXPANDED = "expanded"  # a for_each step: its work is in its branches

    @property
    def settled(self) -> bool:
        return self in _SETTLED


_SETTLED = {
    StepStatus.SUCCEEDED,
    StepStatus.FALLBACK,
    StepStatus.SKIPPED,
    StepStatus.FAILED,
    StepStatus.CANCELLED,
}


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class StoredEvent(BaseModel):
    """An event payload as kept in the saga state: its type and its data."""

    model_config = ConfigDict(frozen=True)

    type: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Event) -> StoredEvent:
        return cls(type=type(event).event_type, data=event.model_dump(mode="json"))

    def load(self) -> Event:
        return registry.resolve(self.type).model_validate(self.data)


class StepError(BaseModel):
    error_class: str
    message: str
    retryable: bool = False


class StepState(BaseModel):
    """One step (or one branch of a ``for_each`` step) of one saga."""

    key: str
    name: str
    service: str
    item: str | None = None
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    request_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    result: StoredEvent | None = None
    error: StepError | None = None
    fallback_reason: str | None = None
    degradation: str | None = None
    """Set when the step was dispatched degraded by a budget (on a cheaper model, or asking
    for a cached answer only): what was done and why, e.g. ``budget: used gpt-4o-mini
    instead of gpt-4o …``."""
    reserved: Decimal | None = None
    """While dispatched: what the call is estimated to cost, held against the budgets until
    its result (or failure, timeout, cancellation) comes (None: nothing held)."""
    branches: list[str] = Field(default_factory=list)


class LateCost(BaseModel):
    """A call that was paid for though its answer came too late to be used: after its attempt
    timed out, or after the saga ended."""

    step: str
    cost: Decimal
    after_end: bool = False
    """It came after the saga's terminal event (which could not count it any more)."""


class SagaState(BaseModel):
    """Everything the coordinator knows about one request."""

    id: str
    workflow: str
    tenant: str
    status: SagaStatus = SagaStatus.RUNNING
    start: StoredEvent
    start_envelope_id: str
    traceparent: str | None = None
    tracestate: str | None = None
    """The start's W3C ``tracestate``, carried on by every event the saga emits."""
    baggage: str | None = None
    """The start's W3C ``baggage``, likewise."""
    started_at: datetime
    finished_at: datetime | None = None
    steps: dict[str, StepState] = Field(default_factory=dict)
    terminal: StoredEvent | None = None
    failure_reason: str | None = None
    resumed_from: str | None = None
    """Set when the saga was resumed: what its later events carry as ``replayof``."""
    late_costs: dict[str, LateCost] = Field(default_factory=dict)
    """Calls billed whose results were not used, by request id (each is in the cost ledger;
    those before the end count in the saga's cost)."""
    version: int = 0

    @property
    def degraded(self) -> tuple[str, ...]:
        """Steps that used a fallback, or succeeded degraded (a cheaper model), in the order
        they were defined."""
        return tuple(
            k for k, s in self.steps.items()
            if s.status is StepStatus.FALLBACK
            or (s.status is StepStatus.SUCCEEDED and s.degradation is not None)
        )

    def step_by_request(self, request_id: str | None) -> StepState | None:
        if request_id is None:
            return None
        for step in self.steps.values():
            if step.request_id == request_id:
                return step
        return None

    def start_envelope(self) -> Envelope:
        """The saga's start envelope, as follow-up events are derived from it."""
        return Envelope.model_construct(
            id=self.start_envelope_id,
            source="/ai-apps",
            type=self.start.type,
            specversion="1.0",
            time=self.started_at,
            subject=None,
            datacontenttype="application/json",
            dataschema=None,
            correlationid=self.id,
            causationid=None,
            tenant=self.tenant,
            traceparent=self.traceparent,
            tracestate=self.tracestate,
            baggage=self.baggage,
            replayof=None,
            data=self.start.load(),
        )
