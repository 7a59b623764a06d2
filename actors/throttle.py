"""Quota-aware throttling: a wrapper around a provider that keeps its calls within the
deployment's quota (requests and tokens per minute), and that answers the service's 429 by
pausing every call to that deployment for its ``Retry-After`` and trying again itself.

So a throttled actor slows down to the allowed rate and holds its messages (its handlers stay
busy waiting: consumption pauses) instead of bouncing them between bus retries and the saga's
retry timers. After ``max_retries`` throttled answers in a row, or when the wait would exceed
``max_wait``, the :class:`ThrottledError` goes to the actor as before.

The bucket is in-process by default; with a ``redis://`` URL it is shared by every worker of
the deployment through one Lua script (atomic on the Redis server, timed by its clock).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from actors.errors import ThrottledError

log = structlog.get_logger("actors.throttle")

CAPABILITY_METHODS = frozenset(
    {"detect", "analyze", "translate", "respond", "synthesize", "generate"}
)


@dataclass(frozen=True, slots=True)
class Quota:
    """A deployment's rate limits (None: no limit of that kind)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


class RateLimiter(Protocol):
    async def acquire(self, tokens: int) -> float:
        """Take one request and ``tokens`` from the bucket; 0.0 when granted, else the
        seconds to wait before asking again (nothing is taken then)."""
        ...

    async def pause(self, seconds: float) -> None:
        """Stop granting anything for ``seconds`` (the service said ``Retry-After``)."""
        ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    """Two token buckets (requests, tokens) refilled continuously, and a pause; in-process."""

    def __init__(self, quota: Quota, clock: Callable[[], float] = time.monotonic) -> None:
        self.quota = quota
        self.clock = clock
        now = clock()
        self._requests = quota.requests_per_minute or 0.0
        self._tokens = quota.tokens_per_minute or 0.0
        self._at = now
        self._paused_until = 0.0

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._at, 0.0)
        self._at = now
        if self.quota.requests_per_minute:
            rpm = self.quota.requests_per_minute
            self._requests = min(rpm, self._requests + elapsed * rpm / 60)
        if self.quota.tokens_per_minute:
            tpm = self.quota.tokens_per_minute
            self._tokens = min(tpm, self._tokens + elapsed * tpm / 60)

    async def acquire(self, tokens: int) -> float:
        now = self.clock()
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        wait = 0.0
        rpm, tpm = self.quota.requests_per_minute, self.quota.tokens_per_minute
        if rpm and self._requests < 1:
            wait = max(wait, (1 - self._requests) * 60 / rpm)
        if tpm:
            need = min(float(tokens), tpm)  # a call larger than the bucket waits for it full
            if self._tokens < need:
                wait = max(wait, (need - self._tokens) * 60 / tpm)
        if wait > 0:
            return wait
        if rpm:
            self._requests -= 1
        if tpm:
            self._tokens -= min(float(tokens), tpm)
        return 0.0

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    async def close(self) -> None:
        return None


# KEYS[1]: the bucket hash. ARGV: rpm, tpm, tokens wanted, pause seconds (0: acquire).
# Returns the seconds to wait as a string (0 when granted). Timed by the server's clock.
_LUA = """
local key = KEYS[1]
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local pause = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'req', 'tok', 'at', 'paused')
local req = tonumber(s[1]) or rpm
local tok = tonumber(s[2]) or tpm
local at = tonumber(s[3]) or now
local paused = tonumber(s[4]) or 0
if pause > 0 then
  paused = math.max(paused, now + pause)
  redis.call('HSET', key, 'paused', tostring(paused))
  redis.call('EXPIRE', key, 3600)
  return '0'
end
if now < paused then
  return tostring(paused - now)
end
local elapsed = math.max(now - at, 0)
if rpm > 0 then req = math.min(rpm, req + elapsed * rpm / 60) end
if tpm > 0 then tok = math.min(tpm, tok + elapsed * tpm / 60) end
local wait = 0
if rpm > 0 and req < 1 then wait = math.max(wait, (1 - req) * 60 / rpm) end
local need = want
if tpm > 0 then
  need = math.min(want, tpm)
  if tok < need then wait = math.max(wait, (need - tok) * 60 / tpm) end
end
if wait == 0 then
  if rpm > 0 then req = req - 1 end
  if tpm > 0 then tok = tok - need end
end
redis.call('HSET', key, 'req', tostring(req), 'tok', tostring(tok), 'at', tostring(now))
redis.call('EXPIRE', key, 3600)
return tostring(wait)
"""


class RedisRateLimiter:
    """The same buckets in Redis, shared by every worker of the deployment."""

    def __init__(self, url: str, deployment: str, quota: Quota,
                 prefix: str = "aiapps:throttle:") -> None:
        import redis.asyncio as aioredis

        self.client: Any = aioredis.from_url(url)
        self.key = prefix + deployment
        self.quota = quota
        self._script: Any = self.client.register_script(_LUA)

    async def _run(self, tokens: int, pause: float) -> float:
        result = await self._script(
            keys=[self.key],
            args=[self.quota.requests_per_minute or 0, self.quota.tokens_per_minute or 0,
                  tokens, pause],
        )
        return float(result.decode() if isinstance(result, bytes) else result)

    async def acquire(self, tokens: int) -> float:
        return await self._run(tokens, 0)

    async def pause(self, seconds: float) -> None:
        await self._run(0, max(seconds, 0.001))

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class ThrottleStats:
    """What throttling did, for telemetry: calls, 429s absorbed, seconds waited."""

    calls: int = 0
    throttled: int = 0
    waited: float = 0.0
    gave_up: int = 0
    by_deployment: dict[str, int] = field(default_factory=dict)


def estimate_tokens(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Tokens a call will use, for the tokens-per-minute bucket: ~4 characters a token of
    its text arguments (at least 1)."""
    chars = 0
    for value in (*args, *kwargs.values()):
        if isinstance(value, str):
            chars += len(value)
        elif hasattr(value, "message"):  # a ResponseQuery
            chars += len(str(value.message))
    return max(1, math.ceil(chars / 4))


class ThrottledProvider:
    """``provider`` within its quota; the capability methods wait for the bucket, and on
    a 429 pause the bucket and try again (attributes other than those are the provider's)."""

    def __init__(
        self,
        provider: Any,
        limiter: RateLimiter,
        *,
        deployment: str,
        max_retries: int = 10,
        max_wait: float = 120.0,
        default_retry_after: float = 1.0,
        stats: ThrottleStats | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = provider
        self.limiter = limiter
        self.deployment = deployment
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.default_retry_after = default_retry_after
        self.stats = stats or ThrottleStats()
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in CAPABILITY_METHODS or not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._call(target, args, kwargs)

        return call

    async def _wait_for_slot(self, tokens: int, waited: float) -> float:
        while (wait := await self.limiter.acquire(tokens)) > 0:
            if waited + wait > self.max_wait:
                raise ThrottledError(
                    f"{self.deployment}: no quota within {self.max_wait:g}s",
                    retry_after=wait, provider=self.deployment,
                )
            await self._sleep(wait)
            waited += wait
            self.stats.waited += wait
        return waited

    async def _call(self, target: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        tokens = estimate_tokens(args, kwargs)
        waited = 0.0
        attempt = 0
        while True:
            try:
                waited = await self._wait_for_slot(tokens, waited)
            except ThrottledError:
                self.stats.gave_up += 1
                raise
            self.stats.calls += 1
            try:
                return await target(*args, **kwargs)
            except ThrottledError as exc:
                attempt += 1
                self.stats.throttled += 1
                self.stats.by_deployment[self.deployment] = (
                    self.stats.by_deployment.get(self.deployment, 0) + 1
                )
                pause = exc.retry_after if exc.retry_after is not None else self.default_retry_after
                if attempt > self.max_retries or waited + pause > self.max_wait:
                    self.stats.gave_up += 1
                    raise
                log.info("throttled; pausing the deployment", deployment=self.deployment,
                         retry_after=pause, attempt=attempt)
                await self.limiter.pause(pause)


def throttled_provider(
    provider: Any,
    limiter: RateLimiter,
    *,
    deployment: str,
    max_retries: int = 10,
    max_wait: float = 120.0,
    default_retry_after: float = 1.0,
    stats: ThrottleStats | None = None,
) -> Any:
    """``provider`` behind the rate limiter (same protocol, typed as the provider)."""
    return ThrottledProvider(
        provider, limiter, deployment=deployment, max_retries=max_retries, max_wait=max_wait,
        default_retry_after=default_retry_after, stats=stats,
    )
