"""Quota-aware throttling: a wrapper around a provider that keeps its calls within the
deployment's quota (requests and tokens per minute), and that answers the service's 429 by
pausing every call to that deployment for its ``Retry-After`` and trying again itself.

What the service says about its limits feeds the same bucket through one method,
:meth:`RateLimiter.observe`: the ``x-ratelimit-*`` headers of every answer (reported by the
adapter, :mod:`actors.ratelimit`) and everything a 429 carries. When the service says nothing
is left until a reset, the bucket grants nothing until then, so the call waits here instead of
earning a 429; a limit lower than the configured quota slows the bucket down to it.

So a throttled actor slows down to the allowed rate and holds its messages (its handlers stay
busy waiting: consumption pauses) instead of bouncing them between bus retries and the saga's
retry timers. After ``max_retries`` throttled answers in a row, or when the wait would exceed
``max_wait``, the :class:`ThrottledError` goes to the actor as before.

The bucket is in-process by default; with a ``redis://`` URL it is shared by every worker of
the deployment through one Lua script (atomic on the Redis server, timed by its clock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from actors.errors import ThrottledError
from actors.ratelimit import RateLimitInfo, collecting

log = structlog.get_logger("actors.throttle")

CAPABILITY_METHODS = frozenset(
    {"detect", "analyze", "translate", "respond", "synthesize", "generate"}
)

_wait_budget: ContextVar[float | None] = ContextVar("aiapps_throttle_budget", default=None)


@contextmanager
def waiting_at_most(seconds: float | None) -> Iterator[None]:
    """Within it (per task), a throttled call waits for quota at most ``seconds`` (less than
    its own ``max_wait`` if that is longer): the actor runtime bounds it by the request's
    deadline, so no call waits for a slot after its step has stopped waiting for it."""
    token = _wait_budget.set(seconds)
    try:
        yield
    finally:
        _wait_budget.reset(token)


@dataclass(frozen=True, slots=True)
class Quota:
    """A deployment's rate limits (None: no limit of that kind). ``tokens_per_minute`` is in
    the unit the deployment is limited by: tokens for a language model, characters for
    Translator or Speech (the throttle's ``unit``)."""

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

    async def consume(self, tokens: float) -> None:
        """Take ``tokens`` more from the bucket now, without waiting (give them back when
        negative): a call's estimate corrected by what it really used."""
        ...

    async def observe(self, info: RateLimitInfo) -> None:
        """Take in what the service said about its limits (:class:`RateLimitInfo`):

        * ``retry_after``: :meth:`pause` for that long;
        * ``remaining`` with its ``reset``: until the reset, grant no more than ``remaining``
          (so ``remaining=0`` stops every call until then);
        * ``remaining`` alone: the bucket holds no more than that (it refills as usual);
        * ``limit`` lower than the configured quota: the bucket runs at that limit (per
          minute) until the service says otherwise. A quota that is not configured is never
          invented from a header: there, ``remaining``/``reset`` and pauses still apply.
        """
        ...

    async def close(self) -> None: ...


@dataclass
class _Window:
    """The service's word: no more than ``remaining`` until ``until`` (the reset)."""

    remaining: float
    until: float


def _merge(window: _Window | None, remaining: float, until: float, now: float) -> _Window:
    """An active window is only replaced by one at least as tight (responses can arrive out
    of order: a stale, higher count must not loosen a fresher, lower one)."""
    if window is None or now >= window.until or remaining <= window.remaining:
        return _Window(remaining, until)
    return window


class LocalRateLimiter:
    """Two token buckets (requests, tokens) refilled continuously, the service's windows
    (remaining until reset), and a pause; in-process."""

    def __init__(self, quota: Quota, clock: Callable[[], float] = time.monotonic) -> None:
        self.quota = quota
        self.clock = clock
        now = clock()
        self._reported_rpm: float | None = None
        self._reported_tpm: float | None = None
        self._requests = quota.requests_per_minute or 0.0
        self._tokens = quota.tokens_per_minute or 0.0
        self._at = now
        self._paused_until = 0.0
        self._request_window: _Window | None = None
        self._token_window: _Window | None = None

    @property
    def requests_per_minute(self) -> float | None:
        """The rate in force: the configured one, or the service's if that is lower."""
        return _lower(self.quota.requests_per_minute, self._reported_rpm)

    @property
    def tokens_per_minute(self) -> float | None:
        return _lower(self.quota.tokens_per_minute, self._reported_tpm)

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._at, 0.0)
        self._at = now
        if rpm := self.requests_per_minute:
            self._requests = min(rpm, self._requests + elapsed * rpm / 60)
        if tpm := self.tokens_per_minute:
            self._tokens = min(tpm, self._tokens + elapsed * tpm / 60)
        if self._request_window is not None and now >= self._request_window.until:
            self._request_window = None
        if self._token_window is not None and now >= self._token_window.until:
            self._token_window = None

    async def acquire(self, tokens: int) -> float:
        now = self.clock()
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        wait = 0.0
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        if rpm and self._requests < 1:
            wait = max(wait, (1 - self._requests) * 60 / rpm)
        if tpm:
            need = min(float(tokens), tpm)  # a call larger than the bucket waits for it full
            if self._tokens < need:
                wait = max(wait, (need - self._tokens) * 60 / tpm)
        requests, token_window = self._request_window, self._token_window
        if requests is not None and requests.remaining < 1:
            wait = max(wait, requests.until - now)
        if token_window is not None and token_window.remaining < tokens:
            wait = max(wait, token_window.until - now)
        if wait > 0:
            return wait
        if rpm:
            self._requests -= 1
        if tpm:
            self._tokens -= min(float(tokens), tpm)
        if requests is not None:
            requests.remaining -= 1
        if token_window is not None:
            token_window.remaining -= tokens
        return 0.0

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    async def consume(self, tokens: float) -> None:
        tpm = self.tokens_per_minute
        if not tpm or not tokens:
            return
        self._refill(self.clock())
        # into debt if need be (the next calls wait for it), never above a full bucket
        self._tokens = min(tpm, self._tokens - tokens)

    async def observe(self, info: RateLimitInfo) -> None:
        now = self.clock()
        self._refill(now)
        if info.retry_after is not None and info.retry_after > 0:
            self._paused_until = max(self._paused_until, now + info.retry_after)
        if info.limit_requests is not None:
            self._reported_rpm = info.limit_requests
        if info.limit_tokens is not None:
            self._reported_tpm = info.limit_tokens
        if rpm := self.requests_per_minute:
            self._requests = min(self._requests, rpm)
        if tpm := self.tokens_per_minute:
            self._tokens = min(self._tokens, tpm)
        if info.remaining_requests is not None:
            self._requests = min(self._requests, info.remaining_requests)
            if info.reset_requests is not None:
                self._request_window = _merge(self._request_window, info.remaining_requests,
                                              now + info.reset_requests, now)
        if info.remaining_tokens is not None:
            self._tokens = min(self._tokens, info.remaining_tokens)
            if info.reset_tokens is not None:
                self._token_window = _merge(self._token_window, info.remaining_tokens,
                                            now + info.reset_tokens, now)

    async def close(self) -> None:
        return None


def _lower(configured: float | None, reported: float | None) -> float | None:
    if configured is None or reported is None:
        return configured
    return min(configured, reported)


# KEYS[1]: the bucket hash. ARGV: mode ('a' acquire, 'p' pause, 'c' consume, 'o' observe),
# configured rpm, tpm (0: none), then for 'a' the tokens wanted, for 'p' the seconds, for 'c'
# the tokens to take (negative: to give back), for 'o' retry-after,
# remaining and reset of requests and of tokens, limit of requests and of tokens (-1: not
# said). Returns the seconds to wait as a string (0 when granted). Timed by the server's clock;
# the same rules as LocalRateLimiter.
_LUA = """
local key = KEYS[1]
local mode = ARGV[1]
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'req', 'tok', 'at', 'paused', 'rlim', 'tlim',
                     'rrem', 'runtil', 'trem', 'tuntil')
local rlim = tonumber(s[5]) or -1
local tlim = tonumber(s[6]) or -1
if mode == 'o' then
  if tonumber(ARGV[9]) > 0 then rlim = tonumber(ARGV[9]) end
  if tonumber(ARGV[10]) > 0 then tlim = tonumber(ARGV[10]) end
end
if rpm > 0 and rlim > 0 then rpm = math.min(rpm, rlim) end
if tpm > 0 and tlim > 0 then tpm = math.min(tpm, tlim) end
local req = tonumber(s[1]) or rpm
local tok = tonumber(s[2]) or tpm
local at = tonumber(s[3]) or now
local paused = tonumber(s[4]) or 0
local rrem = tonumber(s[7]) or -1
local runtil = tonumber(s[8]) or 0
local trem = tonumber(s[9]) or -1
local tuntil = tonumber(s[10]) or 0
if now >= runtil then rrem = -1 end
if now >= tuntil then trem = -1 end
local elapsed = math.max(now - at, 0)
if rpm > 0 then req = math.min(rpm, req + elapsed * rpm / 60) end
if tpm > 0 then tok = math.min(tpm, tok + elapsed * tpm / 60) end
local wait = 0
if mode == 'p' then
  paused = math.max(paused, now + tonumber(ARGV[4]))
elseif mode == 'c' then
  if tpm > 0 then tok = math.min(tpm, tok - tonumber(ARGV[4])) end
elseif mode == 'o' then
  local after = tonumber(ARGV[4])
  if after > 0 then paused = math.max(paused, now + after) end
  local r, rr, k, kr = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  if r >= 0 then
    req = math.min(req, r)
    if rr >= 0 and (rrem < 0 or r <= rrem) then rrem = r; runtil = now + rr end
  end
  if k >= 0 then
    tok = math.min(tok, k)
    if kr >= 0 and (trem < 0 or k <= trem) then trem = k; tuntil = now + kr end
  end
else
  if now < paused then return tostring(paused - now) end
  local want = tonumber(ARGV[4])
  if rpm > 0 and req < 1 then wait = math.max(wait, (1 - req) * 60 / rpm) end
  local need = want
  if tpm > 0 then
    need = math.min(want, tpm)
    if tok < need then wait = math.max(wait, (need - tok) * 60 / tpm) end
  end
  if rrem >= 0 and rrem < 1 then wait = math.max(wait, runtil - now) end
  if trem >= 0 and trem < want then wait = math.max(wait, tuntil - now) end
  if wait == 0 then
    if rpm > 0 then req = req - 1 end
    if tpm > 0 then tok = tok - need end
    if rrem >= 0 then rrem = rrem - 1 end
    if trem >= 0 then trem = trem - want end
  end
end
redis.call('HSET', key, 'req', tostring(req), 'tok', tostring(tok), 'at', tostring(now),
           'paused', tostring(paused), 'rlim', tostring(rlim), 'tlim', tostring(tlim),
           'rrem', tostring(rrem), 'runtil', tostring(runtil),
           'trem', tostring(trem), 'tuntil', tostring(tuntil))
redis.call('EXPIRE', key, 3600)
return tostring(wait)
"""


def _arg(value: float | None) -> float:
    return -1 if value is None else value


class RedisRateLimiter:
    """The same buckets in Redis, shared by every worker of the deployment; :meth:`close`
    closes its client (the throttled provider's ``aclose()`` calls it)."""

    def __init__(self, url: str, deployment: str, quota: Quota,
                 prefix: str = "aiapps:throttle:") -> None:
        import redis.asyncio as aioredis

        self.client: Any = aioredis.from_url(url)
        self.key = prefix + deployment
        self.quota = quota
        self._script: Any = self.client.register_script(_LUA)

    async def _run(self, mode: str, *args: float) -> float:
        result = await self._script(
            keys=[self.key],
            args=[mode, self.quota.requests_per_minute or 0, self.quota.tokens_per_minute or 0,
                  *args],
        )
        return float(result.decode() if isinstance(result, bytes) else result)

    async def acquire(self, tokens: int) -> float:
        return await self._run("a", tokens)

    async def pause(self, seconds: float) -> None:
        await self._run("p", max(seconds, 0.0))

    async def consume(self, tokens: float) -> None:
        if tokens:
            await self._run("c", tokens)

    async def observe(self, info: RateLimitInfo) -> None:
        await self._run(
            "o", info.retry_after or 0, _arg(info.remaining_requests), _arg(info.reset_requests),
            _arg(info.remaining_tokens), _arg(info.reset_tokens),
            info.limit_requests or 0, info.limit_tokens or 0,
        )

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class ThrottleStats:
    """What throttling did, for telemetry: calls, 429s absorbed, seconds waited."""

    calls: int = 0
    throttled: int = 0
    waited: float = 0.0
    gave_up: int = 0
    observed: int = 0
    """Rate-limit observations (response headers, 429s) fed to the limiter."""
    by_deployment: dict[str, int] = field(default_factory=dict)


Unit = Literal["tokens", "characters"]
"""What a deployment's second quota counts: tokens (a language model) or characters
(Translator, Speech)."""


def _characters(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The characters of the call's text: its first argument (every capability takes its
    text, prompt or query first; languages, voices and options are not billed)."""
    first: Any = args[0] if args else next(
        (kwargs[k] for k in ("text", "prompt", "query") if k in kwargs), None)
    if isinstance(first, str):
        return len(first)
    message = getattr(first, "message", None)  # a ResponseQuery
    return len(str(message)) if message is not None else 0


def estimate_tokens(args: tuple[Any, ...], kwargs: dict[str, Any], unit: Unit = "tokens") -> int:
    """What a call will take from the bucket before it is made: ~4 characters a token of its
    text arguments, or their characters (at least 1). Corrected by the call's usage after."""
    chars = _characters(args, kwargs)
    return max(1, chars if unit == "characters" else math.ceil(chars / 4))


def used(result: Any, unit: Unit) -> int | None:
    """What a call really took, from its result's usage (None: it does not say)."""
    usage = getattr(result, "usage", None)
    if usage is None:
        return None
    if unit == "characters":
        return int(getattr(usage, "characters", 0)) or None
    tokens = int(getattr(usage, "input_tokens", 0)) + int(getattr(usage, "output_tokens", 0))
    return tokens or None


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
        unit: Unit = "tokens",
    ) -> None:
        self.inner = provider
        self.unit: Unit = unit
        self.limiter = limiter
        self.deployment = deployment
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.default_retry_after = default_retry_after
        self.stats = stats or ThrottleStats()
        self._sleep = sleep
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in CAPABILITY_METHODS or not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._call(target, args, kwargs)

        return call

    def _max_wait(self) -> float:
        """How long this call may wait in all: ``max_wait``, or less before a deadline."""
        budget = _wait_budget.get()
        return self.max_wait if budget is None else max(min(self.max_wait, budget), 0.0)

    async def _wait_for_slot(self, tokens: int, waited: float) -> float:
        while (wait := await self.limiter.acquire(tokens)) > 0:
            if waited + wait > (limit := self._max_wait()):
                raise ThrottledError(
                    f"{self.deployment}: no quota within {limit:g}s"
                    + (" (the request's deadline)" if limit < self.max_wait else ""),
                    retry_after=wait, provider=self.deployment,
                )
            await self._sleep(wait)
            waited += wait
            self.stats.waited += wait
        return waited

    async def _call(self, target: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        tokens = estimate_tokens(args, kwargs, self.unit)
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
                with collecting() as seen:
                    result = await target(*args, **kwargs)
            except ThrottledError as exc:
                attempt += 1
                self.stats.throttled += 1
                self.stats.by_deployment[self.deployment] = (
                    self.stats.by_deployment.get(self.deployment, 0) + 1
                )
                pause = exc.retry_after if exc.retry_after is not None else self.default_retry_after
                # the pause (and whatever else the 429 said) holds for every caller, even if
                # this one now gives up
                await self._observe(dataclasses.replace(
                    exc.rate_limit or RateLimitInfo(), retry_after=pause
                ))
                if attempt > self.max_retries or waited + pause > self._max_wait():
                    self.stats.gave_up += 1
                    raise
                log.info("throttled; pausing the deployment", deployment=self.deployment,
                         retry_after=pause, attempt=attempt)
                continue
            for info in seen:
                await self._observe(info)
            await self._correct(tokens, used(result, self.unit))
            return result

    async def _correct(self, estimated: int, actual: int | None) -> None:
        """The bucket gave ``estimated`` before the call; the call used ``actual``: the
        difference is taken (a long answer's output tokens) or given back."""
        if actual is None or actual == estimated:
            return
        try:
            await self.limiter.consume(actual - estimated)
        except Exception:  # a limiter that fails to correct must not fail the call
            log.warning("usage correction not recorded", deployment=self.deployment,
                        exc_info=True)

    async def _observe(self, info: RateLimitInfo) -> None:
        self.stats.observed += 1
        try:
            await self.limiter.observe(info)
        except Exception:  # a limiter that fails to note the headers must not fail the call
            log.warning("rate-limit headers not recorded", deployment=self.deployment,
                        exc_info=True)

    async def aclose(self) -> None:
        """Close the provider (if it has ``aclose()``) and the limiter (its Redis client);
        once, however many actors share this provider."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.inner, "aclose", None)
            if callable(close):
                await close()
        finally:
            await self.limiter.close()


def throttled_provider(
    provider: Any,
    limiter: RateLimiter,
    *,
    deployment: str,
    max_retries: int = 10,
    max_wait: float = 120.0,
    default_retry_after: float = 1.0,
    stats: ThrottleStats | None = None,
    unit: Unit = "tokens",
) -> Any:
    """``provider`` behind the rate limiter (same protocol, typed as the provider)."""
    return ThrottledProvider(
        provider, limiter, deployment=deployment, max_retries=max_retries, max_wait=max_wait,
        default_retry_after=default_retry_after, stats=stats, unit=unit,
    )
