"""The PostgreSQL saga store: for several coordinator processes sharing one database.

Same tables as the SQLite store, in their own schema (``aiapps`` by default), on an asyncpg
connection pool. What changes with several coordinators, and how it is handled:

* **State** (``sagas``): optimistic concurrency. ``save`` is one transaction: a conditional
  ``INSERT … ON CONFLICT DO NOTHING`` (new saga) or ``UPDATE … WHERE id = $1 AND version = $2``,
  then the cost-ledger rows of the results it accepted (``ON CONFLICT (id) DO NOTHING``: one
  row per request id), the outbox rows and timer changes. If the first statement touched no
  row the transaction is rolled back and :class:`~saga.store.ConcurrencyError` raised, so a
  losing coordinator writes nothing, ledger rows included. Under READ COMMITTED the loser of a
  race blocks on the winner's row lock and then re-checks the ``WHERE`` against the committed
  row, so exactly one of them wins.
* **Timers** are *leased*, not deleted, when claimed: ``claim_timer`` is ``UPDATE … SET
  leased_until = now + lease WHERE id = $1 AND leased_until <= now RETURNING id``, so one caller
  gets it; :meth:`PostgresSagaStore.claim_due_timers` finds and leases due timers in one
  statement (``FOR UPDATE SKIP LOCKED``), so coordinators scanning at the same time take
  disjoint batches instead of racing for the same rows. A leased timer is not due again until
  its lease runs out; the coordinator deletes it (``complete_timer``) once its change is
  saved. Firing is therefore *at least once*: a coordinator that dies (or fails) between the
  lease and the delete leaves the timer to fire again after the lease, and the coordinator
  ignores a repeat (a timer names the step attempt it was set for; one already past it is
  stale).
* **Outbox**: ``pending_outbox`` *leases* the rows it returns (``leased_by``/``leased_until``,
  chosen with ``FOR UPDATE SKIP LOCKED``), so two relays are never handed the same rows at
  the same time; a relay that dies leaves its rows to be taken by another once the lease
  (``outbox_lease`` seconds) runs out, and the store that holds a lease gets its rows again.
  Publishing stays at-least-once overall: the coordinator that saved a row publishes it
  directly, and a relay starting at that moment may publish it too. Duplicates are harmless
  downstream: the coordinator matches results by request id and ignores repeats, and event
  store appends are idempotent (``ON CONFLICT (id) DO NOTHING``).
* **Schema**: created in :meth:`PostgresSagaStore.open` with ``IF NOT EXISTS`` under a
  transaction-scoped advisory lock, so processes starting together do not trip over each
  other's DDL.

Saga state is kept as JSON *text*, not JSONB: JSONB rejects the ``\\u0000`` escape that a
customer's message may contain, and text round-trips exactly. Envelopes are kept as the bytes
of their structured CloudEvent (``bytea``). Times are ``timestamptz``.

Errors from the driver become :class:`~saga.store.StoreError` (``raise … from``). Those that
can pass with time (connection lost or refused, too many connections, timeouts) are
:class:`TransientStoreError`, which is ``retryable`` so the bus redelivers instead of
dead-lettering; serialization failures and deadlocks are :class:`ConcurrencyError`, which the
coordinator answers by reloading and reapplying.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# The first key of the two-key advisory lock taken around DDL; the second is the schema's
# hash, so stores of different schemas do not wait for each other.
_DDL_LOCK_KEY = 0x41_49_41_50  # "AIAP"

# The first key of the advisory lock every append to the event store holds until it commits,
# so that sequence numbers become visible in the order they were drawn (see append_events).
_EVENTS_LOCK_KEY = 0x41_49_45_56  # "AIEV"

_SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.sagas (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_started ON {s}.sagas (started_at);
CREATE INDEX IF NOT EXISTS sagas_status_started ON {s}.sagas (status, started_at);
CREATE TABLE IF NOT EXISTS {s}.outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    saga_id TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_by TEXT,
    leased_until TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS {s}.timers (
    id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    due_at TIMESTAMPTZ NOT NULL,
    attempt INTEGER NOT NULL,
    leased_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
CREATE INDEX IF NOT EXISTS timers_due ON {s}.timers (due_at);
CREATE INDEX IF NOT EXISTS timers_saga ON {s}.timers (saga_id);
CREATE TABLE IF NOT EXISTS {s}.events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    correlation_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS events_correlation ON {s}.events (correlation_id, seq);
CREATE TABLE IF NOT EXISTS {s}.inbox (
    request_id TEXT PRIMARY KEY,
    owner TEXT,
    claimed_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    body BYTEA,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE {s}.inbox ADD COLUMN IF NOT EXISTS tenant TEXT;
CREATE INDEX IF NOT EXISTS inbox_recorded ON {s}.inbox (recorded_at);
CREATE INDEX IF NOT EXISTS events_tenant ON {s}.events (tenant, seq);
CREATE TABLE IF NOT EXISTS {s}.api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS {s}.idempotency_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    inquiry_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);
CREATE TABLE IF NOT EXISTS {s}.cost_ledger (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    workflow TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    step TEXT NOT NULL,
    service TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT,
    usage TEXT NOT NULL,
    cost NUMERIC NOT NULL,
    currency TEXT NOT NULL,
    price_table TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    cached BOOLEAN NOT NULL DEFAULT false
);
ALTER TABLE {s}.cost_ledger ADD COLUMN IF NOT EXISTS saved NUMERIC NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS cost_ledger_tenant ON {s}.cost_ledger (tenant, at);
CREATE INDEX IF NOT EXISTS cost_ledger_at ON {s}.cost_ledger (at);
CREATE TABLE IF NOT EXISTS {s}.cost_reservations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    step TEXT NOT NULL,
    amount NUMERIC NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS cost_reservations_tenant
    ON {s}.cost_reservations (tenant, expires_at);
CREATE TABLE IF NOT EXISTS {s}.result_cache (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS result_cache_expires ON {s}.result_cache (expires_at);
CREATE TABLE IF NOT EXISTS {s}.circuits (
    service TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    opened_at TIMESTAMPTZ
);
"""

_LEDGER_COLUMNS = (
    "id, tenant, workflow, correlation_id, step, service, provider, model, usage, cost,"
    " currency, price_table, at, cached, saved"
)

_TIMER_COLUMNS = "id, saga_id, step, kind, due_at, attempt"


class TransientStoreError(StoreError):
    """The database could not be reached or was overloaded; trying again later may work."""

    retryable = True


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal needs its brackets back
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # unparseable (a bad port, say): show nothing that might be secret
        return "<unparseable PostgreSQL URL>"


def _sqlstate(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else ""


def _is_transient(exc: BaseException) -> bool:
    # 08: connection exceptions; 53: insufficient resources (too many connections);
    # 57P: admin/crash shutdown, cannot connect now; 57014: statement timeout / cancel
    state = _sqlstate(exc)
    if state.startswith(("08", "53", "57P")) or state == "57014":
        return True
    # InternalClientError: the driver's protocol was cut mid-operation, as when the server
    # terminates a pooled connection just as a statement is sent; the pool replaces it
    return isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    )


class PostgresSagaStore:
    """The saga store in PostgreSQL (``postgresql://user:password@host:5432/db``).

    ``schema`` names the schema holding the tables (tests use a fresh one per test).
    ``min_size``/``max_size`` bound the connection pool; ``command_timeout`` (seconds) bounds
    every statement; ``outbox_lease`` is how long rows handed out by :meth:`pending_outbox`
    are kept from other relays; ``application_name`` labels its connections in
    ``pg_stat_activity``.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "aiapps",
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 30.0,
        outbox_lease: float = 30.0,
        application_name: str = "ai-apps saga store",
    ) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema {schema!r} is not a plain SQL identifier")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        if outbox_lease <= 0:
            raise ValueError("outbox_lease must be positive")
        self.url = url
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout = command_timeout
        self.outbox_lease = outbox_lease
        self.application_name = application_name
        # identifies this store's outbox leases; random, so a restarted process never
        # mistakes a dead predecessor's leases for its own
        self._lease_owner = uuid.uuid4().hex
        self._pool: Any = None
        self._sql = _Statements(f'"{schema}"', schema)

    def __repr__(self) -> str:
        return f"PostgresSagaStore({redact(self.url)!r}, schema={self.schema!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool and create the schema and tables if they are missing."""
        if self._pool is not None:
            return
        where = f"{redact(self.url)} (schema {self.schema})"
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                command_timeout=self.command_timeout,
                server_settings={"application_name": self.application_name},
            )
        except Exception as exc:  # refused, bad password, unknown database, bad URL, …
            error = TransientStoreError if _is_transient(exc) else StoreError
            raise error(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
        try:
            async with pool.acquire() as conn, conn.transaction():
                # serialise DDL between processes opening at once: concurrent CREATE … IF NOT
                # EXISTS can still fail on the catalog's unique indexes
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", _DDL_LOCK_KEY, self.schema
                )
                await conn.execute(_SCHEMA_DDL.format(s=self._sql.s))
        except Exception as exc:
            await pool.close()
            error = TransientStoreError if _is_transient(exc) else StoreError
            raise error(f"cannot create the saga store schema at {where}: {exc}") from exc
        self._pool = pool

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to be released."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Any]:
        """A pooled connection; driver errors inside become store errors."""
        pool = self._pool
        if pool is None:
            raise StoreError("the PostgreSQL store is not open")
        try:
            async with pool.acquire() as conn:
                yield conn
        except (asyncpg.exceptions.SerializationError,
                asyncpg.exceptions.DeadlockDetectedError) as exc:
            # the database aborted us in favour of a concurrent writer: same as losing the
            # version race, and the coordinator's answer (reload, reapply) is the right one
            raise ConcurrencyError(f"{what}: {exc}") from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                OSError, TimeoutError) as exc:
            error = TransientStoreError if _is_transient(exc) else StoreError
            raise error(f"PostgreSQL store {redact(self.url)}: {what} failed: {exc}") from exc

    # -- saga state ------------------------------------------------------------------------

    async def load(self, saga_id: str) -> SagaState | None:
        async with self._connection("load") as conn:
            raw = await conn.fetchval(self._sql.load, saga_id)
        return SagaState.model_validate_json(raw) if raw is not None else None

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
        saved = state.model_copy(update={"version": expected_version + 1})
        body = saved.model_dump_json()
        sql = self._sql
        async with self._connection("save") as conn, conn.transaction():
            if expected_version == 0:
                row_id = await conn.fetchval(
                    sql.insert_saga, state.id, state.workflow, state.tenant,
                    saved.status.value, state.started_at, body,
                )
            else:
                row_id = await conn.fetchval(
                    sql.update_saga, state.id, expected_version, saved.status.value, body,
                )
            if row_id is None:
                # raising inside the transaction block rolls it back: nothing is written
                raise ConcurrencyError(f"saga {state.id} is not at version {expected_version}")
            if costs:
                await conn.execute(sql.insert_costs, *_ledger_columns(costs))
            released = [*release, *(e.id for e in costs)]
            if released:
                await conn.execute(sql.release_reservations, released)
            if reserve:
                await conn.execute(
                    sql.insert_reservations, [r.id for r in reserve],
                    [r.tenant for r in reserve], [r.correlation_id for r in reserve],
                    [r.step for r in reserve], [r.amount for r in reserve],
                    [r.at for r in reserve], [r.expires_at for r in reserve],
                )
            if outbox:
                await conn.execute(
                    sql.insert_outbox,
                    [e.id for e in outbox], state.id, [encode(e) for e in outbox],
                )
            if cancel_timers_of is not None:
                await conn.execute(sql.cancel_timers, cancel_timers_of)
            if timers:
                # one row per id, the last one winning (as INSERT OR REPLACE would):
                # ON CONFLICT DO UPDATE may not touch the same row twice in one statement
                unique = list({t.id: t for t in timers}.values())
                await conn.execute(
                    sql.insert_timers,
                    [t.id for t in unique], [t.saga_id for t in unique],
                    [t.step for t in unique], [t.kind for t in unique],
                    [t.due_at for t in unique], [t.attempt for t in unique],
                )
        return saved

    async def list_sagas(self, status: str | None = None, limit: int = 50) -> list[SagaState]:
        async with self._connection("list_sagas") as conn:
            if status is None:
                rows = await conn.fetch(self._sql.list_sagas, limit)
            else:
                rows = await conn.fetch(self._sql.list_sagas_of, str(status), limit)
        return [SagaState.model_validate_json(r["state"]) for r in rows]

    # -- outbox ----------------------------------------------------------------------------

    async def pending_outbox(self, limit: int = 100, min_age: float = 0.0) -> list[Envelope]:
        """Outbox events not yet published, oldest first, leased to this store for
        ``outbox_lease`` seconds: another store is not handed them until the lease runs out
        (this one is, so a relay that retries sees its rows again)."""
        async with self._connection("pending_outbox") as conn:
            rows = await conn.fetch(
                self._sql.lease_outbox, limit, self._lease_owner, float(self.outbox_lease),
                float(min_age),
            )
        # UPDATE … RETURNING gives no order; seq is the order the events were saved in
        return [decode(r["body"]) for r in sorted(rows, key=lambda r: r["seq"])]

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        async with self._connection("mark_published") as conn:
            await conn.execute(self._sql.delete_outbox, list(event_ids))

    # -- timers ----------------------------------------------------------------------------

    async def due_timers(self, now: datetime, limit: int = 100) -> list[Timer]:
        async with self._connection("due_timers") as conn:
            rows = await conn.fetch(self._sql.due_timers, now, limit)
        return [_timer(r) for r in rows]

    async def claim_timer(self, timer_id: str, lease: float = 60.0) -> bool:
        async with self._connection("claim_timer") as conn:
            claimed = await conn.fetchval(self._sql.claim_timer, timer_id, float(lease))
        return claimed is not None

    async def complete_timer(self, timer_id: str) -> None:
        async with self._connection("complete_timer") as conn:
            await conn.execute(self._sql.complete_timer, timer_id)

    async def claim_due_timers(
        self, now: datetime, limit: int = 100, lease: float = 60.0
    ) -> list[Timer]:
        """Find and lease up to ``limit`` timers due at ``now``, oldest first, in one
        statement. Rows another coordinator is claiming at the same moment are skipped
        (``FOR UPDATE SKIP LOCKED``), so concurrent callers get disjoint batches and every
        timer is returned to exactly one of them. The caller fires each and then calls
        :meth:`complete_timer`; a timer whose coordinator died is due again when its lease
        runs out."""
        async with self._connection("claim_due_timers") as conn:
            rows = await conn.fetch(self._sql.claim_due_timers, now, limit, float(lease))
        return sorted((_timer(r) for r in rows), key=lambda t: (t.due_at, t.id))

    # -- event store and inbox -------------------------------------------------------------

    async def append_events(self, envelopes: Sequence[Envelope]) -> None:
        """Append idempotently. Each append holds a transaction-scoped advisory lock (per
        schema) from before it draws its sequence numbers until it commits, so appends commit
        in sequence order and a reader of :meth:`events_since` never sees a number before a
        lower one that is still to commit (which it would then skip for good)."""
        if not envelopes:
            return
        async with self._connection("append_events") as conn:
            await conn.execute(
                self._sql.append_events,
                [e.id for e in envelopes], [e.correlationid for e in envelopes],
                [e.tenant for e in envelopes], [e.type for e in envelopes],
                [e.time for e in envelopes], [encode(e) for e in envelopes],
            )

    async def events(self, correlationid: str) -> list[Envelope]:
        async with self._connection("events") as conn:
            rows = await conn.fetch(self._sql.events, correlationid)
        return [decode(r["body"]) for r in rows]

    async def events_since(
        self,
        seq: int,
        tenant: str,
        types: Collection[str] = (),
        limit: int = 100,
        *,
        correlationid: str | None = None,
    ) -> list[tuple[int, Envelope]]:
        async with self._connection("events_since") as conn:
            rows = await conn.fetch(
                self._sql.events_since, tenant, int(seq), sorted(set(types)), correlationid,
                int(limit),
            )
        return [(int(r["seq"]), decode(r["body"])) for r in rows]

    async def last_event_seq(self) -> int:
        async with self._connection("last_event_seq") as conn:
            value = await conn.fetchval(self._sql.last_event_seq)
        return int(value) if value is not None else 0

    # -- API keys and idempotency keys -----------------------------------------------------

    async def put_api_key(
        self, key_id: str, tenant: str, key_hash: str, created_at: datetime
    ) -> None:
        async with self._connection("put_api_key") as conn:
            stored = await conn.fetchval(
                self._sql.put_api_key, key_id, tenant, key_hash, created_at
            )
        if stored is None:
            raise StoreError(f"API key id {key_id!r} is already taken")

    async def find_api_key(self, key_id: str) -> ApiKey | None:
        async with self._connection("find_api_key") as conn:
            row = await conn.fetchrow(self._sql.find_api_key, key_id)
        return _api_key(row) if row is not None else None

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        async with self._connection("list_api_keys") as conn:
            rows = await conn.fetch(self._sql.list_api_keys, tenant)
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str, revoked_at: datetime) -> bool:
        async with self._connection("revoke_api_key") as conn:
            revoked = await conn.fetchval(self._sql.revoke_api_key, key_id, revoked_at)
        return revoked is not None

    async def remember_idempotency(
        self, tenant: str, key: str, request_hash: str, inquiry_id: str
    ) -> IdempotencyRecord | None:
        async with self._connection("remember_idempotency") as conn:
            inserted = await conn.fetchval(
                self._sql.remember_idempotency, tenant, key, request_hash, inquiry_id
            )
            if inserted is not None:
                return None
            row = await conn.fetchrow(self._sql.find_idempotency, tenant, key)
        if row is None:  # forgotten in between: the caller may simply retry
            raise TransientStoreError(f"idempotency key {key!r} vanished while being read")
        return IdempotencyRecord(
            tenant, key, row["request_hash"], row["inquiry_id"], row["created_at"]
        )

    async def forget_idempotency(self, tenant: str, key: str) -> None:
        async with self._connection("forget_idempotency") as conn:
            await conn.execute(self._sql.forget_idempotency, tenant, key)

    async def prune(self, before: datetime, tenant: str | None = None) -> Pruned:
        s = self.schema
        async with self._connection("prune") as conn, conn.transaction():
            events = await conn.execute(
                f"DELETE FROM {s}.events WHERE time < $1 AND ($2::text IS NULL OR tenant = $2)",
                before, tenant,
            )
            sagas = await conn.execute(
                f"DELETE FROM {s}.sagas WHERE status != 'running' AND started_at < $1"
                " AND ($2::text IS NULL OR tenant = $2)", before, tenant,
            )
            # a claim without a result is kept while it is live (its worker is working)
            results = await conn.execute(
                f"DELETE FROM {s}.inbox WHERE recorded_at < $1"
                " AND (body IS NOT NULL OR claimed_until <= clock_timestamp())"
                " AND ($2::text IS NULL OR tenant = $2)", before, tenant,
            )
            keys = await conn.execute(
                f"DELETE FROM {s}.idempotency_keys WHERE created_at < $1"
                " AND ($2::text IS NULL OR tenant = $2)", before, tenant,
            )
            # reservations expired long ago count for nothing
            await conn.execute(
                f"DELETE FROM {s}.cost_reservations WHERE expires_at < $1", before
            )
        return Pruned(*(int(tag.split()[-1]) for tag in (events, sagas, results, keys)))

    async def recorded_result(self, request_id: str) -> Envelope | None:
        async with self._connection("recorded_result") as conn:
            body = await conn.fetchval(self._sql.recorded_result, request_id)
        return decode(body) if body is not None else None

    async def claim_request(self, request_id: str, owner: str, lease: float) -> bool:
        async with self._connection("claim_request") as conn:
            claimed = await conn.fetchval(self._sql.claim_request, request_id, owner, float(lease))
        return claimed is not None

    async def record_result(self, request_id: str, result: Envelope) -> None:
        async with self._connection("record_result") as conn:
            await conn.execute(
                self._sql.record_result, request_id, encode(result), result.tenant
            )

    async def cache_get(self, key: str) -> bytes | None:
        s = self._sql.s
        async with self._connection("cache_get") as conn:
            value = await conn.fetchval(
                f"SELECT value FROM {s}.result_cache WHERE key = $1 AND expires_at > now()", key
            )
        return bytes(value) if value is not None else None

    async def cache_put(self, key: str, value: bytes, expires_at: datetime) -> None:
        s = self._sql.s
        async with self._connection("cache_put") as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {s}.result_cache (key, value, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,"
                " expires_at = EXCLUDED.expires_at",
                key, value, expires_at,
            )
            await conn.execute(f"DELETE FROM {s}.result_cache WHERE expires_at <= now()")

    async def put_circuit(self, circuit: CircuitRecord) -> None:
        s = self._sql.s
        async with self._connection("put_circuit") as conn:
            await conn.execute(
                f"INSERT INTO {s}.circuits (service, state, failures, changed_at, opened_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service) DO UPDATE SET"
                " state = EXCLUDED.state, failures = EXCLUDED.failures,"
                " changed_at = EXCLUDED.changed_at, opened_at = EXCLUDED.opened_at"
                f" WHERE EXCLUDED.changed_at >= {s}.circuits.changed_at",
                circuit.service, circuit.state, circuit.failures, circuit.changed_at,
                circuit.opened_at,
            )

    async def circuits(self) -> list[CircuitRecord]:
        s = self._sql.s
        async with self._connection("circuits") as conn:
            rows = await conn.fetch(
                "SELECT service, state, failures, changed_at, opened_at"
                f" FROM {s}.circuits ORDER BY service"
            )
        return [CircuitRecord(r["service"], r["state"], r["failures"], r["changed_at"],
                              r["opened_at"]) for r in rows]

    async def record_cost(self, entries: Sequence[CostEntry]) -> None:
        if not entries:
            return
        async with self._connection("record_cost") as conn, conn.transaction():
            await conn.execute(self._sql.insert_costs, *_ledger_columns(entries))
            await conn.execute(self._sql.release_reservations, [e.id for e in entries])

    async def reserved(self, tenant: str, now: datetime) -> Decimal:
        s = self._sql.s
        async with self._connection("reserved") as conn:
            value = await conn.fetchval(
                f"SELECT COALESCE(SUM(amount), 0) FROM {s}.cost_reservations"
                " WHERE tenant = $1 AND expires_at > $2", tenant, now,
            )
        return Decimal(value)

    async def spent(self, tenant: str, since: datetime) -> Decimal:
        s = self._sql.s
        async with self._connection("spent") as conn:
            value = await conn.fetchval(
                f"SELECT COALESCE(SUM(cost), 0) FROM {s}.cost_ledger"
                " WHERE tenant = $1 AND at >= $2", tenant, since,
            )
        return Decimal(value)

    async def cost_report(self, since: datetime, group_by: CostGroup) -> list[CostRow]:
        s = self._sql.s
        key = {
            "tenant": "tenant", "workflow": "workflow", "service": "service",
            "provider": "provider", "day": "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        }[group_by]
        async with self._connection("cost_report") as conn:
            rows = await conn.fetch(
                f"SELECT {key} AS key, count(*) AS calls, count(*) FILTER (WHERE cached)"
                f" AS cached, SUM(cost) AS cost, SUM(saved) AS saved FROM {s}.cost_ledger"
                " WHERE at >= $1 GROUP BY 1 ORDER BY 4 DESC, 1", since,
            )
        return [CostRow(str(r["key"]), int(r["calls"]), int(r["cached"]), Decimal(r["cost"]),
                        Decimal(r["saved"])) for r in rows]


def _ledger_columns(entries: Sequence[CostEntry]) -> tuple[list[Any], ...]:
    """Ledger entries as one array per column (for ``insert_costs``: one statement)."""
    return (
        [e.id for e in entries], [e.tenant for e in entries], [e.workflow for e in entries],
        [e.correlation_id for e in entries], [e.step for e in entries],
        [e.service for e in entries], [e.provider for e in entries],
        [e.model for e in entries], [e.usage.model_dump_json() for e in entries],
        [e.cost for e in entries], [e.currency for e in entries],
        [e.price_table for e in entries], [e.at for e in entries], [e.cached for e in entries],
        [e.saved for e in entries],
    )


def _timer(row: Any) -> Timer:
    return Timer(
        id=row["id"], saga_id=row["saga_id"], step=row["step"], kind=row["kind"],
        due_at=row["due_at"], attempt=row["attempt"],
    )


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"], tenant=row["tenant"], key_hash=row["key_hash"],
        created_at=row["created_at"], revoked_at=row["revoked_at"],
    )


class _Statements:
    """Every statement, with the schema filled in once (it is an identifier, so it cannot be
    a bind parameter; it is validated in the store's constructor)."""

    def __init__(self, s: str, name: str = "aiapps") -> None:
        self.s = s
        self.load = f"SELECT state FROM {s}.sagas WHERE id = $1"
        self.insert_saga = (
            f"INSERT INTO {s}.sagas (id, workflow, tenant, status, version, started_at, state)"
            " VALUES ($1, $2, $3, $4, 1, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        self.update_saga = (
            f"UPDATE {s}.sagas SET status = $3, version = $2 + 1, state = $4, updated_at = now()"
            " WHERE id = $1 AND version = $2 RETURNING id"
        )
        self.list_sagas = f"SELECT state FROM {s}.sagas ORDER BY started_at DESC, id DESC LIMIT $1"
        self.list_sagas_of = (
            f"SELECT state FROM {s}.sagas WHERE status = $1"
            " ORDER BY started_at DESC, id DESC LIMIT $2"
        )
        # WITH ORDINALITY + ORDER BY: rows get their seq in the order they were given
        self.insert_outbox = (
            f"INSERT INTO {s}.outbox (event_id, saga_id, body)"
            " SELECT e.event_id, $2, e.body FROM unnest($1::text[], $3::bytea[])"
            " WITH ORDINALITY AS e(event_id, body, n) ORDER BY e.n"
            " ON CONFLICT (event_id) DO NOTHING"
        )
        self.lease_outbox = (
            f"WITH picked AS (SELECT seq FROM {s}.outbox"
            "   WHERE (leased_until IS NULL OR leased_until < clock_timestamp() OR leased_by = $2)"
            "   AND created_at <= clock_timestamp() - $4::float8 * interval '1 second'"
            "   ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)"
            f" UPDATE {s}.outbox o SET leased_by = $2,"
            "   leased_until = clock_timestamp() + $3::float8 * interval '1 second'"
            " FROM picked WHERE o.seq = picked.seq RETURNING o.seq, o.body"
        )
        self.delete_outbox = f"DELETE FROM {s}.outbox WHERE event_id = ANY($1::text[])"
        self.cancel_timers = f"DELETE FROM {s}.timers WHERE saga_id = $1"
        self.insert_timers = (
            f"INSERT INTO {s}.timers ({_TIMER_COLUMNS})"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::timestamptz[], $6::int[])"
            " ON CONFLICT (id) DO UPDATE SET saga_id = EXCLUDED.saga_id, step = EXCLUDED.step,"
            " kind = EXCLUDED.kind, due_at = EXCLUDED.due_at, attempt = EXCLUDED.attempt"
        )
        self.due_timers = (
            f"SELECT {_TIMER_COLUMNS} FROM {s}.timers WHERE due_at <= $1"
            " AND leased_until <= clock_timestamp() ORDER BY due_at, id LIMIT $2"
        )
        self.claim_timer = (
            f"UPDATE {s}.timers SET leased_until = clock_timestamp() + $2::float8"
            " * interval '1 second' WHERE id = $1 AND leased_until <= clock_timestamp()"
            " RETURNING id"
        )
        self.complete_timer = f"DELETE FROM {s}.timers WHERE id = $1"
        # the ledger's unique key is the call's request id: an entry already there (a
        # redelivered result, a repeated save) is ignored
        self.insert_costs = (
            f"INSERT INTO {s}.cost_ledger ({_LEDGER_COLUMNS})"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::text[], $8::text[], $9::text[], $10::numeric[], $11::text[],"
            " $12::text[], $13::timestamptz[], $14::boolean[], $15::numeric[])"
            " ON CONFLICT (id) DO NOTHING"
        )
        self.insert_reservations = (
            f"INSERT INTO {s}.cost_reservations"
            " (id, tenant, correlation_id, step, amount, at, expires_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::numeric[], $6::timestamptz[], $7::timestamptz[])"
            " ON CONFLICT (id) DO NOTHING"
        )
        self.release_reservations = (
            f"DELETE FROM {s}.cost_reservations WHERE id = ANY($1::text[])"
        )
        self.claim_due_timers = (
            f"WITH picked AS (SELECT id FROM {s}.timers WHERE due_at <= $1"
            "   AND leased_until <= clock_timestamp()"
            "   ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)"
            f" UPDATE {s}.timers t SET leased_until = clock_timestamp() + $3::float8"
            " * interval '1 second' FROM picked WHERE t.id = picked.id"
            f" RETURNING {', '.join('t.' + c for c in _TIMER_COLUMNS.split(', '))}"
        )
        # the lock CTE is joined in, so it is taken before any row draws its seq; it is held
        # until the statement's implicit transaction commits ("name" is a plain identifier,
        # checked by the store, so it is safe as a literal)
        self.append_events = (
            f"WITH appending AS (SELECT pg_advisory_xact_lock({_EVENTS_LOCK_KEY},"
            f" hashtext('{name}')))"
            f" INSERT INTO {s}.events (id, correlation_id, tenant, type, time, body)"
            " SELECT e.id, e.cid, e.tenant, e.type, e.time, e.body FROM appending, unnest($1::text[],"
            " $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bytea[])"
            " WITH ORDINALITY AS e(id, cid, tenant, type, time, body, n) ORDER BY e.n"
            " ON CONFLICT (id) DO NOTHING"
        )
        self.events = f"SELECT body FROM {s}.events WHERE correlation_id = $1 ORDER BY seq"
        self.events_since = (
            f"SELECT seq, body FROM {s}.events WHERE tenant = $1 AND seq > $2"
            " AND (cardinality($3::text[]) = 0 OR type = ANY($3::text[]))"
            " AND ($4::text IS NULL OR correlation_id = $4::text) ORDER BY seq LIMIT $5"
        )
        self.last_event_seq = f"SELECT max(seq) FROM {s}.events"
        self.put_api_key = (
            f"INSERT INTO {s}.api_keys (key_id, tenant, key_hash, created_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING RETURNING key_id"
        )
        _key_columns = "key_id, tenant, key_hash, created_at, revoked_at"
        self.find_api_key = f"SELECT {_key_columns} FROM {s}.api_keys WHERE key_id = $1"
        self.list_api_keys = (
            f"SELECT {_key_columns} FROM {s}.api_keys WHERE ($1::text IS NULL OR tenant = $1)"
            " ORDER BY created_at, key_id"
        )
        self.revoke_api_key = (
            f"UPDATE {s}.api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL"
            " RETURNING key_id"
        )
        self.remember_idempotency = (
            f"INSERT INTO {s}.idempotency_keys (tenant, key, request_hash, inquiry_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, key) DO NOTHING RETURNING inquiry_id"
        )
        self.find_idempotency = (
            f"SELECT request_hash, inquiry_id, created_at FROM {s}.idempotency_keys"
            " WHERE tenant = $1 AND key = $2"
        )
        self.forget_idempotency = (
            f"DELETE FROM {s}.idempotency_keys WHERE tenant = $1 AND key = $2"
        )
        self.recorded_result = (
            f"SELECT body FROM {s}.inbox WHERE request_id = $1 AND body IS NOT NULL"
        )
        self.claim_request = (
            f"INSERT INTO {s}.inbox AS i (request_id, owner, claimed_until)"
            " VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 second')"
            " ON CONFLICT (request_id) DO UPDATE SET owner = EXCLUDED.owner,"
            " claimed_until = EXCLUDED.claimed_until WHERE i.body IS NULL AND"
            " (i.owner = EXCLUDED.owner OR i.claimed_until <= clock_timestamp())"
            " RETURNING request_id"
        )
        self.record_result = (
            f"INSERT INTO {s}.inbox AS i (request_id, body, tenant) VALUES ($1, $2, $3)"
            " ON CONFLICT (request_id) DO UPDATE SET body = EXCLUDED.body, owner = NULL,"
            " tenant = EXCLUDED.tenant, recorded_at = clock_timestamp() WHERE i.body IS NULL"
        )
