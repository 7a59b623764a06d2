"""The actors of the campaign and quality workflows: image generation, asset clean-up
(compensation), brand compliance and product inspection.

An image generator that lays out cards (the offline :class:`CardImageGenerator
<actors.providers.local.imagegen.CardImageGenerator>`, the fake) implements
:class:`CardRenderer` and gets the request's structured fields (colours, text, an image to
show); any other :class:`~actors.capabilities.ImageGenerator` (an Azure image deployment) gets
the prompt.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from PIL import Image

from actors.blobstore import BlobStore
from actors.capabilities import GeneratedImage, ImageAnalyzer, ImageGenerator
from actors.compliance import brand_compliance, check_label, inspect_surface, open_rgb
from actors.errors import PermanentError
from actors.runtime import Actor
from events.base import Event
from events.campaign import (
    AssetDeleted,
    BrandComplianceChecked,
    CheckBrandComplianceRequested,
    DeleteAssetRequested,
    GenerateImageRequested,
    ImageGenerated,
)
from events.quality import Defect, ImageInspected, InspectImageRequested, InspectionCheck

_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True, slots=True)
class CardSpec:
    """What to lay out on a card, from a :class:`GenerateImageRequested`."""

    kind: str
    width: int
    height: int
    prompt: str
    title: str | None = None
    text: str | None = None
    logo_text: str | None = None
    colours: tuple[str, ...] = ()
    language: str | None = None
    variant: int = 0
    reference: str | None = None
    base_image: bytes | None = None
    highlight: tuple[int, int, int, int] | None = None
    """x, y, width, height of a region of ``base_image`` to mark."""


@runtime_checkable
class CardRenderer(Protocol):
    async def render_card(self, spec: CardSpec) -> GeneratedImage: ...


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


def image_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as exc:
        raise PermanentError(f"the generated image cannot be decoded: {exc}") from exc


class ImageGenerationActor(Actor):
    service: ClassVar[str] = "imagegen"
    consumes: ClassVar[type[Event]] = GenerateImageRequested

    provider: ImageGenerator

    def __init__(self, generator: ImageGenerator, blobs: BlobStore) -> None:
        self.provider = generator
        self.blobs = blobs

    async def perform(self, request: Event) -> ImageGenerated:
        assert isinstance(request, GenerateImageRequested)
        if isinstance(self.provider, CardRenderer):
            base = await self.blobs.get(request.base_image) if request.base_image else None
            width, height = parse_size(request.size)
            box = request.highlight
            made = await self.provider.render_card(CardSpec(
                kind=request.kind, width=width, height=height, prompt=request.prompt,
                title=request.title, text=request.text, logo_text=request.logo_text,
                colours=request.colours, language=request.language, variant=request.variant,
                reference=request.reference, base_image=base,
                highlight=(box.x, box.y, box.width, box.height) if box else None,
            ))
        else:
            made = await self.provider.generate(request.prompt, size=request.size)
        width, height = await asyncio.to_thread(image_size, made.data)
        ext = _EXT.get(made.media_type, "img")
        name = f"{request.kind}-{request.language or 'xx'}-{request.variant}.{ext}"
        ref = await self.blobs.put(made.data, made.media_type, filename=name)
        return ImageGenerated(
            image=ref, width=width, height=height, revised_prompt=made.revised_prompt,
            provider=made.provider, usage=made.usage,
        )


class AssetActor(Actor):
    """Removes assets from the blob store: the compensation of the steps that made them."""

    service: ClassVar[str] = "assets"
    consumes: ClassVar[type[Event]] = DeleteAssetRequested

    provider: BlobStore

    def __init__(self, blobs: BlobStore) -> None:
        self.provider = blobs

    async def perform(self, request: Event) -> AssetDeleted:
        assert isinstance(request, DeleteAssetRequested)
        for ref in request.assets:
            await self.provider.delete(ref)
        return AssetDeleted(assets=request.assets)


class BrandComplianceActor(Actor):
    """Checks a visual against brand guidelines: OCR (the vision provider) for the wordmark and
    forbidden words, the pixels for the palette (:func:`actors.compliance.brand_compliance`)."""

    service: ClassVar[str] = "compliance"
    consumes: ClassVar[type[Event]] = CheckBrandComplianceRequested

    provider: ImageAnalyzer

    def __init__(self, analyzer: ImageAnalyzer, blobs: BlobStore) -> None:
        self.provider = analyzer
        self.blobs = blobs

    async def perform(self, request: Event) -> BrandComplianceChecked:
        assert isinstance(request, CheckBrandComplianceRequested)
        data = await self.blobs.get(request.image)
        read = await self.provider.analyze(data, request.image.media_type, ("read",))
        lines = [line.text for line in read.ocr_lines]

        def judge() -> BrandComplianceChecked:
            found = brand_compliance(open_rgb(data), lines, request.brand)
            return BrandComplianceChecked(
                image=request.image, score=found.score, checks=found.checks, issues=found.issues,
                ocr_text=read.ocr_text, dominant_colours=found.dominant_colours,
                # the analysis' provider info as it came (cached, what a hit saved), with
                # the model naming what judged it
                provider=read.provider.model_copy(
                    update={"model": f"{read.provider.model or 'ocr'}+palette"}
                ),
                usage=read.usage,
            )

        return await asyncio.to_thread(judge)


class InspectionActor(Actor):
    """Inspects one product photo: against the reference photo (differences → surface defects
    with their boxes) and its label's text read by OCR against the expected text."""

    service: ClassVar[str] = "inspection"
    consumes: ClassVar[type[Event]] = InspectImageRequested

    provider: ImageAnalyzer

    def __init__(self, analyzer: ImageAnalyzer, blobs: BlobStore) -> None:
        self.provider = analyzer
        self.blobs = blobs

    async def perform(self, request: Event) -> ImageInspected:
        assert isinstance(request, InspectImageRequested)
        criteria = request.criteria
        data = await self.blobs.get(request.image)
        reference = await self.blobs.get(request.reference_image) if request.reference_image else None
        features = ("read", "quality") if criteria.expected_label_text else ("quality",)
        analysis = await self.provider.analyze(data, request.image.media_type, features)
        lines = [line.text for line in analysis.ocr_lines]

        def inspect() -> ImageInspected:
            product = open_rgb(data)
            checks: list[InspectionCheck] = []
            defects: list[Defect] = []
            if reference is not None:
                check, found = inspect_surface(product, open_rgb(reference), criteria)
                checks.append(check)
                defects.extend(found)
            if criteria.expected_label_text:
                check, found = check_label(lines, criteria)
                checks.append(check)
                defects.extend(found)
            notes = []
            if not checks:
                notes.append("nothing to check: give a reference image or an expected label text")
            quality = analysis.quality
            if quality is not None and quality.issues:
                notes.append(f"photo {', '.join(quality.issues)}: results may be unreliable")
            return ImageInspected(
                image=request.image, width=product.width, height=product.height,
                defects=tuple(defects), checks=tuple(checks), label_text=analysis.ocr_text,
                quality_score=min((c.score for c in checks), default=0.0),
                passed=bool(checks) and all(c.passed for c in checks), notes=tuple(notes),
                provider=analysis.provider.model_copy(
                    update={"model": f"{analysis.provider.model or 'vision'}+diff"}
                ),
                usage=analysis.usage,
            )

        return await asyncio.to_thread(inspect)


CREATIVE_SERVICES: dict[str, type[Actor]] = {
    a.service: a for a in (ImageGenerationActor, AssetActor, BrandComplianceActor, InspectionActor)
}
"""The actors of the campaign and quality workflows, by service name."""
