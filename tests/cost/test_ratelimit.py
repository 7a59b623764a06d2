"""Rate-limit headers: parsed in every format the services send, fed to the bucket through
``RateLimiter.observe`` (in-process and in Redis), and handed over by adapters through the
throttle's per-call context."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from actors.errors import ThrottledError
from actors.providers.fake import FakeTranslator
from actors.ratelimit import (
    RateLimitInfo,
    collecting,
    parse_duration,
    parse_rate_limit_headers,
    report,
)
from actors.throttle import LocalRateLimiter, Quota, RedisRateLimiter, ThrottledProvider
from events.common import Usage
from tests.cost.test_throttle import VirtualTime


class Headers(dict[str, str]):
    """A case-insensitive mapping, as httpx, aiohttp and azure-core headers are."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in values.items()})

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5),
    ("59.1s", 59.1), ("100us", 0.0001), ("250µs", 0.00025), ("7ns", 7e-9), ("2m", 120.0),
    ("12", 12.0), ("0", 0.0), ("0.25", 0.25), (" 3s ", 3.0), ("1S", 1.0),
    ("-1", None), ("", None), ("soon", None), ("1x", None), ("s", None), ("1s2", None),
    ("nan", None), ("inf", None), (None, None),
])
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_headers() -> None:
    info = parse_rate_limit_headers(Headers({
        "x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
    }), cap=600)
    assert info == RateLimitInfo(
        remaining_requests=59, remaining_tokens=149984, reset_requests=1.0, reset_tokens=360.0,
        limit_requests=60, limit_tokens=150000,
    )


def test_azure_openai_headers_and_the_cap() -> None:
    """Azure OpenAI: the two ``remaining`` headers on a success; ``-1`` means "not known";
    a 429 adds ``retry-after-ms`` (which wins over ``Retry-After``); resets are capped."""
    success = parse_rate_limit_headers(Headers({
        "x-ratelimit-remaining-requests": "79", "x-ratelimit-remaining-tokens": "61353",
        "x-ratelimit-limit-tokens": "-1", "x-ratelimit-reset-tokens": "-1",
    }))
    assert success == RateLimitInfo(remaining_requests=79, remaining_tokens=61353)
    throttled = parse_rate_limit_headers(Headers({
        "Retry-After": "2", "retry-after-ms": "1500", "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }))
    assert throttled == RateLimitInfo(remaining_tokens=0, reset_tokens=60.0, retry_after=1.5)


def test_translator_and_vision_send_retry_after_only() -> None:
    assert parse_rate_limit_headers(Headers({"Retry-After": "7"})) == RateLimitInfo(retry_after=7)
    assert parse_rate_limit_headers(Headers({"x-ms-retry-after-ms": "250"})) == RateLimitInfo(
        retry_after=0.25
    )
    assert parse_rate_limit_headers(Headers({"content-type": "application/json"})) is None
    assert parse_rate_limit_headers(None) is None
    assert parse_rate_limit_headers(Headers({"x-ratelimit-remaining-requests": "many"})) is None


def test_a_report_outside_a_throttle_goes_nowhere() -> None:
    report(RateLimitInfo(remaining_requests=0))  # no throttle around: nothing happens
    with collecting() as seen:
        report(RateLimitInfo(remaining_requests=3))
        report(None)
        with collecting() as inner:
            report(RateLimitInfo(remaining_tokens=1))
    assert seen == [RateLimitInfo(remaining_requests=3)]
    assert inner == [RateLimitInfo(remaining_tokens=1)]


class TestObserveLocal:
    async def test_nothing_left_until_the_reset(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(), clock=t)  # no quota configured: the service's word
        await bucket.observe(RateLimitInfo(remaining_requests=0, reset_requests=2.5))
        assert await bucket.acquire(1) == pytest.approx(2.5)
        t.now += 1
        assert await bucket.acquire(1) == pytest.approx(1.5)
        t.now += 1.5
        assert await bucket.acquire(1) == 0.0

    async def test_never_more_than_remaining_before_the_reset(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(requests_per_minute=600), clock=t)
        await bucket.observe(RateLimitInfo(remaining_requests=3, reset_requests=10))
        assert [await bucket.acquire(1) for _ in range(3)] == [0.0] * 3
        assert await bucket.acquire(1) == pytest.approx(10.0)
        t.now += 10
        assert await bucket.acquire(1) == 0.0  # the reset: the configured bucket again

    async def test_tokens_window(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(), clock=t)
        await bucket.observe(RateLimitInfo(remaining_tokens=100, reset_tokens=6))
        assert await bucket.acquire(80) == 0.0
        assert await bucket.acquire(30) == pytest.approx(6.0)  # 20 left
        assert await bucket.acquire(20) == 0.0

    async def test_a_stale_higher_count_does_not_loosen_the_window(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(), clock=t)
        await bucket.observe(RateLimitInfo(remaining_requests=0, reset_requests=2))
        await bucket.observe(RateLimitInfo(remaining_requests=5, reset_requests=30))
        assert await bucket.acquire(1) == pytest.approx(2.0)
        t.now += 2
        assert await bucket.acquire(1) == 0.0

    async def test_remaining_without_reset_drains_the_configured_bucket(self) -> None:
        """Azure sends no reset: the bucket holds no more than the service has left, and
        refills at the configured rate."""
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(requests_per_minute=60), clock=t)
        await bucket.observe(RateLimitInfo(remaining_requests=0))
        assert await bucket.acquire(1) == pytest.approx(1.0)
        unconfigured = LocalRateLimiter(Quota(), clock=t)
        await unconfigured.observe(RateLimitInfo(remaining_requests=0))
        assert await unconfigured.acquire(1) == 0.0  # no quota to drain, no reset to wait for

    async def test_a_lower_limit_slows_the_bucket(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(requests_per_minute=600, tokens_per_minute=10_000),
                                  clock=t)
        await bucket.observe(RateLimitInfo(limit_requests=60, limit_tokens=600))
        assert bucket.requests_per_minute == 60
        assert bucket.tokens_per_minute == 600
        assert [await bucket.acquire(1) for _ in range(60)] == [0.0] * 60
        assert await bucket.acquire(1) == pytest.approx(1.0)  # 60 a minute, not 600
        await bucket.observe(RateLimitInfo(limit_requests=6000))  # never above the quota
        assert bucket.requests_per_minute == 600
        assert LocalRateLimiter(Quota()).requests_per_minute is None  # never invented

    async def test_retry_after_pauses(self) -> None:
        t = VirtualTime()
        bucket = LocalRateLimiter(Quota(), clock=t)
        await bucket.observe(RateLimitInfo(retry_after=1.5))
        assert await bucket.acquire(1) == pytest.approx(1.5)


class Reporting:
    """A translator whose answers carry rate-limit headers, reported as an adapter does."""

    def __init__(self, *infos: RateLimitInfo | None) -> None:
        self.inner = FakeTranslator()
        self.infos = list(infos)

    async def translate(self, text: str, to: str, source: str | None = None) -> Any:
        result = await self.inner.translate(text, to, source)
        report(self.infos.pop(0) if self.infos else None)
        return result


class TestWrapper:
    async def test_headers_of_an_answer_hold_the_next_call(self) -> None:
        t = VirtualTime()
        provider = Reporting(RateLimitInfo(remaining_requests=0, reset_requests=4.0))
        wrapped = ThrottledProvider(provider, LocalRateLimiter(Quota(), clock=t),
                                    deployment="d", sleep=t.sleep)
        await wrapped.translate("uno", "en")
        assert t.now == 0
        await wrapped.translate("dos", "en")
        assert t.now == pytest.approx(4.0)  # waited for the reset instead of earning a 429
        assert wrapped.stats.observed == 1
        assert wrapped.stats.throttled == 0

    async def test_a_429s_headers_are_observed(self) -> None:
        """The 429 says Retry-After 1 and that the token window resets in 3 s: the retry
        waits for both."""
        t = VirtualTime()
        fake = FakeTranslator()
        fake.behaviour.fail_next(ThrottledError(
            "429", retry_after=1.0, rate_limit=RateLimitInfo(remaining_tokens=0, reset_tokens=3)
        ))
        wrapped = ThrottledProvider(fake, LocalRateLimiter(Quota(), clock=t), deployment="d",
                                    sleep=t.sleep)
        await wrapped.translate("hola", "en")
        assert t.now == pytest.approx(3.0)
        assert len(fake.behaviour.calls) == 2

    async def test_a_failing_limiter_does_not_fail_the_call(self) -> None:
        class Broken(LocalRateLimiter):
            async def observe(self, info: RateLimitInfo) -> None:
                raise OSError("redis down")

        provider = Reporting(RateLimitInfo(remaining_requests=0, reset_requests=1))
        wrapped = ThrottledProvider(provider, Broken(Quota()), deployment="d")
        result = await wrapped.translate("hola", "en")
        assert result.usage == Usage(characters=4)

    async def test_aclose_closes_provider_and_limiter_once(self) -> None:
        closed: list[str] = []

        class Closing(FakeTranslator):
            async def aclose(self) -> None:
                closed.append("provider")

        class Limiter(LocalRateLimiter):
            async def close(self) -> None:
                closed.append("limiter")

        wrapped = ThrottledProvider(Closing(), Limiter(Quota()), deployment="d")
        await wrapped.aclose()
        await wrapped.aclose()  # a second actor sharing the provider
        assert closed == ["provider", "limiter"]


async def test_redis_bucket_observes_for_every_worker() -> None:
    pytest.importorskip("redis")
    deployment = f"test-{uuid.uuid4().hex}"
    one = RedisRateLimiter("redis://127.0.0.1:6379/15", deployment, Quota(600))
    two = RedisRateLimiter("redis://127.0.0.1:6379/15", deployment, Quota(600))
    try:
        try:
            await one.client.ping()
        except Exception:
            if os.environ.get("CI"):  # CI starts Redis: a missing one is a failure there
                raise
            pytest.skip("no Redis at 127.0.0.1:6379")
        assert await two.acquire(1) == 0.0
        await one.observe(RateLimitInfo(remaining_requests=2, reset_requests=5))
        assert await two.acquire(1) == 0.0
        assert await one.acquire(1) == 0.0
        assert 4 < await two.acquire(1) <= 5  # the service's two are used up until the reset
        await one.client.delete(one.key)

        await one.observe(RateLimitInfo(limit_requests=2))  # lower than the quota of 600
        assert await two.acquire(1) == 0.0
        assert await two.acquire(1) == 0.0
        assert 25 < await one.acquire(1) <= 30  # 2 a minute now
        await one.client.delete(one.key)

        await one.observe(RateLimitInfo(retry_after=3))
        assert 2 < await two.acquire(1) <= 3
        await one.client.delete(one.key)

        await one.observe(RateLimitInfo(remaining_tokens=10, reset_tokens=4))
        assert await two.acquire(8) == 0.0
        assert 3 < await two.acquire(5) <= 4
    finally:
        await one.client.delete(one.key)
        await one.close()
        await two.close()
