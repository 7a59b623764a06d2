"""The events of the customer-support workflow, and the generic step-failure event."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field

from events.base import Event, event
from events.common import BlobRef, ProviderInfo, Usage, Value

LanguageCode = str
"""A BCP-47 primary language subtag, lower case (``en``, ``es``, ``fr``)."""

_LANG = r"^[a-z]{2,3}$"


class Customer(Value):
    id: str = Field(min_length=1)
    name: str | None = None
    email: str | None = None


# -- the request that starts a saga ---------------------------------------------------------


@event
class InquiryReceived(Event):
    """A helpdesk inquiry: starts the support workflow."""

    inquiry_id: str = Field(min_length=1)
    customer: Customer
    channel: str = Field(default="web", examples=["web", "email", "chat", "phone"])
    language: LanguageCode | None = Field(default=None, pattern=_LANG)
    message: str = Field(min_length=1, max_length=20_000)
    attachments: tuple[BlobRef, ...] = ()
    voice_reply: bool = False


# -- requests to the actors (emitted by the coordinator) ------------------------------------


@event
class DetectLanguageRequested(Event):
    text: str = Field(min_length=1)
    cache_only: bool | None = Field(
        default=None,
        description="True: answer from the result cache or fail (error class not_cached), "
        "never call the provider; set when a cost budget refuses the call. None: as usual.",
    )


@event
class AnalyzeImageRequested(Event):
    image: BlobRef
    features: tuple[Literal["caption", "tags", "objects", "read", "quality"], ...] = (
        "caption",
        "tags",
        "read",
        "quality",
    )
    cache_only: bool | None = Field(
        default=None,
        description="True: answer from the result cache or fail (error class not_cached), "
        "never call the provider; set when a cost budget refuses the call. None: as usual.",
    )


@event
class TranslateTextRequested(Event):
    text: str = Field(min_length=1)
    to_language: LanguageCode = Field(pattern=_LANG)
    from_language: LanguageCode | None = Field(default=None, pattern=_LANG)
    cache_only: bool | None = Field(
        default=None,
        description="True: answer from the result cache or fail (error class not_cached), "
        "never call the provider; set when a cost budget refuses the call. None: as usual.",
    )


class ImageFindings(Value):
    """What the image analysis found, as the responder needs it."""

    description: str | None = None
    tags: tuple[str, ...] = ()
    ocr_text: str = ""


@event
class GenerateResponseRequested(Event):
    message: str = Field(min_length=1)
    language: LanguageCode = Field(default="en", pattern=_LANG)
    customer_name: str | None = None
    images: tuple[ImageFindings, ...] = ()
    model: str | None = Field(
        default=None, min_length=1,
        description="A model (or deployment) to answer with instead of the responder's own: "
        "set when a cost budget sends the step to a cheaper model. None: the responder's own.",
    )
    cache_only: bool | None = Field(
        default=None,
        description="True: answer from the result cache or fail (error class not_cached), "
        "never call the provider; set when a cost budget refuses the call. None: as usual.",
    )


@event
class SynthesizeSpeechRequested(Event):
    text: str = Field(min_length=1)
    language: LanguageCode = Field(pattern=_LANG)
    voice: str | None = None
    style: str | None = None
    cache_only: bool | None = Field(
        default=None,
        description="True: answer from the result cache or fail (error class not_cached), "
        "never call the provider; set when a cost budget refuses the call. None: as usual.",
    )


# -- results (emitted by the actors) ---------------------------------------------------------


class ProviderResult(Event):
    """Base of every actor result: who produced it and what it consumed."""

    provider: ProviderInfo
    usage: Usage = Usage()


@event
class LanguageDetected(ProviderResult):
    language: LanguageCode = Field(pattern=_LANG)
    confidence: float = Field(ge=0, le=1)


class ImageQuality(Value):
    width: int = Field(ge=0)
    height: int = Field(ge=0)
    brightness: float = Field(ge=0, le=1, description="Mean luminance, 0 (black) to 1 (white).")
    contrast: float = Field(ge=0, le=1, description="Standard deviation of luminance, 0 to 1.")
    sharpness: float = Field(ge=0, description="Variance of the Laplacian; below ~100 is blurry.")
    acceptable: bool
    issues: tuple[str, ...] = ()


class TextLine(Value):
    text: str
    confidence: float = Field(ge=0, le=1)


@event
class ImageAnalyzed(ProviderResult):
    image: BlobRef
    caption: str | None = None
    tags: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    ocr_text: str = ""
    ocr_lines: tuple[TextLine, ...] = ()
    quality: ImageQuality | None = None


@event
class TextTranslated(ProviderResult):
    text: str
    from_language: LanguageCode = Field(pattern=_LANG)
    to_language: LanguageCode = Field(pattern=_LANG)
    detected: bool = Field(default=False, description="True when the source language was detected.")


class Source(Value):
    """A knowledge-base article a response was built from."""

    id: str
    title: str
    score: float


@event
class ResponseGenerated(ProviderResult):
    text: str
    sources: tuple[Source, ...] = ()
    confidence: float = Field(ge=0, le=1)


@event
class SpeechSynthesized(ProviderResult):
    audio: BlobRef
    format: str = Field(examples=["wav"])
    duration_seconds: float = Field(ge=0)
    voice: str


NOT_CACHED = "not_cached"
"""The ``error_class`` of a request asked for a cached answer only (``cache_only``) that had
none: nothing was called; the step takes its fallback. Not a failure of the service, so it
does not count against the service's circuit breaker."""


@event
class StepFailed(Event):
    """An actor could not do the work it was asked for; the error is classified."""

    step: str | None = Field(default=None, description="The saga step (the request's subject).")
    service: str
    error_class: str = Field(examples=["throttled", "transient", "permanent", "auth", "timeout"])
    message: str
    retryable: bool
    retry_after: float | None = Field(default=None, ge=0)


# -- the terminal events ---------------------------------------------------------------------


class Cost(Value):
    """What a request's AI calls cost, by step, with the price table they were priced by."""

    total: Decimal
    currency: str = "USD"
    by_step: dict[str, Decimal] = Field(default_factory=dict)
    price_table: str = Field(description="The version of the price table used.")



@event
class ResponseReady(Event):
    """The support workflow's answer to the customer. Exactly one terminal event per inquiry."""

    inquiry_id: str
    text: str
    language: LanguageCode
    voice: BlobRef | None = None
    confidence: float = Field(ge=0, le=1)
    escalation_required: bool
    processing_time_ms: float = Field(ge=0)
    degraded: tuple[str, ...] = Field(
        default=(), description="Steps that used a fallback instead of their service's answer."
    )
    sources: tuple[Source, ...] = ()
    notices: tuple[str, ...] = ()
    cost: Cost | None = None


@event
class InquiryFailed(Event):
    """The support workflow could not answer; the other terminal event."""

    inquiry_id: str
    reason: str
    failed_step: str | None = None
    degraded: tuple[str, ...] = ()
    processing_time_ms: float = Field(default=0, ge=0)
    cost: Cost | None = None
