"""The PostgreSQL store: the store contract, and what only matters with several coordinators
sharing one database (version races, timer claims, outbox leases, two real coordinators).

Needs PostgreSQL at ``AIAPPS_TEST_POSTGRES_URL``. Outside CI it defaults to
``postgresql://postgres@127.0.0.1:5432/test`` and the tests skip if that is unreachable; in CI
(``CI`` set) the URL must be given and an unreachable database fails the tests. Every test
works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actors.blobstore import FileBlobStore
from actors.providers.fake import FakeProviders
from actors.runtime import ActorRuntime
from bus.base import RetryPolicy
from bus.memory import InMemoryTransport
from events import Envelope, InquiryFailed, ResponseReady, encode
from saga.breaker import BreakerPolicy, BreakerRegistry
from saga.clock import ManualClock
from saga.coordinator import SagaCoordinator
from saga.postgres_store import PostgresSagaStore, TransientStoreError, redact
from saga.recorder import EventRecorder
from saga.state import SagaState, SagaStatus, StepStatus
from saga.store import ConcurrencyError, StoreError, Timer
from saga.workflows.support import support_workflow
from service.testing import fake_settings, make_inquiry
from service.wiring import TERMINAL_TYPES, make_actors
from tests.conformance.store import (
    T0,
    StoreContract,
    envelope,
    new_state,
    tenant_event,
    timer,
)

pytestmark = pytest.mark.postgres

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Postgres:
    """One test's database: its URL, its own schema, an admin connection, and the stores
    opened on that schema (closed before the schema is dropped)."""

    url: str
    schema: str
    admin: Any  # asyncpg.Connection
    stores: list[PostgresSagaStore] = field(default_factory=list)

    async def store(self, cls: type[PostgresSagaStore] = PostgresSagaStore,
                    **options: Any) -> PostgresSagaStore:
        """A new, opened store on this test's schema (as another coordinator would open)."""
        store = cls(self.url, schema=self.schema, **options)
        self.stores.append(store)
        await store.open()
        return store

    async def count(self, table: str) -> int:
        value = await self.admin.fetchval(f'SELECT count(*) FROM "{self.schema}".{table}')
        return int(value)


@pytest.fixture
async def pg() -> AsyncIterator[Postgres]:
    url = os.environ.get("AIAPPS_TEST_POSTGRES_URL")
    in_ci = bool(os.environ.get("CI"))
    if not url:
        if in_ci:
            pytest.fail("AIAPPS_TEST_POSTGRES_URL must be set in CI")
        url = DEFAULT_URL
    try:
        admin = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        # only a developer's machine without the default database skips; a URL that was
        # given, or any database in CI, must be there
        if in_ci or os.environ.get("AIAPPS_TEST_POSTGRES_URL"):
            raise
        pytest.skip(f"no PostgreSQL at {redact(url)}: {exc}")
    await admin.execute("SET client_min_messages = warning")  # no NOTICEs from DROP … CASCADE
    db = Postgres(url, f"test_{uuid.uuid4().hex[:16]}", admin)
    try:
        yield db
    finally:
        for store in db.stores:
            await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE')
        await admin.close()


class TestPostgresStore(StoreContract):
    """The PostgreSQL store behaves as every store must."""

    @pytest.fixture
    async def store(self, pg: Postgres) -> PostgresSagaStore:
        return await pg.store()


class TestPostgresConcurrency:
    """Two stores on one schema, as two coordinator processes would have."""

    async def test_racing_inserts_of_a_new_saga_have_one_winner(self, pg: Postgres) -> None:
        """Two stores saving the same new saga at once: one wins, the other gets a
        ConcurrencyError and leaves no outbox events or timers."""
        a, b = await pg.store(), await pg.store()
        for i in range(20):
            sid = f"new-{i}"
            results = await asyncio.gather(
                a.save(new_state(sid), expected_version=0, outbox=[envelope(sid)],
                       timers=[timer(f"ta-{i}", T0, sid)]),
                b.save(new_state(sid), expected_version=0, outbox=[envelope(sid)],
                       timers=[timer(f"tb-{i}", T0, sid)]),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["ConcurrencyError", "SagaState"]
        assert await pg.count("sagas") == 20
        assert await pg.count("outbox") == 20
        assert await pg.count("timers") == 20

    async def test_racing_updates_on_one_version_have_one_winner(self, pg: Postgres) -> None:
        """Two stores updating the same saga from the same version: exactly one wins, and only
        the winner's outbox event is written."""
        a, b = await pg.store(), await pg.store()
        state = await a.save(new_state("s1"), expected_version=0)
        for version in range(1, 21):
            ea, eb = envelope("s1"), envelope("s1")
            results = await asyncio.gather(
                a.save(state, expected_version=version, outbox=[ea]),
                b.save(state, expected_version=version, outbox=[eb]),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, SagaState)]
            assert len(winners) == 1
            assert sum(isinstance(r, ConcurrencyError) for r in results) == 1
            state = winners[0]
            assert state.version == version + 1
            pending = {e.id for e in await a.pending_outbox(limit=1000)}
            assert len(pending & {ea.id, eb.id}) == 1
        loaded = await b.load("s1")
        assert loaded is not None
        assert loaded.version == 21
        assert await pg.count("outbox") == 20

    async def test_fifty_timers_claimed_once_by_two_stores(self, pg: Postgres) -> None:
        """50 due timers claimed by two stores at once with claim_due_timers, in small
        batches: every timer is claimed exactly once in total."""
        # two connections each, ready before the race starts
        a, b = await pg.store(min_size=2), await pg.store(min_size=2)
        timers = [timer(f"t{i:02}", T0 + timedelta(seconds=i)) for i in range(50)]
        await a.save(new_state(), expected_version=0, timers=timers)
        now = T0 + timedelta(minutes=5)

        async def drain(store: PostgresSagaStore) -> list[Timer]:
            claimed: list[Timer] = []
            while batch := await store.claim_due_timers(now, limit=3):
                assert batch == sorted(batch, key=lambda t: t.due_at)
                claimed.extend(batch)
            return claimed

        claims = await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
        ids = [t.id for batch in claims for t in batch]
        assert Counter(ids) == Counter(t.id for t in timers)
        # claimed means leased: nothing is due any more, and completing removes them
        assert await a.due_timers(now) == []
        for tid in ids:
            await a.complete_timer(tid)
        assert await pg.count("timers") == 0

    async def test_claim_due_timers_leaves_timers_not_due(self, pg: Postgres) -> None:
        """Only due timers are claimed, oldest first, returned whole."""
        store = await pg.store()
        await store.save(new_state(), expected_version=0, timers=[
            timer("late", T0 + timedelta(seconds=20)), timer("early", T0 + timedelta(seconds=10)),
            timer("future", T0 + timedelta(hours=1)),
        ])
        claimed = await store.claim_due_timers(T0 + timedelta(seconds=30), limit=10)
        assert claimed == [timer("early", T0 + timedelta(seconds=10)),
                           timer("late", T0 + timedelta(seconds=20))]
        assert [t.id for t in await store.due_timers(T0 + timedelta(days=1))] == ["future"]

    async def test_claim_timer_across_stores_succeeds_once(self, pg: Postgres) -> None:
        """claim_timer raced by two stores (the coordinator's due_timers + claim_timer
        path): each timer goes to exactly one of them."""
        a, b = await pg.store(), await pg.store()
        await a.save(new_state(), expected_version=0,
                     timers=[timer(f"t{i}", T0) for i in range(30)])
        due = await a.due_timers(T0, limit=100)
        results = await asyncio.gather(
            *(s.claim_timer(t.id) for t in due for s in (a, b, a, b))
        )
        assert results.count(True) == 30

    async def test_outbox_rows_are_leased_to_one_relay(self, pg: Postgres) -> None:
        """Two relays asking at once are handed disjoint rows; the holder of a lease gets its
        rows again; another relay gets them once the lease has run out."""
        a, b = await pg.store(), await pg.store()
        events = [envelope() for _ in range(10)]
        await a.save(new_state(), expected_version=0, outbox=events)
        got_a, got_b = await asyncio.gather(a.pending_outbox(), b.pending_outbox())
        ids_a, ids_b = [e.id for e in got_a], [e.id for e in got_b]
        assert not set(ids_a) & set(ids_b)
        assert sorted(ids_a + ids_b) == sorted(e.id for e in events)
        assert [e.id for e in await a.pending_outbox()] == ids_a  # oldest first, again
        assert [e.id for e in await b.pending_outbox()] == ids_b
        await a.mark_published(ids_a[:1])
        # let both leases run out (by the database's clock, which leases are measured on)
        await pg.admin.execute(
            f'UPDATE "{pg.schema}".outbox SET leased_until = now() - interval \'1 second\''
        )
        # whoever asks first now takes every row left
        assert [e.id for e in await b.pending_outbox()] == [
            e.id for e in events if e.id not in ids_a[:1]
        ]
        assert await a.pending_outbox() == []

    async def test_feed_never_shows_a_number_before_a_lower_one_commits(
        self, pg: Postgres
    ) -> None:
        """An append still in its transaction holds back later appends, so a feed reader
        never sees seq n+1 while n may still appear (it would skip n for good)."""
        store, other = await pg.store(), await pg.store()
        first, second = tenant_event("s1", "t"), tenant_event("s2", "t")
        async with pg.admin.transaction():
            # the store's own append statement, left uncommitted
            await pg.admin.execute(
                store._sql.append_events, [first.id], [first.correlationid], [first.tenant],
                [first.type], [first.time], [encode(first)],
            )
            later = asyncio.create_task(other.append_events([second]))
            await asyncio.sleep(0.3)
            assert not later.done()  # waiting for the first append to commit
            assert await store.events_since(0, "t") == []
        await asyncio.wait_for(later, 10)
        feed = await store.events_since(0, "t")
        assert [e.id for _, e in feed] == [first.id, second.id]
        assert feed[0][0] < feed[1][0]

    async def test_concurrent_open_creates_the_schema_once(self, pg: Postgres) -> None:
        """Processes starting together on a fresh schema all open without a DDL error."""
        stores = [PostgresSagaStore(pg.url, schema=pg.schema) for _ in range(6)]
        pg.stores.extend(stores)
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].save(new_state(), expected_version=0)
        assert await stores[5].load("s1") is not None


class TestPostgresDetails:
    async def test_nul_and_unicode_round_trip(self, pg: Postgres) -> None:
        """Text JSON keeps what JSONB would reject (``\\u0000``) and any Unicode."""
        store = await pg.store()
        state = new_state()
        start = state.start.model_copy(
            update={"data": {**state.start.data, "message": "nul \x00 ünïcødé 🙂"}}
        )
        saved = await store.save(state.model_copy(update={"start": start}), expected_version=0)
        assert await store.load("s1") == saved

    async def test_times_keep_their_instant_in_any_zone(self, pg: Postgres) -> None:
        """A timer due at 02:00+02:00 is the same instant as 00:00 UTC; times come back
        timezone-aware."""
        store = await pg.store()
        plus2 = timezone(timedelta(hours=2))
        due = T0.astimezone(plus2)
        await store.save(new_state(), expected_version=0, timers=[timer("t", due)])
        assert await store.due_timers(T0 - timedelta(microseconds=1)) == []
        (found,) = await store.due_timers(T0)
        assert found.due_at == T0
        assert found.due_at.tzinfo is not None
        kinds = await pg.admin.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = $1 AND data_type = 'timestamp with time zone'", pg.schema,
        )
        assert {(r["table_name"], r["column_name"]) for r in kinds} >= {
            ("sagas", "started_at"), ("timers", "due_at"), ("events", "time"),
        }

    async def test_unreachable_database_names_the_url_without_password(self) -> None:
        """A refused connection is a retryable StoreError naming the URL, password hidden."""
        store = PostgresSagaStore("postgresql://app:s3cret@127.0.0.1:1/db")
        with pytest.raises(StoreError) as info:
            await store.open()
        message = str(info.value)
        assert "s3cret" not in message
        assert "postgresql://app:***@127.0.0.1:1/db" in message
        assert isinstance(info.value, TransientStoreError)
        assert info.value.retryable
        assert isinstance(info.value.__cause__, OSError)

    async def test_unknown_database_is_a_store_error(self, pg: Postgres) -> None:
        """A database that does not exist fails to open with a StoreError (not retryable)."""
        url = pg.url.rsplit("/", 1)[0] + f"/missing_{uuid.uuid4().hex[:8]}"
        with pytest.raises(StoreError, match="does not exist") as info:
            await PostgresSagaStore(url).open()
        assert not info.value.retryable

    async def test_use_before_open_and_bad_schema(self) -> None:
        """A store that is not open says so; a schema must be a plain identifier."""
        with pytest.raises(StoreError, match="not open"):
            await PostgresSagaStore(DEFAULT_URL).load("s1")
        with pytest.raises(ValueError, match="identifier"):
            PostgresSagaStore(DEFAULT_URL, schema='x"; DROP TABLE y; --')

    async def test_lost_connection_is_retryable_and_the_pool_recovers(
        self, pg: Postgres
    ) -> None:
        """A connection killed in the middle of a save (a failover, an admin) gives a
        retryable StoreError and writes nothing; the next save gets a fresh connection."""
        name = f"ai-apps test {pg.schema}"  # kill this store's connection, no one else's
        store = await pg.store(min_size=1, max_size=1, application_name=name)
        state = await store.save(new_state(), expected_version=0)
        async with pg.admin.transaction():
            # hold the saga's row so that the store's UPDATE waits, in flight, to be killed
            await pg.admin.execute(
                f'SELECT 1 FROM "{pg.schema}".sagas WHERE id = $1 FOR UPDATE', "s1"
            )
            save = asyncio.create_task(
                store.save(state, expected_version=1, outbox=[envelope()])
            )
            async with asyncio.timeout(10):
                while not await pg.admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = $1 AND wait_event_type = 'Lock'", name,
                ):
                    await asyncio.sleep(0.01)
            await pg.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1", name,
            )
            with pytest.raises(TransientStoreError) as info:
                await save
        assert info.value.retryable
        assert await pg.count("outbox") == 0
        saved = await store.save(state, expected_version=1)
        assert saved.version == 2


# -- two real coordinators sharing one schema and one bus ---------------------------------


class CountingStore(PostgresSagaStore):
    """Counts the version races this store lost."""

    conflicts = 0

    async def save(self, state: SagaState, **kwargs: Any) -> SagaState:
        try:
            return await super().save(state, **kwargs)
        except ConcurrencyError:
            self.conflicts += 1
            raise


class CountingCoordinator(SagaCoordinator):
    """Counts the bus events this coordinator handled."""

    handled = 0

    async def handle(self, envelope: Envelope) -> None:
        self.handled += 1
        await super().handle(envelope)


@dataclass
class Cluster:
    """Two coordinators (each with its own store on the shared schema), the actors on fake
    providers, the event recorder and a reply listener, all on one in-memory bus."""

    transport: InMemoryTransport
    fakes: FakeProviders
    clock: ManualClock
    stores: Sequence[CountingStore]
    coordinators: Sequence[CountingCoordinator]
    replies: dict[str, list[Envelope]]

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every message is handled, except requests whose provider hangs."""
        async with asyncio.timeout(timeout):
            while True:
                hanging = sum(b.hanging for b in self.fakes.behaviours().values())
                if self.transport.pending <= hanging:
                    for _ in range(5):
                        await asyncio.sleep(0)
                    if self.transport.pending <= hanging:
                        return
                await asyncio.sleep(0.005)

    async def terminal_events(self, inquiry_id: str) -> list[Envelope]:
        events = await self.stores[0].events(inquiry_id)
        return [e for e in events if e.type in TERMINAL_TYPES]

    async def sagas(self, ids: Sequence[str]) -> list[SagaState]:
        loaded = [await self.stores[1].load(i) for i in ids]
        assert all(s is not None for s in loaded)
        return [s for s in loaded if s is not None]


@pytest.fixture
async def cluster(pg: Postgres, tmp_path: Path) -> AsyncIterator[Cluster]:
    # drain_timeout=0: hung provider calls would hold close() for the whole drain timeout
    transport = InMemoryTransport(
        retry=RetryPolicy(max_attempts=5, initial_delay=0.01, jitter=0), drain_timeout=0
    )
    fakes = FakeProviders()
    clock = ManualClock()
    settings = fake_settings(tmp_path)
    providers = {
        "language": fakes.language, "vision": fakes.vision, "translation": fakes.translation,
        "responder": fakes.responder, "speech": fakes.speech,
    }
    # enough workers per actor that hanging calls do not starve the others
    runtime = ActorRuntime(
        transport, make_actors(settings, FileBlobStore(settings.blobs), overrides=providers),
        concurrency=100, clock=clock.now,  # request deadlines are on the coordinator's clock
    )
    counting = [CountingStore(pg.url, schema=pg.schema) for _ in range(2)]
    pg.stores.extend(counting)
    for store in counting:
        await store.open()
    coordinators = [
        CountingCoordinator(
            transport, store, [support_workflow()], clock=clock,
            # breakers are per process; keep them shut so every saga takes the same path
            breakers=BreakerRegistry(BreakerPolicy(failure_threshold=10_000)),
            timer_interval=3600,
        )
        for store in counting
    ]
    replies: dict[str, list[Envelope]] = {}

    async def on_reply(env: Envelope) -> None:
        replies.setdefault(env.correlationid, []).append(env)

    await transport.subscribe("replies.test", TERMINAL_TYPES, on_reply, ephemeral=True)
    await EventRecorder(transport, counting[0]).start()
    await runtime.start()
    for coordinator in coordinators:
        # one subscriber group: the two coordinators compete for its messages
        await coordinator.start(run_timers=False)
    await transport.start()
    try:
        yield Cluster(transport, fakes, clock, counting, coordinators, replies)
    finally:
        for coordinator in coordinators:
            await coordinator.stop()
        await transport.close()


class TestTwoCoordinators:
    async def test_fifty_inquiries_each_end_once(self, cluster: Cluster, pg: Postgres) -> None:
        """50 inquiries, each published twice, handled by two coordinators competing on one
        bus and one schema: every saga completes with exactly one terminal event."""
        ids = [f"inq-{i:02}" for i in range(50)]
        for i, inquiry_id in enumerate(ids):
            kind = i % 3
            inquiry = make_inquiry(
                inquiry_id, f"question {i}",
                language={0: "es", 1: None, 2: "en"}[kind], voice_reply=kind == 0,
            )
            env = Envelope.new(inquiry, correlationid=inquiry_id, source="/test")
            # the same inquiry twice: the two copies may reach different coordinators at once
            await cluster.transport.publish(env)
            await cluster.transport.publish(env.model_copy(update={"id": str(uuid.uuid4())}))
        async with asyncio.timeout(30):
            while len(cluster.replies) < len(ids):
                await asyncio.sleep(0.01)
        await cluster.settle()

        assert {k: len(v) for k, v in cluster.replies.items()} == dict.fromkeys(ids, 1)
        for inquiry_id in ids:
            terminal = await cluster.terminal_events(inquiry_id)
            assert len(terminal) == 1, inquiry_id
            assert isinstance(terminal[0].data, ResponseReady)
        sagas = await cluster.sagas(ids)
        assert all(s.status is SagaStatus.COMPLETED and s.degraded == () for s in sagas)
        assert len(cluster.fakes.responder.behaviour.calls) == 50  # no step ran twice
        assert all(c.handled > 0 for c in cluster.coordinators)
        assert await cluster.transport.dead_letters() == []
        assert await pg.count("outbox") == 0
        assert await pg.count("timers") == 0

    async def test_each_deadline_fires_once_with_two_coordinators(
        self, cluster: Cluster, pg: Postgres
    ) -> None:
        """A responder that never answers: at each deadline and retry both coordinators fire
        due timers at the same moment, and each timer causes exactly one state transition,
        until the third timeout takes the fallback and each saga ends once."""
        cluster.fakes.responder.behaviour.fail_always("hang")
        ids = [f"hang-{i:02}" for i in range(20)]
        for inquiry_id in ids:
            inquiry = make_inquiry(inquiry_id, language="en")
            await cluster.transport.publish(Envelope.new(inquiry, correlationid=inquiry_id))
        async with asyncio.timeout(20):
            while cluster.fakes.responder.behaviour.hanging < len(ids):
                await asyncio.sleep(0.01)
        await cluster.settle()
        assert all(s.version == 1 for s in await cluster.sagas(ids))

        fired_by = [0, 0]
        # (seconds to move, timer kind then due): deadline, retry after 1 s, deadline,
        # retry after 2 s, deadline → fallback
        rounds = [(60, "deadline"), (1, "retry"), (60, "deadline"), (2, "retry"),
                  (60, "deadline")]
        for n, (seconds, kind) in enumerate(rounds, start=1):
            cluster.clock.advance(seconds)
            due = await cluster.stores[0].due_timers(cluster.clock.now(), limit=1000)
            assert len(due) == len(ids)
            assert {t.kind for t in due} == {kind}
            fired = await asyncio.gather(
                *(c.fire_due_timers() for c in cluster.coordinators)
            )
            assert sum(fired) == len(ids)  # each due timer fired by exactly one coordinator
            fired_by = [a + b for a, b in zip(fired_by, fired, strict=True)]
            await cluster.settle()
            # one transition per saga per timer
            assert [s.version for s in await cluster.sagas(ids)] == [1 + n] * len(ids)

        for inquiry_id in ids:
            assert len(cluster.replies.get(inquiry_id, [])) == 1
            (terminal,) = await cluster.terminal_events(inquiry_id)
            assert isinstance(terminal.data, ResponseReady)
            assert not isinstance(terminal.data, InquiryFailed)
            assert terminal.data.degraded == ("respond",)
        for saga in await cluster.sagas(ids):
            step = saga.steps["respond"]
            assert step.status is StepStatus.FALLBACK
            assert step.attempts == 3
        assert len(cluster.fakes.responder.behaviour.calls) == 3 * len(ids)
        assert sum(fired_by) == len(rounds) * len(ids)
        assert await pg.count("timers") == 0
        assert await cluster.transport.dead_letters() == []
