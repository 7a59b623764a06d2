"""A result cache for deterministic provider calls, as a wrapper that implements the same
capability protocol as the provider it wraps (so actors and the runtime are unchanged).

Cached: language detection (by text), translation (text and languages), image analysis and
OCR (image hash, media type and features), speech (text, language, voice and style), and the
responder only when configured cacheable. The key holds the service, the provider (its class
and, when it says, its model or deployment), the cache version, and the normalised input and
parameters. A hit returns the cached result marked ``provider.cached=True`` with zero
``usage`` (nothing was called, nothing was paid), so the saga's cost stays right; the money
the original call cost is counted as saved in :class:`CacheStats`.

Backends: the saga store (``cache_get``/``cache_put``) by default, Redis when
``AIAPPS_CACHE_URL=redis://…`` (extra ``redis``). A backend that fails is a miss, never an
error of the call.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import unicodedata
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

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
from events.common import ProviderInfo, Usage

log = structlog.get_logger("actors.cache")

R = TypeVar("R", Detection, ImageAnalysis, Translation, ResponseDraft, Audio)

CACHEABLE_SERVICES = ("language", "vision", "translation", "responder", "speech")


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
    """The cache in Redis (``redis://…``); entries expire by Redis' own TTL."""

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

    async def close(self) -> None:
        await self.client.aclose()


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


class ResultCache:
    """Looks results up in a backend and meters hits, misses and money saved."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        pricing: Pricing | None = None,
        stats: CacheStats | None = None,
        version: str = "1",
    ) -> None:
        self.backend = backend
        self.pricing: Pricing = pricing or _Free()
        self.stats = stats or CacheStats()
        self.version = version

    def key(self, service: str, provider: str, parts: dict[str, Any]) -> str:
        """The key of one call: service, provider identity, cache version and the normalised
        input and parameters (hashed, so keys are short and hold no customer text)."""
        body = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(body.encode()).hexdigest()
        return f"v{self.version}:{service}:{provider}:{digest}"

    async def through(
        self, service: str, key: str, ttl: float, kind: type[R], call: Callable[[], Awaitable[R]]
    ) -> R:
        """The cached result of ``key``, else ``call()``'s, which is then cached."""
        adapter = _adapter(kind)
        raw: bytes | None = None
        try:
            raw = await self.backend.get(key)
        except Exception:  # a cache that fails is a miss, never the call's failure
            self.stats.errors += 1
            log.warning("cache get failed", service=service, exc_info=True)
        if raw is not None:
            try:
                found = _decode(adapter, raw)
            except Exception:
                self.stats.errors += 1
                log.warning("cache entry unreadable", service=service, exc_info=True)
            else:
                self.stats.hit(service, self.pricing.cost(found.provider, found.usage))
                info = found.provider.model_copy(update={"cached": True})
                return dataclasses.replace(found, provider=info, usage=Usage())
        self.stats.miss(service)
        result = await call()
        if not result.provider.cached:
            try:
                await self.backend.put(key, _encode(adapter, result), ttl)
            except Exception:
                self.stats.errors += 1
                log.warning("cache put failed", service=service, exc_info=True)
        return result

    async def close(self) -> None:
        await self.backend.close()


def _text(value: str) -> str:
    """Normalised text: one Unicode form, no surrounding whitespace."""
    return unicodedata.normalize("NFC", value).strip()


def provider_identity(provider: Any) -> str:
    """Names a provider in keys: its class, and its model or deployment when it says."""
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


class _Cached:
    """Common part of the wrappers; other attributes are the wrapped provider's."""

    service: str

    def __init__(self, provider: Any, cache: ResultCache, ttl: float) -> None:
        self.inner = provider
        self.cache = cache
        self.ttl = ttl
        self.identity = provider_identity(provider)

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


def cache_stats(actors: Iterable[object]) -> CacheStats | None:
    """The meter of the result cache the actors' providers share (None: no cache), for
    telemetry: ``cache_stats(service.runtime.actors)``."""
    for actor in actors:
        provider = getattr(actor, "provider", None)
        if isinstance(provider, _Cached):
            return provider.stats
    return None
