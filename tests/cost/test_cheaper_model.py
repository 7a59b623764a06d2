"""A cheaper model as a budget degradation: a step over budget at its usual estimate runs on
the cheaper model its workflow names, when that fits, priced at that model; when even that
does not fit, the step is refused as before (and a refused call costs nothing)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from events import InquiryFailed, ResponseReady, Usage
from events.common import ProviderInfo
from events.support import GenerateResponseRequested, TranslateTextRequested
from saga.budget import CostControl, Spending, TenantBudget
from saga.cost import Price, PriceTable
from saga.state import SagaState, StepState, StepStatus, StoredEvent
from saga.store import CostEntry
from saga.workflow import Cheaper
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry
from service.timeline import timeline_rows

FULL = Price(provider="fake", model="fake-*", per_1k_input_tokens=Decimal("0.5"),
             per_1k_output_tokens=Decimal("1.5"))
MINI = Price(provider="fake", model="fake-mini", per_1k_input_tokens=Decimal("0.05"),
             per_1k_output_tokens=Decimal("0.15"))
PRICES = PriceTable(version="test-cheaper", prices=(FULL, MINI))
NO_CACHE = CacheSettings(enabled=False)
MESSAGE = "My coffee maker arrived broken"  # 30 characters: estimated at 8 input tokens
# with 500 output tokens the answer is estimated at 0.754 on fake-1 and 0.0754 on fake-mini
EARLY = datetime(2000, 1, 1, tzinfo=UTC)


def settings(day: str = "1.00", **extra: object) -> CostSettings:
    values: dict[str, object] = {
        "cache": NO_CACHE, "budgets": {"acme": TenantBudget(day=Decimal(day))},
        "estimate_with": {"responder": "fake/fake-1"}, "responder_output_tokens": 500,
        "cheaper_models": {"responder": "fake/fake-mini"},
    }
    values.update(extra)
    return CostSettings.model_validate(values)


async def spend(svc: FakeService, amount: str) -> None:
    """Other calls of the tenant earlier today."""
    await svc.store.record_cost([CostEntry(
        id="earlier", tenant="acme", workflow="campaign", correlation_id="c-0",
        step="generate", service="imagegen", provider="azure-openai", model="dall-e-3",
        usage=Usage(images=1), cost=Decimal(amount), currency="USD", price_table="test-cheaper",
        at=svc.clock.now(),
    )])


async def ask(svc: FakeService, inquiry_id: str = "inq-1") -> ResponseReady:
    await svc.submit(make_inquiry(inquiry_id, message=MESSAGE, language="en"), tenant="acme")
    done = (await svc.wait(inquiry_id, timeout=10)).data
    assert isinstance(done, ResponseReady)
    return done


def responder_models(svc: FakeService) -> list[object]:
    """The model each responder call asked for (the fake logs message and model)."""
    return [c.args[1] for c in svc.fakes.responder.behaviour.calls]


class TestCheaperModel:
    async def test_near_its_budget_the_tenant_is_answered_by_the_cheaper_model(
        self, tmp_path: Path
    ) -> None:
        svc = FakeService(tmp_path, pricing=PRICES, cost=settings())
        async with svc:
            await spend(svc, "0.5")  # 0.5 + 0.754 > 1, but 0.5 + 0.0754 fits
            done = await ask(svc)
            state = await svc.saga("inq-1")
            spent = await svc.store.spent("acme", EARLY)
            assert responder_models(svc) == ["fake-mini"]
        respond = state.steps["respond"]
        assert respond.status is StepStatus.SUCCEEDED
        assert respond.attempts == 1
        assert respond.result is not None
        assert respond.result.data["provider"]["model"] == "fake-mini"
        usage = Usage.model_validate(respond.result.data["usage"])
        assert usage.output_tokens > 0
        # priced at the cheaper model, in the terminal event and in the ledger
        assert done.cost is not None
        assert done.cost.by_step == {"respond": MINI.cost(usage)}
        assert MINI.cost(usage) < FULL.cost(usage)
        assert spent == Decimal("0.5") + MINI.cost(usage)
        # the decision is on the saga, the terminal event and the timeline
        assert respond.degradation is not None
        assert respond.degradation.startswith(
            "budget: used fake-mini instead of fake-1 (about 0.0754 instead of 0.754 USD): "
            "tenant acme has spent 0.5 of its daily budget of 1 USD"
        )
        assert state.degraded == ("respond",)
        assert done.degraded == ("respond",)
        notice = next(n for n in done.notices if "cheaper model" in n)
        assert respond.degradation in notice
        assert not done.escalation_required  # a real answer, not the template
        assert done.text == f"Re: {MESSAGE}"
        row = next(r for r in timeline_rows(state) if r["step"] == "respond")
        assert row["degradation"] == respond.degradation
        assert row["fallback"] is None

    async def test_within_budget_the_usual_model_answers(self, tmp_path: Path) -> None:
        svc = FakeService(tmp_path, pricing=PRICES, cost=settings())
        async with svc:
            done = await ask(svc)
            state = await svc.saga("inq-1")
            assert responder_models(svc) == ["fake-1"]
        assert done.degraded == ()
        assert not any("budget" in n for n in done.notices)
        assert state.steps["respond"].degradation is None
        assert done.cost is not None
        assert done.cost.by_step["respond"] > 0

    async def test_when_even_the_cheaper_model_does_not_fit_the_step_is_refused(
        self, tmp_path: Path
    ) -> None:
        svc = FakeService(tmp_path, pricing=PRICES, cost=settings())
        async with svc:
            await spend(svc, "0.95")  # 0.95 + 0.0754 > 1
            done = await ask(svc)
            state = await svc.saga("inq-1")
            spent = await svc.store.spent("acme", EARLY)
            assert svc.fakes.responder.behaviour.calls == []  # nothing was called
        respond = state.steps["respond"]
        assert respond.status is StepStatus.FALLBACK
        # the last resort, a cached answer only, had none (answers are not cached here)
        assert respond.degradation is not None
        assert respond.fallback_reason == f"{respond.degradation}; none was cached"
        assert respond.fallback_reason.startswith(
            "budget: asked for a cached answer only (nothing paid): tenant acme has spent 0.95 "
            "of its daily budget of 1 USD; respond would cost about 0.754"
        )
        assert respond.fallback_reason.endswith(
            "and about 0.0754 on the cheaper fake-mini; none was cached")
        assert done.degraded == ("respond",)
        assert done.escalation_required  # the template reply goes to a human
        assert done.cost is not None
        assert done.cost.total == 0  # a refused call costs nothing
        assert spent == Decimal("0.95")
        assert any("simplified" in n and "fake-mini" in n for n in done.notices)
        assert not any("cheaper model (" in n for n in done.notices)

    async def test_a_spent_budget_refuses_the_cheaper_model_too(self, tmp_path: Path) -> None:
        """With the day's budget spent, the cheaper model is refused too."""
        svc = FakeService(tmp_path, pricing=PRICES, cost=settings(day="0.5"))
        async with svc:
            await spend(svc, "0.5")
            done = await ask(svc)
            assert svc.fakes.responder.behaviour.calls == []
        assert done.degraded == ("respond",)
        assert done.cost is not None
        assert done.cost.total == 0

    async def test_a_retry_of_a_degraded_step_stays_on_the_cheaper_model(
        self, tmp_path: Path
    ) -> None:
        from actors.providers.fake import transient

        svc = FakeService(tmp_path, pricing=PRICES, cost=settings())
        async with svc:
            await spend(svc, "0.5")
            svc.fakes.responder.behaviour.fail_next(transient())
            await svc.submit(make_inquiry("inq-1", message=MESSAGE, language="en"),
                             tenant="acme")
            await svc.settle()
            assert (await svc.saga("inq-1")).steps["respond"].status is StepStatus.WAITING_RETRY
            await svc.advance(60)
            done = (await svc.wait("inq-1", timeout=10)).data
            state = await svc.saga("inq-1")
            assert responder_models(svc) == ["fake-mini", "fake-mini"]
        assert isinstance(done, ResponseReady)
        assert state.steps["respond"].attempts == 2
        assert done.degraded == ("respond",)
        assert any("cheaper model" in n for n in done.notices)

    async def test_without_a_cheaper_model_the_step_falls_back_as_before(
        self, tmp_path: Path
    ) -> None:
        svc = FakeService(tmp_path, pricing=PRICES, cost=settings(cheaper_models={}))
        async with svc:
            await spend(svc, "0.5")
            done = await ask(svc)
            state = await svc.saga("inq-1")
            assert svc.fakes.responder.behaviour.calls == []
        assert state.steps["respond"].status is StepStatus.FALLBACK
        reason = state.steps["respond"].fallback_reason
        assert reason is not None
        assert "cheaper" not in reason
        assert done.degraded == ("respond",)


class TestRequestBudget:
    async def test_the_request_budget_also_sends_the_step_to_the_cheaper_model(
        self, tmp_path: Path
    ) -> None:
        cost = settings(budgets={}, request_budget=Decimal("0.2"))
        svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
        async with svc:
            done = await ask(svc)
            state = await svc.saga("inq-1")
            assert responder_models(svc) == ["fake-mini"]
        degradation = state.steps["respond"].degradation
        assert degradation is not None
        assert "this request has cost 0 of its budget of 0.2 USD" in degradation
        assert done.degraded == ("respond",)


class TestNoFallback:
    async def test_a_step_without_fallback_fails_only_if_the_cheaper_model_does_not_fit(
        self, tmp_path: Path
    ) -> None:
        from saga import Step, Workflow
        from saga.workflows.support import support_workflow

        base = support_workflow(pricing=PRICES, cheaper_responder="fake/fake-mini")
        strict = Workflow(
            base.name, base.starts_on,
            tuple(Step(s.name, s.service, s.request, needs=s.needs, when=s.when,
                       for_each=s.for_each, timeout=s.timeout, retry=s.retry,
                       fallback=None if s.name == "respond" else s.fallback,
                       on_budget=s.on_budget)
                  for s in base.steps),
            base.complete, base.fail,
        )
        svc = FakeService(tmp_path, pricing=PRICES, cost=settings(cheaper_models={}))
        async with svc:
            assert svc.coordinator is not None
            svc.coordinator.workflows = {"support": strict}
            svc.coordinator._starts = {"InquiryReceived": strict}
            await spend(svc, "0.5")
            first = await ask(svc, "inq-1")  # the cheaper model fits
            await spend_more(svc, "0.45")
            await svc.submit(make_inquiry("inq-2", message=MESSAGE, language="en"),
                             tenant="acme")
            second = (await svc.wait("inq-2", timeout=10)).data
            assert responder_models(svc) == ["fake-mini"]
        assert first.degraded == ("respond",)
        assert isinstance(second, InquiryFailed)
        assert second.failed_step == "respond"
        assert second.reason.startswith(
            "step respond failed: budget: asked for a cached answer only (nothing paid): "
            "tenant acme has spent")
        assert second.reason.endswith("on the cheaper fake-mini; none was cached")
        assert second.cost is not None
        assert second.cost.total == 0


async def spend_more(svc: FakeService, amount: str) -> None:
    await svc.store.record_cost([CostEntry(
        id="later", tenant="acme", workflow="campaign", correlation_id="c-1",
        step="generate", service="imagegen", provider="azure-openai", model="dall-e-3",
        usage=Usage(images=1), cost=Decimal(amount), currency="USD", price_table="test-cheaper",
        at=svc.clock.now(),
    )])


class TestUnits:
    def test_parse(self) -> None:
        assert Cheaper.parse("azure-openai/gpt-4o-mini") == Cheaper("gpt-4o-mini", "azure-openai")
        assert Cheaper.parse("gpt-4o-mini") == Cheaper("gpt-4o-mini")
        assert Cheaper.parse("openai/meta-llama/Llama-3.1-8B") == Cheaper(
            "meta-llama/Llama-3.1-8B", "openai"
        )
        with pytest.raises(ValueError, match="needs a name"):
            Cheaper.parse("azure-openai/")

    def test_settings_reject_an_empty_model(self) -> None:
        with pytest.raises(ValidationError):
            CostSettings(cheaper_models={"responder": " "})
        assert CostSettings(cheaper_models={"responder": "gpt-4o-mini"}).cheaper(
            "responder"
        ) == Cheaper("gpt-4o-mini")
        assert CostSettings().cheaper("responder") is None

    def test_apply_sets_the_model_and_only_where_there_is_one(self) -> None:
        cheaper = Cheaper("fake-mini")
        request = GenerateResponseRequested(message="hi")
        assert cheaper.apply(request) == GenerateResponseRequested(message="hi", model="fake-mini")
        translate = TranslateTextRequested(text="hola", to_language="en")
        assert not cheaper.applies_to(translate)
        with pytest.raises(TypeError, match="no model field"):
            cheaper.apply(translate)

    def test_decide(self) -> None:
        control = CostControl(
            PRICES, budgets={"t": TenantBudget(day=Decimal(1))},
            estimate_with={"responder": "fake/fake-1", "translation": "fake/fake-1"},
            responder_output_tokens=500,
        )
        state = SagaState(
            id="s", workflow="support", tenant="t", start_envelope_id="e",
            start=StoredEvent.of(GenerateResponseRequested(message="x")),
            started_at=EARLY,
        )
        step = StepState(key="respond", name="respond", service="responder")
        request = GenerateResponseRequested(message=MESSAGE)
        cheaper = Cheaper("fake-mini")
        assert control.cheaper_provider("responder", cheaper) == ProviderInfo(
            name="fake", model="fake-mini"
        )
        assert control.cheaper_provider("speech", cheaper) is None
        fits = control.decide(state, step, request, Spending(day=Decimal("0.1")), on_budget=cheaper)
        assert (fits.request, fits.reason, fits.refused) == (request, None, False)
        degraded = control.decide(state, step, request, Spending(day=Decimal("0.5")),
                                  on_budget=cheaper)
        assert degraded.request == request.model_copy(update={"model": "fake-mini"})
        assert degraded.reason is not None
        assert degraded.reason.startswith("used fake-mini instead of fake-1")
        # what this same change already accepted counts too
        refused = control.decide(state, step, request, Spending(day=Decimal("0.5")),
                                 Decimal("0.45"), on_budget=cheaper)
        assert refused.refused
        assert refused.reason is not None
        assert refused.reason.endswith("on the cheaper fake-mini")
        assert control.decide(state, step, request, Spending(day=Decimal("0.5"))).refused
        translation = StepState(key="translate_in", name="translate_in", service="translation")
        text = TranslateTextRequested(text="x" * 100_000, to_language="en")
        unsupported = control.decide(state, translation, text, Spending(day=Decimal(1)),
                                     on_budget=cheaper)
        assert unsupported.refused
        assert unsupported.reason is not None
        assert "cannot ask for a cheaper model" in unsupported.reason
