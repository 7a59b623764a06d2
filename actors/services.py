"""One actor per capability: language detection, image analysis with OCR, translation,
response generation, speech synthesis."""

from __future__ import annotations

from typing import ClassVar

from actors.blobstore import BlobStore
from actors.capabilities import (
    ImageAnalyzer,
    LanguageDetector,
    Responder,
    ResponseQuery,
    SpeechSynthesizer,
    Translator,
)
from actors.runtime import Actor
from events.base import Event
from events.support import (
    AnalyzeImageRequested,
    DetectLanguageRequested,
    GenerateResponseRequested,
    ImageAnalyzed,
    LanguageDetected,
    ResponseGenerated,
    SpeechSynthesized,
    SynthesizeSpeechRequested,
    TextTranslated,
    TranslateTextRequested,
)


class LanguageActor(Actor):
    service: ClassVar[str] = "language"
    consumes: ClassVar[type[Event]] = DetectLanguageRequested

    provider: LanguageDetector

    def __init__(self, detector: LanguageDetector) -> None:
        self.provider = detector

    async def perform(self, request: Event) -> LanguageDetected:
        assert isinstance(request, DetectLanguageRequested)
        found = await self.provider.detect(request.text)
        return LanguageDetected(
            language=found.language, confidence=found.confidence, provider=found.provider,
            usage=found.usage,
        )


class VisionActor(Actor):
    service: ClassVar[str] = "vision"
    consumes: ClassVar[type[Event]] = AnalyzeImageRequested

    provider: ImageAnalyzer

    def __init__(self, analyzer: ImageAnalyzer, blobs: BlobStore) -> None:
        self.provider = analyzer
        self.blobs = blobs

    async def perform(self, request: Event) -> ImageAnalyzed:
        assert isinstance(request, AnalyzeImageRequested)
        data = await self.blobs.get(request.image)
        found = await self.provider.analyze(data, request.image.media_type, request.features)
        return ImageAnalyzed(
            image=request.image, caption=found.caption, tags=found.tags, objects=found.objects,
            ocr_text=found.ocr_text, ocr_lines=found.ocr_lines, quality=found.quality,
            provider=found.provider, usage=found.usage,
        )


class TranslationActor(Actor):
    service: ClassVar[str] = "translation"
    consumes: ClassVar[type[Event]] = TranslateTextRequested

    provider: Translator

    def __init__(self, translator: Translator) -> None:
        self.provider = translator

    async def perform(self, request: Event) -> TextTranslated:
        assert isinstance(request, TranslateTextRequested)
        done = await self.provider.translate(
            request.text, request.to_language, request.from_language
        )
        return TextTranslated(
            text=done.text, from_language=done.from_language, to_language=done.to_language,
            detected=done.detected, provider=done.provider, usage=done.usage,
        )


class ResponderActor(Actor):
    service: ClassVar[str] = "responder"
    consumes: ClassVar[type[Event]] = GenerateResponseRequested

    provider: Responder

    def __init__(self, responder: Responder) -> None:
        self.provider = responder

    async def perform(self, request: Event) -> ResponseGenerated:
        assert isinstance(request, GenerateResponseRequested)
        draft = await self.provider.respond(
            ResponseQuery(
                message=request.message, language=request.language,
                customer_name=request.customer_name, images=request.images,
                model=request.model,
            )
        )
        return ResponseGenerated(
            text=draft.text, sources=draft.sources, confidence=draft.confidence,
            provider=draft.provider, usage=draft.usage,
        )


class SpeechActor(Actor):
    service: ClassVar[str] = "speech"
    consumes: ClassVar[type[Event]] = SynthesizeSpeechRequested

    provider: SpeechSynthesizer

    def __init__(self, synthesizer: SpeechSynthesizer, blobs: BlobStore) -> None:
        self.provider = synthesizer
        self.blobs = blobs

    async def perform(self, request: Event) -> SpeechSynthesized:
        assert isinstance(request, SynthesizeSpeechRequested)
        audio = await self.provider.synthesize(
            request.text, request.language, request.voice, request.style
        )
        ref = await self.blobs.put(audio.data, audio.media_type, filename=f"reply.{audio.format}")
        return SpeechSynthesized(
            audio=ref, format=audio.format, duration_seconds=audio.duration_seconds,
            voice=audio.voice, provider=audio.provider, usage=audio.usage,
        )


SERVICES: dict[str, type[Actor]] = {
    a.service: a for a in (LanguageActor, VisionActor, TranslationActor, ResponderActor, SpeechActor)
}
"""Every actor class by its service name (what ``ai-apps worker --actors`` accepts)."""
