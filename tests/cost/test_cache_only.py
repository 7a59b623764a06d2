"""Over budget, a cacheable step asks for a cached answer only: answered from the result cache
at no cost, or refused at once (``not_cached``) so it takes its fallback; the saga says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from actors.cache import (
    NotCachedError,
    ResultCache,
    StoreCacheBackend,
    answering_from_cache_only,
    cached_provider,
)
from actors.providers.fake import FakeTranslator
from events import ResponseReady, Usage
from saga.budget import TenantBudget
from saga.memory_store import InMemorySagaStore
from saga.state import StepStatus
from saga.store import CostEntry
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry
from tests.cost.test_budget import ESTIMATE_FAKES, PRICES

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MESSAGE = "Mi cafetera llegó rota"


def over_budget_after_one(responder_cacheable: bool) -> CostSettings:
    return CostSettings(
        cache=CacheSettings(responder_cacheable=responder_cacheable),
        budgets={"acme": TenantBudget(day=Decimal("0.05"))},
        estimate_with=ESTIMATE_FAKES, responder_output_tokens=10,
    )


async def spend_the_rest(svc: FakeService) -> None:
    """The rest of the day's budget goes on another call of the tenant."""
    await svc.store.record_cost([CostEntry(
        id="other", tenant="acme", workflow="campaign", correlation_id="c-0", step="generate",
        service="imagegen", provider="azure-openai", model="dall-e-3", usage=Usage(images=1),
        cost=Decimal("0.04"), currency="USD", price_table="test-1", at=svc.clock.now(),
    )])


async def ask(svc: FakeService, inquiry_id: str) -> ResponseReady:
    await svc.submit(make_inquiry(inquiry_id, message=MESSAGE, language="es", voice_reply=True),
                     tenant="acme")
    done = (await svc.wait(inquiry_id, timeout=10)).data
    assert isinstance(done, ResponseReady)
    return done


class TestCachedAnswersOverBudget:
    async def test_the_same_inquiry_over_budget_is_answered_from_the_cache(
        self, tmp_path: Path
    ) -> None:
        """Every step of the repeated inquiry is answered from the cache: no provider call,
        nothing spent, the same reply; each step says why, and the reply says which."""
        svc = FakeService(tmp_path, pricing=PRICES, cost=over_budget_after_one(True))
        async with svc:
            first = await ask(svc, "inq-1")
            await spend_the_rest(svc)
            spent = await svc.store.spent("acme", EPOCH)
            calls = len(svc.fakes.calls())
            second = await ask(svc, "inq-2")
            state = await svc.saga("inq-2")
            assert len(svc.fakes.calls()) == calls
            assert await svc.store.spent("acme", EPOCH) == spent
        assert first.degraded == ()
        assert spent > Decimal("0.05")
        assert (second.text, second.voice) == (first.text, first.voice)
        assert second.cost is not None
        assert second.cost.total == 0
        steps = ("translate_in", "respond", "translate_out", "synthesize_voice")
        assert second.degraded == steps
        for key in steps:
            step = state.steps[key]
            assert step.status is StepStatus.SUCCEEDED
            assert step.degradation is not None
            assert step.degradation.startswith(
                "budget: asked for a cached answer only (nothing paid): tenant acme has spent")
        assert not second.escalation_required
        notice = next(n for n in second.notices if "earlier results" in n)
        assert notice.endswith(f"answered from earlier results only: {', '.join(steps)}.")

    async def test_a_step_with_nothing_cached_takes_its_fallback_at_once(
        self, tmp_path: Path
    ) -> None:
        """Answers are not cached: the response falls back to the template (none was
        cached), the translation back of that template is not cached either; the message's
        translation is. Nothing is called, and the circuits stay closed."""
        svc = FakeService(tmp_path, pricing=PRICES, cost=over_budget_after_one(False))
        async with svc:
            await ask(svc, "inq-1")
            await spend_the_rest(svc)
            calls = len(svc.fakes.calls())
            second = await ask(svc, "inq-2")
            state = await svc.saga("inq-2")
            assert len(svc.fakes.calls()) == calls
            assert svc.coordinator is not None
            breakers = svc.coordinator.breakers
            assert breakers.get("responder").failures == 0
            assert breakers.get("translation").failures == 0
        assert state.steps["translate_in"].status is StepStatus.SUCCEEDED
        respond = state.steps["respond"]
        assert respond.status is StepStatus.FALLBACK
        assert respond.fallback_reason is not None
        assert respond.fallback_reason.endswith("; none was cached")
        assert second.degraded == ("translate_in", "respond", "translate_out",
                                   "synthesize_voice")
        assert second.escalation_required
        assert any("simplified (budget: asked for a cached answer" in n for n in second.notices)


class TestCacheOnlyLookups:
    async def test_a_miss_raises_without_calling_and_a_hit_is_free(self) -> None:
        """In cache-only mode a miss is a NotCachedError (permanent, nothing called); a
        stored result is returned as a hit as usual."""
        fake = FakeTranslator()
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES)
        translator = cached_provider("translation", fake, cache, 60)
        with answering_from_cache_only(), pytest.raises(NotCachedError) as raised:
            await translator.translate("hola", "en", "es")
        assert raised.value.error_class == "not_cached"
        assert not raised.value.retryable
        assert fake.behaviour.calls == []
        await translator.translate("hola", "en", "es")
        with answering_from_cache_only():
            hit = await translator.translate("hola", "en", "es")
        assert hit.provider.cached
        assert len(fake.behaviour.calls) == 1
        assert cache.stats.not_cached == {"translation": 1}

    async def test_a_call_in_flight_is_shared_but_never_started(self) -> None:
        """A cache-only request that finds the same call in flight waits for it (free)."""
        fake = FakeTranslator()
        fake.behaviour.latency = 0.05
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES)
        translator = cached_provider("translation", fake, cache, 60)
        leader = asyncio.create_task(translator.translate("hola", "en", "es"))
        await asyncio.sleep(0.01)
        with answering_from_cache_only():
            shared = await translator.translate("hola", "en", "es")
        await leader
        assert shared.provider.cached
        assert len(fake.behaviour.calls) == 1


class TestHalfOpenTrialAnsweredFromCacheOnly:
    async def test_a_not_cached_trial_hands_the_circuit_back(self, tmp_path: Path) -> None:
        """A half-open circuit's trial that was asked for a cached answer only (over budget)
        and found none says nothing of the service: the circuit lets the next call through
        instead of falling back for good."""
        from datetime import timedelta

        from saga.breaker import CircuitState

        async with FakeService(tmp_path, pricing=PRICES, cost=over_budget_after_one(False)) as svc:
            await ask(svc, "inq-1")
            await spend_the_rest(svc)
            assert svc.coordinator is not None
            breaker = svc.coordinator.breakers.get("responder")
            # open long ago: its cool-down has passed, the next call is its trial
            breaker.restore(CircuitState.OPEN, 5, svc.clock.now() - timedelta(hours=1))
            await ask(svc, "inq-2")  # over budget: respond asks the cache only, not cached
            assert (await svc.saga("inq-2")).steps["respond"].degradation is not None
            calls = len(svc.fakes.responder.behaviour.calls)
            await svc.submit(make_inquiry("inq-3", message=MESSAGE, language="es"))
            done = (await svc.wait("inq-3", timeout=10)).data
            assert isinstance(done, ResponseReady)
            assert "respond" not in done.degraded  # a tenant within budget gets its answer
            assert len(svc.fakes.responder.behaviour.calls) == calls + 1
            assert breaker.state is CircuitState.CLOSED
