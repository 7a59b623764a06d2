"""The saga store contract, written once. A backend's test module subclasses
:class:`StoreContract` and provides an opened, empty ``store`` fixture."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from events import (
    Customer,
    Envelope,
    InquiryFailed,
    InquiryReceived,
    LanguageDetected,
    ProviderInfo,
    Usage,
)
from saga.state import SagaState, SagaStatus, StepState, StoredEvent
from saga.store import (
    CircuitRecord,
    ConcurrencyError,
    CostEntry,
    CostRow,
    Reservation,
    SagaStore,
    StoreError,
    Timer,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new_state(saga_id: str = "s1", started: datetime = T0) -> SagaState:
    inquiry = InquiryReceived(inquiry_id=saga_id, customer=Customer(id="c"), message="hi")
    return SagaState(
        id=saga_id, workflow="support", tenant="t1", start=StoredEvent.of(inquiry),
        start_envelope_id=f"env-{saga_id}", started_at=started,
        steps={"respond": StepState(key="respond", name="respond", service="responder")},
    )


def envelope(correlation: str = "s1", text: str = "hola") -> Envelope:
    return Envelope.new(
        LanguageDetected(language="es", confidence=0.9, provider=ProviderInfo(name="fake")),
        correlationid=correlation,
    )


def tenant_event(correlation: str, tenant: str, failed: bool = False) -> Envelope:
    """A ``LanguageDetected`` (or, ``failed``, an ``InquiryFailed``) of ``tenant``."""
    data = (
        InquiryFailed(inquiry_id=correlation, reason="test") if failed
        else LanguageDetected(language="es", confidence=0.9, provider=ProviderInfo(name="fake"))
    )
    return Envelope.new(data, correlationid=correlation, tenant=tenant)


def timer(tid: str, due: datetime, saga_id: str = "s1") -> Timer:
    return Timer(id=tid, saga_id=saga_id, step="respond", kind="deadline", due_at=due, attempt=1)


def cost_entry(request_id: str, cost: str, saga_id: str = "s1", step: str = "respond",
               at: datetime = T0) -> CostEntry:
    """The ledger entry of one accepted result of ``new_state``'s tenant (``t1``)."""
    return CostEntry(
        id=request_id, tenant="t1", workflow="support", correlation_id=saga_id, step=step,
        service="responder", provider="fake", model="fake-1",
        usage=Usage(input_tokens=10, output_tokens=20), cost=Decimal(cost), currency="USD",
        price_table="t1", at=at,
    )


def reservation(request_id: str, amount: str, saga_id: str = "s1", tenant: str = "t1",
                expires: datetime = T0 + timedelta(minutes=1)) -> Reservation:
    """The reservation of a call in flight of ``new_state``'s tenant."""
    return Reservation(id=request_id, tenant=tenant, correlation_id=saga_id, step="respond",
                       amount=Decimal(amount), at=T0, expires_at=expires)


class StoreContract:
    """Behaviour every saga store must show."""

    async def test_save_and_load_round_trip(self, store: SagaStore) -> None:
        """A saved saga loads back equal, with its version bumped."""
        saved = await store.save(new_state(), expected_version=0)
        assert saved.version == 1
        loaded = await store.load("s1")
        assert loaded == saved
        assert await store.load("nope") is None

    async def test_optimistic_concurrency(self, store: SagaStore) -> None:
        """Saving against a stale version raises ConcurrencyError; a second insert too."""
        await store.save(new_state(), expected_version=0)
        with pytest.raises(ConcurrencyError):
            await store.save(new_state(), expected_version=0)
        state = await store.load("s1")
        assert state is not None
        await store.save(state.model_copy(update={"status": SagaStatus.COMPLETED}),
                         expected_version=1)
        with pytest.raises(ConcurrencyError):
            await store.save(state, expected_version=1)

    async def test_outbox_commits_with_state_and_drains(self, store: SagaStore) -> None:
        """Outbox events saved with the state are pending until marked published."""
        a, b = envelope(), envelope()
        await store.save(new_state(), expected_version=0, outbox=[a, b])
        assert [e.id for e in await store.pending_outbox()] == [a.id, b.id]
        await store.mark_published([a.id])
        assert [e.id for e in await store.pending_outbox()] == [b.id]

    async def test_failed_save_writes_no_outbox(self, store: SagaStore) -> None:
        """A save that loses the version race leaves no outbox events or timers behind."""
        await store.save(new_state(), expected_version=0)
        with pytest.raises(ConcurrencyError):
            await store.save(new_state(), expected_version=0, outbox=[envelope()],
                             timers=[timer("t1", T0)])
        assert await store.pending_outbox() == []
        assert await store.due_timers(T0 + timedelta(days=1)) == []

    async def test_save_records_its_costs_with_the_state(self, store: SagaStore) -> None:
        """Ledger entries given to save are in the ledger once it returns, exactly."""
        await store.save(new_state(), expected_version=0,
                         costs=[cost_entry("r1", "0.000125"), cost_entry("r2", "1.5")])
        assert await store.spent("t1", T0) == Decimal("1.500125")
        assert await store.cost_report(T0, "service") == [
            CostRow("responder", 2, 0, Decimal("1.500125"))
        ]

    async def test_a_save_that_loses_the_race_records_no_cost(self, store: SagaStore) -> None:
        """A save that raises ConcurrencyError adds no ledger entry (it is reapplied, and the
        reapplied change carries the entry if it still accepts the result)."""
        await store.save(new_state(), expected_version=0, costs=[cost_entry("r1", "1")])
        with pytest.raises(ConcurrencyError):
            await store.save(new_state(), expected_version=0, costs=[cost_entry("r2", "2")])
        state = await store.load("s1")
        assert state is not None
        with pytest.raises(ConcurrencyError):
            await store.save(state, expected_version=7, costs=[cost_entry("r3", "4")])
        assert await store.spent("t1", T0) == Decimal(1)
        assert await store.cost_report(T0, "tenant") == [CostRow("t1", 1, 0, Decimal(1))]

    async def test_a_save_that_fails_part_way_writes_nothing(self, store: SagaStore) -> None:
        """A save whose outbox cannot be written (an event that cannot be serialised) leaves
        no state, no ledger entry, no outbox event and no timer behind."""
        broken = envelope().model_copy(update={"time": object()})
        with pytest.raises(ValueError, match="erializ"):
            await store.save(new_state(), expected_version=0, costs=[cost_entry("r1", "1")],
                             outbox=[envelope(), broken], timers=[timer("t1", T0)])
        assert await store.load("s1") is None
        assert await store.spent("t1", T0) == 0
        assert await store.cost_report(T0, "tenant") == []
        assert await store.pending_outbox() == []
        assert await store.due_timers(T0 + timedelta(days=1)) == []
        saved = await store.save(new_state(), expected_version=0, costs=[cost_entry("r1", "1")])
        assert saved.version == 1
        assert await store.spent("t1", T0) == 1

    async def test_ledger_entries_are_kept_once_per_request(self, store: SagaStore) -> None:
        """The ledger's key is the request id: the same entry saved again (a redelivered
        result, a repeated save), twice in one save, or recorded on its own is kept once, as
        first written."""
        state = await store.save(new_state(), expected_version=0,
                                 costs=[cost_entry("r1", "0.25")])
        state = await store.save(state, expected_version=1,
                                 costs=[cost_entry("r1", "9"), cost_entry("r2", "0.5"),
                                        cost_entry("r2", "0.5")])
        await store.save(state, expected_version=2, costs=[cost_entry("r2", "7")])
        await store.record_cost([cost_entry("r1", "3"), cost_entry("r3", "0.125")])
        await store.save(new_state("s2"), expected_version=0,
                         costs=[cost_entry("r3", "5", saga_id="s2")])
        assert await store.spent("t1", T0) == Decimal("0.875")
        assert await store.cost_report(T0, "tenant") == [CostRow("t1", 3, 0, Decimal("0.875"))]

    async def test_reservations_count_until_replaced_released_or_expired(
        self, store: SagaStore
    ) -> None:
        """A reservation saved with the dispatch counts for its tenant until the call's ledger
        entry replaces it, a later save releases it, or it expires; saved twice it counts
        once; other tenants' do not count."""
        state = await store.save(new_state(), expected_version=0, reserve=[
            reservation("r1", "0.25"), reservation("r2", "1.5"), reservation("r2", "9"),
            reservation("r3", "4", tenant="t2"),
        ])
        assert await store.reserved("t1", T0) == Decimal("1.75")
        assert await store.reserved("t2", T0) == Decimal(4)
        assert await store.spent("t1", T0) == 0  # a reservation is not a cost
        state = await store.save(state, expected_version=1, costs=[cost_entry("r1", "0.5")])
        assert await store.reserved("t1", T0) == Decimal("1.5")  # r1 is billed, not reserved
        assert await store.spent("t1", T0) == Decimal("0.5")
        state = await store.save(state, expected_version=2, release=["r2", "unknown"],
                                 reserve=[reservation("r4", "2", expires=T0)])
        assert await store.reserved("t1", T0 - timedelta(seconds=1)) == Decimal(2)
        assert await store.reserved("t1", T0) == 0  # r4 expired at its deadline
        await store.save(state, expected_version=3, reserve=[reservation("r5", "3")])
        await store.record_cost([cost_entry("r5", "0.125")])
        assert await store.reserved("t1", T0) == 0
        assert await store.spent("t1", T0) == Decimal("0.625")

    async def test_a_save_that_loses_the_race_reserves_and_releases_nothing(
        self, store: SagaStore
    ) -> None:
        """Reservations and releases are part of the save's transaction."""
        await store.save(new_state(), expected_version=0, reserve=[reservation("r1", "1")])
        with pytest.raises(ConcurrencyError):
            await store.save(new_state(), expected_version=7, release=["r1"],
                             reserve=[reservation("r2", "2")])
        assert await store.reserved("t1", T0) == Decimal(1)

    async def test_cost_report_sums_what_cache_hits_saved(self, store: SagaStore) -> None:
        """A cache hit's entry costs nothing and carries what it saved; reports sum both."""
        from dataclasses import replace

        hit = replace(cost_entry("r2", "0"), cached=True, saved=Decimal("0.125"))
        await store.save(new_state(), expected_version=0, costs=[cost_entry("r1", "0.5"), hit])
        assert await store.cost_report(T0, "service") == [
            CostRow("responder", 2, 1, Decimal("0.5"), Decimal("0.125"))
        ]

    async def test_timers_are_due_in_order_and_claimed_once(self, store: SagaStore) -> None:
        """Due timers come back oldest first; claiming one succeeds exactly once."""
        await store.save(new_state(), expected_version=0,
                         timers=[timer("late", T0 + timedelta(seconds=20)),
                                 timer("early", T0 + timedelta(seconds=10)),
                                 timer("future", T0 + timedelta(hours=1))])
        due = await store.due_timers(T0 + timedelta(seconds=30))
        assert [t.id for t in due] == ["early", "late"]
        assert due[0].due_at == T0 + timedelta(seconds=10)
        results = await asyncio.gather(*(store.claim_timer("early") for _ in range(5)))
        assert results.count(True) == 1
        assert [t.id for t in await store.due_timers(T0 + timedelta(seconds=30))] == ["late"]

    async def test_timer_lease_runs_out_and_complete_removes(self, store: SagaStore) -> None:
        """A claimed timer is not due while leased; if its coordinator dies it is due again
        when the lease runs out; complete_timer removes it for good."""
        await store.save(new_state(), expected_version=0, timers=[timer("t", T0)])
        assert await store.claim_timer("t", lease=0.2)
        assert await store.due_timers(T0) == []
        assert not await store.claim_timer("t")
        await asyncio.sleep(0.3)
        assert [t.id for t in await store.due_timers(T0)] == ["t"]
        assert await store.claim_timer("t")
        await store.complete_timer("t")
        await asyncio.sleep(0.01)
        assert await store.due_timers(T0 + timedelta(days=1)) == []
        assert not await store.claim_timer("t", lease=0.01)

    async def test_request_claims(self, store: SagaStore) -> None:
        """One owner at a time may work on a request; the owner renews by claiming again; a
        claim that ran out can be taken over; nobody claims a request with a result."""
        assert await store.claim_request("r1", "w1", lease=0.2)
        assert not await store.claim_request("r1", "w2", lease=10)
        assert await store.claim_request("r1", "w1", lease=0.2)
        await asyncio.sleep(0.3)
        assert await store.claim_request("r1", "w2", lease=10)
        assert not await store.claim_request("r1", "w1", lease=10)
        await store.record_result("r1", envelope())
        assert not await store.claim_request("r1", "w2", lease=10)
        assert await store.recorded_result("r1") is not None
        assert await store.recorded_result("r2") is None
        assert await store.claim_request("r2", "w1", lease=10)
        assert await store.recorded_result("r2") is None

    async def test_cancel_timers_of_a_saga(self, store: SagaStore) -> None:
        """Ending a saga removes its timers, not another saga's."""
        await store.save(new_state("s1"), expected_version=0, timers=[timer("a", T0)])
        await store.save(new_state("s2"), expected_version=0, timers=[timer("b", T0, "s2")])
        state = await store.load("s1")
        assert state is not None
        await store.save(state, expected_version=1, cancel_timers_of="s1")
        assert [t.id for t in await store.due_timers(T0)] == ["b"]

    async def test_event_store_appends_idempotently_in_order(self, store: SagaStore) -> None:
        """Events come back per correlation id in append order; a repeated id is ignored."""
        a, b, other = envelope("s1"), envelope("s1"), envelope("s2")
        await store.append_events([a])
        await store.append_events([other, b, a])
        assert [e.id for e in await store.events("s1")] == [a.id, b.id]
        assert await store.events("s1") == [a, b]

    async def test_list_sagas_newest_first(self, store: SagaStore) -> None:
        """list_sagas gives the most recent first, filtered by status."""
        await store.save(new_state("old", T0), expected_version=0)
        await store.save(new_state("new", T0 + timedelta(minutes=1)), expected_version=0)
        assert [s.id for s in await store.list_sagas()] == ["new", "old"]
        assert [s.id for s in await store.list_sagas(status="completed")] == []

    async def test_prune_removes_old_events_and_finished_sagas(self, store: SagaStore) -> None:
        """prune drops events older than the cutoff and finished sagas started before it, of
        one tenant or all; running sagas and newer events stay."""
        old = envelope("s1").model_copy(update={"time": T0})
        new = envelope("s1").model_copy(update={"time": T0 + timedelta(days=10)})
        other = envelope("s2").model_copy(update={"time": T0, "tenant": "t2"})
        await store.append_events([old, new, other])
        finished = new_state("done").model_copy(update={"status": SagaStatus.COMPLETED})
        await store.save(finished, expected_version=0)
        await store.save(new_state("running"), expected_version=0)
        cutoff = T0 + timedelta(days=5)
        assert (await store.prune(cutoff, tenant="default"))[:2] == (1, 0)
        assert [e.id for e in await store.events("s1")] == [new.id]
        assert (await store.prune(cutoff, tenant="t1"))[:2] == (0, 1)
        assert await store.load("done") is None
        assert await store.load("running") is not None
        pruned = await store.prune(cutoff)
        assert (pruned.events, pruned.sagas) == (1, 0)
        assert await store.events("s2") == []

    async def test_prune_removes_old_inbox_results_and_idempotency_keys(
        self, store: SagaStore
    ) -> None:
        """Retention covers what else keeps customer data: inbox results (whole result
        envelopes) recorded before the cutoff and claims that ran out, of one tenant or all,
        and idempotency keys; a live claim and newer rows stay."""
        await store.record_result("req-a", tenant_event("s1", "ta"))
        await store.record_result("req-b", tenant_event("s2", "tb"))
        assert await store.claim_request("req-live", "w1", 60.0)
        assert await store.claim_request("req-gone", "w1", 0.0)  # its worker died
        assert await store.remember_idempotency("ta", "k1", "h1", "s1") is None
        assert await store.remember_idempotency("tb", "k2", "h2", "s2") is None
        now = datetime.now(UTC)

        nothing = await store.prune(now - timedelta(hours=1))
        assert (nothing.results, nothing.idempotency_keys) == (0, 0)
        assert await store.recorded_result("req-a") is not None

        later = now + timedelta(seconds=5)
        of_ta = await store.prune(later, tenant="ta")
        assert (of_ta.results, of_ta.idempotency_keys) == (1, 1)
        assert await store.recorded_result("req-a") is None
        assert await store.recorded_result("req-b") is not None
        assert await store.remember_idempotency("tb", "k2", "h2", "s2") is not None

        rest = await store.prune(later)
        assert (rest.results, rest.idempotency_keys) == (2, 1)  # req-b and the dead claim
        assert await store.recorded_result("req-b") is None
        assert not await store.claim_request("req-live", "w2", 1.0)  # still w1's
        assert await store.claim_request("req-gone", "w2", 1.0)
        assert await store.remember_idempotency("ta", "k1", "h1", "s1") is None  # new again

    async def test_inbox_records_first_result(self, store: SagaStore) -> None:
        """The first result recorded for a request wins; unknown requests have none."""
        first, second = envelope(), envelope()
        assert await store.recorded_result("req-1") is None
        await store.record_result("req-1", first)
        await store.record_result("req-1", second)
        assert await store.recorded_result("req-1") == first

    async def test_events_since_is_a_tenants_feed_in_store_order(
        self, store: SagaStore
    ) -> None:
        """events_since gives one tenant's events above a sequence number, lowest first, with
        growing numbers; filters by type and request; a repeated id gets no new number."""
        a1 = tenant_event("s1", "ta")
        b1 = tenant_event("s2", "tb")
        a2 = tenant_event("s1", "ta", failed=True)
        a3 = tenant_event("s3", "ta")
        await store.append_events([a1, b1])
        await store.append_events([a2, a1])
        await store.append_events([a3])
        feed = await store.events_since(0, "ta")
        assert [e.id for _, e in feed] == [a1.id, a2.id, a3.id]
        seqs = [n for n, _ in feed]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 3
        assert feed[1][1] == a2
        assert await store.last_event_seq() >= seqs[-1]
        assert [e.id for _, e in await store.events_since(seqs[0], "ta")] == [a2.id, a3.id]
        assert await store.events_since(seqs[-1], "ta") == []
        assert [e.id for _, e in await store.events_since(0, "ta", limit=1)] == [a1.id]
        failed = await store.events_since(0, "ta", ["InquiryFailed", "ResponseReady"])
        assert [e.id for _, e in failed] == [a2.id]
        assert [e.id for _, e in await store.events_since(0, "ta", correlationid="s3")] == [
            a3.id
        ]
        assert [e.id for _, e in await store.events_since(0, "tb")] == [b1.id]
        assert await store.events_since(0, "nobody") == []

    async def test_events_since_misses_nothing_of_concurrent_appends(
        self, store: SagaStore
    ) -> None:
        """A reader resuming from the last number it saw, while many appends run at once,
        gets every event exactly once."""
        events = [tenant_event(f"c{i}", "t") for i in range(60)]
        seen: list[str] = []
        done = asyncio.Event()

        async def read() -> None:
            last = 0
            while True:
                finished = done.is_set()
                for n, env in await store.events_since(last, "t", limit=7):
                    assert n > last
                    last = n
                    seen.append(env.id)
                if finished and len(seen) >= len(events):
                    return
                if finished:
                    # one more full pass after the writers are done
                    rest = await store.events_since(last, "t", limit=1000)
                    seen.extend(e.id for _, e in rest)
                    return
                await asyncio.sleep(0)

        async def write() -> None:
            await asyncio.gather(*(store.append_events([e]) for e in events))
            done.set()

        await asyncio.gather(read(), write())
        assert sorted(seen) == sorted(e.id for e in events)
        assert len(seen) == len(events)

    async def test_api_keys_are_stored_listed_and_revoked(self, store: SagaStore) -> None:
        """An API key is found by id with its tenant and hash; listing is oldest first, per
        tenant when asked; revoking works once; an id cannot be stored twice."""
        assert await store.find_api_key("k1") is None
        await store.put_api_key("k1", "ta", "h" * 64, T0)
        await store.put_api_key("k2", "tb", "g" * 64, T0 + timedelta(seconds=1))
        await store.put_api_key("k0", "ta", "f" * 64, T0 + timedelta(seconds=2))
        found = await store.find_api_key("k1")
        assert found is not None
        assert (found.key_id, found.tenant, found.key_hash) == ("k1", "ta", "h" * 64)
        assert found.created_at == T0
        assert found.active
        assert [k.key_id for k in await store.list_api_keys()] == ["k1", "k2", "k0"]
        assert [k.key_id for k in await store.list_api_keys("ta")] == ["k1", "k0"]
        with pytest.raises(StoreError):
            await store.put_api_key("k1", "tb", "x" * 64, T0)
        assert await store.revoke_api_key("k1", T0 + timedelta(minutes=1))
        assert not await store.revoke_api_key("k1", T0 + timedelta(minutes=2))
        assert not await store.revoke_api_key("nope", T0)
        revoked = await store.find_api_key("k1")
        assert revoked is not None
        assert revoked.revoked_at == T0 + timedelta(minutes=1)
        assert not revoked.active
        assert revoked.key_hash == "h" * 64

    async def test_idempotency_keys_remember_the_first_use(self, store: SagaStore) -> None:
        """The first use of a key per tenant is remembered (None back); later uses get that
        record, whatever they send; of concurrent first uses exactly one wins; a forgotten
        key is new again."""
        assert await store.remember_idempotency("ta", "k", "hash-1", "inq-1") is None
        again = await store.remember_idempotency("ta", "k", "hash-2", "inq-2")
        assert again is not None
        assert (again.tenant, again.key, again.request_hash, again.inquiry_id) == (
            "ta", "k", "hash-1", "inq-1"
        )
        assert again.created_at.tzinfo is not None
        assert await store.remember_idempotency("tb", "k", "hash-3", "inq-3") is None
        results = await asyncio.gather(
            *(store.remember_idempotency("ta", "race", "h", f"inq-r{i}") for i in range(8))
        )
        assert sum(r is None for r in results) == 1
        assert len({r.inquiry_id for r in results if r is not None}) == 1
        await store.forget_idempotency("ta", "k")
        assert await store.remember_idempotency("ta", "k", "hash-4", "inq-4") is None
        await store.forget_idempotency("ta", "never-used")

    async def test_result_cache_keeps_values_until_they_expire(self, store: SagaStore) -> None:
        """A cached value comes back until its expiry; a newer put replaces it; an expired or
        unknown key is a miss."""
        now = datetime.now(UTC)
        assert await store.cache_get("k1") is None
        await store.cache_put("k1", b"\x00value-1", now + timedelta(hours=1))
        assert await store.cache_get("k1") == b"\x00value-1"
        await store.cache_put("k1", b"value-2", now + timedelta(hours=1))
        assert await store.cache_get("k1") == b"value-2"
        await store.cache_put("k2", b"old", now - timedelta(seconds=1))
        assert await store.cache_get("k2") is None
        await store.cache_put("k2", b"fresh", now + timedelta(minutes=5))
        assert await store.cache_get("k2") == b"fresh"

    async def test_circuits_keep_the_latest_change_per_service(self, store: SagaStore) -> None:
        """A circuit is kept per service and replaced by a newer change, never by an older
        one (another coordinator's late write); read back by service name."""
        assert await store.circuits() == []
        opened = CircuitRecord("responder", "open", 3, T0 + timedelta(seconds=10),
                               opened_at=T0 + timedelta(seconds=10))
        await store.put_circuit(CircuitRecord("responder", "closed", 0, T0))
        await store.put_circuit(opened)
        await store.put_circuit(CircuitRecord("vision", "half_open", 5, T0))
        await store.put_circuit(CircuitRecord("responder", "closed", 0, T0 + timedelta(seconds=5)))
        assert await store.circuits() == [
            opened, CircuitRecord("vision", "half_open", 5, T0)
        ]
        closed = CircuitRecord("responder", "closed", 0, T0 + timedelta(seconds=20))
        await store.put_circuit(closed)
        assert (await store.circuits())[0] == closed

    async def test_cost_ledger_sums_and_reports_exactly(self, store: SagaStore) -> None:
        """Entries are kept once per id; a tenant's spend since a time and the report by
        tenant, service and day are exact decimals."""

        def entry(eid: str, tenant: str, service: str, cost: str, at: datetime,
                  cached: bool = False) -> CostEntry:
            return CostEntry(
                id=eid, tenant=tenant, workflow="support", correlation_id=f"c-{eid}",
                step=service, service=service, provider="fake", model="fake-1",
                usage=Usage(characters=10), cost=Decimal(cost), currency="USD",
                price_table="t1", at=at, cached=cached,
            )

        day2 = T0 + timedelta(days=1)
        await store.record_cost([
            entry("e1", "ta", "translation", "0.000123", T0),
            entry("e2", "ta", "speech", "1.5", day2),
            entry("e3", "tb", "translation", "0.25", day2 + timedelta(hours=1), cached=True),
        ])
        await store.record_cost([entry("e1", "ta", "translation", "9", T0)])  # again: ignored
        assert await store.spent("ta", T0) == Decimal("1.500123")
        assert await store.spent("ta", day2) == Decimal("1.5")
        assert await store.spent("tc", T0) == 0
        assert await store.cost_report(T0, "tenant") == [
            CostRow("ta", 2, 0, Decimal("1.500123")), CostRow("tb", 1, 1, Decimal("0.25")),
        ]
        assert await store.cost_report(T0, "service") == [
            CostRow("speech", 1, 0, Decimal("1.5")),
            CostRow("translation", 2, 1, Decimal("0.250123")),
        ]
        assert await store.cost_report(T0, "day") == [
            CostRow("2026-01-02", 2, 1, Decimal("1.75")),
            CostRow("2026-01-01", 1, 0, Decimal("0.000123")),
        ]
        assert await store.cost_report(day2 + timedelta(minutes=1), "workflow") == [
            CostRow("support", 1, 1, Decimal("0.25"))
        ]
