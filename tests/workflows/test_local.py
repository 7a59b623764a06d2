"""The campaign and quality workflows on the real offline providers: RapidOCR, Apertium,
eSpeak and the card renderer, in one process."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from actors.creative import BrandComplianceActor, CardSpec
from actors.providers.local.imagegen import CardImageGenerator
from actors.providers.local.vision import LocalImageAnalyzer
from events.campaign import (
    BrandComplianceChecked,
    BrandGuidelines,
    CampaignReady,
    CheckBrandComplianceRequested,
)
from events.quality import InspectionCriteria, InspectionReported, InspectionRequested
from service.workflow_cli import WorkflowService, WorkflowSettings
from tests.workflows.harness import campaign, inspection_images

pytestmark = pytest.mark.local

BRAND = BrandGuidelines(colours=("#0B5FFF", "#FFB400"), forbidden_words=("cheap",), logo_text="AQUAPURE")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def svc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkflowService]:
    tmp = tmp_path_factory.mktemp("local-workflows")
    settings = WorkflowSettings(store="memory://", blobs=tmp / "blobs", bus_retry_delay=0.01)
    service = WorkflowService(settings, actors=["vision", "translation", "speech"])
    async with service:
        yield service


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.asyncio(loop_scope="module")
async def test_campaign_offline_in_english_and_spanish(svc: WorkflowService) -> None:
    """A real campaign: the cards are rendered, the description is translated by Apertium,
    the voice-over is a WAV, and OCR + the palette score each visual market-ready."""
    request = campaign("camp-local", languages=("en", "es"), image_size="768x768")
    await svc.submit_event(request, request.campaign_id)
    done = await svc.wait(request.campaign_id, timeout=120)
    assert isinstance(done.data, CampaignReady), done.data
    assert done.data.market_ready == ("en", "es"), done.data.languages
    es = done.data.languages[1]
    assert es.description is not None
    assert "botella" in es.description.lower()
    assert es.visual is not None
    assert es.voice_over is not None
    assert es.compliance_score is not None
    assert es.compliance_score >= 0.8
    with Image.open(svc.blobs.path(es.visual)) as visual:
        assert visual.size == (768, 768)
    with wave.open(str(svc.blobs.path(es.voice_over))) as audio:
        assert audio.getnframes() > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_inspection_offline_good_passes_defective_fails(svc: WorkflowService) -> None:
    """OCR reads the label on both photos; the comparison with the reference finds the stain
    on the defective one; Spanish documentation is translated, with a card and a voice."""
    gen = inspection_images()
    reference = await svc.blobs.put(png(gen.product_photo((640, 480), seed=7)), "image/png", "ref.png")
    good = await svc.blobs.put(png(gen.product_photo(seed=11, brightness=1.04)), "image/png", "good.png")
    bad = await svc.blobs.put(png(gen.product_photo(seed=13, brightness=1.04, defect=True)),
                              "image/png", "bad.png")
    request = InspectionRequested(
        inspection_id="insp-local", images=(good, bad), reference_image=reference,
        criteria=InspectionCriteria(expected_label_text=gen.LABEL_TEXT),
        documentation_languages=("en", "es"),
    )
    await svc.submit_event(request, request.inspection_id)
    done = await svc.wait(request.inspection_id, timeout=120)
    assert isinstance(done.data, InspectionReported), done.data
    first, second = done.data.images
    assert first.passed, first
    assert not second.passed
    assert [c.name for c in second.checks if c.passed] == ["label"]
    (defect,) = second.defects
    assert defect.box is not None
    x, y, width, height = gen.DEFECT_BOX
    assert abs(defect.box.x - x) < 20
    assert abs(defect.box.y - y) < 20
    assert abs(defect.box.width - width) < 30
    assert abs(defect.box.height - height) < 30
    es = done.data.documentation[1]
    assert es.failures == ()
    assert es.report is not None
    assert es.report != done.data.documentation[0].report
    assert len(es.corrective_images) == 1
    assert es.voice_instructions is not None


async def test_compliance_of_a_real_card(tmp_path: Path) -> None:
    """The card with the wordmark scores market-ready; the same card showing a forbidden word
    is capped at 0.5 and says which word."""
    from actors.blobstore import FileBlobStore

    generator = CardImageGenerator()
    analyzer = LocalImageAnalyzer()
    blobs = FileBlobStore(tmp_path / "blobs")
    actor = BrandComplianceActor(analyzer, blobs)
    scores = []
    for text in ("Cold water all day long.", "Not a cheap bottle."):
        card = await generator.render_card(CardSpec(
            kind="concept", width=512, height=512, prompt=text, title="AquaPure", text=text,
            logo_text=BRAND.logo_text, colours=BRAND.colours, language="en"))
        ref = await blobs.put(card.data, card.media_type)
        result = await actor.perform(CheckBrandComplianceRequested(image=ref, brand=BRAND))
        assert isinstance(result, BrandComplianceChecked)
        scores.append(result)
    clean, forbidden = scores
    assert clean.score >= 0.8, clean
    assert "AQUAPURE" in clean.ocr_text
    assert forbidden.score <= 0.5
    assert any("cheap" in issue for issue in forbidden.issues)
