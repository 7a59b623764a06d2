"""The saga store contract: state with optimistic concurrency, the outbox, durable timers,
and the event store, all committed together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from events.envelope import Envelope
from events.errors import AiAppsError
from saga.state import SagaState


class SagaError(AiAppsError):
    """Root of the saga layer's errors."""


class ConcurrencyError(SagaError):
    """The saga changed since it was loaded; reload and apply again."""

    retryable = True


class StoreError(SagaError):
    """The store could not be opened or used."""


TimerKind = Literal["deadline", "retry"]


@dataclass(frozen=True, slots=True)
class Timer:
    """A durable deadline: fired by a coordinator once ``due_at`` has passed, even after a
    restart. ``attempt`` ties it to one dispatch, so a stale timer is recognised and ignored."""

    id: str
    saga_id: str
    step: str
    kind: TimerKind
    due_at: datetime
    attempt: int


@runtime_checkable
class SagaStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self, saga_id: str) -> SagaState | None: ...

    async def save(
        self,
        state: SagaState,
        *,
        expected_version: int,
        outbox: Sequence[Envelope] = (),
        timers: Sequence[Timer] = (),
        cancel_timers_of: str | None = None,
    ) -> SagaState:
        """Write ``state`` if its stored version is still ``expected_version`` (0: new saga),
        with its outbox events and new timers, in one transaction. ``cancel_timers_of`` removes
        every timer of that saga first (when it ends). Returns the state with its new version.
        Raises :class:`ConcurrencyError` if someone else saved first."""
        ...

    async def pending_outbox(self, limit: int = 100, min_age: float = 0.0) -> list[Envelope]:
        """Outbox events not yet published, oldest first; with ``min_age`` only those saved at
        least that many seconds ago (a periodic relay leaves the ones being published now)."""
        ...

    async def mark_published(self, event_ids: Sequence[str]) -> None: ...

    async def due_timers(self, now: datetime, limit: int = 100) -> list[Timer]: ...

    async def claim_timer(self, timer_id: str, lease: float = 60.0) -> bool:
        """Lease the timer for ``lease`` seconds; True for exactly one caller. A leased timer
        is not due again until the lease runs out, so a coordinator that dies while firing it
        leaves it for another; :meth:`complete_timer` removes it once fired."""
        ...

    async def complete_timer(self, timer_id: str) -> None:
        """Remove a fired timer."""
        ...

    async def append_events(self, envelopes: Sequence[Envelope]) -> None:
        """Add events to the event store; an event id already there is ignored."""
        ...

    async def events(self, correlationid: str) -> list[Envelope]:
        """A request's stored events in the order they were stored."""
        ...

    async def list_sagas(self, status: str | None = None, limit: int = 50) -> list[SagaState]:
        """The most recently started sagas, optionally of one status."""
        ...

    async def recorded_result(self, request_id: str) -> Envelope | None:
        """The result an actor already produced for request ``request_id`` (the inbox)."""
        ...

    async def claim_request(self, request_id: str, owner: str, lease: float) -> bool:
        """Claim the work of request ``request_id`` for ``owner`` for ``lease`` seconds: True
        unless another owner holds a live claim or the result is recorded. The owner renews
        it while working (claiming again); a dead owner's claim runs out."""
        ...

    async def record_result(self, request_id: str, result: Envelope) -> None:
        """Remember the result produced for ``request_id``; the first record wins."""
        ...
