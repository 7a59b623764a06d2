"""The saga store contract: state with optimistic concurrency, the outbox, durable timers,
and the event store, all committed together."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from events.common import Usage
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


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key of one tenant, as stored: only the SHA-256 of the secret token is kept."""

    key_id: str
    tenant: str
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The request an ``Idempotency-Key`` was first used with, and the inquiry it started."""

    tenant: str
    key: str
    request_hash: str
    inquiry_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CircuitRecord:
    """A service's circuit breaker as a coordinator last changed it: kept in the store so that
    processes without breakers (the gateway on a broker, ``ai-apps health``) report it, and a
    restarted coordinator starts from it. ``state`` is ``closed``, ``open`` or ``half_open``;
    ``failures`` the consecutive failures counted; ``opened_at`` when it last opened."""

    service: str
    state: str
    failures: int
    changed_at: datetime
    opened_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CostEntry:
    """One provider call in the cost ledger: who asked, which step, which provider and model,
    what it consumed and cost. ``id`` is the call's request id (the request event the
    coordinator dispatched: one saga, one step, one attempt), the ledger's unique key, so
    recording it twice, or a redelivered result, keeps one entry."""

    id: str
    tenant: str
    workflow: str
    correlation_id: str
    step: str
    service: str
    provider: str
    model: str | None
    usage: Usage
    cost: Decimal
    currency: str
    price_table: str
    at: datetime
    cached: bool = False
    saved: Decimal = Decimal(0)
    """A cache hit: what the call it did not make would have cost at list price."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """The estimated cost of a call dispatched and not answered yet, held against its tenant's
    budget so that calls in flight count before their results come back. ``id`` is the
    request id, as for :class:`CostEntry`: the call's ledger entry replaces its reservation;
    a step that fails, times out or is cancelled releases it. It counts until ``expires_at``
    (the step's deadline) at the latest, so a reservation nobody released cannot hold a
    budget for ever."""

    id: str
    tenant: str
    correlation_id: str
    step: str
    amount: Decimal
    at: datetime
    expires_at: datetime


class Pruned(NamedTuple):
    """What :meth:`SagaStore.prune` removed."""

    events: int
    sagas: int
    """Finished sagas (running ones are kept)."""
    results: int
    """Inbox rows: results actors recorded (whole result envelopes, customer text included)
    and claims that ran out without a result."""
    idempotency_keys: int


CostGroup = Literal["tenant", "workflow", "service", "day", "provider"]


@dataclass(frozen=True, slots=True)
class CostRow:
    """One line of a cost report: the group's key, its calls (cache hits among them), their
    total cost, and what the cache hits saved (the list price of the calls not made)."""

    key: str
    calls: int
    cached: int
    cost: Decimal
    saved: Decimal = Decimal(0)


def group_key(entry: CostEntry, by: CostGroup) -> str:
    """The report group of an entry (days in UTC, ``YYYY-MM-DD``)."""
    if by == "day":
        return entry.at.strftime("%Y-%m-%d")
    value: str = getattr(entry, by)
    return value


def report(entries: Sequence[CostEntry], by: CostGroup) -> list[CostRow]:
    """Entries grouped and summed, the most expensive group first (ties by key)."""
    groups: dict[str, tuple[int, int, Decimal, Decimal]] = {}
    for e in entries:
        calls, cached, cost, saved = groups.get(group_key(e, by), (0, 0, Decimal(0), Decimal(0)))
        groups[group_key(e, by)] = (calls + 1, cached + int(e.cached), cost + e.cost,
                                    saved + e.saved)
    rows = [CostRow(k, c, h, v, s) for k, (c, h, v, s) in groups.items()]
    rows.sort(key=lambda r: (-r.cost, r.key))
    return rows


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
        costs: Sequence[CostEntry] = (),
        reserve: Sequence[Reservation] = (),
        release: Sequence[str] = (),
    ) -> SagaState:
        """Write ``state`` if its stored version is still ``expected_version`` (0: new saga),
        with its outbox events, new timers and cost-ledger entries, in one transaction.
        ``cancel_timers_of`` removes every timer of that saga first (when it ends). ``costs``
        are the provider results this change accepted: each is added once per id (an id
        already in the ledger is ignored), and only if the save commits. ``reserve`` adds the
        reservations of the calls this change dispatched (an id already reserved is kept as
        it is); ``release`` removes reservations by id, and so does each entry of ``costs``
        (the real cost replaces the estimate). Returns the state with its new version. Raises
        :class:`ConcurrencyError` if someone else saved first; a save that fails writes
        nothing at all."""
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

    async def prune(self, before: datetime, tenant: str | None = None) -> Pruned:
        """Retention: remove what is older than ``before`` (of one tenant, or all): events,
        finished sagas started before it (running ones are kept), inbox results recorded
        before it and claims made before it that ran out, idempotency keys first used before
        it. The cost ledger is kept (it holds no customer text, and budgets and reports read
        it); expired result-cache entries go as new ones are written."""
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

    # -- the event store as a feed (the HTTP gateway's response streams) ------------------

    async def events_since(
        self,
        seq: int,
        tenant: str,
        types: Collection[str] = (),
        limit: int = 100,
        *,
        correlationid: str | None = None,
    ) -> list[tuple[int, Envelope]]:
        """Stored events of ``tenant`` with a store sequence number above ``seq``, lowest
        first, at most ``limit``; only of ``types`` when given, only of one request when
        ``correlationid`` is given. Sequence numbers grow in the order events become visible
        to readers, so a reader that resumes from the last number it saw misses nothing."""
        ...

    async def last_event_seq(self) -> int:
        """The highest sequence number in the event store (0 when it is empty)."""
        ...

    # -- API keys and idempotency keys (the HTTP gateway) ----------------------------------

    async def put_api_key(
        self, key_id: str, tenant: str, key_hash: str, created_at: datetime
    ) -> None:
        """Store a new API key (its hash only). Raises :class:`StoreError` if ``key_id`` is
        taken."""
        ...

    async def find_api_key(self, key_id: str) -> ApiKey | None: ...

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every API key (of ``tenant`` when given), oldest first, revoked ones included."""
        ...

    async def revoke_api_key(self, key_id: str, revoked_at: datetime) -> bool:
        """Revoke a key; True if it existed and was active."""
        ...

    async def remember_idempotency(
        self, tenant: str, key: str, request_hash: str, inquiry_id: str
    ) -> IdempotencyRecord | None:
        """Remember that ``tenant`` used idempotency ``key`` for the request hashed
        ``request_hash``, which started ``inquiry_id``: None if the key is new (and is now
        remembered), else the record of its first use, unchanged. Exactly one of concurrent
        callers with a new key gets None."""
        ...

    async def forget_idempotency(self, tenant: str, key: str) -> None:
        """Forget a key (its request could not be carried out, so a retry may try again)."""
        ...

    # -- the result cache (actors.cache): deterministic provider results -----------------

    async def cache_get(self, key: str) -> bytes | None:
        """The value cached under ``key``, or None if there is none or it has expired."""
        ...

    async def cache_put(self, key: str, value: bytes, expires_at: datetime) -> None:
        """Cache ``value`` under ``key`` until ``expires_at`` (replacing any older value)."""
        ...

    # -- circuit breakers (the health report across processes) -------------------------

    async def put_circuit(self, circuit: CircuitRecord) -> None:
        """Keep ``circuit`` as its service's state, unless the state kept is newer
        (``changed_at``): of several coordinators writing, the latest change wins."""
        ...

    async def circuits(self) -> list[CircuitRecord]:
        """Every service's circuit as last kept, by service name."""
        ...

    # -- the cost ledger (budgets, ``ai-apps costs``) --------------------------------------

    async def record_cost(self, entries: Sequence[CostEntry]) -> None:
        """Add provider calls to the ledger on their own; an entry id already there is
        ignored, and each entry replaces the reservation of its id, if any. (The coordinator
        records the results it accepts with :meth:`save`, atomically.)"""
        ...

    async def spent(self, tenant: str, since: datetime) -> Decimal:
        """What ``tenant``'s calls recorded at or after ``since`` cost in total."""
        ...

    async def reserved(self, tenant: str, now: datetime) -> Decimal:
        """What ``tenant``'s calls in flight are estimated to cost: the sum of its
        reservations that have not expired at ``now``."""
        ...

    async def cost_report(self, since: datetime, group_by: CostGroup) -> list[CostRow]:
        """The calls recorded at or after ``since``, grouped, most expensive first."""
        ...
