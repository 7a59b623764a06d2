"""The events of the product quality-control workflow and its inspection actor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.base import Event, event
from events.campaign import Box
from events.common import BlobRef, Value
from events.support import Cost, ProviderResult

_LANG = r"^[a-z]{2,3}$"


class InspectionCriteria(Value):
    """What a good product looks like, and how much deviation is tolerated."""

    expected_label_text: str | None = Field(
        default=None, max_length=500, description="Text the product's label must read."
    )
    label_match_threshold: float = Field(
        default=0.8, ge=0, le=1, description="Similarity (0-1) the label text read must reach."
    )
    max_defect_area: float = Field(
        default=0.002, gt=0, le=1,
        description="Largest tolerated defect, as a fraction of the image area.",
    )
    min_region_area: float = Field(
        default=0.0002, ge=0, le=1,
        description="Differences smaller than this fraction of the image are noise, not defects.",
    )
    difference_threshold: int = Field(
        default=48, ge=1, le=255,
        description="Per-pixel colour difference (0-255) from the reference that counts.",
    )


# -- the request that starts an inspection ----------------------------------------------------


@event
class InspectionRequested(Event):
    """Product quality control: starts the quality workflow."""

    inspection_id: str = Field(min_length=1, max_length=120)
    images: tuple[BlobRef, ...] = Field(min_length=1, max_length=500)
    criteria: InspectionCriteria = InspectionCriteria()
    reference_image: BlobRef | None = Field(
        default=None, description="A photo of a good product, taken the same way."
    )
    report_language: str = Field(default="en", pattern=_LANG)
    documentation_languages: tuple[str, ...] = Field(default=("en",), max_length=20)
    voice_instructions: bool = True


# -- requests to the actors ------------------------------------------------------------------


@event
class InspectImageRequested(Event):
    image: BlobRef
    criteria: InspectionCriteria
    reference_image: BlobRef | None = None


# -- results ---------------------------------------------------------------------------------


class Defect(Value):
    kind: Literal["surface", "label"]
    severity: Literal["minor", "major"]
    description: str
    box: Box | None = Field(default=None, description="Where it is, in the inspected image's pixels.")
    area_fraction: float = Field(default=0.0, ge=0, le=1)


class InspectionCheck(Value):
    name: Literal["surface", "label"]
    score: float = Field(ge=0, le=1)
    passed: bool
    detail: str


@event
class ImageInspected(ProviderResult):
    image: BlobRef
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    defects: tuple[Defect, ...] = ()
    checks: tuple[InspectionCheck, ...] = ()
    label_text: str = ""
    quality_score: float = Field(ge=0, le=1)
    passed: bool
    notes: tuple[str, ...] = Field(default=(), description="Photo issues that make results less reliable.")


# -- the terminal events ---------------------------------------------------------------------


class ImageReport(Value):
    index: int = Field(ge=0)
    image: BlobRef
    passed: bool
    quality_score: float = Field(ge=0, le=1)
    defects: tuple[Defect, ...] = ()
    checks: tuple[InspectionCheck, ...] = ()
    notes: tuple[str, ...] = ()
    failure: str | None = Field(default=None, description="Why the image could not be inspected.")


class CorrectiveImage(Value):
    image_index: int = Field(ge=0)
    defect_index: int = Field(ge=0)
    image: BlobRef


class LanguageDocumentation(Value):
    """The report for the workers of one language."""

    language: str = Field(pattern=_LANG)
    report: str | None = Field(default=None, description="Summary and recommendations, translated.")
    corrective_images: tuple[CorrectiveImage, ...] = ()
    voice_instructions: BlobRef | None = None
    failures: tuple[str, ...] = Field(default=(), description="What could not be produced, and why.")


@event
class InspectionReported(Event):
    """The inspection's outcome: exactly one terminal event per inspection (or a failed one)."""

    inspection_id: str
    passed: bool
    overall_score: float = Field(ge=0, le=1)
    summary: str
    recommendations: tuple[str, ...]
    images: tuple[ImageReport, ...]
    documentation: tuple[LanguageDocumentation, ...]
    degraded: tuple[str, ...] = ()
    processing_time_ms: float = Field(ge=0)
    cost: Cost | None = Field(
        default=None, description="What its AI calls cost, by step (absent: not priced)."
    )


@event
class InspectionFailed(Event):
    inspection_id: str
    reason: str
    failed_step: str | None = None
    cancelled: bool = False
    processing_time_ms: float = Field(default=0, ge=0)
    cost: Cost | None = Field(
        default=None, description="What its AI calls cost, by step (absent: not priced)."
    )
