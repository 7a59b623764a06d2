"""One protocol per AI capability. Providers (local, fake, azure, openai-compatible) implement
them; actors call them. Every method is async; CPU-bound providers run off the event loop.

Each result carries ``usage`` (what the call consumed, for cost accounting) and ``provider``.
Errors are :mod:`actors.errors` classes, never driver exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from events.common import ProviderInfo, Usage
from events.support import ImageFindings, ImageQuality, Source, TextLine


@dataclass(frozen=True, slots=True)
class Detection:
    language: str
    confidence: float
    provider: ProviderInfo
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class ImageAnalysis:
    provider: ProviderInfo
    caption: str | None = None
    tags: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    ocr_lines: tuple[TextLine, ...] = ()
    quality: ImageQuality | None = None
    usage: Usage = Usage()

    @property
    def ocr_text(self) -> str:
        return "\n".join(line.text for line in self.ocr_lines)


@dataclass(frozen=True, slots=True)
class Translation:
    text: str
    from_language: str
    to_language: str
    provider: ProviderInfo
    detected: bool = False
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class ResponseDraft:
    text: str
    confidence: float
    provider: ProviderInfo
    sources: tuple[Source, ...] = ()
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class Audio:
    data: bytes
    media_type: str
    format: str
    duration_seconds: float
    voice: str
    provider: ProviderInfo
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    media_type: str
    provider: ProviderInfo
    revised_prompt: str | None = None
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class ResponseQuery:
    """What the responder answers: the customer's message (in the responder's language) and
    what was found in their images. ``model``: a model or deployment to answer with instead
    of the responder's own (a cheaper one, when a budget asks); None: its own. A responder
    with no choice of model ignores it (its result names the model that answered)."""

    message: str
    language: str = "en"
    customer_name: str | None = None
    images: tuple[ImageFindings, ...] = field(default=())
    model: str | None = None


@runtime_checkable
class LanguageDetector(Protocol):
    async def detect(self, text: str) -> Detection: ...


@runtime_checkable
class ImageAnalyzer(Protocol):
    async def analyze(
        self, image: bytes, media_type: str, features: tuple[str, ...]
    ) -> ImageAnalysis: ...


@runtime_checkable
class Translator(Protocol):
    async def translate(
        self, text: str, to_language: str, from_language: str | None = None
    ) -> Translation: ...


@runtime_checkable
class Responder(Protocol):
    """Answers a support inquiry grounded in the knowledge base."""

    async def respond(self, query: ResponseQuery) -> ResponseDraft: ...


@runtime_checkable
class SpeechSynthesizer(Protocol):
    async def synthesize(
        self, text: str, language: str, voice: str | None = None, style: str | None = None
    ) -> Audio: ...


@runtime_checkable
class ImageGenerator(Protocol):
    """Makes one image from a text prompt (``size`` like ``"1024x1024"``)."""

    async def generate(self, prompt: str, *, size: str | None = None) -> GeneratedImage: ...
