"""The in-memory saga store: for tests, and for runs that need keep nothing."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from events.envelope import Envelope, decode, encode
from saga.state import SagaState
from saga.store import (
    ApiKey,
    CircuitRecord,
    ConcurrencyError,
    CostEntry,
    CostGroup,
    CostRow,
    IdempotencyRecord,
    Pruned,
    Reservation,
    StoreError,
    Timer,
    report,
)


class InMemorySagaStore:
    """Keeps everything in dicts; values are copied in and out as JSON, as a database would."""

    def __init__(self) -> None:
        self._sagas: dict[str, str] = {}
        self._outbox: dict[str, tuple[float, bytes]] = {}
        self._timers: dict[str, Timer] = {}
        self._events: dict[str, bytes] = {}
        self._by_correlation: dict[str, list[str]] = {}
        self._inbox: dict[str, bytes] = {}
        self._recorded: dict[str, tuple[float, str | None]] = {}
        """When each inbox row was made (wall clock) and its result's tenant."""
        self._claims: dict[str, tuple[str, float]] = {}
        self._timer_leases: dict[str, float] = {}
        # the event store as a feed: (seq, event id, tenant, type, correlation id), seq order
        self._feed: list[tuple[int, str, str, str, str]] = []
        self._api_keys: dict[str, ApiKey] = {}
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._cache: dict[str, tuple[bytes, datetime]] = {}
        self._ledger: dict[str, CostEntry] = {}
        self._circuits: dict[str, CircuitRecord] = {}
        self._reservations: dict[str, Reservation] = {}

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
        costs: Sequence[CostEntry] = (),
        reserve: Sequence[Reservation] = (),
        release: Sequence[str] = (),
    ) -> SagaState:
        current = self._sagas.get(state.id)
        version = SagaState.model_validate_json(current).version if current else 0
        if version != expected_version:
            raise ConcurrencyError(
                f"saga {state.id} is at version {version}, expected {expected_version}"
            )
        saved = state.model_copy(update={"version": expected_version + 1})
        # everything that can fail comes first, so a failing save changes nothing
        body = saved.model_dump_json()
        encoded = [(env.id, encode(env)) for env in outbox]
        self._sagas[state.id] = body
        for entry in costs:
            self._ledger.setdefault(entry.id, entry)
        for rid in (*release, *(e.id for e in costs)):
            self._reservations.pop(rid, None)
        for reservation in reserve:
            self._reservations.setdefault(reservation.id, reservation)
        for eid, raw in encoded:
            self._outbox[eid] = (time.monotonic(), raw)
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
            self._feed.append(
                (len(self._feed) + 1, env.id, env.tenant, env.type, env.correlationid)
            )

    async def events(self, correlationid: str) -> list[Envelope]:
        return [decode(self._events[i]) for i in self._by_correlation.get(correlationid, [])]

    async def list_sagas(self, status: str | None = None, limit: int = 50) -> list[SagaState]:
        states = [SagaState.model_validate_json(raw) for raw in self._sagas.values()]
        states = [s for s in states if status is None or s.status == status]
        states.sort(key=lambda s: s.started_at, reverse=True)
        return states[:limit]

    async def prune(self, before: datetime, tenant: str | None = None) -> Pruned:
        events = 0
        for eid, body in list(self._events.items()):
            env = decode(body)
            if env.time < before and (tenant is None or env.tenant == tenant):
                del self._events[eid]
                self._by_correlation[env.correlationid].remove(eid)
                events += 1
        sagas = 0
        for sid, raw in list(self._sagas.items()):
            state = SagaState.model_validate_json(raw)
            if (state.status != "running" and state.started_at < before
                    and (tenant is None or state.tenant == tenant)):
                del self._sagas[sid]
                sagas += 1
        results = 0
        cutoff, wall = before.timestamp(), time.time()
        for rid, (made, owner_tenant) in list(self._recorded.items()):
            if made >= cutoff or (tenant is not None and owner_tenant != tenant):
                continue
            claim = self._claims.get(rid)
            if rid not in self._inbox and claim is not None and claim[1] > wall:
                continue  # a live claim: its worker is calling the provider now
            self._recorded.pop(rid)
            self._inbox.pop(rid, None)
            self._claims.pop(rid, None)
            results += 1
        keys = [key for key, r in self._idempotency.items()
                if r.created_at < before and (tenant is None or r.tenant == tenant)]
        for key in keys:
            del self._idempotency[key]
        for rid in [r.id for r in self._reservations.values() if r.expires_at < before]:
            del self._reservations[rid]  # expired long ago: they count for nothing
        return Pruned(events, sagas, results, len(keys))

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
        self._recorded.setdefault(request_id, (wall, None))
        return True

    async def record_result(self, request_id: str, result: Envelope) -> None:
        if request_id not in self._inbox:
            self._inbox[request_id] = encode(result)
            self._recorded[request_id] = (time.time(), result.tenant)
        self._claims.pop(request_id, None)

    async def events_since(
        self,
        seq: int,
        tenant: str,
        types: Collection[str] = (),
        limit: int = 100,
        *,
        correlationid: str | None = None,
    ) -> list[tuple[int, Envelope]]:
        wanted = set(types)
        found: list[tuple[int, Envelope]] = []
        for n, eid, ten, typ, cid in self._feed[max(seq, 0):]:
            if len(found) >= limit:
                break
            if eid not in self._events:
                continue  # pruned
            if ten != tenant or (wanted and typ not in wanted):
                continue
            if correlationid is not None and cid != correlationid:
                continue
            found.append((n, decode(self._events[eid])))
        return found

    async def last_event_seq(self) -> int:
        return len(self._feed)

    async def put_api_key(
        self, key_id: str, tenant: str, key_hash: str, created_at: datetime
    ) -> None:
        if key_id in self._api_keys:
            raise StoreError(f"API key id {key_id!r} is already taken")
        self._api_keys[key_id] = ApiKey(key_id, tenant, key_hash, created_at.astimezone(UTC))

    async def find_api_key(self, key_id: str) -> ApiKey | None:
        return self._api_keys.get(key_id)

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        keys = [k for k in self._api_keys.values() if tenant is None or k.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    async def revoke_api_key(self, key_id: str, revoked_at: datetime) -> bool:
        key = self._api_keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._api_keys[key_id] = ApiKey(
            key.key_id, key.tenant, key.key_hash, key.created_at, revoked_at.astimezone(UTC)
        )
        return True

    async def remember_idempotency(
        self, tenant: str, key: str, request_hash: str, inquiry_id: str
    ) -> IdempotencyRecord | None:
        existing = self._idempotency.get((tenant, key))
        if existing is not None:
            return existing
        self._idempotency[(tenant, key)] = IdempotencyRecord(
            tenant, key, request_hash, inquiry_id, datetime.now(UTC)
        )
        return None

    async def forget_idempotency(self, tenant: str, key: str) -> None:
        self._idempotency.pop((tenant, key), None)

    async def cache_get(self, key: str) -> bytes | None:
        found = self._cache.get(key)
        if found is None:
            return None
        if found[1] <= datetime.now(UTC):
            del self._cache[key]
            return None
        return found[0]

    async def cache_put(self, key: str, value: bytes, expires_at: datetime) -> None:
        self._cache[key] = (bytes(value), expires_at.astimezone(UTC))

    async def put_circuit(self, circuit: CircuitRecord) -> None:
        kept = self._circuits.get(circuit.service)
        if kept is None or kept.changed_at <= circuit.changed_at:
            self._circuits[circuit.service] = circuit

    async def circuits(self) -> list[CircuitRecord]:
        return [self._circuits[s] for s in sorted(self._circuits)]

    async def record_cost(self, entries: Sequence[CostEntry]) -> None:
        for entry in entries:
            self._ledger.setdefault(entry.id, entry)
            self._reservations.pop(entry.id, None)

    async def reserved(self, tenant: str, now: datetime) -> Decimal:
        return sum(
            (r.amount for r in self._reservations.values()
             if r.tenant == tenant and r.expires_at > now),
            Decimal(0),
        )

    async def spent(self, tenant: str, since: datetime) -> Decimal:
        return sum(
            (e.cost for e in self._ledger.values() if e.tenant == tenant and e.at >= since),
            Decimal(0),
        )

    async def cost_report(self, since: datetime, group_by: CostGroup) -> list[CostRow]:
        return report([e for e in self._ledger.values() if e.at >= since], group_by)

    def timers(self) -> list[Timer]:
        """Every timer not yet fired (for tests)."""
        return list(self._timers.values())
