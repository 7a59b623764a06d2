"""The campaign workflow on fakes: per-language branches, one failing alone, cancellation and
whole-campaign failure compensated (assets deleted, budget released)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.capabilities import Translation
from actors.providers.fake import FakeProviders, FakeTranslator, permanent
from events.campaign import CampaignCancelled, CampaignFailed, CampaignReady, Money
from saga import SagaStatus, StepStatus
from tests.workflows.harness import WorkflowFakeService, campaign


class BrokenFor(FakeTranslator):
    """Translates like the fake, except into ``broken`` languages, where it fails for good."""

    def __init__(self, *broken: str) -> None:
        super().__init__()
        self.broken = set(broken)

    async def translate(
        self, text: str, to_language: str, from_language: str | None = None
    ) -> Translation:
        if to_language in self.broken:
            await self.behaviour.before("translate", text, to_language, from_language)
            raise permanent(f"fake 400: no {from_language}>{to_language} pair")
        return await super().translate(text, to_language, from_language)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[WorkflowFakeService]:
    async with WorkflowFakeService(tmp_path, budget=True) as s:
        s.fakes.vision.ocr_text = "AQUAPURE\nAquaPure Bottle"
        yield s


async def test_three_languages_complete_with_assets_and_scores(svc: WorkflowFakeService) -> None:
    """en (the source), es and fr: each gets its description, visual, voice-over and a brand
    score from the palette and the OCR; all are market-ready; the files exist."""
    await svc.submit_event(campaign(), "camp-1")
    done = await svc.wait("camp-1", timeout=10)
    assert isinstance(done.data, CampaignReady)
    result = done.data
    assert result.market_ready == ("en", "es", "fr")
    assert len(result.concepts) == 1
    by_lang = {a.language: a for a in result.languages}
    assert by_lang["en"].description == campaign().product_description
    assert by_lang["es"].description == f"[en>es] {campaign().product_description}"
    for lang in ("en", "es", "fr"):
        assets = by_lang[lang]
        assert assets.visual is not None
        assert assets.voice_over is not None
        assert assets.compliance_score is not None
        assert assets.compliance_score >= 0.8
        assert assets.failure is None
        assert svc.blobs.path(assets.visual).is_file()
        assert svc.blobs.path(assets.voice_over).is_file()
    assert result.degraded == ()
    # the localised visuals were asked for in their language, with the brand's colours
    specs = [c.args for c in svc.imagegen.behaviour.calls]
    assert sorted(str(a[1]) for a in specs) == ["en", "en", "es", "fr"]  # concept + 3 visuals
    assert svc.budget.reserved == {}  # the campaign named no budget: none reserved


async def test_one_language_failing_leaves_the_others_market_ready(tmp_path: Path) -> None:
    """The translator has no en>de pair: en and es are market-ready, de says why and has
    no assets; the campaign itself completes."""
    fakes = FakeProviders(translation=BrokenFor("de"))
    async with WorkflowFakeService(tmp_path, providers=fakes) as svc:
        svc.fakes.vision.ocr_text = "AQUAPURE"
        await svc.submit_event(campaign(languages=("en", "es", "de")), "camp-1")
        done = await svc.wait("camp-1", timeout=10)
    assert isinstance(done.data, CampaignReady)
    assert done.data.market_ready == ("en", "es")
    de = next(a for a in done.data.languages if a.language == "de")
    assert not de.market_ready
    assert de.visual is None
    assert de.voice_over is None
    assert de.compliance_score is None
    assert de.failure is not None
    assert de.failure.startswith("translation failed: permanent: fake 400: no en>de pair")
    assert done.data.degraded == ("translate[de]",)


async def test_low_compliance_is_not_market_ready(svc: WorkflowFakeService) -> None:
    """A visual whose text shows a forbidden word scores at most 0.5: not market-ready,
    and the branch says which word."""
    svc.fakes.vision.ocr_text = "AQUAPURE\nnot a cheap bottle"
    await svc.submit_event(campaign(languages=("en",)), "camp-1")
    done = await svc.wait("camp-1", timeout=10)
    assert isinstance(done.data, CampaignReady)
    en = done.data.languages[0]
    assert en.compliance_score is not None
    assert en.compliance_score <= 0.5
    assert not en.market_ready
    assert en.failure is not None
    assert "forbidden word(s): cheap" in en.failure


async def test_cancelling_mid_way_removes_assets_and_releases_budget(
    svc: WorkflowFakeService,
) -> None:
    """The French visual is still being made when the campaign is cancelled: the terminal
    event is CampaignCancelled, every asset made so far is deleted, the budget is released;
    and when the French visual arrives after all, it is deleted too."""
    svc.imagegen.hold(language="fr")
    await svc.submit_event(campaign(budget=Money(amount=5000)), "camp-1")
    await svc.settle()
    state = await svc.saga("camp-1")
    assert state.status is SagaStatus.RUNNING
    assert state.steps["visual[fr]"].status is StepStatus.DISPATCHED
    # concept, visuals en/es, voice-overs en/es/fr: 6 assets in 5 files, as the fake's silent
    # es and fr voice-overs are the same bytes (the blob store keeps equal bytes once)
    assert len(svc.blob_files()) == 5

    await svc.cancel("camp-1", "the launch was called off")
    done = await svc.wait("camp-1", timeout=10)
    await svc.settle()
    assert isinstance(done.data, CampaignCancelled)
    assert done.data.reason == "the launch was called off"
    assert len(done.data.assets_removed) == 6
    assert done.data.budget_released
    assert svc.blob_files() == []
    assert svc.budget.released == [svc.budget.reserved["camp-1"]]
    state = await svc.saga("camp-1")
    assert state.failure_reason == "cancelled: the launch was called off"
    assert state.steps["visual[fr]"].status is StepStatus.CANCELLED

    svc.imagegen.release()  # the late French visual: stored by its actor, then compensated
    await svc.settle()
    assert svc.blob_files() == []
    assert len(await svc.terminal_events_of("camp-1")) == 1


async def test_cancelling_an_ended_campaign_changes_nothing(svc: WorkflowFakeService) -> None:
    await svc.submit_event(campaign(languages=("en",)), "camp-1")
    await svc.wait("camp-1", timeout=10)
    assert svc.coordinator is not None
    assert not await svc.coordinator.cancel("camp-1")
    assert not await svc.coordinator.cancel("no-such-saga")
    assert len(svc.blob_files()) == 3  # concept, visual, voice-over stay


async def test_failed_concepts_fail_the_campaign_and_compensate(tmp_path: Path) -> None:
    """Two concepts, made one at a time (fan-out limit 1); the second cannot be made: the
    campaign fails as a whole, naming the step, and the first concept and the budget are
    released."""
    async with WorkflowFakeService(tmp_path, budget=True, fanout_limit=1) as svc:
        svc.imagegen.behaviour.fail_next(None, permanent("fake 400: content filter"))
        await svc.submit_event(campaign(concepts=2, budget=Money(amount=100)), "camp-1")
        done = await svc.wait("camp-1", timeout=10)
        await svc.settle()
        assert isinstance(done.data, CampaignFailed)
        assert done.data.failed_step == "concepts[1]"
        assert "content filter" in done.data.reason
        assert len(done.data.assets_removed) == 1
        assert done.data.budget_released
        assert svc.blob_files() == []
        assert len(svc.budget.released) == 1


async def test_cancel_works_for_any_workflow(tmp_path: Path) -> None:
    """The support workflow has no cancelled event: cancelling uses its failed one."""
    from events.support import InquiryFailed
    from service.testing import make_inquiry

    async with WorkflowFakeService(tmp_path) as svc:
        svc.fakes.responder.behaviour.fail_always("hang")
        await svc.submit(make_inquiry(language="en"))
        await svc.settle()
        assert svc.coordinator is not None
        assert await svc.coordinator.cancel("inq-1", "customer withdrew")
        done = await svc.wait("inq-1", timeout=5)
    assert isinstance(done.data, InquiryFailed)
    assert done.data.reason == "customer withdrew"
    assert (await svc.saga("inq-1")).steps["respond"].status is StepStatus.CANCELLED
