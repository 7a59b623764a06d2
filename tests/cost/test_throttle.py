"""Quota-aware throttling: token buckets, Retry-After pauses absorbed inside the wrapper,
and a 429 storm that the support workflow rides out without bouncing a message."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from actors.errors import ThrottledError
from actors.providers.fake import FakeTranslator, throttled
from actors.throttle import (
    LocalRateLimiter,
    Quota,
    RedisRateLimiter,
    ThrottledProvider,
    estimate_tokens,
    throttled_provider,
)
from events import ResponseReady
from service.cost_settings import CacheSettings, CostSettings, ThrottleSettings
from service.testing import FakeService, make_inquiry


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class TestLocalBucket:
    async def test_requests_per_minute(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(requests_per_minute=60), clock=t)
        assert [await bucket.acquire(1) for _ in range(60)] == [0.0] * 60
        assert await bucket.acquire(1) == pytest.approx(1.0)
        t.now += 0.5
        assert await bucket.acquire(1) == pytest.approx(0.5)
        t.now += 0.5
        assert await bucket.acquire(1) == 0.0

    async def test_tokens_per_minute(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(tokens_per_minute=600), clock=t)
        assert await bucket.acquire(500) == 0.0
        assert await bucket.acquire(200) == pytest.approx(10.0)  # 100 missing at 10/s
        t.now += 10
        assert await bucket.acquire(200) == 0.0

    async def test_pause_stops_everything(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(), clock=t)
        await bucket.pause(2.0)
        assert await bucket.acquire(1) == pytest.approx(2.0)
        t.now += 2
        assert await bucket.acquire(1) == 0.0


class TestWrapper:
    async def test_slows_to_the_allowed_rate(self) -> None:
        """70 calls at 60 a minute (a full bucket of 60 first): the last 10 wait a second
        each, and no call fails."""
        t = VirtualTime()
        fake = FakeTranslator()
        wrapped = ThrottledProvider(fake, LocalRateLimiter(Quota(60), clock=t),
                                    deployment="d", sleep=t.sleep)
        for i in range(70):
            await wrapped.translate(f"t{i}", "en")
        assert len(fake.behaviour.calls) == 70
        assert t.now == pytest.approx(10.0)

    async def test_retry_after_pauses_and_retries_inside(self) -> None:
        t = VirtualTime()
        fake = FakeTranslator()
        fake.behaviour.fail_next(throttled(3.0), throttled(2.0))
        wrapped = ThrottledProvider(fake, LocalRateLimiter(Quota(), clock=t),
                                    deployment="d", sleep=t.sleep)
        result = await wrapped.translate("hola", "en", "es")
        assert result.text == "[es>en] hola"
        assert len(fake.behaviour.calls) == 3
        assert t.now == pytest.approx(5.0)
        assert wrapped.stats.throttled == 2

    async def test_gives_up_after_max_retries(self) -> None:
        t = VirtualTime()
        fake = FakeTranslator()
        fake.behaviour.fail_always(throttled(1.0))
        wrapped = ThrottledProvider(fake, LocalRateLimiter(Quota(), clock=t),
                                    deployment="d", max_retries=2, sleep=t.sleep)
        with pytest.raises(ThrottledError):
            await wrapped.translate("hola", "en")
        assert len(fake.behaviour.calls) == 3
        assert wrapped.stats.gave_up == 1

    def test_token_estimate(self) -> None:
        assert estimate_tokens(("a" * 9, "en"), {}) == 3  # 9 characters of text
        assert estimate_tokens(("a" * 9, "en"), {}, "characters") == 9
        assert estimate_tokens((), {}) == 1

    async def test_other_attributes_are_the_providers(self) -> None:
        fake = FakeTranslator()
        wrapped = throttled_provider(fake, LocalRateLimiter(Quota()), deployment="d")
        assert wrapped.behaviour is fake.behaviour


class TestStorm:
    async def test_429_storm_every_inquiry_completes_nothing_dead_lettered(
        self, tmp_path: Path
    ) -> None:
        """Translation answers 429 (Retry-After 0.2 s) eight times: the actor holds its
        messages and pauses, every inquiry completes undegraded, nothing is dead-lettered,
        no saga retry was needed, and the calls waited out the pauses (what they slept, not
        wall time; tests/cost/test_storm.py has a service with a real allowed rate)."""
        cost = CostSettings(
            cache=CacheSettings(enabled=False),
            throttle={"translation": ThrottleSettings(requests_per_minute=600)},
        )
        svc = FakeService(tmp_path, cost=cost)
        async with svc:
            svc.fakes.translation.behaviour.fail_next(*(throttled(0.2) for _ in range(8)))
            for i in range(5):
                await svc.submit(make_inquiry(f"inq-{i}", message=f"hola {i}", language="es"))
            done = await asyncio.gather(*(svc.wait(f"inq-{i}", timeout=30) for i in range(5)))
            await svc.settle()
            letters = await svc.memory.dead_letters()
            wrapped = next(p for a in svc.runtime.actors
                           if isinstance(p := getattr(a, "provider", None), ThrottledProvider))
            states = [await svc.saga(f"inq-{i}") for i in range(5)]
        assert all(isinstance(d.data, ResponseReady) for d in done)
        assert all(d.data.degraded == () for d in done if isinstance(d.data, ResponseReady))
        assert letters == []
        assert wrapped.stats.throttled == 8
        assert len(svc.fakes.translation.behaviour.calls) == 10 + 8
        assert all(s.steps["translate_in"].attempts == 1 for s in states)  # no saga retry
        assert wrapped.stats.waited >= 0.2
        assert wrapped.stats.gave_up == 0


async def test_redis_bucket_is_shared() -> None:
    pytest.importorskip("redis")
    deployment = f"test-{uuid.uuid4().hex}"
    one = RedisRateLimiter("redis://127.0.0.1:6379/15", deployment, Quota(2))
    two = RedisRateLimiter("redis://127.0.0.1:6379/15", deployment, Quota(2))
    try:
        try:
            await one.client.ping()
        except Exception:
            if os.environ.get("CI"):  # CI starts Redis: a missing one is a failure there
                raise
            pytest.skip("no Redis at 127.0.0.1:6379")
        assert await one.acquire(1) == 0.0
        assert await two.acquire(1) == 0.0
        assert await one.acquire(1) > 25  # the shared bucket is empty: ~30 s to the next
        await two.pause(5)
        assert 4 < await one.acquire(1) <= 5
    finally:
        await one.client.delete(one.key)
        await one.close()
        await two.close()


class TestDefaultThrottle:
    def test_external_providers_are_throttled_without_a_quota(self) -> None:
        """No quota configured: an external provider gets a throttle on its headers and
        429s alone; local and fake providers none; a configured one wins; it can be off."""
        cost = CostSettings()
        assert cost.throttle_of("translation", external=True) == ThrottleSettings()
        assert cost.throttle_of("translation") is None
        configured = CostSettings(throttle={"translation": ThrottleSettings(
            requests_per_minute=300)})
        limits = configured.throttle_of("translation", external=True)
        assert limits is not None
        assert limits.requests_per_minute == 300
        assert CostSettings(throttle_external=False).throttle_of("responder",
                                                                 external=True) is None

    def test_wiring_throttles_an_azure_adapter_and_not_a_fake(self, tmp_path: Path) -> None:
        from actors.blobstore import FileBlobStore
        from actors.providers.azure.translation import AzureTranslator
        from service.testing import fake_settings
        from service.wiring import make_actors

        settings = fake_settings(tmp_path)
        azure = AzureTranslator(key="k", region="westeurope")
        actors = make_actors(settings, FileBlobStore(tmp_path), ["translation", "speech"],
                             overrides={"translation": azure})
        providers = {a.service: getattr(a, "provider", None) for a in actors}
        # inside the cache: a hit takes no quota
        translation = providers["translation"]
        assert isinstance(getattr(translation, "inner", None), ThrottledProvider)
        assert not isinstance(getattr(providers["speech"], "inner", None), ThrottledProvider)


class Answering:
    """A responder whose answers use ``tokens`` tokens in all, whatever the question."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.calls = 0

    async def respond(self, message: str) -> object:
        from types import SimpleNamespace

        from events import Usage

        self.calls += 1
        return SimpleNamespace(usage=Usage(input_tokens=2, output_tokens=self.tokens - 2))


class TestUsageCorrection:
    async def test_a_call_that_used_more_than_estimated_is_charged_the_rest(self) -> None:
        """The bucket lends ~chars/4 before a call (2 tokens for 8 characters); the answer
        used 80: the 78 more are taken after it, so the next call waits for them."""
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(tokens_per_minute=100), clock=t)
        wrapped = ThrottledProvider(Answering(80), bucket, deployment="d", sleep=t.sleep)
        await wrapped.respond("x" * 8)
        assert bucket._tokens == pytest.approx(20)
        await wrapped.respond("x" * 120)  # 30 estimated: 10 short, 6 s at 100 a minute
        assert t.now == pytest.approx(6.0)

    async def test_a_call_that_used_less_gives_the_rest_back(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(tokens_per_minute=100), clock=t)
        wrapped = ThrottledProvider(Answering(5), bucket, deployment="d", sleep=t.sleep)
        await wrapped.respond("x" * 200)  # 50 estimated, 5 used
        assert bucket._tokens == pytest.approx(95)

    async def test_characters_are_counted_for_a_translator(self) -> None:
        """A Translator's quota is characters: the bucket takes the text's characters and is
        corrected by the characters billed."""
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(tokens_per_minute=10), clock=t)
        wrapped = ThrottledProvider(FakeTranslator(), bucket, deployment="d", sleep=t.sleep,
                                    unit="characters")
        await wrapped.translate("hola amigo", "en")  # 10 characters: the whole minute's
        assert bucket._tokens == pytest.approx(0)
        await wrapped.translate("hola", "en")
        assert t.now == pytest.approx(24.0)  # 4 characters at 10 a minute

    def test_settings_say_which_unit(self) -> None:
        from pydantic import ValidationError

        chars = ThrottleSettings(characters_per_minute=1000)
        assert (chars.unit, chars.per_minute) == ("characters", 1000)
        tokens = ThrottleSettings(tokens_per_minute=5000)
        assert (tokens.unit, tokens.per_minute) == ("tokens", 5000)
        with pytest.raises(ValidationError, match="not both"):
            ThrottleSettings(tokens_per_minute=1, characters_per_minute=1)

    def test_wiring_gives_the_translator_a_character_bucket(self, tmp_path: Path) -> None:
        from actors.blobstore import FileBlobStore
        from service.testing import fake_settings
        from service.wiring import make_actors

        settings = fake_settings(tmp_path, cost=CostSettings(
            cache=CacheSettings(enabled=False),
            throttle={"translation": ThrottleSettings(characters_per_minute=2_000_000)}))
        (actor,) = make_actors(settings, FileBlobStore(tmp_path), ["translation"])
        provider = getattr(actor, "provider", None)
        assert isinstance(provider, ThrottledProvider)
        assert provider.unit == "characters"


async def test_redis_bucket_takes_corrections() -> None:
    pytest.importorskip("redis")
    deployment = f"test-{uuid.uuid4().hex}"
    bucket = RedisRateLimiter("redis://127.0.0.1:6379/15", deployment, Quota(None, 60))
    try:
        try:
            await bucket.client.ping()
        except Exception:
            if os.environ.get("CI"):
                raise
            pytest.skip("no Redis at 127.0.0.1:6379")
        assert await bucket.acquire(10) == 0.0
        await bucket.consume(50)  # the call used 60: the bucket is empty
        assert await bucket.acquire(1) > 0.5
        await bucket.consume(-30)  # given back
        assert await bucket.acquire(20) == 0.0
    finally:
        await bucket.client.delete(bucket.key)
        await bucket.close()
