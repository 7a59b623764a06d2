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

    def __init__(self, detector: LanguageDetector) -> None:
        self.detector = detector

    async def perform(self, request: Event) -> LanguageDetected:
        assert isinstance(request, DetectLanguageRequested)
        found = await self.detector.detect(request.text)
        return LanguageDetected(
            language=found.language, confidence=found.confidence, provider=found.provider,
            usage=found.usage,
        )


class VisionActor(Actor):
    service: ClassVar[str] = "vision"
    consumes: ClassVar[type[Event]] = AnalyzeImageRequested

    def __init__(self, analyzer: ImageAnalyzer, blobs: BlobStore) -> None:
        self.analyzer = analyzer
        self.blobs = blobs

    async def perform(self, request: Event) -> ImageAnalyzed:
        assert isinstance(request, AnalyzeImageRequested)
        data = await self.blobs.get(request.image)
        found = await self.analyzer.analyze(data, request.image.media_type, request.features)
        return ImageAnalyzed(
            image=request.image, caption=found.caption, tags=found.tags, objects=found.objects,
            ocr_text=found.ocr_text, ocr_lines=found.ocr_lines, quality=found.quality,
            provider=found.provider, usage=found.usage,
        )


class TranslationActor(Actor):
    service: ClassVar[str] = "translation"
    consumes: ClassVar[type[Event]] = TranslateTextRequested

    def __init__(self, translator: Translator) -> None:
        self.translator = translator

    async def perform(self, request: Event) -> TextTranslated:
        assert isinstance(request, TranslateTextRequested)
        done = await self.translator.translate(
            request.text, request.to_language, request.from_language
        )
        return TextTranslated(
            text=done.text, from_language=done.from_language, to_language=done.to_language,
            detected=done.detected, provider=done.provider, usage=done.usage,
        )


class ResponderActor(Actor):
    service: ClassVar[str] = "responder"
    consumes: ClassVar[type[Event]] = GenerateResponseRequested

    def __init__(self, responder: Responder) -> None:
        self.responder = responder

    async def perform(self, request: Event) -> ResponseGenerated:
        assert isinstance(request, GenerateResponseRequested)
        draft = await self.responder.respond(
            ResponseQuery(
                message=request.message, language=request.language,
                customer_name=request.customer_name, images=request.images,
            )
        )
        return ResponseGenerated(
            text=draft.text, sources=draft.sources, confidence=draft.confidence,
            provider=draft.provider, usage=draft.usage,
        )


class SpeechActor(Actor):
    service: ClassVar[str] = "speech"
    consumes: ClassVar[type[Event]] = SynthesizeSpeechRequested

    def __init__(self, synthesizer: SpeechSynthesizer, blobs: BlobStore) -> None:
        self.synthesizer = synthesizer
        self.blobs = blobs

    async def perform(self, request: Event) -> SpeechSynthesized:
        assert isinstance(request, SynthesizeSpeechRequested)
        audio = await self.synthesizer.synthesize(
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
