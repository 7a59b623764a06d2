"""The SQLite saga store: the embedded default. State, outbox, timers and events live in one
database file, and each change is one transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiosqlite

from events.common import Usage
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

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA busy_timeout = 10000;
CREATE TABLE IF NOT EXISTS sagas (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_started ON sagas (started_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    saga_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS timers (
    id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    due_at TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    leased_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due_at);
CREATE INDEX IF NOT EXISTS timers_saga ON timers (saga_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    correlation_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    time TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_correlation ON events (correlation_id, seq);
CREATE TABLE IF NOT EXISTS inbox (
    request_id TEXT PRIMARY KEY,
    owner TEXT,
    claimed_until REAL NOT NULL DEFAULT 0,
    body BLOB,
    recorded_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    tenant TEXT
);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    inquiry_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE IF NOT EXISTS cost_ledger (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    workflow TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    step TEXT NOT NULL,
    service TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT,
    usage TEXT NOT NULL,
    cost TEXT NOT NULL,
    currency TEXT NOT NULL,
    price_table TEXT NOT NULL,
    at TEXT NOT NULL,
    cached INTEGER NOT NULL DEFAULT 0,
    saved TEXT NOT NULL DEFAULT '0'
);
CREATE INDEX IF NOT EXISTS cost_ledger_tenant ON cost_ledger (tenant, at);
CREATE INDEX IF NOT EXISTS cost_ledger_at ON cost_ledger (at);
CREATE TABLE IF NOT EXISTS cost_reservations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    step TEXT NOT NULL,
    amount TEXT NOT NULL,
    at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cost_reservations_tenant ON cost_reservations (tenant, expires_at);
CREATE TABLE IF NOT EXISTS result_cache (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS result_cache_expires ON result_cache (expires_at);
CREATE TABLE IF NOT EXISTS circuits (
    service TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL,
    changed_at TEXT NOT NULL,
    opened_at TEXT
);
"""


_LEDGER_COLUMNS = (
    "id, tenant, workflow, correlation_id, step, service, provider, model, usage, cost,"
    " currency, price_table, at, cached, saved"
)

# the ledger's unique key is the call's request id (its primary key): a repeat is ignored
_INSERT_LEDGER = (
    "INSERT INTO cost_ledger (" + _LEDGER_COLUMNS + ")"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)


_INSERT_RESERVATION = (
    "INSERT INTO cost_reservations (id, tenant, correlation_id, step, amount, at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_DELETE_RESERVATION = "DELETE FROM cost_reservations WHERE id = ?"


def _ts(value: datetime) -> str:
    # one fixed-width UTC form, so that text order is time order
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _from_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _ledger_rows(entries: Sequence[CostEntry]) -> list[tuple[object, ...]]:
    return [
        (e.id, e.tenant, e.workflow, e.correlation_id, e.step, e.service, e.provider, e.model,
         e.usage.model_dump_json(), str(e.cost), e.currency, e.price_table, _ts(e.at),
         int(e.cached), str(e.saved))
        for e in entries
    ]


def _api_key(row: Sequence[object]) -> ApiKey:
    return ApiKey(
        key_id=str(row[0]), tenant=str(row[1]), key_hash=str(row[2]),
        created_at=_from_ts(str(row[3])),
        revoked_at=_from_ts(str(row[4])) if row[4] is not None else None,
    )


class SqliteSagaStore:
    """The saga store in one SQLite file (``sqlite:///path``); ``:memory:`` works for tests."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path)
            await self._db.executescript(SCHEMA)
            await self._migrate(self._db)
            await self._db.commit()
        except Exception as exc:  # sqlite3 raises several unrelated classes here
            raise StoreError(f"cannot open SQLite store at {self.path}: {exc}") from exc

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        """Columns added since a database file may have been made (SQLite has no ADD COLUMN
        IF NOT EXISTS; ``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it is): the
        inbox's ``recorded_at`` and ``tenant``, the ledger's ``saved``. Inbox rows of an older
        file count as recorded now, so retention removes them one retention period after the
        upgrade, not at once."""
        async with db.execute("PRAGMA table_info(inbox)") as cur:
            columns = {str(row[1]) for row in await cur.fetchall()}
        if "recorded_at" not in columns:
            await db.execute("ALTER TABLE inbox ADD COLUMN recorded_at REAL NOT NULL DEFAULT 0")
            await db.execute("UPDATE inbox SET recorded_at = ?", (time.time(),))
        if "tenant" not in columns:
            await db.execute("ALTER TABLE inbox ADD COLUMN tenant TEXT")
        await db.execute("CREATE INDEX IF NOT EXISTS inbox_recorded ON inbox (recorded_at)")
        async with db.execute("PRAGMA table_info(cost_ledger)") as found:
            ledger = {str(row[1]) for row in await found.fetchall()}
        if "saved" not in ledger:
            await db.execute("ALTER TABLE cost_ledger ADD COLUMN saved TEXT NOT NULL DEFAULT '0'")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the SQLite store is not open")
        return self._db

    async def load(self, saga_id: str) -> SagaState | None:
        async with self.db.execute("SELECT state FROM sagas WHERE id = ?", (saga_id,)) as cur:
            row = await cur.fetchone()
        return SagaState.model_validate_json(row[0]) if row else None

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
        db = self.db
        # one writer at a time on this connection: aiosqlite serialises statements, but a
        # transaction must not interleave with another coroutine's
        async with self._lock:
            try:
                if expected_version == 0:
                    cur = await db.execute(
                        "INSERT OR IGNORE INTO sagas (id, workflow, tenant, status, version,"
                        " started_at, state) VALUES (?, ?, ?, ?, 1, ?, ?)",
                        (state.id, state.workflow, state.tenant, saved.status.value,
                         _ts(state.started_at), body),
                    )
                else:
                    cur = await db.execute(
                        "UPDATE sagas SET status = ?, version = ?, state = ? "
                        "WHERE id = ? AND version = ?",
                        (saved.status.value, saved.version, body, state.id, expected_version),
                    )
                if cur.rowcount != 1:
                    raise ConcurrencyError(
                        f"saga {state.id} is not at version {expected_version}"
                    )
                if costs:
                    await db.executemany(_INSERT_LEDGER, _ledger_rows(costs))
                released = [*release, *(e.id for e in costs)]
                if released:
                    await db.executemany(_DELETE_RESERVATION, [(r,) for r in released])
                if reserve:
                    await db.executemany(_INSERT_RESERVATION, [
                        (r.id, r.tenant, r.correlation_id, r.step, str(r.amount), _ts(r.at),
                         _ts(r.expires_at)) for r in reserve
                    ])
                if outbox:
                    await db.executemany(
                        "INSERT OR IGNORE INTO outbox (event_id, saga_id, body) VALUES (?, ?, ?)",
                        [(e.id, state.id, encode(e)) for e in outbox],
                    )
                if cancel_timers_of is not None:
                    await db.execute("DELETE FROM timers WHERE saga_id = ?", (cancel_timers_of,))
                if timers:
                    await db.executemany(
                        "INSERT OR REPLACE INTO timers (id, saga_id, step, kind, due_at, attempt)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [(t.id, t.saga_id, t.step, t.kind, _ts(t.due_at), t.attempt)
                         for t in timers],
                    )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        return saved

    async def pending_outbox(self, limit: int = 100, min_age: float = 0.0) -> list[Envelope]:
        async with self.db.execute(
            "SELECT body FROM outbox WHERE created_at <= "
            "(julianday('now') - 2440587.5) * 86400.0 - ? "
            "ORDER BY seq LIMIT ?", (min_age, limit)
        ) as cur:
            rows = await cur.fetchall()
        return [decode(r[0]) for r in rows]

    async def mark_published(self, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        async with self._lock:
            await self.db.executemany(
                "DELETE FROM outbox WHERE event_id = ?", [(i,) for i in event_ids]
            )
            await self.db.commit()

    async def due_timers(self, now: datetime, limit: int = 100) -> list[Timer]:
        async with self.db.execute(
            "SELECT id, saga_id, step, kind, due_at, attempt FROM timers WHERE due_at <= ? "
            "AND leased_until <= ? ORDER BY due_at LIMIT ?",
            (_ts(now), time.time(), limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            Timer(
                id=r[0], saga_id=r[1], step=r[2], kind=r[3],
                due_at=datetime.strptime(r[4], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                attempt=r[5],
            )
            for r in rows
        ]

    async def claim_timer(self, timer_id: str, lease: float = 60.0) -> bool:
        wall = time.time()
        async with self._lock:
            cur = await self.db.execute(
                "UPDATE timers SET leased_until = ? WHERE id = ? AND leased_until <= ?",
                (wall + lease, timer_id, wall),
            )
            await self.db.commit()
        return cur.rowcount == 1

    async def complete_timer(self, timer_id: str) -> None:
        async with self._lock:
            await self.db.execute("DELETE FROM timers WHERE id = ?", (timer_id,))
            await self.db.commit()

    async def append_events(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        async with self._lock:
            await self.db.executemany(
                "INSERT OR IGNORE INTO events (id, correlation_id, tenant, type, time, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(e.id, e.correlationid, e.tenant, e.type, _ts(e.time), encode(e))
                 for e in envelopes],
            )
            await self.db.commit()

    async def events(self, correlationid: str) -> list[Envelope]:
        async with self.db.execute(
            "SELECT body FROM events WHERE correlation_id = ? ORDER BY seq", (correlationid,)
        ) as cur:
            rows = await cur.fetchall()
        return [decode(r[0]) for r in rows]

    async def list_sagas(self, status: str | None = None, limit: int = 50) -> list[SagaState]:
        query = "SELECT state FROM sagas"
        params: tuple[object, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        query += " ORDER BY started_at DESC LIMIT ?"
        async with self.db.execute(query, (*params, limit)) as cur:
            rows = await cur.fetchall()
        return [SagaState.model_validate_json(r[0]) for r in rows]

    async def prune(self, before: datetime, tenant: str | None = None) -> Pruned:
        where_tenant = "" if tenant is None else " AND tenant = ?"
        extra: tuple[str, ...] = () if tenant is None else (tenant,)
        async with self._lock:
            events = await self.db.execute(
                f"DELETE FROM events WHERE time < ?{where_tenant}", (_ts(before), *extra)
            )
            sagas = await self.db.execute(
                f"DELETE FROM sagas WHERE status != 'running' AND started_at < ?{where_tenant}",
                (_ts(before), *extra),
            )
            # a claim without a result is kept while it is live (its worker is working)
            results = await self.db.execute(
                "DELETE FROM inbox WHERE recorded_at < ? AND (body IS NOT NULL OR"
                f" claimed_until <= ?){where_tenant}", (before.timestamp(), time.time(), *extra),
            )
            keys = await self.db.execute(
                f"DELETE FROM idempotency_keys WHERE created_at < ?{where_tenant}",
                (_ts(before), *extra),
            )
            # reservations expired long ago count for nothing
            await self.db.execute(
                "DELETE FROM cost_reservations WHERE expires_at < ?", (_ts(before),)
            )
            await self.db.commit()
        return Pruned(events.rowcount, sagas.rowcount, results.rowcount, keys.rowcount)

    async def recorded_result(self, request_id: str) -> Envelope | None:
        async with self.db.execute(
            "SELECT body FROM inbox WHERE request_id = ? AND body IS NOT NULL", (request_id,)
        ) as cur:
            row = await cur.fetchone()
        return decode(row[0]) if row else None

    async def claim_request(self, request_id: str, owner: str, lease: float) -> bool:
        wall = time.time()
        async with self._lock:
            async with self.db.execute(
                "INSERT INTO inbox (request_id, owner, claimed_until) VALUES (?, ?, ?) "
                "ON CONFLICT (request_id) DO UPDATE SET owner = excluded.owner, "
                "claimed_until = excluded.claimed_until WHERE inbox.body IS NULL AND "
                "(inbox.owner = excluded.owner OR inbox.claimed_until <= ?) RETURNING request_id",
                (request_id, owner, wall + lease, wall),
            ) as cur:
                row = await cur.fetchone()
            await self.db.commit()
        return row is not None

    async def record_result(self, request_id: str, result: Envelope) -> None:
        async with self._lock:
            await self.db.execute(
                "INSERT INTO inbox (request_id, body, tenant, recorded_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (request_id) DO UPDATE SET body = excluded.body, owner = NULL,"
                " tenant = excluded.tenant, recorded_at = excluded.recorded_at"
                " WHERE inbox.body IS NULL",
                (request_id, encode(result), result.tenant, time.time()),
            )
            await self.db.commit()

    async def events_since(
        self,
        seq: int,
        tenant: str,
        types: Collection[str] = (),
        limit: int = 100,
        *,
        correlationid: str | None = None,
    ) -> list[tuple[int, Envelope]]:
        query = "SELECT seq, body FROM events WHERE tenant = ? AND seq > ?"
        params: list[object] = [tenant, seq]
        wanted = sorted(set(types))
        if wanted:
            query += f" AND type IN ({', '.join('?' for _ in wanted)})"
            params.extend(wanted)
        if correlationid is not None:
            query += " AND correlation_id = ?"
            params.append(correlationid)
        query += " ORDER BY seq LIMIT ?"
        params.append(limit)
        # under the writers' lock: this connection must not read another coroutine's
        # appends before they commit
        async with self._lock, self.db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [(int(r[0]), decode(r[1])) for r in rows]

    async def last_event_seq(self) -> int:
        async with self._lock, self.db.execute("SELECT max(seq) FROM events") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def put_api_key(
        self, key_id: str, tenant: str, key_hash: str, created_at: datetime
    ) -> None:
        async with self._lock:
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO api_keys (key_id, tenant, key_hash, created_at)"
                " VALUES (?, ?, ?, ?)", (key_id, tenant, key_hash, _ts(created_at)),
            )
            await self.db.commit()
        if cur.rowcount != 1:
            raise StoreError(f"API key id {key_id!r} is already taken")

    async def find_api_key(self, key_id: str) -> ApiKey | None:
        async with self.db.execute(
            "SELECT key_id, tenant, key_hash, created_at, revoked_at FROM api_keys"
            " WHERE key_id = ?", (key_id,),
        ) as cur:
            row = await cur.fetchone()
        return _api_key(row) if row else None

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = "SELECT key_id, tenant, key_hash, created_at, revoked_at FROM api_keys"
        params: tuple[object, ...] = ()
        if tenant is not None:
            query += " WHERE tenant = ?"
            params = (tenant,)
        async with self.db.execute(query + " ORDER BY created_at, key_id", params) as cur:
            rows = await cur.fetchall()
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str, revoked_at: datetime) -> bool:
        async with self._lock:
            cur = await self.db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (_ts(revoked_at), key_id),
            )
            await self.db.commit()
        return cur.rowcount == 1

    async def remember_idempotency(
        self, tenant: str, key: str, request_hash: str, inquiry_id: str
    ) -> IdempotencyRecord | None:
        async with self._lock:
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO idempotency_keys"
                " (tenant, key, request_hash, inquiry_id, created_at) VALUES (?, ?, ?, ?, ?)",
                (tenant, key, request_hash, inquiry_id, _ts(datetime.now(UTC))),
            )
            await self.db.commit()
            if cur.rowcount == 1:
                return None
            async with self.db.execute(
                "SELECT request_hash, inquiry_id, created_at FROM idempotency_keys"
                " WHERE tenant = ? AND key = ?", (tenant, key),
            ) as found:
                row = await found.fetchone()
        if row is None:  # forgotten in between by another process: treat as new next time
            raise StoreError(f"idempotency key {key!r} vanished while being read; retry")
        return IdempotencyRecord(tenant, key, str(row[0]), str(row[1]), _from_ts(str(row[2])))

    async def forget_idempotency(self, tenant: str, key: str) -> None:
        async with self._lock:
            await self.db.execute(
                "DELETE FROM idempotency_keys WHERE tenant = ? AND key = ?", (tenant, key)
            )
            await self.db.commit()

    async def cache_get(self, key: str) -> bytes | None:
        async with self.db.execute(
            "SELECT value FROM result_cache WHERE key = ? AND expires_at > ?",
            (key, _ts(datetime.now(UTC))),
        ) as found:
            row = await found.fetchone()
        return bytes(row[0]) if row is not None else None

    async def cache_put(self, key: str, value: bytes, expires_at: datetime) -> None:
        async with self._lock:
            await self.db.execute(
                "INSERT INTO result_cache (key, value, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " expires_at = excluded.expires_at",
                (key, value, _ts(expires_at)),
            )
            # expired entries go as new ones come, so the table does not grow without bound
            # (by the index: a scan of the whole table per write made every write slower)
            await self.db.execute(
                "DELETE FROM result_cache WHERE expires_at <= ?", (_ts(datetime.now(UTC)),)
            )
            await self.db.commit()

    async def put_circuit(self, circuit: CircuitRecord) -> None:
        async with self._lock:
            await self.db.execute(
                "INSERT INTO circuits (service, state, failures, changed_at, opened_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (service) DO UPDATE SET"
                " state = excluded.state, failures = excluded.failures,"
                " changed_at = excluded.changed_at, opened_at = excluded.opened_at"
                " WHERE excluded.changed_at >= circuits.changed_at",
                (circuit.service, circuit.state, circuit.failures, _ts(circuit.changed_at),
                 _ts(circuit.opened_at) if circuit.opened_at is not None else None),
            )
            await self.db.commit()

    async def circuits(self) -> list[CircuitRecord]:
        async with self.db.execute(
            "SELECT service, state, failures, changed_at, opened_at FROM circuits"
            " ORDER BY service"
        ) as rows:
            return [
                CircuitRecord(str(r[0]), str(r[1]), int(r[2]), _from_ts(str(r[3])),
                              _from_ts(str(r[4])) if r[4] is not None else None)
                for r in await rows.fetchall()
            ]

    async def record_cost(self, entries: Sequence[CostEntry]) -> None:
        if not entries:
            return
        async with self._lock:
            try:
                await self.db.executemany(_INSERT_LEDGER, _ledger_rows(entries))
                await self.db.executemany(_DELETE_RESERVATION, [(e.id,) for e in entries])
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise

    async def spent(self, tenant: str, since: datetime) -> Decimal:
        # costs are exact decimals kept as text; summed here, not as SQLite floats
        async with self.db.execute(
            "SELECT cost FROM cost_ledger WHERE tenant = ? AND at >= ?", (tenant, _ts(since))
        ) as found:
            rows = await found.fetchall()
        return sum((Decimal(str(r[0])) for r in rows), Decimal(0))

    async def reserved(self, tenant: str, now: datetime) -> Decimal:
        async with self.db.execute(
            "SELECT amount FROM cost_reservations WHERE tenant = ? AND expires_at > ?",
            (tenant, _ts(now)),
        ) as found:
            rows = await found.fetchall()
        return sum((Decimal(str(r[0])) for r in rows), Decimal(0))

    async def cost_report(self, since: datetime, group_by: CostGroup) -> list[CostRow]:
        async with self.db.execute(
            "SELECT " + _LEDGER_COLUMNS + " FROM cost_ledger WHERE at >= ?", (_ts(since),)
        ) as found:
            rows = await found.fetchall()
        entries = [
            CostEntry(
                id=str(r[0]), tenant=str(r[1]), workflow=str(r[2]), correlation_id=str(r[3]),
                step=str(r[4]), service=str(r[5]), provider=str(r[6]),
                model=str(r[7]) if r[7] is not None else None,
                usage=Usage.model_validate_json(str(r[8])), cost=Decimal(str(r[9])),
                currency=str(r[10]), price_table=str(r[11]), at=_from_ts(str(r[12])),
                cached=bool(r[13]), saved=Decimal(str(r[14])),
            )
            for r in rows
        ]
        return report(entries, group_by)
