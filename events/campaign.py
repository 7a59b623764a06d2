"""The events of the global marketing-campaign workflow, and of the image generation, asset
clean-up and brand-compliance actors it uses (the quality workflow reuses image generation)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from events.base import Event, event
from events.common import BlobRef, Value
from events.support import Cost, ProviderResult

_LANG = r"^[a-z]{2,3}$"
_HEX = r"^#[0-9a-fA-F]{6}$"
_SIZE = r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$"


class BrandGuidelines(Value):
    """What every visual of a campaign must respect."""

    colours: tuple[str, ...] = Field(
        min_length=1, max_length=8, description="Brand colours as #RRGGBB, the main one first.",
        examples=[("#0B5FFF", "#FFB400")],
    )
    tone: str = Field(default="friendly", max_length=200, examples=["friendly", "premium, calm"])
    forbidden_words: tuple[str, ...] = Field(
        default=(), description="Words no visual may show (matched case- and accent-blind)."
    )
    logo_text: str | None = Field(
        default=None, max_length=60, description="The wordmark every visual must show."
    )

    @field_validator("colours")
    @classmethod
    def _hex(cls, colours: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in colours if not re.fullmatch(_HEX, c)]
        if bad:
            raise ValueError(f"colours must be #RRGGBB: {bad}")
        return tuple(c.upper() for c in colours)


class Box(Value):
    """A rectangle in pixels of the image it belongs to: left, top, width, height."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class Money(Value):
    amount: float = Field(ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


# -- the request that starts a campaign -------------------------------------------------------


@event
class CampaignRequested(Event):
    """A global marketing campaign: starts the campaign workflow."""

    campaign_id: str = Field(min_length=1, max_length=120)
    product_name: str = Field(min_length=1, max_length=120)
    product_description: str = Field(min_length=1, max_length=2_000)
    source_language: str = Field(default="en", pattern=_LANG)
    brand: BrandGuidelines
    target_languages: tuple[str, ...] = Field(min_length=1, max_length=50)
    concepts: int = Field(default=1, ge=1, le=4, description="Base visual concepts to generate.")
    image_size: str = Field(default="1024x1024", pattern=_SIZE)
    score_threshold: float = Field(
        default=0.8, ge=0, le=1, description="Brand-compliance score a language needs to be market-ready."
    )
    budget: Money | None = Field(
        default=None, description="Spend to reserve for the campaign (see the workflow's budget hook)."
    )

    @field_validator("target_languages")
    @classmethod
    def _languages(cls, langs: tuple[str, ...]) -> tuple[str, ...]:
        bad = [lang for lang in langs if not re.fullmatch(_LANG, lang)]
        if bad:
            raise ValueError(f"target languages must be ISO 639 codes like 'es': {bad}")
        return tuple(dict.fromkeys(langs))


# -- requests to the actors ------------------------------------------------------------------


@event
class GenerateImageRequested(Event):
    """One image. ``prompt`` is for any generator; the structured fields let a generator that
    lays out cards (the offline one) use the brand colours and the exact text."""

    prompt: str = Field(min_length=1, max_length=4_000)
    size: str = Field(default="1024x1024", pattern=_SIZE)
    kind: Literal["concept", "instruction"] = "concept"
    title: str | None = Field(default=None, max_length=200)
    text: str | None = Field(default=None, max_length=2_000, description="Body text to render.")
    logo_text: str | None = Field(default=None, max_length=60)
    colours: tuple[str, ...] = Field(default=(), description="Brand colours, #RRGGBB.")
    language: str | None = Field(default=None, pattern=_LANG)
    variant: int = Field(default=0, ge=0, description="Layout variant (concept number).")
    reference: str | None = Field(
        default=None, max_length=200, description="Printed small on the image (campaign id, step)."
    )
    base_image: BlobRef | None = Field(default=None, description="An image to show (e.g. a defect).")
    highlight: Box | None = Field(default=None, description="A region of base_image to mark.")


@event
class DeleteAssetRequested(Event):
    """Compensation: remove assets a saga produced."""

    assets: tuple[BlobRef, ...] = Field(min_length=1)
    reason: str = "compensation"


@event
class CheckBrandComplianceRequested(Event):
    image: BlobRef
    brand: BrandGuidelines
    language: str | None = Field(default=None, pattern=_LANG)


# -- results ---------------------------------------------------------------------------------


@event
class ImageGenerated(ProviderResult):
    image: BlobRef
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    revised_prompt: str | None = None


@event
class AssetDeleted(Event):
    """The compensation is done: these assets are gone (or were already)."""

    assets: tuple[BlobRef, ...]


class ComplianceCheck(Value):
    name: Literal["palette", "logo", "forbidden_words"]
    score: float = Field(ge=0, le=1)
    passed: bool
    detail: str


@event
class BrandComplianceChecked(ProviderResult):
    image: BlobRef
    score: float = Field(ge=0, le=1)
    checks: tuple[ComplianceCheck, ...]
    issues: tuple[str, ...] = ()
    ocr_text: str = ""
    dominant_colours: tuple[str, ...] = Field(default=(), description="#RRGGBB, most common first.")


# -- the budget hook -------------------------------------------------------------------------
# No budget system exists yet. The campaign workflow reserves budget through a service named
# by ``campaign_workflow(budget_service=...)`` and releases it as compensation; these are the
# events such a service consumes and answers with.


@event
class ReserveBudgetRequested(Event):
    campaign_id: str
    amount: Money


@event
class BudgetReserved(ProviderResult):
    reservation_id: str
    amount: Money


@event
class ReleaseBudgetRequested(Event):
    campaign_id: str
    reservation_id: str


@event
class BudgetReleased(Event):
    reservation_id: str


# -- the terminal events ---------------------------------------------------------------------


class LanguageAssets(Value):
    """One target language's branch of a campaign."""

    language: str = Field(pattern=_LANG)
    description: str | None = Field(default=None, description="The product description, translated.")
    visual: BlobRef | None = None
    voice_over: BlobRef | None = None
    compliance_score: float | None = Field(default=None, ge=0, le=1)
    compliance_issues: tuple[str, ...] = ()
    market_ready: bool
    failure: str | None = Field(default=None, description="Why the branch is not market-ready.")


@event
class CampaignReady(Event):
    """The campaign's outcome: exactly one terminal event per campaign (or a failed/cancelled)."""

    campaign_id: str
    concepts: tuple[BlobRef, ...]
    languages: tuple[LanguageAssets, ...]
    score_threshold: float = Field(ge=0, le=1)
    market_ready: tuple[str, ...] = Field(description="The languages that are market-ready.")
    degraded: tuple[str, ...] = ()
    processing_time_ms: float = Field(ge=0)
    cost: Cost | None = Field(
        default=None, description="What its AI calls cost, by step (absent: not priced)."
    )


@event
class CampaignFailed(Event):
    """The campaign failed as a whole; what it produced is being removed (``assets_removed``)."""

    campaign_id: str
    reason: str
    failed_step: str | None = None
    assets_removed: tuple[BlobRef, ...] = ()
    budget_released: bool = False
    processing_time_ms: float = Field(default=0, ge=0)
    cost: Cost | None = Field(
        default=None, description="What its AI calls cost, by step (absent: not priced)."
    )


@event
class CampaignCancelled(Event):
    """The campaign was cancelled while running; what it produced is being removed."""

    campaign_id: str
    reason: str
    assets_removed: tuple[BlobRef, ...] = ()
    budget_released: bool = False
    processing_time_ms: float = Field(default=0, ge=0)
    cost: Cost | None = Field(
        default=None, description="What its AI calls cost, by step (absent: not priced)."
    )
