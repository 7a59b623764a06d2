"""Budgets count the calls in flight: each dispatch reserves its estimate (per request in the
saga's state, per tenant in the store, in the same save), released when the call is answered
(the real cost replaces it), fails, times out or is cancelled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from events import BlobRef, ResponseReady
from saga.budget import TenantBudget
from saga.cost import Price, PriceTable
from saga.memory_store import InMemorySagaStore
from saga.state import StepStatus
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry

# an image analysis is estimated at 1.50 (three visual features) and costs 0.50 (the fake
# reports one transaction); nothing else costs anything
PRICES = PriceTable(version="t", prices=(
    Price(provider="fake", model="fake-*", per_1k_transactions=Decimal(500)),
))
NO_CACHE = CacheSettings(enabled=False)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


async def images(svc: FakeService, count: int, seed: int = 0) -> tuple[BlobRef, ...]:
    return tuple([await svc.blobs.put(bytes([seed + i]) * 10, "image/png")
                  for i in range(count)])


async def submit(svc: FakeService, inquiry_id: str, attachments: tuple[BlobRef, ...]) -> None:
    await svc.submit(make_inquiry(inquiry_id, message="hello", language="en",
                                  attachments=attachments), tenant="acme")


class TestRequestBudgetInFlight:
    async def test_parallel_branches_count_each_other(self, tmp_path: Path) -> None:
        """Three images dispatched in one change, a request budget of 2 at 1.50 each: only
        the first goes out; the others are refused, saying what is in flight."""
        cost = CostSettings(cache=NO_CACHE, request_budget=Decimal(2),
                            estimate_with={"vision": "fake/fake-1"})
        async with FakeService(tmp_path, pricing=PRICES, cost=cost) as svc:
            await submit(svc, "inq-1", await images(svc, 3))
            done = (await svc.wait("inq-1", timeout=10)).data
            state = await svc.saga("inq-1")
            calls = svc.fakes.calls(["vision"])
        assert isinstance(done, ResponseReady)
        assert len(calls) == 1
        assert done.cost is not None
        assert done.cost.total == Decimal("0.5")
        assert done.degraded == ("analyze_image[1]", "analyze_image[2]")
        reason = state.steps["analyze_image[1]"].fallback_reason
        assert reason is not None
        assert "this request has cost 1.5 (about 1.5 of it in calls in flight)" in reason


class TestTenantBudgetInFlight:
    async def test_branches_of_one_saga_count_each_other(self, tmp_path: Path) -> None:
        """The same with a daily tenant budget: the reservations made in the change count."""
        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal(2))},
                            estimate_with={"vision": "fake/fake-1"})
        async with FakeService(tmp_path, pricing=PRICES, cost=cost) as svc:
            await submit(svc, "inq-1", await images(svc, 3))
            done = (await svc.wait("inq-1", timeout=10)).data
            spent = await svc.store.spent("acme", EPOCH)
            reserved = await svc.store.reserved("acme", svc.clock.now())
            assert len(svc.fakes.calls(["vision"])) == 1
        assert isinstance(done, ResponseReady)
        assert done.degraded == ("analyze_image[1]", "analyze_image[2]")
        assert spent == Decimal("0.5")
        assert reserved == 0  # the real cost replaced the reservation

    async def test_calls_in_flight_of_other_sagas_count(self, tmp_path: Path) -> None:
        """A call of one saga still in flight holds its estimate: the tenant's next inquiry
        is refused its image analysis while it runs, and the reservation is released when
        the call times out."""
        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal(2))},
                            estimate_with={"vision": "fake/fake-1"})
        async with FakeService(tmp_path, pricing=PRICES, cost=cost) as svc:
            svc.fakes.vision.behaviour.fail_next("hang")
            await submit(svc, "inq-1", await images(svc, 1))
            await svc.settle()
            assert await svc.store.reserved("acme", svc.clock.now()) == Decimal("1.5")
            await submit(svc, "inq-2", await images(svc, 1, seed=7))
            second = (await svc.wait("inq-2", timeout=10)).data
            state = await svc.saga("inq-2")
            assert len(svc.fakes.calls(["vision"])) == 1  # only the hanging one
            await svc.advance(60)  # the hanging call's deadline: released, a retry is due
            first = await svc.saga("inq-1")
            assert first.steps["analyze_image[0]"].status is StepStatus.WAITING_RETRY
            assert await svc.store.reserved("acme", svc.clock.now()) == 0
            await svc.advance(5)  # the retry goes out and is answered
            done = (await svc.wait("inq-1", timeout=10)).data
            assert await svc.store.reserved("acme", svc.clock.now()) == 0
            assert await svc.store.spent("acme", EPOCH) == Decimal("0.5")
        assert isinstance(second, ResponseReady)
        assert second.degraded == ("analyze_image[0]",)
        reason = state.steps["analyze_image[0]"].fallback_reason
        assert reason is not None
        assert "tenant acme has spent 1.5 (about 1.5 of it in calls in flight)" in reason
        assert isinstance(done, ResponseReady)
        assert done.degraded == ()

    async def test_a_failed_call_releases_its_reservation(self, tmp_path: Path) -> None:
        """A permanent failure ends the call: nothing stays reserved, nothing is billed."""
        from actors.providers.fake import permanent

        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal(5))},
                            estimate_with={"vision": "fake/fake-1"})
        async with FakeService(tmp_path, pricing=PRICES, cost=cost) as svc:
            svc.fakes.vision.behaviour.fail_next(permanent())
            await submit(svc, "inq-1", await images(svc, 1))
            done = (await svc.wait("inq-1", timeout=10)).data
            assert await svc.store.reserved("acme", svc.clock.now()) == 0
            assert await svc.store.spent("acme", EPOCH) == 0
        assert isinstance(done, ResponseReady)
        assert done.degraded == ("analyze_image[0]",)

    async def test_cancelling_a_saga_releases_its_reservations(self, tmp_path: Path) -> None:
        """A saga cancelled with a call in flight holds nothing afterwards."""
        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal(5))},
                            estimate_with={"vision": "fake/fake-1"})
        async with FakeService(tmp_path, pricing=PRICES, cost=cost) as svc:
            svc.fakes.vision.behaviour.fail_next("hang", "hang")
            await submit(svc, "inq-1", await images(svc, 2))
            await svc.settle()
            assert await svc.store.reserved("acme", svc.clock.now()) == Decimal(3)
            assert svc.coordinator is not None
            assert await svc.coordinator.cancel("inq-1", "changed my mind")
            assert await svc.store.reserved("acme", svc.clock.now()) == 0


class SlowReads(InMemorySagaStore):
    """Reads of the tenant's spend take a while, so concurrent changes would interleave."""

    async def reserved(self, tenant: str, now: datetime) -> Decimal:
        found = await super().reserved(tenant, now)
        await asyncio.sleep(0.02)  # the answer is on its way while others go on
        return found


class TestOneTenantTakesTurns:
    async def test_concurrent_starts_of_one_tenant_see_each_others_reservations(
        self, tmp_path: Path
    ) -> None:
        """Two inquiries of one tenant started at the same moment: their budget checks take
        turns in the coordinator, so the second sees the first's call in flight."""
        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal(2))},
                            estimate_with={"vision": "fake/fake-1"})
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost, store=SlowReads())
        async with svc:
            svc.fakes.vision.behaviour.fail_next("hang", "hang")
            first, second = await images(svc, 1), await images(svc, 1, seed=9)
            await asyncio.gather(submit(svc, "inq-1", first), submit(svc, "inq-2", second))
            await svc.settle()
            assert len(svc.fakes.calls(["vision"])) == 1
            assert await svc.store.reserved("acme", svc.clock.now()) == Decimal("1.5")


class TestDispatchedAndEndedInOneChange:
    async def test_a_request_the_saga_ended_with_is_never_sent_nor_held(self) -> None:
        """One change dispatches step a (reserving its estimate) and then ends the saga (step
        b, required, is refused by the budget): a's request is taken back — not published,
        nothing reserved, no deadline left behind."""
        from events import InquiryFailed, InquiryReceived, TranslateTextRequested
        from events.envelope import Envelope
        from saga import ManualClock, SagaCoordinator
        from saga.budget import CostControl
        from saga.replay import RecordingTransport
        from saga.workflow import SagaView, Step, Workflow

        prices = PriceTable(version="t", prices=(
            Price(provider="fake", model="fake-1", per_million_characters=Decimal(1_000_000)),
        ))

        def request(v: SagaView) -> TranslateTextRequested:  # 5 characters, estimated at 5
            return TranslateTextRequested(text="hello", to_language="de")

        def done(v: SagaView) -> ResponseReady:
            return ResponseReady(inquiry_id=v.state.id, text="x", language="en", confidence=1,
                                 escalation_required=False, processing_time_ms=0)

        def fail(v: SagaView, reason: str, step: str | None) -> InquiryFailed:
            return InquiryFailed(inquiry_id=v.state.id, reason=reason, failed_step=step)

        workflow = Workflow("w", InquiryReceived, (
            Step("a", "translation", request), Step("b", "translation", request),
        ), done, fail)
        clock = ManualClock()
        store = InMemorySagaStore()
        transport = RecordingTransport()
        costs = CostControl(prices, budgets={"acme": TenantBudget(day=Decimal(8))},
                            estimate_with={"translation": "fake/fake-1"})
        coordinator = SagaCoordinator(transport, store, [workflow], clock=clock, costs=costs)
        await coordinator.handle(
            Envelope.new(make_inquiry("s1"), correlationid="s1", tenant="acme")
        )
        state = await store.load("s1")
        assert state is not None
        assert state.steps["a"].status is StepStatus.CANCELLED
        assert [e.type for e in transport.published] == ["InquiryFailed"]
        assert await store.reserved("acme", clock.now()) == 0
        assert store.timers() == []
