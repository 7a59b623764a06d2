"""Budgets: the ledger of accepted results, a tenant over its daily budget degrading the
next inquiry (refused calls cost nothing), the per-request budget, a step without fallback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from events import BlobRef, ResponseReady, Usage
from saga.budget import CostControl, TenantBudget, estimate_usage, period_starts
from saga.cost import Price, PriceTable
from saga.store import CostEntry
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry

PRICES = PriceTable(version="test-1", prices=(
    Price(provider="fake", model="fake-*", per_1k_input_tokens=Decimal("0.5"),
          per_1k_output_tokens=Decimal("1.5"), per_million_characters=Decimal(20),
          per_1k_transactions=Decimal(2)),
))
NO_CACHE = CacheSettings(enabled=False)
ESTIMATE_FAKES = dict.fromkeys(("translation", "speech", "responder", "vision"), "fake/fake-1")


async def ask(svc: FakeService, inquiry_id: str, image: BlobRef | None = None) -> ResponseReady:
    await svc.submit(make_inquiry(
        inquiry_id, message="Mi cafetera llegó rota", language="es",
        attachments=(image,) if image else (), voice_reply=True,
    ), tenant="acme")
    done = await svc.wait(inquiry_id, timeout=10)
    assert isinstance(done.data, ResponseReady)
    return done.data


class TestDailyBudget:
    async def test_over_budget_tenant_degrades_and_refused_calls_cost_nothing(
        self, tmp_path: Path
    ) -> None:
        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal("1.00"))},
                            estimate_with=ESTIMATE_FAKES, responder_output_tokens=10)
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
        async with svc:
            first = await ask(svc, "inq-1")
            assert first.degraded == ()
            assert first.cost is not None
            spent = await svc.store.spent("acme", datetime(2000, 1, 1, tzinfo=UTC))
            assert spent == first.cost.total > 0
            # the rest of the day's budget goes on other calls of the tenant
            await svc.store.record_cost([CostEntry(
                id="earlier", tenant="acme", workflow="campaign", correlation_id="c-0",
                step="generate", service="imagegen", provider="azure-openai", model="dall-e-3",
                usage=Usage(images=25), cost=Decimal(1), currency="USD", price_table="test-1",
                at=svc.clock.now(),
            )])
            spent += 1
            calls = len(svc.fakes.calls())
            second = await ask(svc, "inq-2")
            assert len(svc.fakes.calls()) == calls  # no provider was called
            state = await svc.saga("inq-2")
            assert await svc.store.spent("acme", datetime(2000, 1, 1, tzinfo=UTC)) == spent
        assert second.cost is not None
        assert second.cost.total == 0
        assert second.cost.by_step == {}
        assert second.degraded == ("translate_in", "respond", "translate_out", "synthesize_voice")
        assert second.escalation_required  # a template reply goes to a human
        assert second.voice is None
        notice = next(n for n in second.notices if "budget" in n)
        assert "tenant acme has spent" in notice
        assert f"has spent {spent} of its daily budget of 1 USD" in notice
        for key in second.degraded:
            # each step asked for a cached answer only (the cache is off: none was cached)
            reason = state.steps[key].fallback_reason
            assert reason is not None
            assert reason.startswith(
                "budget: asked for a cached answer only (nothing paid): tenant acme has spent")
            assert reason.endswith("; none was cached")

    async def test_other_tenants_and_the_next_day_are_not_limited(self, tmp_path: Path) -> None:
        # enough for the first translation (0.00044) only
        cost = CostSettings(cache=NO_CACHE, budgets={"acme": TenantBudget(day=Decimal("0.0005"))},
                            estimate_with=ESTIMATE_FAKES, responder_output_tokens=10)
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
        async with svc:
            first = await ask(svc, "inq-1")
            assert first.degraded == ("respond", "translate_out", "synthesize_voice")
            await svc.submit(make_inquiry("inq-2", message="hola", language="es"), tenant="other")
            other = (await svc.wait("inq-2", timeout=10)).data
            assert isinstance(other, ResponseReady)
            assert other.degraded == ()
            assert (await ask(svc, "inq-3")).degraded == (
                "translate_in", "respond", "translate_out", "synthesize_voice"
            )
            svc.clock.advance(86400)  # a new day: the budget is fresh
            tomorrow = await ask(svc, "inq-4")
            assert tomorrow.degraded == ("respond", "translate_out", "synthesize_voice")

    async def test_estimate_refuses_a_call_that_would_go_over(self, tmp_path: Path) -> None:
        """Nothing spent yet, but the voice step alone would break the budget: only it is
        refused; the cheaper steps run."""
        # translate in 0.00044, respond 0.0115 (estimated 0.004), translate out 0.00068: the
        # voice (0.00084) would take the month's spend to 0.01346
        budget = Decimal("0.013")
        cost = CostSettings(cache=NO_CACHE, budgets={"*": TenantBudget(month=budget)},
                            estimate_with=ESTIMATE_FAKES, responder_output_tokens=0)
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
        async with svc:
            done = await ask(svc, "inq-1")
        assert done.degraded == ("synthesize_voice",)
        assert done.cost is not None
        assert done.cost.total <= budget


class TestRequestBudget:
    async def test_request_budget_limits_one_saga(self, tmp_path: Path) -> None:
        cost = CostSettings(cache=NO_CACHE, request_budget=Decimal("0.0008"),
                            estimate_with=ESTIMATE_FAKES, responder_output_tokens=10)
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
        async with svc:
            done = await ask(svc, "inq-1")
            again = await ask(svc, "inq-2")  # the limit is per request: the same again
        assert done.degraded
        assert done.degraded == again.degraded
        assert done.cost is not None
        assert done.cost.total <= Decimal("0.0008")
        assert any("this request has cost" in n for n in done.notices)


class TestLedger:
    async def test_every_accepted_result_is_recorded(self, tmp_path: Path) -> None:
        svc = FakeService(tmp_path, pricing=PRICES, cost=CostSettings(cache=NO_CACHE))
        async with svc:
            image: BlobRef = await svc.blobs.put(b"img", "image/png")
            done = await ask(svc, "inq-1", image)
            since = datetime(2000, 1, 1, tzinfo=UTC)
            by_service = {r.key: r for r in await svc.store.cost_report(since, "service")}
            by_tenant = await svc.store.cost_report(since, "tenant")
        assert done.cost is not None
        assert [(r.key, r.calls, r.cost) for r in by_tenant] == [("acme", 5, done.cost.total)]
        assert by_service["translation"].calls == 2
        assert by_service["vision"].cost == done.cost.by_step["analyze_image[0]"]

    async def test_cache_hits_are_recorded_at_zero(self, tmp_path: Path) -> None:
        svc = FakeService(tmp_path, pricing=PRICES, cost=CostSettings())
        async with svc:
            first = await ask(svc, "inq-1")
            await ask(svc, "inq-2")
            rows = await svc.store.cost_report(datetime(2000, 1, 1, tzinfo=UTC), "workflow")
        assert first.cost is not None
        (row,) = rows
        assert (row.calls, row.cached) == (8, 3)
        assert row.cost == first.cost.total + first.cost.by_step["respond"]


class TestUnits:
    def test_estimates(self) -> None:
        from events.support import GenerateResponseRequested, TranslateTextRequested

        usage = estimate_usage("translation", TranslateTextRequested(text="abcd", to_language="en"))
        assert usage.characters == 4
        usage = estimate_usage("responder", GenerateResponseRequested(message="x" * 9), 7)
        assert (usage.input_tokens, usage.output_tokens) == (3, 7)

    def test_periods(self) -> None:
        day, month = period_starts(datetime(2026, 3, 17, 13, 5, tzinfo=UTC))
        assert day == datetime(2026, 3, 17, tzinfo=UTC)
        assert month == datetime(2026, 3, 1, tzinfo=UTC)
        assert day - month == timedelta(days=16)

    def test_default_budget(self) -> None:
        control = CostControl(budgets={"*": TenantBudget(day=Decimal(1))})
        assert control.budget_of("anyone") == TenantBudget(day=Decimal(1))


class TestNoFallback:
    async def test_refused_step_without_fallback_fails_the_saga_saying_why(
        self, tmp_path: Path
    ) -> None:
        from events import InquiryFailed
        from saga import Step, Workflow
        from saga.workflows.support import support_workflow

        base = support_workflow(pricing=PRICES)
        strict = Workflow(
            base.name, base.starts_on,
            tuple(Step(s.name, s.service, s.request, needs=s.needs, when=s.when,
                       for_each=s.for_each, timeout=s.timeout, retry=s.retry,
                       fallback=None if s.name == "respond" else s.fallback)
                  for s in base.steps),
            base.complete, base.fail,
        )
        cost = CostSettings(cache=NO_CACHE, request_budget=Decimal(0))
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
        async with svc:
            assert svc.coordinator is not None
            svc.coordinator.workflows = {"support": strict}
            svc.coordinator._starts = {"InquiryReceived": strict}
            await svc.submit(make_inquiry(language="en"))
            done = (await svc.wait("inq-1", timeout=5)).data
            assert svc.fakes.calls() == []
        assert isinstance(done, InquiryFailed)
        assert done.failed_step == "respond"
        assert done.reason.startswith("step respond failed: budget: this request has cost 0")
        assert done.cost is not None
        assert done.cost.total == 0
