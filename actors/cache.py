"""A result cache for deterministic provider calls, as a wrapper that implements the same
capability protocol as the provider it wraps (so actors and the runtime are unchanged).

Cached: language detection (by text), translation (text and languages), image analysis and
OCR (image hash, media type and features), speech (text, language, voice and style), and the
responder only when configured cacheable. The key holds the service, the provider (its class
and, when it says, its model or deployment), the cache version, and the normalised input and
parameters. A hit returns the cached result marked ``provider.cached=True`` with zero
``usage`` (nothing was called, nothing was paid), so the saga's cost stays right; the money
the original call cost is counted as saved in :class:`CacheStats`.

Cache only: inside :func:`answering_from_cache_only` (the actor runtime enters it for a
request with ``cache_only=True``, which the coordinator sends when a budget refuses the call)
a lookup that misses raises :class:`NotCachedError` instead of calling the provider; a call
in flight for the same key is still shared (that costs nothing either).

Backends: the saga store (``cache_get``/``cache_put``) by default, Redis when
``AIAPPS_CACHE_URL=redis://…`` (extra ``redis``). A backend that fails is a miss, never an
error of the call.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import time
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar, runtime_checkable

import structlog
from pydantic import TypeAdapter

from actors.capabilities import (
    Audio,
    Detection,
    ImageAnalysis,
    ResponseDraft,
    ResponseQuery,
    Translation,
)
from actors.errors import PermanentError
from events.common import ProviderInfo, Usage

log = structlog.get_logger("actors.cache")

R = TypeVar("R", Detection, ImageAnalysis, Translation, ResponseDraft, Audio)

CACHEABLE_SERVICES = ("language", "vision", "translation", "responder", "speech")


class NotCachedError(PermanentError):
    """A request that may be answered from the cache only (over budget) had no cached
    answer: nothing was called, nothing paid. Permanent: the step takes its fallback."""

    error_class = "not_cached"


_cache_only: ContextVar[bool] = ContextVar("aiapps_cache_only", default=False)


@contextmanager
def answering_from_cache_only(enabled: bool = True) -> Iterator[None]:
    """Within it (per task), cached providers answer from the cache or raise
    :class:`NotCachedError`; they never call the provider."""
    token = _cache_only.set(enabled)
    try:
        yield
    finally:
        _cache_only.reset(token)


def serves_from_cache(provider: object) -> bool:
    """Whether ``provider`` is behind the result cache (so it can answer cache-only)."""
    return isinstance(provider, _Cached)


# -- backends -----------------------------------------------------------------------------


class Pricing(Protocol):
    """What a call cost (:class:`saga.cost.PriceTable` is one)."""

    def cost(self, provider: ProviderInfo, usage: Usage) -> Decimal: ...


class _Free:
    def cost(self, provider: ProviderInfo, usage: Usage) -> Decimal:
        return Decimal(0)


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class LockingBackend(Protocol):
    """A backend shared between processes that can also say "one worker is computing this
    key": :class:`RedisCacheBackend`. With one, concurrent identical misses in different
    workers pay once too."""

    async def claim(self, key: str, ttl: float) -> str | None:
        """Take the key's lock for ``ttl`` seconds; its token, or None if another holds it."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Give the lock back (only if it is still ours)."""
        ...


class CacheStore(Protocol):
    """The part of the saga store the cache uses."""

    async def cache_get(self, key: str) -> bytes | None: ...

    async def cache_put(self, key: str, value: bytes, expires_at: datetime) -> None: ...


class StoreCacheBackend:
    """The cache in the saga store (the default): shared by every worker of the store."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store

    async def get(self, key: str) -> bytes | None:
        return await self.store.cache_get(key)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self.store.cache_put(key, value, datetime.now(UTC) + timedelta(seconds=ttl))

    async def close(self) -> None:
        return None  # the store belongs to the service


class RedisCacheBackend:
    """The cache in Redis (``redis://…``); entries expire by Redis' own TTL. Also a
    :class:`LockingBackend` (``SET NX PX`` on ``lock:KEY``). :meth:`close` closes the client."""

    def __init__(self, url: str, prefix: str = "aiapps:cache:") -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError(
                f"a redis:// cache needs the 'redis' extra: pip install 'ai-apps[redis]' ({exc})"
            ) from exc
        self.prefix = prefix
        self.client: Any = aioredis.from_url(url)

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(self.prefix + key)
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self.client.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))

    async def claim(self, key: str, ttl: float) -> str | None:
        token = uuid.uuid4().hex
        taken = await self.client.set(
            self.prefix + "lock:" + key, token, nx=True, px=max(1, int(ttl * 1000))
        )
        return token if taken else None

    async def release(self, key: str, token: str) -> None:
        await self.client.eval(_RELEASE, 1, self.prefix + "lock:" + key, token)

    async def close(self) -> None:
        await self.client.aclose()


# delete the lock only if it still holds our token (it may have expired and been retaken)
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def cache_url(configured: str | None = None) -> str | None:
    """The cache URL: the setting, else ``AIAPPS_CACHE_URL``; None means the saga store."""
    return configured or os.environ.get("AIAPPS_CACHE_URL") or None


# -- metering -----------------------------------------------------------------------------


@dataclass
class CacheStats:
    """Hits, misses and money saved (the cost the original calls had), by service; read by
    telemetry and benchmarks."""

    hits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    misses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    saved: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    errors: int = 0
    coalesced: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Of the hits, those that shared a call in flight (single-flight) rather than a stored
    result."""
    not_cached: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Requests for a cached answer only (over budget) that had none."""

    def hit(self, service: str, saved: Decimal) -> None:
        self.hits[service] += 1
        self.saved[service] += saved

    def miss(self, service: str) -> None:
        self.misses[service] += 1

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    @property
    def total_misses(self) -> int:
        return sum(self.misses.values())

    @property
    def total_saved(self) -> Decimal:
        return sum(self.saved.values(), Decimal(0))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (money as strings)."""
        return {
            "hits": dict(self.hits), "misses": dict(self.misses),
            "saved": {k: str(v) for k, v in self.saved.items()},
            "total_hits": self.total_hits, "total_misses": self.total_misses,
            "total_saved": str(self.total_saved), "errors": self.errors,
            "coalesced": dict(self.coalesced), "not_cached": dict(self.not_cached),
        }


# -- the cache ----------------------------------------------------------------------------


def _encode(adapter: TypeAdapter[Any], result: Any) -> bytes:
    data = adapter.dump_python(result, mode="python")
    for name, value in list(data.items()):
        if isinstance(value, bytes):
            data[name] = {"__b64__": base64.b64encode(value).decode("ascii")}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(adapter: TypeAdapter[R], raw: bytes) -> R:
    data = json.loads(raw)
    for name, value in list(data.items()):
        if isinstance(value, dict) and set(value) == {"__b64__"}:
            data[name] = base64.b64decode(value["__b64__"])
    return adapter.validate_python(data)


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(kind: type[R]) -> TypeAdapter[R]:
    found = _ADAPTERS.get(kind)
    if found is None:
        found = _ADAPTERS[kind] = TypeAdapter(kind)
    return found


@dataclass
class _Flight:
    """A provider call in flight for one key: its outcome, and when its followers stop
    waiting for it (on the cache's clock)."""

    future: asyncio.Future[Any]
    deadline: float


class ResultCache:
    """Looks results up in a backend and meters hits, misses and money saved.

    Single-flight: concurrent identical misses share one provider call. In this process, the
    first miss of a key leads (calls the provider) and the others follow (wait for its
    outcome, an :class:`asyncio.Future` per key in flight): they get its result as a hit
    (``cached=True``, zero usage, the cost metered as saved), or its error. A leader that is
    cancelled leaves no result: its followers look again and one of them leads. A follower
    that is cancelled stops waiting without disturbing the others (the wait is shielded).

    ``wait`` bounds all this: followers wait for a call at most until it is ``wait`` seconds
    old, then call the provider themselves, and a call older than that takes no followers.
    Keep it below the step timeouts, so that a saga's retry after a timeout never joins the
    call that timed out; 0 turns single-flight off. A call's age is read on ``clock``
    (seconds; the service passes its own clock, the one step timeouts are measured on).

    With a :class:`LockingBackend` (Redis), the leader also takes a lock on the key for
    ``wait`` seconds: a leader in another worker that finds it taken polls the cache every
    ``poll_interval`` until the result is there, or until the lock is gone (the holder failed
    or died) and it can take the lock itself, or until ``wait`` has passed.
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        pricing: Pricing | None = None,
        stats: CacheStats | None = None,
        version: str = "1",
        wait: float = 10.0,
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.pricing: Pricing = pricing or _Free()
        self.stats = stats or CacheStats()
        self.version = version
        self.wait = wait
        self.poll_interval = poll_interval
        self.clock = clock
        self.waiting = 0
        """Followers waiting for a call in flight now (a test harness counts them as stuck
        when that call hangs)."""
        self._flights: dict[str, _Flight] = {}
        self._users = 0
        self._closed = False

    def key(self, service: str, provider: str, parts: dict[str, Any]) -> str:
        """The key of one call: service, provider identity, cache version and the normalised
        input and parameters (hashed, so keys are short and hold no customer text)."""
        body = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(body.encode()).hexdigest()
        return f"v{self.version}:{service}:{provider}:{digest}"

    async def _lookup(self, service: str, key: str, adapter: TypeAdapter[R]) -> R | None:
        """The stored result of ``key`` as it was stored, or None (a failing backend or an
        unreadable entry is a miss)."""
        try:
            raw = await self.backend.get(key)
        except Exception:  # a cache that fails is a miss, never the call's failure
            self.stats.errors += 1
            log.warning("cache get failed", service=service, exc_info=True)
            return None
        if raw is None:
            return None
        try:
            return _decode(adapter, raw)
        except Exception:
            self.stats.errors += 1
            log.warning("cache entry unreadable", service=service, exc_info=True)
            return None

    def _hit(self, service: str, found: R) -> R:
        """``found`` as a hit: marked cached, no usage; what it cost is counted as saved."""
        self.stats.hit(service, self.pricing.cost(found.provider, found.usage))
        # what it would have consumed travels with it: the ledger prices it as money saved
        info = found.provider.model_copy(update={"cached": True, "saved": found.usage})
        return dataclasses.replace(found, provider=info, usage=Usage())

    async def through(
        self, service: str, key: str, ttl: float, kind: type[R], call: Callable[[], Awaitable[R]]
    ) -> R:
        """The cached result of ``key``, else ``call()``'s, which is then cached; concurrent
        identical misses share one ``call()``."""
        adapter = _adapter(kind)
        while True:
            found = await self._lookup(service, key, adapter)
            if found is not None:
                return self._hit(service, found)
            flight = self._flights.get(key)
            if _cache_only.get() and (flight is None or flight.deadline <= self.clock()):
                # over budget: only a stored answer, or one being fetched, may be used
                self.stats.not_cached[service] += 1
                raise NotCachedError(
                    f"not cached, over budget: no cached {service} answer for this request, "
                    "and the budget allows no call", provider=service,
                )
            if self.wait <= 0:
                return await self._call(service, key, ttl, adapter, call)
            if flight is None:
                return await self._lead(service, key, ttl, adapter, call)
            left = flight.deadline - self.clock()
            if left <= 0:  # too old to wait for (hung?): call alongside it
                return await self._call(service, key, ttl, adapter, call)
            self.waiting += 1
            try:
                async with asyncio.timeout(left) as waited:
                    shared: R = await asyncio.shield(flight.future)
            except TimeoutError:
                if not waited.expired():
                    raise  # the leader's own error
                if _cache_only.get():
                    continue  # not ours to call: look once more, then give up
                return await self._call(service, key, ttl, adapter, call)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if flight.future.cancelled() and (task is None or not task.cancelling()):
                    continue  # the leader was cancelled, not this caller: look again
                raise
            finally:
                self.waiting -= 1
            self.stats.coalesced[service] += 1
            return self._hit(service, shared)

    async def _call(
        self, service: str, key: str, ttl: float, adapter: TypeAdapter[R],
        call: Callable[[], Awaitable[R]], flight: _Flight | None = None,
    ) -> R:
        """A miss: ``call()``, its outcome to the flight's followers, its result stored."""
        self.stats.miss(service)
        try:
            result = await call()
        except Exception as exc:
            if flight is not None:
                flight.future.set_exception(exc)
                flight.future.exception()  # retrieved: no warning when nobody was waiting
            raise
        if flight is not None:
            flight.future.set_result(result)  # the followers go on now, while it is stored
        if not result.provider.cached:
            try:
                await self.backend.put(key, _encode(adapter, result), ttl)
            except Exception:
                self.stats.errors += 1
                log.warning("cache put failed", service=service, exc_info=True)
        return result

    async def _lead(
        self, service: str, key: str, ttl: float, adapter: TypeAdapter[R],
        call: Callable[[], Awaitable[R]],
    ) -> R:
        # registered before the first await: a concurrent miss of the key now follows this one
        flight = _Flight(asyncio.get_running_loop().create_future(), self.clock() + self.wait)
        self._flights[key] = flight
        token: str | None = None
        try:
            token, found = await self._claim(service, key, adapter)
            if found is not None:  # another worker computed it meanwhile
                flight.future.set_result(found)
                return self._hit(service, found)
            return await self._call(service, key, ttl, adapter, call, flight)
        finally:
            if not flight.future.done():  # cancelled (or interrupted): followers look again
                flight.future.cancel()
            if self._flights.get(key) is flight:
                del self._flights[key]
            if token is not None:
                await self._release(service, key, token)

    async def _claim(
        self, service: str, key: str, adapter: TypeAdapter[R]
    ) -> tuple[str | None, R | None]:
        """With a locking backend: the key's lock (its token), or the result another worker
        stored while this one waited for its lock; (None, None) to call without a lock."""
        backend = self.backend
        if not isinstance(backend, LockingBackend):
            return None, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait  # real time: the lock expires in Redis' time
        while True:
            try:
                token = await backend.claim(key, self.wait)
            except Exception:
                self.stats.errors += 1
                log.warning("cache lock failed", service=service, exc_info=True)
                return None, None
            if token is not None:
                # the holder before us stores the result and then lets go: look once more
                found = await self._lookup(service, key, adapter)
                if found is not None:
                    await self._release(service, key, token)
                    return None, found
                return token, None
            if loop.time() >= deadline:
                return None, None  # waited as long as a lock lives: call anyway
            await asyncio.sleep(self.poll_interval)
            found = await self._lookup(service, key, adapter)
            if found is not None:
                return None, found

    async def _release(self, service: str, key: str, token: str) -> None:
        backend = self.backend
        if not isinstance(backend, LockingBackend):
            return
        try:
            await backend.release(key, token)
        except Exception:  # it expires on its own
            self.stats.errors += 1
            log.warning("cache unlock failed", service=service, exc_info=True)

    def use(self) -> None:
        """One more wrapper shares this cache (:meth:`release_use` when it closes)."""
        self._users += 1

    async def release_use(self) -> None:
        """A wrapper using this cache closed: the last one closes the backend."""
        self._users = max(self._users - 1, 0)
        if self._users == 0:
            await self.close()

    async def close(self) -> None:
        """Close the backend (a Redis client); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.backend.close()


def _text(value: str) -> str:
    """Normalised text: one Unicode form, no surrounding whitespace."""
    return unicodedata.normalize("NFC", value).strip()


def _described(provider: Any, method: str) -> dict[str, Any] | None:
    describe = getattr(provider, method, None)
    if not callable(describe):
        return None
    parts = describe()
    return parts if isinstance(parts, dict) else None


def _named(provider: Any, parts: dict[str, Any]) -> str:
    cls = type(provider)
    body = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{cls.__module__}.{cls.__qualname__}|{hashlib.sha256(body.encode()).hexdigest()[:24]}"


def _plain_identity(provider: Any) -> str:
    cls = type(provider)
    parts = [f"{cls.__module__}.{cls.__qualname__}"]
    info = getattr(provider, "provider", None)
    if isinstance(info, ProviderInfo):
        parts.append(f"{info.name}/{info.model}")
    for attr in ("model", "deployment", "voice"):
        value = getattr(provider, attr, None)
        if isinstance(value, str):
            parts.append(value)
    return "|".join(parts)


def _unwrapped(provider: Any) -> Any:
    """The provider behind a throttle: throttling does not change what is called or said."""
    from actors.throttle import ThrottledProvider

    while isinstance(provider, ThrottledProvider):
        provider = provider.inner
    return provider


def deployment_identity(provider: Any) -> str:
    """Names the deployment a provider calls (the throttle's bucket): its class and, hashed,
    what it says in ``deployment_parts()`` (endpoint, region, resource, model); without that,
    its class and model or deployment."""
    provider = _unwrapped(provider)
    parts = _described(provider, "deployment_parts")
    return _named(provider, parts) if parts is not None else _plain_identity(provider)


def provider_identity(provider: Any) -> str:
    """Names a provider in cache keys: everything that changes its output, hashed (never a
    secret): the deployment (``deployment_parts()``) and the settings (``output_parts()``:
    an API or model version, a voice map, a language, a confidence floor, a knowledge base's
    content, prompt options). A provider that describes neither is named by its class and
    model or deployment."""
    provider = _unwrapped(provider)
    deployment = _described(provider, "deployment_parts")
    output = _described(provider, "output_parts")
    if deployment is None and output is None:
        return _plain_identity(provider)
    return _named(provider, {"deployment": deployment or {}, "output": output or {}})


class _Cached:
    """Common part of the wrappers; other attributes are the wrapped provider's."""

    service: str

    def __init__(self, provider: Any, cache: ResultCache, ttl: float) -> None:
        self.inner = provider
        self.cache = cache
        self.ttl = ttl
        self.identity = provider_identity(provider)
        self._closed = False
        cache.use()

    async def aclose(self) -> None:
        """Close the provider (if it has ``aclose()``) and, with the last wrapper sharing
        it, the cache's backend (a Redis client); once, however many actors share it."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.inner, "aclose", None)
            if callable(close):
                await close()
        finally:
            await self.cache.release_use()

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    def _key(self, **parts: Any) -> str:
        return self.cache.key(self.service, self.identity, parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CachedLanguageDetector(_Cached):
    service = "language"

    async def detect(self, text: str) -> Detection:
        key = self._key(text=_text(text))
        return await self.cache.through(
            self.service, key, self.ttl, Detection, lambda: self.inner.detect(text)
        )


class CachedImageAnalyzer(_Cached):
    service = "vision"

    async def analyze(
        self, image: bytes, media_type: str, features: tuple[str, ...]
    ) -> ImageAnalysis:
        key = self._key(
            image=hashlib.sha256(image).hexdigest(), media_type=media_type.lower(),
            features=sorted(set(features)),
        )
        return await self.cache.through(
            self.service, key, self.ttl, ImageAnalysis,
            lambda: self.inner.analyze(image, media_type, features),
        )


class CachedTranslator(_Cached):
    service = "translation"

    async def translate(
        self, text: str, to_language: str, from_language: str | None = None
    ) -> Translation:
        key = self._key(
            text=_text(text), to=to_language.lower(),
            source=from_language.lower() if from_language else None,
        )
        return await self.cache.through(
            self.service, key, self.ttl, Translation,
            lambda: self.inner.translate(text, to_language, from_language),
        )


class CachedResponder(_Cached):
    service = "responder"

    async def respond(self, query: ResponseQuery) -> ResponseDraft:
        key = self._key(query=_adapter_query.dump_python(query, mode="json"))
        return await self.cache.through(
            self.service, key, self.ttl, ResponseDraft, lambda: self.inner.respond(query)
        )


_adapter_query: TypeAdapter[ResponseQuery] = TypeAdapter(ResponseQuery)


class CachedSpeechSynthesizer(_Cached):
    service = "speech"

    async def synthesize(
        self, text: str, language: str, voice: str | None = None, style: str | None = None
    ) -> Audio:
        key = self._key(text=_text(text), language=language.lower(), voice=voice, style=style)
        return await self.cache.through(
            self.service, key, self.ttl, Audio,
            lambda: self.inner.synthesize(text, language, voice, style),
        )


_WRAPPERS: dict[str, type[_Cached]] = {
    "language": CachedLanguageDetector,
    "vision": CachedImageAnalyzer,
    "translation": CachedTranslator,
    "responder": CachedResponder,
    "speech": CachedSpeechSynthesizer,
}


def cached_provider(service: str, provider: Any, cache: ResultCache, ttl: float | None) -> Any:
    """``provider`` behind the cache, implementing the same protocol; ``provider`` itself for
    a service that is not cached (``ttl`` None, or a capability the cache does not know)."""
    wrapper = _WRAPPERS.get(service)
    if wrapper is None or ttl is None or ttl <= 0:
        return provider
    return wrapper(provider, cache, ttl)


def result_cache(actors: Iterable[object]) -> ResultCache | None:
    """The result cache the actors' providers share (None: no cache)."""
    for actor in actors:
        provider = getattr(actor, "provider", None)
        if isinstance(provider, _Cached):
            return provider.cache
    return None


def cache_stats(actors: Iterable[object]) -> CacheStats | None:
    """The meter of the result cache the actors' providers share (None: no cache), for
    telemetry: ``cache_stats(service.runtime.actors)``."""
    cache = result_cache(actors)
    return cache.stats if cache is not None else None
