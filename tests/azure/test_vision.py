"""AzureImageAnalyzer through azure-ai-vision-imageanalysis 1.x (aio) against the loopback fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.capabilities import ImageAnalyzer
from actors.errors import AuthError, PermanentError, ThrottledError, TransientError
from actors.providers.azure.vision import AzureImageAnalyzer
from tests.azure.conftest import IMAGES, KEY
from tests.azure_fakes import FakeAzure, drop, server_error, throttle

pytestmark = pytest.mark.azure

LABEL = (IMAGES / "product_label_es.png").read_bytes()


@pytest.fixture
async def analyzer(fake: FakeAzure) -> AsyncIterator[AzureImageAnalyzer]:
    a = AzureImageAnalyzer(fake.url, key=KEY)
    yield a
    await a.aclose()


class TestSuccess:
    async def test_caption_tags_objects_read(self, fake: FakeAzure, analyzer: AzureImageAnalyzer) -> None:
        """One call; the result is parsed into ImageAnalysis with OCR lines in reading order."""
        found = await analyzer.analyze(LABEL, "image/png", ("caption", "tags", "objects", "read", "quality"))
        assert isinstance(analyzer, ImageAnalyzer)
        assert found.caption == "a label on a cardboard box"
        assert found.tags == ("text", "label")  # "box" (0.42) is under min_confidence
        assert found.objects == ("box",)
        assert [line.text for line in found.ocr_lines] == [
            "PEDIDO ORD-2024-58317", "Cafetera Express 2000", "Hecho en UE"
        ]
        assert found.ocr_text.startswith("PEDIDO ORD-2024-58317\n")
        assert 0.9 <= found.ocr_lines[0].confidence <= 0.95
        assert found.quality is None
        assert found.usage.transactions == 4  # one per visual feature ("quality" is ours)
        assert found.provider.model == "image-analysis-2023-10-01"
        [req] = fake.received("analyze")
        assert (req.method, req.path) == ("POST", "/computervision/imageanalysis:analyze")
        assert req.query["api-version"] == "2023-10-01"
        assert req.query["features"].split(",") == ["caption", "tags", "objects", "read"]
        assert req.query["language"] == "en"
        assert req.query["gender-neutral-caption"] == "true"
        assert req.headers["Content-Type"] == "application/octet-stream"
        assert req.headers["Ocp-Apim-Subscription-Key"] == KEY
        assert req.headers["User-Agent"].startswith("azsdk-python-ai-vision-imageanalysis/1.")
        assert req.body == LABEL

    async def test_only_read(self, fake: FakeAzure, analyzer: AzureImageAnalyzer) -> None:
        found = await analyzer.analyze(LABEL, "image/png", ("read",))
        assert found.caption is None
        assert found.tags == ()
        assert len(found.ocr_lines) == 3
        assert fake.received("analyze")[0].query["features"] == "read"

    async def test_quality_alone_makes_no_call(self, fake: FakeAzure, analyzer: AzureImageAnalyzer) -> None:
        found = await analyzer.analyze(LABEL, "image/png", ("quality",))
        assert found.quality is None
        assert found.usage.transactions == 0
        assert fake.requests == []


class TestErrors:
    async def test_429_is_throttled_with_retry_after_ms(
        self, fake: FakeAzure, analyzer: AzureImageAnalyzer
    ) -> None:
        fake.fail_next("analyze", throttle("2", retry_after_ms="1500"))
        with pytest.raises(ThrottledError) as caught:
            await analyzer.analyze(LABEL, "image/png", ("read",))
        assert caught.value.retry_after == 1.5
        assert len(fake.received("analyze")) == 1

    async def test_503_is_transient(self, fake: FakeAzure, analyzer: AzureImageAnalyzer) -> None:
        fake.fail_next("analyze", server_error(503))
        with pytest.raises(TransientError, match="503"):
            await analyzer.analyze(LABEL, "image/png", ("read",))
        assert len(fake.received("analyze")) == 1

    async def test_bad_image_is_permanent(self, fake: FakeAzure, analyzer: AzureImageAnalyzer) -> None:
        with pytest.raises(PermanentError, match="not valid"):
            await analyzer.analyze(b"not an image", "image/png", ("read",))

    async def test_dropped_connection_is_transient(
        self, fake: FakeAzure, analyzer: AzureImageAnalyzer
    ) -> None:
        fake.fail_next("analyze", drop())
        with pytest.raises(TransientError):
            await analyzer.analyze(LABEL, "image/png", ("read",))

    async def test_wrong_key_is_auth(self, fake: FakeAzure) -> None:
        a = AzureImageAnalyzer(fake.url, key="wrong-key")
        try:
            with pytest.raises(AuthError):
                await a.analyze(LABEL, "image/png", ("read",))
        finally:
            await a.aclose()

    async def test_unknown_feature_is_permanent(self, analyzer: AzureImageAnalyzer) -> None:
        with pytest.raises(PermanentError, match="unknown"):
            await analyzer.analyze(LABEL, "image/png", ("faces",))
