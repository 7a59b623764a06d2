"""The result cache: deterministic calls answered from the cache, their cost metered as
saved, and the saga's cost right (a hit costs nothing)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

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


class TestSingleFlight:
    """Concurrent identical misses share one provider call; a failing or cancelled leader
    leaves no follower hanging (every wait below is bounded)."""

    def cache(self) -> ResultCache:
        return ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES)

    async def test_ten_identical_requests_one_call(self) -> None:
        cache, fake = self.cache(), FakeTranslator()
        fake.behaviour.latency = 0.05
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(wrapped.translate("hola", "en", "es")
                                             for _ in range(10)))
        assert len(fake.behaviour.calls) == 1
        assert {r.text for r in results} == {"[es>en] hola"}
        paid = [r for r in results if not r.provider.cached]
        assert len(paid) == 1
        assert paid[0].usage.characters == 4
        assert all(r.usage.characters == 0 for r in results if r.provider.cached)
        # the nine followers are hits: the one call's cost each, counted as saved
        assert cache.stats.misses == {"translation": 1}
        assert cache.stats.hits == {"translation": 9}
        assert cache.stats.coalesced == {"translation": 9}
        assert cache.stats.saved["translation"] == 9 * Decimal(20) * 4 / 1_000_000
        again = await wrapped.translate("hola", "en", "es")  # stored: a plain hit
        assert again.provider.cached
        assert len(fake.behaviour.calls) == 1

    async def test_different_requests_do_not_wait_for_each_other(self) -> None:
        cache, fake = self.cache(), FakeTranslator()
        fake.behaviour.fail_next("hang")
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        hung = asyncio.create_task(wrapped.translate("hola", "en", "es"))
        await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            other = await wrapped.translate("adiós", "en", "es")
        assert other.text == "[es>en] adiós"
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung

    async def test_leader_fails_followers_get_the_error_and_the_next_call_retries(
        self,
    ) -> None:
        cache, fake = self.cache(), FakeTranslator()
        fake.behaviour.latency = 0.05
        fake.behaviour.fail_next(transient("fake 503"))
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        async with asyncio.timeout(5):
            outcomes = await asyncio.gather(
                *(wrapped.translate("hola", "en") for _ in range(10)), return_exceptions=True
            )
        assert len(fake.behaviour.calls) == 1
        assert all(isinstance(o, TransientError) for o in outcomes)
        async with asyncio.timeout(5):
            healed = await wrapped.translate("hola", "en")  # nothing was cached: calls again
        assert not healed.provider.cached
        assert len(fake.behaviour.calls) == 2

    async def test_cancelled_leader_hands_over_to_a_follower(self) -> None:
        """The leader's call hangs and its task is cancelled: the followers do not hang and
        are not cancelled; one of them calls the provider, the others share that call."""
        cache, fake = self.cache(), FakeTranslator()
        fake.behaviour.fail_next("hang")
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        leader = asyncio.create_task(wrapped.translate("hola", "en", "es"))
        await asyncio.sleep(0.01)
        followers = [asyncio.create_task(wrapped.translate("hola", "en", "es")) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert len(fake.behaviour.calls) == 1  # they wait for the leader
        leader.cancel()
        async with asyncio.timeout(5):
            results = await asyncio.gather(*followers)
        assert leader.cancelled()
        assert {r.text for r in results} == {"[es>en] hola"}
        assert len(fake.behaviour.calls) == 2
        assert sum(not r.provider.cached for r in results) == 1

    async def test_a_hung_call_is_waited_for_no_longer_than_wait(self) -> None:
        """The leader hangs: its followers call the provider themselves once it is ``wait``
        old, and a request coming after that does not wait at all (a saga's retry after a
        step timeout never joins the call that timed out)."""
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES, wait=0.2)
        fake = FakeTranslator()
        fake.behaviour.fail_next("hang")
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        leader = asyncio.create_task(wrapped.translate("hola", "en"))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(wrapped.translate("hola", "en"))
        await asyncio.sleep(0.01)
        assert cache.waiting == 1
        async with asyncio.timeout(2):
            alone = await follower
        assert not alone.provider.cached
        assert cache.waiting == 0
        assert len(fake.behaviour.calls) == 2
        assert (await wrapped.translate("hola", "en")).provider.cached
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader

    async def test_a_late_request_does_not_join_an_old_call(self) -> None:
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES, wait=0.05)
        fake = FakeTranslator()
        fake.behaviour.fail_next("hang", "hang")
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        leader = asyncio.create_task(wrapped.translate("hola", "en"))
        await asyncio.sleep(0.1)  # older than wait now
        late = asyncio.create_task(wrapped.translate("hola", "en"))
        await asyncio.sleep(0.01)
        assert cache.waiting == 0
        assert len(fake.behaviour.calls) == 2  # called at once, alongside the hung one
        for task in (leader, late):
            task.cancel()
        await asyncio.gather(leader, late, return_exceptions=True)

    async def test_wait_zero_turns_single_flight_off(self) -> None:
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()), pricing=PRICES, wait=0)
        fake = FakeTranslator()
        fake.behaviour.latency = 0.05
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        async with asyncio.timeout(5):
            await asyncio.gather(*(wrapped.translate("hola", "en") for _ in range(3)))
        assert len(fake.behaviour.calls) == 3

    async def test_cancelled_follower_leaves_the_others_alone(self) -> None:
        cache, fake = self.cache(), FakeTranslator()
        fake.behaviour.latency = 0.1
        wrapped = cached_provider("translation", fake, cache, ttl=60)
        leader = asyncio.create_task(wrapped.translate("hola", "en"))
        await asyncio.sleep(0.01)
        quitter = asyncio.create_task(wrapped.translate("hola", "en"))
        stayer = asyncio.create_task(wrapped.translate("hola", "en"))
        await asyncio.sleep(0.01)
        quitter.cancel()
        async with asyncio.timeout(5):
            first, shared = await asyncio.gather(leader, stayer)
        assert quitter.cancelled()
        assert not first.provider.cached
        assert shared.provider.cached
        assert len(fake.behaviour.calls) == 1


async def redis_backend(prefix: str) -> RedisCacheBackend:
    """A Redis backend on database 15 (the test is skipped when no Redis answers, except
    in CI, which starts one)."""
    pytest.importorskip("redis")
    backend = RedisCacheBackend("redis://127.0.0.1:6379/15", prefix=prefix)
    try:
        await backend.client.ping()
    except Exception:
        await backend.close()
        if os.environ.get("CI"):
            raise
        pytest.skip("no Redis at 127.0.0.1:6379")
    return backend


class TestSingleFlightAcrossWorkers:
    """Two workers (two caches, two Redis clients) share the lock of a key in Redis."""

    async def test_identical_misses_in_two_workers_pay_once(self) -> None:
        prefix = f"aiapps-test:{uuid.uuid4().hex}:"
        one, two = await redis_backend(prefix), await redis_backend(prefix)
        try:
            fake = FakeTranslator()
            fake.behaviour.latency = 0.2
            workers = [cached_provider("translation", fake, ResultCache(b, poll_interval=0.01), 60)
                       for b in (one, two)]
            async with asyncio.timeout(5):
                results = await asyncio.gather(*(workers[i % 2].translate("hola", "en", "es")
                                                 for i in range(10)))
            assert len(fake.behaviour.calls) == 1
            assert {r.text for r in results} == {"[es>en] hola"}
            assert sum(not r.provider.cached for r in results) == 1
            assert await one.client.keys(prefix + "lock:*") == []  # released
        finally:
            await one.client.delete(*(await one.client.keys(prefix + "*")) or [prefix])
            await one.close()
            await two.close()

    async def test_the_lock_holder_fails_the_other_worker_calls(self) -> None:
        prefix = f"aiapps-test:{uuid.uuid4().hex}:"
        one, two = await redis_backend(prefix), await redis_backend(prefix)
        try:
            failing, healthy = FakeTranslator(), FakeTranslator()
            failing.behaviour.latency = 0.1
            failing.behaviour.fail_next(transient())
            first = cached_provider("translation", failing, ResultCache(one), 60)
            second = cached_provider("translation", healthy, ResultCache(two, poll_interval=0.01),
                                     60)
            holder = asyncio.create_task(first.translate("hola", "en"))
            await asyncio.sleep(0.03)  # it holds the lock now
            async with asyncio.timeout(5):
                result = await second.translate("hola", "en")
                with pytest.raises(TransientError):
                    await holder
            assert result.text == "[en>en] hola"
            assert len(failing.behaviour.calls) == 1
            assert len(healthy.behaviour.calls) == 1  # called once the lock was given back
        finally:
            await one.client.delete(*(await one.client.keys(prefix + "*")) or [prefix])
            await one.close()
            await two.close()

    async def test_a_lock_never_released_is_waited_out(self) -> None:
        """A worker that died holding the lock: the others call after ``wait``."""
        prefix = f"aiapps-test:{uuid.uuid4().hex}:"
        backend = await redis_backend(prefix)
        try:
            cache = ResultCache(backend, wait=0.3, poll_interval=0.01)
            fake = FakeTranslator()
            wrapped = cached_provider("translation", fake, cache, 60)
            key = wrapped._key(text="hola", to="en", source=None)
            assert await backend.claim(key, 0.3) is not None  # the dead worker's lock
            async with asyncio.timeout(5):
                result = await wrapped.translate("hola", "en")
            assert not result.provider.cached
            assert len(fake.behaviour.calls) == 1
        finally:
            await backend.client.delete(*(await backend.client.keys(prefix + "*")) or [prefix])
            await backend.close()


def _connected(client: Any) -> int:
    pool = client.connection_pool
    return sum(c.is_connected for c in (*pool._available_connections, *pool._in_use_connections))


async def test_service_close_closes_its_redis_clients(tmp_path: Path) -> None:
    """The cache's Redis client and the throttle's are closed with the service (the runtime
    closes each actor's provider; the wrappers close what they own), once each, however many
    actors share them."""
    from actors.throttle import RedisRateLimiter, ThrottledProvider
    from service.cost_settings import ThrottleSettings

    probe = await redis_backend("aiapps-test:")
    await probe.close()
    version = f"test-{uuid.uuid4().hex}"
    cost = CostSettings(
        cache=CacheSettings(url="redis://127.0.0.1:6379/15", version=version),
        throttle={"translation": ThrottleSettings(requests_per_minute=6000)},
    )
    svc = FakeService(tmp_path, pricing=PRICES, cost=cost)
    clients: dict[int, Any] = {}
    async with svc:
        svc.fakes.language.language = "es"
        image: BlobRef = await svc.blobs.put(b"\x89PNG photo", "image/png", "a.png")
        await spanish_inquiry(svc, "inq-1", image)
        throttle_keys: list[str] = []
        for actor in svc.runtime.actors:
            provider = getattr(actor, "provider", None)
            cache = getattr(provider, "cache", None)
            if isinstance(cache, ResultCache):
                assert isinstance(cache.backend, RedisCacheBackend)
                clients[id(cache.backend.client)] = cache.backend.client
                provider = getattr(provider, "inner", None)
            if isinstance(provider, ThrottledProvider):
                limiter = provider.limiter
                assert isinstance(limiter, RedisRateLimiter)
                clients[id(limiter.client)] = limiter.client
                throttle_keys.append(limiter.key)
        assert len(clients) == 2  # one cache client shared by every service, one throttle
        assert all(_connected(c) > 0 for c in clients.values())
    assert [_connected(c) for c in clients.values()] == [0, 0]
    cleanup = await redis_backend("")
    try:
        keys = await cleanup.client.keys(f"aiapps:cache:v{version}:*")
        await cleanup.client.delete(*keys, *throttle_keys)
    finally:
        await cleanup.close()
