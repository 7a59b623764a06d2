"""Cache hits seen through the actors that build on an image analysis."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

from PIL import Image

from actors.blobstore import FileBlobStore
from actors.cache import CachedImageAnalyzer, ResultCache, StoreCacheBackend
from actors.creative import BrandComplianceActor, InspectionActor
from actors.providers.fake import FakeImageAnalyzer
from events.campaign import BrandGuidelines, CheckBrandComplianceRequested
from events.quality import InspectImageRequested, InspectionCriteria
from saga.cost import Price, PriceTable
from saga.memory_store import InMemorySagaStore

PRICES = PriceTable(version="t", prices=(
    Price(provider="fake", model="fake-*", per_1k_transactions=Decimal(500)),
))


class TestHitsInsideCompositeActors:
    async def test_compliance_and_inspection_keep_a_hits_cached_flag_and_saving(
        self, tmp_path: Path
    ) -> None:
        """The compliance and inspection actors build their results on a (cached) image
        analysis: a hit stays a hit on their results, with what it saved."""
        blobs = FileBlobStore(tmp_path)
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (11, 95, 255)).save(buf, "PNG")
        ref = await blobs.put(buf.getvalue(), "image/png")
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES)
        vision = CachedImageAnalyzer(FakeImageAnalyzer(ocr_text="ACME"), cache, ttl=3600)
        compliance = BrandComplianceActor(vision, blobs)
        inspection = InspectionActor(vision, blobs)
        creq = CheckBrandComplianceRequested(image=ref, brand=BrandGuidelines(colours=("#0B5FFF",)))
        ireq = InspectImageRequested(image=ref,
                                     criteria=InspectionCriteria(expected_label_text="ACME"))
        assert not (await compliance.perform(creq)).provider.cached
        second = await compliance.perform(creq)
        await inspection.perform(ireq)
        third = await inspection.perform(ireq)
        assert cache.stats.total_hits == 2
        assert second.provider.cached
        assert second.provider.saved is not None
        assert third.provider.cached
        assert third.provider.saved is not None
