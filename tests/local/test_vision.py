"""Offline image analysis: RapidOCR reads the example photos, Pillow + numpy judge quality."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from actors.capabilities import ImageAnalyzer
from actors.errors import PermanentError, UnsupportedError
from actors.providers.local.vision import LocalImageAnalyzer

pytestmark = pytest.mark.local

IMAGES = Path(__file__).resolve().parents[2] / "examples" / "images"
ALL = ("caption", "tags", "read", "quality")
TIMES = "\N{MULTIPLICATION SIGN}"  # captions write sizes as people do: 960 (times) 720


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def analyzer() -> LocalImageAnalyzer:
    built = LocalImageAnalyzer()
    built.load()
    return built


class TestOcr:
    """OCR reads the order numbers and the label's lines, in reading order."""

    def test_is_an_image_analyzer(self, analyzer: LocalImageAnalyzer) -> None:
        assert isinstance(analyzer, ImageAnalyzer)

    async def test_reads_the_order_number_on_the_label(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("product_label_es.png"), "image/png", ALL)
        assert "ORD-2024-58317" in result.ocr_text
        assert "Cafetera Espresso X200" in result.ocr_text
        assert "Madrid" in result.ocr_text
        order = next(line for line in result.ocr_lines if "ORD-2024-58317" in line.text)
        assert order.confidence > 0.9
        assert all(0.0 <= line.confidence <= 1.0 for line in result.ocr_lines)
        assert result.provider.name == "local"
        assert (result.provider.model or "").startswith("rapidocr")
        assert result.usage.transactions == 1

    async def test_lines_come_top_to_bottom(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("product_label_es.png"), "image/png", ("read",))
        text = result.ocr_text
        positions = [text.index(s) for s in ("SHIPPING", "ORD-2024-58317", "Enviar", "Madrid")]
        assert positions == sorted(positions)

    async def test_reads_the_order_number_on_the_damaged_box(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("damaged_box.png"), "image/png", ("read",))
        assert "ORD-2024-61042" in result.ocr_text
        # Only the features asked for are filled in.
        assert result.caption is None
        assert result.quality is None
        assert result.tags == ()

    async def test_reads_a_jpeg(self, analyzer: LocalImageAnalyzer) -> None:
        out = io.BytesIO()
        Image.open(IMAGES / "damaged_box.png").convert("RGB").save(out, "JPEG", quality=80)
        result = await analyzer.analyze(out.getvalue(), "image/jpeg", ("read",))
        assert "ORD-2024-61042" in result.ocr_text


class TestQuality:
    """The quality check rejects the dark, blurry receipt and passes the sharp photos."""

    async def test_flags_the_blurry_receipt(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("blurry_receipt.png"), "image/png", ("quality",))
        quality = result.quality
        assert quality is not None
        assert not quality.acceptable
        assert "blurry" in quality.issues
        assert "too dark" in quality.issues
        assert quality.sharpness < analyzer.thresholds.min_sharpness
        assert quality.brightness < analyzer.thresholds.min_brightness
        assert (quality.width, quality.height) == (480, 720)

    @pytest.mark.parametrize("name", ["product_label_es.png", "damaged_box.png"])
    async def test_passes_the_sharp_photos(self, analyzer: LocalImageAnalyzer, name: str) -> None:
        result = await analyzer.analyze(image_bytes(name), "image/png", ("quality",))
        quality = result.quality
        assert quality is not None
        assert quality.acceptable, quality.issues
        assert quality.issues == ()
        assert quality.sharpness >= analyzer.thresholds.min_sharpness
        assert (quality.width, quality.height) == (960, 720)
        # Quality alone does not run the OCR model.
        assert result.provider.model == "pillow"
        assert result.ocr_lines == ()

    async def test_a_white_page_with_text_is_not_too_bright(self, analyzer: LocalImageAnalyzer) -> None:
        page = Image.new("RGB", (640, 480), "white")
        draw = ImageDraw.Draw(page)
        for row in range(6):
            draw.text((40, 40 + 60 * row), "Pedido ORD-2024-58317", fill="black", font_size=36)
        result = await analyzer.analyze(png(page), "image/png", ("quality",))
        assert result.quality is not None
        assert result.quality.brightness > analyzer.thresholds.max_brightness
        assert result.quality.acceptable, result.quality.issues

    async def test_flags_a_washed_out_image(self, analyzer: LocalImageAnalyzer) -> None:
        washed = Image.new("RGB", (640, 480), (246, 246, 246))
        ImageDraw.Draw(washed).text((40, 40), "faint", fill=(236, 236, 236), font_size=36)
        result = await analyzer.analyze(png(washed), "image/png", ("quality",))
        assert result.quality is not None
        assert "too bright" in result.quality.issues
        assert "low contrast" in result.quality.issues

    async def test_flags_a_tiny_image(self, analyzer: LocalImageAnalyzer) -> None:
        tiny = Image.new("RGB", (120, 90), (200, 200, 200))
        result = await analyzer.analyze(png(tiny), "image/png", ("quality",))
        assert result.quality is not None
        assert "too small" in result.quality.issues
        assert "low contrast" in result.quality.issues
        assert not result.quality.acceptable


class TestCaptionAndTags:
    """Captions and tags state only what was measured; nothing is guessed."""

    async def test_label_caption_counts_the_lines_read(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("product_label_es.png"), "image/png", ALL)
        lines = len(result.ocr_lines)
        assert result.caption == (f"A 960{TIMES}720 landscape colour image containing {lines} lines of text.")
        assert result.tags == ("text", "document")
        assert result.objects == ()

    async def test_receipt_caption_reports_the_problems(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("blurry_receipt.png"), "image/png", ("caption", "tags"))
        assert result.caption is not None
        pattern = rf"A 480{TIMES}720 portrait colour image \(.*blurry.*\) with no readable text\."
        assert re.fullmatch(pattern, result.caption)
        assert "blurry" in result.tags
        assert "dark" in result.tags
        # The OCR ran for the caption, but its lines were not asked for.
        assert result.ocr_lines == ()

    async def test_greyscale_is_measured(self, analyzer: LocalImageAnalyzer) -> None:
        grey = Image.new("L", (400, 300), 128)
        result = await analyzer.analyze(png(grey), "image/png", ("caption", "tags"))
        assert result.caption is not None
        assert "greyscale" in result.caption
        assert "with no readable text" in result.caption
        assert "greyscale" in result.tags
        assert "text" not in result.tags


class TestErrors:
    """Bad input is a permanent error; a missing package is unsupported, with the fix."""

    async def test_garbage_bytes(self, analyzer: LocalImageAnalyzer) -> None:
        with pytest.raises(PermanentError, match="could not decode"):
            await analyzer.analyze(b"this is not an image", "image/png", ALL)

    async def test_truncated_png(self, analyzer: LocalImageAnalyzer) -> None:
        data = image_bytes("damaged_box.png")
        with pytest.raises(PermanentError, match="could not decode"):
            await analyzer.analyze(data[: len(data) // 3], "image/png", ALL)

    async def test_a_png_labelled_jpeg_is_still_read(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(image_bytes("damaged_box.png"), "image/jpeg", ("quality",))
        assert result.quality is not None

    async def test_octet_stream_is_sniffed(self, analyzer: LocalImageAnalyzer) -> None:
        result = await analyzer.analyze(
            image_bytes("damaged_box.png"), "application/octet-stream", ("quality",)
        )
        assert result.quality is not None

    async def test_empty_bytes(self, analyzer: LocalImageAnalyzer) -> None:
        with pytest.raises(PermanentError, match="empty"):
            await analyzer.analyze(b"", "image/png", ALL)

    async def test_unsupported_media_type(self, analyzer: LocalImageAnalyzer) -> None:
        with pytest.raises(PermanentError, match="unsupported image media type"):
            await analyzer.analyze(b"%PDF-1.7", "application/pdf", ALL)

    async def test_unknown_feature(self, analyzer: LocalImageAnalyzer) -> None:
        with pytest.raises(PermanentError, match="unknown image feature"):
            await analyzer.analyze(image_bytes("damaged_box.png"), "image/png", ("faces",))

    async def test_objects_alone_is_unsupported(self, analyzer: LocalImageAnalyzer) -> None:
        with pytest.raises(UnsupportedError, match="object-detection"):
            await analyzer.analyze(image_bytes("damaged_box.png"), "image/png", ("objects",))

    @pytest.mark.parametrize("module", ["rapidocr", "onnxruntime"])
    def test_missing_package_names_the_install_command(
        self, monkeypatch: pytest.MonkeyPatch, module: str
    ) -> None:
        # None in sys.modules makes the import raise ImportError.
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(UnsupportedError, match=r"pip install 'ai-apps\[local\]'"):
            LocalImageAnalyzer().load()
