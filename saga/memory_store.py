"""The in-memory saga store: for tests, and for runs that need keep nothing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from events.envelope import Envelope, decode, encode
from saga.state import SagaState
from saga.store import ConcurrencyError, Timer


class InMemorySagaStore:
    """Keeps everything in dicts; values are copied in and out as JSON, as a database would."""

    def __init__(self) -> None:
        self._sagas: dict[str, str] = {}
        self._outbox: dict[str, tuple[float, bytes]] = {}
        self._timers: dict[str, Timer] = {}
        self._events: dict[str, bytes] = {}
        self._by_correlation: dict[str, list[str]] = {}
        self._inbox: dict[str, bytes] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._timer_leases: dict[str, float] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load(self, saga_id: str) -> SagaState | None:
        raw = self._sagas.get(saga_id)
        return SagaState.model_validate_json(raw) if raw else None

    async def save(
        self,
        state: SagaState,
        *,
        expected_version: int,
        outbox: Sequence[Envelope] = (),
        timers: Sequence[Timer] = (),
        cancel_timers_of: str | None = None,
    ) -> SagaState:
        current = self._sagas.get(state.id)
        version = SagaState.model_validate_json(current).version if current else 0
        if version != expected_version:
            raise ConcurrencyError(
                f"saga {state.id} is at version {version}, expected {expected_version}"
            )
        saved = state.model_copy(update={"version": expected_version + 1})
        self._sagas[state.id] = saved.model_dump_json()
        for env in outbox:
            self._outbox[env.id] = (time.monotonic(), encode(env))
        if cancel_timers_of is not None:
            for tid in [t.id for t in self._timers.values() if t.saga_id == cancel_timers_of]:
                del self._timers[tid]
        for timer in timers:
            self._timers[timer.id] = timer
        return saved

    async def pending_outbox(self, limit: int = 100, min_age: float = 0.0) -> list[Envelope]:
        cutoff = time.monotonic() - min_age
        return [decode(body) for at, body in list(self._outbox.values()) if at <= cutoff][:limit]

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        for eid in event_ids:
            self._outbox.pop(eid, None)

    async def due_timers(self, now: datetime, limit: int = 100) -> list[Timer]:
        wall = time.time()
        due = sorted(
            (t for t in self._timers.values()
             if t.due_at <= now and self._timer_leases.get(t.id, 0.0) <= wall),
            key=lambda t: t.due_at,
        )
        return due[:limit]

    async def claim_timer(self, timer_id: str, lease: float = 60.0) -> bool:
        wall = time.time()
        if timer_id not in self._timers or self._timer_leases.get(timer_id, 0.0) > wall:
            return False
        self._timer_leases[timer_id] = wall + lease
        return True

    async def complete_timer(self, timer_id: str) -> None:
        self._timers.pop(timer_id, None)
        self._timer_leases.pop(timer_id, None)

    async def append_events(self, envelopes: Sequence[Envelope]) -> None:
        for env in envelopes:
            if env.id in self._events:
                continue
            self._events[env.id] = encode(env)
            self._by_correlation.setdefault(env.correlationid, []).append(env.id)

    async def events(self, correlationid: str) -> list[Envelope]:
        return [decode(self._events[i]) for i in self._by_correlation.get(correlationid, [])]

    async def list_sagas(self, status: str | None = None, limit: int = 50) -> list[SagaState]:
        states = [SagaState.model_validate_json(raw) for raw in self._sagas.values()]
        states = [s for s in states if status is None or s.status == status]
        states.sort(key=lambda s: s.started_at, reverse=True)
        return states[:limit]

    async def recorded_result(self, request_id: str) -> Envelope | None:
        body = self._inbox.get(request_id)
        return decode(body) if body is not None else None

    async def claim_request(self, request_id: str, owner: str, lease: float) -> bool:
        if request_id in self._inbox:
            return False
        holder = self._claims.get(request_id)
        wall = time.time()
        if holder is not None and holder[0] != owner and holder[1] > wall:
            return False
        self._claims[request_id] = (owner, wall + lease)
        return True

    async def record_result(self, request_id: str, result: Envelope) -> None:
        self._inbox.setdefault(request_id, encode(result))
        self._claims.pop(request_id, None)

    def timers(self) -> list[Timer]:
        """Every timer not yet fired (for tests)."""
        return list(self._timers.values())
