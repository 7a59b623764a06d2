"""The result cache: deterministic calls answered from the cache, their cost metered as
saved, and the saga's cost right (a hit costs nothing)."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from actors.cache import (
    CachedTranslator,
    CacheStats,
    RedisCacheBackend,
    ResultCache,
    StoreCacheBackend,
    cached_provider,
)
from actors.capabilities import Audio, ResponseQuery
from actors.errors import TransientError
from actors.providers.fake import (
    FakeImageAnalyzer,
    FakeResponder,
    FakeSpeechSynthesizer,
    FakeTranslator,
    transient,
)
from events import BlobRef, ResponseReady
from saga.cost import Price, PriceTable
from saga.memory_store import InMemorySagaStore
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry

PRICES = PriceTable(version="test-1", prices=(
    Price(provider="fake", model="fake-*", per_1k_input_tokens=Decimal("0.5"),
          per_1k_output_tokens=Decimal("1.5"), per_million_characters=Decimal(20),
          per_1k_transactions=Decimal(2)),
))


def stats_of(svc: FakeService) -> CacheStats:
    for actor in svc.runtime.actors:
        provider = getattr(actor, "provider", None)
        if isinstance(provider, CachedTranslator):
            return provider.stats
    raise AssertionError("no cached provider")


async def spanish_inquiry(svc: FakeService, inquiry_id: str, image: BlobRef) -> ResponseReady:
    await svc.submit(make_inquiry(
        inquiry_id, message="  Mi cafetera llegó rota ", attachments=(image,), voice_reply=True
    ))
    done = await svc.wait(inquiry_id, timeout=10)
    assert isinstance(done.data, ResponseReady)
    return done.data


class TestSupportWorkflowWithCache:
    async def test_same_spanish_inquiry_twice_calls_nothing_cacheable(
        self, tmp_path: Path
    ) -> None:
        """The second identical inquiry makes no translation, OCR, detection or speech call;
        only the (not cacheable) responder runs; the saga costs only that; the saving is the
        first inquiry's cost of those steps."""
        svc = FakeService(tmp_path, pricing=PRICES, cost=CostSettings())
        async with svc:
            svc.fakes.language.language = "es"
            svc.fakes.vision.ocr_text = "PEDIDO ORD-1"
            image: BlobRef = await svc.blobs.put(b"\x89PNG same photo", "image/png", "a.png")
            first = await spanish_inquiry(svc, "inq-1", image)
            before = Counter(c.capability for c in svc.fakes.calls())
            # the same photo again, uploaded anew: a different blob, the same bytes
            again: BlobRef = await svc.blobs.put(b"\x89PNG same photo", "image/png", "b.png")
            second = await spanish_inquiry(svc, "inq-2", again)
            calls = Counter(c.capability for c in svc.fakes.calls()) - before
            stats = stats_of(svc)
        assert calls == Counter(["respond"])
        assert second.text == first.text
        assert second.voice is not None
        assert first.cost is not None
        assert second.cost is not None
        cacheable = {k: v for k, v in first.cost.by_step.items() if k != "respond"}
        assert set(cacheable) == {"analyze_image[0]", "detect_language", "translate_in",
                                  "translate_out", "synthesize_voice"}
        assert all(v > 0 for v in cacheable.values())
        assert second.cost.by_step.get("respond") == first.cost.by_step["respond"]
        assert second.cost.total == first.cost.by_step["respond"]
        assert stats.total_saved == sum(cacheable.values())
        assert stats.hits == {"vision": 1, "language": 1, "translation": 2, "speech": 1}
        assert stats.misses == {"vision": 1, "language": 1, "translation": 2, "speech": 1}
        assert stats.saved["translation"] == (
            first.cost.by_step["translate_in"] + first.cost.by_step["translate_out"]
        )

    async def test_cache_off_calls_every_time(self, tmp_path: Path) -> None:
        off = CostSettings(cache=CacheSettings(enabled=False))
        svc = FakeService(tmp_path, pricing=PRICES, cost=off)
        async with svc:
            svc.fakes.language.language = "es"
            image: BlobRef = await svc.blobs.put(b"img", "image/png")
            await spanish_inquiry(svc, "inq-1", image)
            before = len(svc.fakes.calls())
            await spanish_inquiry(svc, "inq-2", image)
            assert len(svc.fakes.calls()) - before == before


class TestWrapper:
    def cache(self) -> ResultCache:
        return ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES)

    async def test_hit_is_marked_cached_with_zero_usage(self) -> None:
        cache, fake = self.cache(), FakeTranslator()
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        one = await wrapped.translate("hola", "en", "es")
        two = await wrapped.translate("hola ", "EN", "es")  # normalised: the same call
        assert len(fake.behaviour.calls) == 1
        assert not one.provider.cached
        assert two.provider.cached
        assert two.usage.characters == 0
        assert (two.text, two.from_language, two.to_language) == (
            one.text, one.from_language, one.to_language
        )
        assert cache.stats.saved["translation"] == Decimal(20) * 4 / 1_000_000
        await wrapped.translate("hola", "fr", "es")  # other parameters: another key
        assert len(fake.behaviour.calls) == 2

    async def test_failures_are_not_cached(self) -> None:
        cache, fake = self.cache(), FakeTranslator()
        fake.behaviour.fail_next(transient())
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        with pytest.raises(TransientError):
            await wrapped.translate("hola", "en")
        await wrapped.translate("hola", "en")
        assert len(fake.behaviour.calls) == 2

    async def test_vision_by_image_hash_and_features(self) -> None:
        cache, fake = self.cache(), FakeImageAnalyzer(ocr_text="LINE")
        wrapped = cached_provider("vision", fake, cache, ttl=60)
        await wrapped.analyze(b"abc", "image/png", ("read", "caption"))
        hit = await wrapped.analyze(b"abc", "image/png", ("caption", "read"))
        await wrapped.analyze(b"abd", "image/png", ("read", "caption"))
        await wrapped.analyze(b"abc", "image/png", ("read",))
        assert len(fake.behaviour.calls) == 3
        assert hit.ocr_text == "LINE"
        assert hit.provider.cached

    async def test_speech_audio_bytes_round_trip(self) -> None:
        cache, fake = self.cache(), FakeSpeechSynthesizer()
        wrapped = cached_provider("speech", fake, cache, ttl=60)
        one: Audio = await wrapped.synthesize("hola", "es", "v1")
        two: Audio = await wrapped.synthesize("hola", "es", "v1")
        await wrapped.synthesize("hola", "es", "v2")
        assert two.data == one.data
        assert two.provider.cached
        assert len(fake.behaviour.calls) == 2

    async def test_responder_only_when_configured_cacheable(self) -> None:
        assert CacheSettings().ttl_of("responder") is None
        ttl = CacheSettings(responder_cacheable=True).ttl_of("responder")
        assert ttl is not None
        fake = FakeResponder()
        assert cached_provider("responder", fake, self.cache(), None) is fake
        wrapped = cached_provider("responder", fake, self.cache(), ttl)
        await wrapped.respond(ResponseQuery(message="hi"))
        await wrapped.respond(ResponseQuery(message="hi"))
        await wrapped.respond(ResponseQuery(message="hi", language="fr"))
        assert len(fake.behaviour.calls) == 2

    async def test_a_broken_backend_is_a_miss(self) -> None:
        class Broken:
            async def get(self, key: str) -> bytes | None:
                raise OSError("down")

            async def put(self, key: str, value: bytes, ttl: float) -> None:
                raise OSError("down")

            async def close(self) -> None:
                return None

        cache, fake = ResultCache(Broken()), FakeTranslator()
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        await wrapped.translate("hola", "en")
        await wrapped.translate("hola", "en")
        assert len(fake.behaviour.calls) == 2
        assert cache.stats.errors == 4


async def test_redis_backend() -> None:
    """The cache shared through Redis (skipped when no Redis answers)."""
    pytest.importorskip("redis")
    backend = RedisCacheBackend("redis://127.0.0.1:6379/15", prefix=f"aiapps-test:{uuid.uuid4().hex}:")
    try:
        try:
            await backend.client.ping()
        except Exception:
            if os.environ.get("CI"):  # CI starts Redis: a missing one is a failure there
                raise
            pytest.skip("no Redis at 127.0.0.1:6379")
        first, second = ResultCache(backend), ResultCache(backend)  # two workers
        fake = FakeTranslator()
        await cached_provider("translation", fake, first, 60).translate("hola", "en")
        hit = await cached_provider("translation", fake, second, 60).translate("hola", "en")
        assert hit.provider.cached
        assert len(fake.behaviour.calls) == 1
        assert second.stats.total_hits == 1
    finally:
        await backend.close()


async def test_make_actors_caches_in_the_given_store(tmp_path: Path) -> None:
    """With the service's store given, the cache lives there (here SQLite): a second
    wiring over the same store (another worker) gets the first one's result."""
    from actors.blobstore import FileBlobStore
    from actors.cache import cache_stats
    from saga.sqlite_store import SqliteSagaStore
    from service.testing import fake_settings
    from service.wiring import make_actors

    settings = fake_settings(tmp_path, cost=CostSettings(), pricing=PRICES)
    store = SqliteSagaStore(tmp_path / "s.db")
    await store.open()
    try:
        fake = FakeTranslator()
        workers = [
            make_actors(settings, FileBlobStore(tmp_path / "b"), ["translation"],
                        {"translation": fake}, store=store)
            for _ in range(2)
        ]
        for actors in workers:
            provider = getattr(actors[0], "provider")  # noqa: B009
            assert isinstance(provider, CachedTranslator)
            await provider.translate("hola", "en", "es")
        assert len(fake.behaviour.calls) == 1
        second = cache_stats(workers[1])
        assert second is not None
        assert second.total_hits == 1
        assert second.total_saved == Decimal(20) * 4 / 1_000_000
    finally:
        await store.close()
