"""The quality-control workflow on fakes (the image comparison is the real one): a good and a
defective product photo, documentation in two languages, and bounded fan-out over 50 images."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from actors.capabilities import ImageAnalysis
from actors.providers.fake import FakeImageAnalyzer, FakeProviders
from events.campaign import Box
from events.common import BlobRef
from events.quality import InspectionCriteria, InspectionReported, InspectionRequested
from saga import StepStatus
from service.workflow_cli import WorkflowService, WorkflowSettings
from tests.workflows.harness import WorkflowFakeService, inspection_images

LABEL = "AQUA PURE\n500 ML"


def overlap(a: Box, b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two boxes."""
    bx, by, bw, bh = b
    w = max(0, min(a.x + a.width, bx + bw) - max(a.x, bx))
    h = max(0, min(a.y + a.height, by + bh) - max(a.y, by))
    inter = w * h
    return inter / (a.width * a.height + bw * bh - inter)


async def put_png(svc: WorkflowFakeService, image: object, name: str) -> BlobRef:
    buf = io.BytesIO()
    image.save(buf, "PNG")  # type: ignore[attr-defined]
    ref: BlobRef = await svc.blobs.put(buf.getvalue(), "image/png", filename=name)
    return ref


async def test_good_passes_defective_fails_with_location_and_two_languages(tmp_path: Path) -> None:
    """The good photo passes; the defective one fails with a major surface defect whose box
    is where the stain was painted; en and es documentation each have the report, one
    corrective-action card (the one defect) and voice instructions."""
    gen = inspection_images()
    async with WorkflowFakeService(tmp_path) as svc:
        svc.fakes.vision.ocr_text = LABEL
        reference = await put_png(svc, gen.product_photo((640, 480), seed=7), "reference.png")
        good = await put_png(svc, gen.product_photo(seed=11, brightness=1.04), "good.png")
        bad = await put_png(svc, gen.product_photo(seed=13, brightness=1.04, defect=True), "bad.png")
        request = InspectionRequested(
            inspection_id="insp-1", images=(good, bad), reference_image=reference,
            criteria=InspectionCriteria(expected_label_text="AQUA PURE 500 ML"),
            documentation_languages=("en", "es"),
        )
        await svc.submit_event(request, "insp-1")
        done = await svc.wait("insp-1", timeout=20)
        assert isinstance(done.data, InspectionReported)
        report = done.data
        first, second = report.images
        assert first.passed
        assert first.defects == ()
        assert first.quality_score == 1.0
        assert not second.passed
        (defect,) = second.defects
        assert defect.kind == "surface"
        assert defect.severity == "major"
        assert defect.box is not None
        assert overlap(defect.box, gen.DEFECT_BOX) > 0.6
        assert not report.passed
        assert 0 < report.overall_score < 1
        assert "1 passed, 1 failed" in report.summary
        assert any(r.startswith("Image 2: dark mark") and "Take the unit off the line" in r
                   for r in report.recommendations)

        en, es = report.documentation
        assert (en.language, es.language) == ("en", "es")
        assert en.report is not None
        assert en.report.startswith("Inspection insp-1")
        assert es.report is not None
        assert es.report.splitlines()[0].startswith("[en>es] Inspection")
        for doc in (en, es):
            assert doc.failures == ()
            assert [(c.image_index, c.defect_index) for c in doc.corrective_images] == [(1, 0)]
            assert svc.blobs.path(doc.corrective_images[0].image).is_file()
            assert doc.voice_instructions is not None
        # the card shows the defective photo with the defect's box, text in the language
        cards = [c.args for c in svc.imagegen.behaviour.calls]
        assert sorted(str(a[1]) for a in cards) == ["en", "es"]
        assert all(a[0] == "instruction" for a in cards)
        es_card = next(a for a in cards if a[1] == "es")
        assert es_card[2] == "Image 2 (bad.png) \N{EM DASH} defect 1"
        assert str(es_card[3]).startswith("[en>es] Image 2: dark mark")


async def test_unreadable_label_and_missing_inspection_are_reported(tmp_path: Path) -> None:
    """Without a reference, the label decides: OCR reads nothing, so the image fails with a
    label defect (no box) and a recommendation for the labelling station."""
    gen = inspection_images()
    async with WorkflowFakeService(tmp_path) as svc:
        svc.fakes.vision.ocr_text = ""
        photo = await put_png(svc, gen.product_photo((320, 240)), "unit.png")
        request = InspectionRequested(
            inspection_id="insp-2", images=(photo,),
            criteria=InspectionCriteria(expected_label_text="AQUA PURE 500 ML"),
            documentation_languages=("en",), voice_instructions=False,
        )
        await svc.submit_event(request, "insp-2")
        done = await svc.wait("insp-2", timeout=10)
    assert isinstance(done.data, InspectionReported)
    (image,) = done.data.images
    assert not image.passed
    assert image.quality_score == 0.0
    (defect,) = image.defects
    assert defect.kind == "label"
    assert defect.box is None
    assert "no label text could be read" in defect.description
    assert "labelling station" in done.data.recommendations[0]


class CountingAnalyzer(FakeImageAnalyzer):
    """Counts analyses in flight, each taking a few milliseconds."""

    def __init__(self) -> None:
        super().__init__(ocr_text=LABEL)
        self.in_flight = 0
        self.most = 0

    async def analyze(self, image: bytes, media_type: str, features: tuple[str, ...]) -> ImageAnalysis:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.005)
            return await super().analyze(image, media_type, features)
        finally:
            self.in_flight -= 1


async def test_fan_out_of_50_images_never_exceeds_the_limit(tmp_path: Path) -> None:
    """50 images with a fan-out limit of 4, and actors that would take 32 at once: never more
    than 4 inspections in flight (in the provider, and in the saga state after every change),
    and all 50 are reported."""
    gen = inspection_images()
    analyzer = CountingAnalyzer()
    async with WorkflowFakeService(
        tmp_path, providers=FakeProviders(vision=analyzer), fanout_limit=4, concurrency=32
    ) as svc:
        photo = await put_png(svc, gen.product_photo((64, 48)), "unit.png")
        request = InspectionRequested(
            inspection_id="insp-50", images=(photo,) * 50, reference_image=photo,
            criteria=InspectionCriteria(expected_label_text="AQUA PURE 500 ML"),
            documentation_languages=("en",), voice_instructions=False,
        )
        seen: list[int] = []
        save = svc.store.save

        async def watching_save(state, **kwargs):  # type: ignore[no-untyped-def]
            inspect = [s for k, s in state.steps.items() if k.startswith("inspect[")]
            seen.append(sum(s.status in (StepStatus.DISPATCHED, StepStatus.WAITING_RETRY)
                            for s in inspect))
            return await save(state, **kwargs)

        svc.store.save = watching_save  # type: ignore[method-assign]
        await svc.submit_event(request, "insp-50")
        done = await svc.wait("insp-50", timeout=30)
    assert isinstance(done.data, InspectionReported)
    assert len(done.data.images) == 50
    assert all(image.passed for image in done.data.images)
    assert analyzer.most == 4
    assert max(seen) == 4
    assert len(analyzer.behaviour.calls) == 50


def test_the_limit_comes_from_settings(tmp_path: Path) -> None:
    """AIAPPS_FANOUT_LIMIT sets max_parallel on every fanned-out step of both workflows."""
    settings = WorkflowSettings(store="memory://", blobs=tmp_path / "b", fanout_limit=3,
                                imagegen="fake")
    svc = WorkflowService(settings, actors=[])
    assert svc.coordinator is not None
    for name in ("campaign", "quality"):
        workflow = svc.coordinator.workflows[name]
        assert {s.max_parallel for s in workflow.steps if s.for_each is not None} == {3}
    assert "support" in svc.coordinator.workflows
