"""A global marketing campaign, as in the founding document.

reserve the budget (the hook, see below) · generate the base visual concepts · then per target
language, each stage fanned out over the languages in parallel: translate the product
description · generate the localised visual and synthesise the voice-over · check the visual's
brand compliance (a score; ``market_ready`` when it reaches the threshold).

One language failing does not fail the campaign: its steps fall back to "no result" and its
branch in :class:`~events.campaign.CampaignReady` says why. The base concepts are required: if
they cannot be made the campaign fails as a whole. When it fails or is cancelled, every asset a
succeeded step produced is deleted (``compensate`` → ``DeleteAssetRequested``), and so is one
that arrives after the end (the coordinator compensates late results of cancelled steps).

The budget hook: there is no budget system yet. ``campaign_workflow(budget_service="budget")``
adds a first step that sends ``ReserveBudgetRequested`` to that service when the campaign names
a budget, and whose compensation (``ReleaseBudgetRequested``) releases it when the campaign
fails or is cancelled. Without ``budget_service`` the step is skipped and nothing is reserved.
"""

from __future__ import annotations

from events.campaign import (
    BrandComplianceChecked,
    BudgetReserved,
    CampaignCancelled,
    CampaignFailed,
    CampaignReady,
    CampaignRequested,
    CheckBrandComplianceRequested,
    DeleteAssetRequested,
    GenerateImageRequested,
    ImageGenerated,
    LanguageAssets,
    ReleaseBudgetRequested,
    ReserveBudgetRequested,
)
from events.common import BlobRef
from events.support import SpeechSynthesized, TextTranslated, TranslateTextRequested
from events.support import SynthesizeSpeechRequested as SpeechRequest
from saga.cost import PriceTable, cost_summary
from saga.state import StepStatus
from saga.workflow import CACHED_ONLY, RequestBuilder, SagaView, Step, StepRetry, Workflow

ASSET_STEPS = ("concepts", "visual", "voice")
"""The steps whose results are files in the blob store, deleted by compensation."""


def _campaign(v: SagaView) -> CampaignRequested:
    return v.start(CampaignRequested)


def _key(name: str, v: SagaView) -> str:
    return f"{name}[{v.item}]" if v.item is not None else name


def why(v: SagaView, key: str) -> str:
    """Why step ``key`` has no result, in words."""
    step = v.state.steps.get(key)
    if step is None:
        return "not run"
    if step.fallback_reason:
        return step.fallback_reason
    if step.error is not None:
        return f"{step.error.error_class}: {step.error.message}"
    return str(step.status)


def description_in(v: SagaView, language: str) -> str | None:
    campaign = _campaign(v)
    if language == campaign.source_language:
        return campaign.product_description
    done = v.result(f"translate[{language}]", TextTranslated)
    return done.text if done else None


def _to_translate(v: SagaView) -> list[str]:
    c = _campaign(v)
    return [lang for lang in c.target_languages if lang != c.source_language]


def _localised(v: SagaView) -> list[str]:
    return [lang for lang in _campaign(v).target_languages if description_in(v, lang) is not None]


def _with_visual(v: SagaView) -> list[str]:
    return [lang for lang in _campaign(v).target_languages
            if v.result(f"visual[{lang}]", ImageGenerated) is not None]


# -- requests ----------------------------------------------------------------------------------


def _prompt(c: CampaignRequested, text: str, language: str) -> str:
    brand = c.brand
    parts = [
        f"Marketing visual for {c.product_name}: {text}",
        f"Tone: {brand.tone}. Use the brand colours {', '.join(brand.colours)}.",
    ]
    if brand.logo_text:
        parts.append(f"Show the wordmark '{brand.logo_text}' legibly.")
    if brand.forbidden_words:
        parts.append(f"Never show the words: {', '.join(brand.forbidden_words)}.")
    parts.append(f"Any text in the image is in language '{language}'.")
    return " ".join(parts)


def _reserve(v: SagaView) -> ReserveBudgetRequested:
    c = _campaign(v)
    assert c.budget is not None
    return ReserveBudgetRequested(campaign_id=c.campaign_id, amount=c.budget)


def _release(v: SagaView) -> ReleaseBudgetRequested:
    reserved = v.result("reserve_budget", BudgetReserved)
    assert reserved is not None
    return ReleaseBudgetRequested(campaign_id=_campaign(v).campaign_id,
                                  reservation_id=reserved.reservation_id)


def _concept(v: SagaView) -> GenerateImageRequested:
    c = _campaign(v)
    n = int(v.item or 0)
    return GenerateImageRequested(
        prompt=_prompt(c, c.product_description, c.source_language), size=c.image_size,
        kind="concept", title=c.product_name, text=c.product_description,
        logo_text=c.brand.logo_text, colours=c.brand.colours, language=c.source_language,
        variant=n, reference=f"{c.campaign_id} \N{MIDDLE DOT} concept {n + 1} of {c.concepts}",
    )


def _translate(v: SagaView) -> TranslateTextRequested:
    c = _campaign(v)
    assert v.item is not None
    return TranslateTextRequested(text=c.product_description, to_language=v.item,
                                  from_language=c.source_language)


def _visual(v: SagaView) -> GenerateImageRequested:
    c = _campaign(v)
    assert v.item is not None
    text = description_in(v, v.item)
    assert text is not None
    return GenerateImageRequested(
        prompt=_prompt(c, text, v.item), size=c.image_size, kind="concept", title=c.product_name,
        text=text, logo_text=c.brand.logo_text, colours=c.brand.colours, language=v.item,
        variant=0, reference=f"{c.campaign_id} \N{MIDDLE DOT} {v.item}",
    )


def _voice(v: SagaView) -> SpeechRequest:
    assert v.item is not None
    text = description_in(v, v.item)
    assert text is not None
    return SpeechRequest(text=f"{_campaign(v).product_name}. {text}", language=v.item)


def _check(v: SagaView) -> CheckBrandComplianceRequested:
    visual = v.result(f"visual[{v.item}]", ImageGenerated)
    assert visual is not None
    return CheckBrandComplianceRequested(image=visual.image, brand=_campaign(v).brand, language=v.item)


def asset_of(v: SagaView, key: str) -> BlobRef | None:
    """The file step ``key`` produced, if any."""
    image = v.result(key, ImageGenerated)
    if image is not None:
        return image.image
    voice = v.result(key, SpeechSynthesized)
    return voice.audio if voice is not None else None


def _delete(name: str) -> RequestBuilder:
    def build(v: SagaView) -> DeleteAssetRequested:
        ref = asset_of(v, _key(name, v))
        assert ref is not None, f"{_key(name, v)} succeeded without an asset"
        return DeleteAssetRequested(assets=(ref,), reason=f"campaign {_campaign(v).campaign_id} ended")

    return build


def _no_result(v: SagaView, reason: str) -> None:
    return None


# -- the outcome -------------------------------------------------------------------------------


def _elapsed_ms(v: SagaView) -> float:
    end = v.state.finished_at or v.state.started_at
    return max((end - v.state.started_at).total_seconds() * 1000, 0.0)


def language_assets(v: SagaView, language: str) -> LanguageAssets:
    c = _campaign(v)
    text = description_in(v, language)
    visual = v.result(f"visual[{language}]", ImageGenerated)
    voice = v.result(f"voice[{language}]", SpeechSynthesized)
    check = v.result(f"compliance[{language}]", BrandComplianceChecked)
    problems = []
    if text is None:
        problems.append(f"translation failed: {why(v, f'translate[{language}]')}")
    else:
        if visual is None:
            problems.append(f"visual failed: {why(v, f'visual[{language}]')}")
        elif check is None:
            problems.append(f"compliance check failed: {why(v, f'compliance[{language}]')}")
        elif check.score < c.score_threshold:
            detail = "; ".join(check.issues)
            problems.append(f"brand compliance {check.score:.2f} is below {c.score_threshold:.2f}"
                            + (f": {detail}" if detail else ""))
        if voice is None:
            problems.append(f"voice-over failed: {why(v, f'voice[{language}]')}")
    return LanguageAssets(
        language=language, description=text, visual=visual.image if visual else None,
        voice_over=voice.audio if voice else None,
        compliance_score=check.score if check else None,
        compliance_issues=check.issues if check else (),
        market_ready=not problems, failure="; ".join(problems) or None,
    )


def produced_assets(v: SagaView) -> tuple[BlobRef, ...]:
    """Every file a succeeded step of this campaign produced (what compensation deletes)."""
    out = []
    for key, step in v.state.steps.items():
        if step.name in ASSET_STEPS and step.status is StepStatus.SUCCEEDED:
            ref = asset_of(v, key)
            if ref is not None:
                out.append(ref)
    return tuple(out)


def _budget_released(v: SagaView) -> bool:
    return v.status("reserve_budget") is StepStatus.SUCCEEDED


def campaign_workflow(
    *,
    fanout_limit: int | None = 4,
    timeouts: dict[str, float] | None = None,
    retry: StepRetry | None = None,
    budget_service: str | None = None,
    pricing: PriceTable | None = None,
) -> Workflow:
    """The campaign workflow. ``fanout_limit`` bounds how many branches of one fanned-out step
    are in flight at once; ``timeouts`` overrides per-step timeouts (seconds) by step name;
    ``budget_service`` turns the budget hook on (see the module docstring); ``pricing``
    prices each step's usage, the total on the terminal event."""
    prices = pricing or PriceTable()
    t = {
        "reserve_budget": 15.0, "concepts": 120.0, "translate": 30.0, "visual": 120.0,
        "voice": 60.0, "compliance": 60.0, **(timeouts or {}),
    }
    r = retry or StepRetry()
    n = fanout_limit

    def complete(v: SagaView) -> CampaignReady:
        c = _campaign(v)
        languages = tuple(language_assets(v, lang) for lang in c.target_languages)
        concepts = v.results("concepts", ImageGenerated)
        return CampaignReady(
            campaign_id=c.campaign_id,
            concepts=tuple(concepts[str(i)].image for i in range(c.concepts) if str(i) in concepts),
            languages=languages, score_threshold=c.score_threshold,
            market_ready=tuple(a.language for a in languages if a.market_ready),
            degraded=v.state.degraded, processing_time_ms=_elapsed_ms(v),
            cost=cost_summary(v.state, prices),
        )

    def fail(v: SagaView, reason: str, step: str | None) -> CampaignFailed:
        return CampaignFailed(
            campaign_id=_campaign(v).campaign_id, reason=reason, failed_step=step,
            assets_removed=produced_assets(v), budget_released=_budget_released(v),
            processing_time_ms=_elapsed_ms(v), cost=cost_summary(v.state, prices),
        )

    def cancelled(v: SagaView, reason: str, step: str | None) -> CampaignCancelled:
        return CampaignCancelled(
            campaign_id=_campaign(v).campaign_id, reason=reason,
            assets_removed=produced_assets(v), budget_released=_budget_released(v),
            processing_time_ms=_elapsed_ms(v), cost=cost_summary(v.state, prices),
        )

    steps = (
        Step("reserve_budget", budget_service or "budget", _reserve,
             when=lambda v: budget_service is not None and _campaign(v).budget is not None,
             timeout=t["reserve_budget"], retry=r, compensate=_release),
        Step("concepts", "imagegen", _concept, needs=("reserve_budget",),
             for_each=lambda v: [str(i) for i in range(_campaign(v).concepts)],
             timeout=t["concepts"], retry=r, compensate=_delete("concepts"), max_parallel=n),
        Step("translate", "translation", _translate, needs=("concepts",), for_each=_to_translate,
             when=lambda v: bool(_to_translate(v)), timeout=t["translate"], retry=r,
             fallback=_no_result, max_parallel=n, on_budget=CACHED_ONLY),
        Step("visual", "imagegen", _visual, needs=("translate",), for_each=_localised,
             when=lambda v: bool(_localised(v)), timeout=t["visual"], retry=r,
             fallback=_no_result, compensate=_delete("visual"), max_parallel=n),
        Step("voice", "speech", _voice, needs=("translate",), for_each=_localised,
             when=lambda v: bool(_localised(v)), timeout=t["voice"], retry=r,
             fallback=_no_result, compensate=_delete("voice"), max_parallel=n,
             on_budget=CACHED_ONLY),
        Step("compliance", "compliance", _check, needs=("visual",), for_each=_with_visual,
             when=lambda v: bool(_with_visual(v)), timeout=t["compliance"], retry=r,
             fallback=_no_result, max_parallel=n),
    )
    return Workflow("campaign", CampaignRequested, steps, complete, fail, cancelled)


CAMPAIGN_STEPS = tuple(s.name for s in campaign_workflow().steps)

