"""Benchmark the result cache: provider calls and cost of 1,000 support inquiries drawn from
a realistic mix with repeats, with the cache against without it.

The mix: a pool of distinct messages (English, Spanish, French, German: the non-English ones
are translated in and out), drawn with a Zipf-like skew (a few questions are asked often, most
rarely, as in a support queue); a third carry a photo from a pool of product photos, also
skewed; a quarter ask for a voice reply. Every provider is a fake relabelled as a priced
model, with list-like prices: translation and detection $10 per million characters, image
analysis $1 per 1k transactions, speech $16 per million characters, the responder at
gpt-4o-mini token prices. The responder is not cacheable (the default), so every inquiry
pays for its answer.

    .venv/bin/python -m bench.cache                # 1,000 inquiries, both variants
    .venv/bin/python -m bench.cache --n 200 --seed 7
    .venv/bin/python -m bench.cache --latency 0.01  # calls overlap: single-flight at work
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.cache import CachedTranslator, CacheStats
from actors.providers.fake import FakeProviders
from bench.common import RESULTS, header, quiet_logging, save
from bus.base import RetryPolicy
from bus.memory import InMemoryTransport
from events.common import BlobRef, ProviderInfo
from events.support import Customer, InquiryReceived, ResponseReady
from saga.cost import Price, PriceTable
from service.cost_settings import CacheSettings, CostSettings
from service.settings import ProviderSettings, Settings
from service.wiring import Service

PRICES = PriceTable(version="bench-cache-1", prices=(
    Price(provider="sim", model="detector", per_million_characters=Decimal(10)),
    Price(provider="sim", model="translator", per_million_characters=Decimal(10)),
    Price(provider="sim", model="image-analysis", per_1k_transactions=Decimal(1)),
    Price(provider="sim", model="tts", per_million_characters=Decimal(16)),
    Price(provider="sim", model="gpt-4o-mini", per_1k_input_tokens=Decimal("0.00015"),
          per_1k_output_tokens=Decimal("0.0006")),
))
MODELS = {"language": "detector", "translation": "translator", "vision": "image-analysis",
          "speech": "tts", "responder": "gpt-4o-mini"}
METHODS = frozenset({"detect", "translate", "analyze", "respond", "synthesize"})

TOPICS = (
    "my order has not arrived", "the coffee machine arrived broken", "how do I reset my password",
    "I was charged twice", "can I change my delivery address", "the app crashes on start",
    "how do I return an item", "where is my invoice", "the product is missing a part",
    "I want to cancel my subscription", "the battery does not charge", "my discount code fails",
)
PHRASES = {
    "en": ("Hello, {t}.", "Hi, {t}, please help.", "{t}, what can I do?"),
    "es": ("Hola, {t} (es).", "Buenas, {t}, ayuda por favor (es).", "{t}, ¿qué hago? (es)"),
    "fr": ("Bonjour, {t} (fr).", "Salut, {t}, aidez-moi (fr).", "{t}, que faire ? (fr)"),
    "de": ("Hallo, {t} (de).", "Guten Tag, {t}, bitte helfen (de).", "{t}, was tun? (de)"),
}
LANGUAGE_MIX = {"en": 0.45, "es": 0.3, "fr": 0.15, "de": 0.1}


class Relabel:
    """A fake provider whose results name a priced model (``sim/<model>``)."""

    def __init__(self, inner: Any, model: str) -> None:
        self.inner = inner
        self.info = ProviderInfo(name="sim", model=model)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in METHODS:
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await target(*args, **kwargs)
            return dataclasses.replace(result, provider=self.info)

        return call


@dataclasses.dataclass(frozen=True)
class Draw:
    message: str
    language: str
    photo: int | None
    voice: bool


def workload(n: int, seed: int, distinct: int = 120, photos: int = 30) -> list[Draw]:
    """``n`` inquiries: messages and photos drawn with a Zipf(1.1) skew over their pools."""
    rng = random.Random(seed)
    pool: list[tuple[str, str]] = []
    languages = list(LANGUAGE_MIX)
    while len(pool) < distinct:
        lang = rng.choices(languages, weights=list(LANGUAGE_MIX.values()))[0]
        text = rng.choice(PHRASES[lang]).format(t=rng.choice(TOPICS))
        if (text, lang) not in pool:
            pool.append((text, lang))
    message_weights = [1 / (k + 1) ** 1.1 for k in range(len(pool))]
    photo_weights = [1 / (k + 1) ** 1.1 for k in range(photos)]
    draws = []
    for _ in range(n):
        text, lang = rng.choices(pool, weights=message_weights)[0]
        photo = rng.choices(range(photos), weights=photo_weights)[0] if rng.random() < 1 / 3 else None
        draws.append(Draw(text, lang, photo, rng.random() < 0.25))
    return draws


def _settings_class() -> type[Settings]:
    if "cost" in Settings.model_fields:
        return Settings

    class CostedSettings(Settings):  # until Settings has its ``cost`` field
        cost: CostSettings = CostSettings()

    return CostedSettings


async def run_variant(draws: list[Draw], cached: bool, tmp: Path, batch: int = 50,
                      latency: float = 0.0) -> dict[str, Any]:
    fakes = FakeProviders()
    for behaviour in fakes.behaviours().values():
        behaviour.latency = latency
    fakes.language.by_text = {d.message: d.language for d in draws}
    fakes.vision.ocr_text = "ORDER ORD-2024-58317"
    cost = CostSettings(cache=CacheSettings(enabled=cached), ledger=False)
    settings = _settings_class()(
        bus="memory://", store="memory://", blobs=tmp / "blobs", pricing=PRICES, cost=cost,
        providers=ProviderSettings(language="fake", vision="fake", translation="fake",
                                   responder="fake", speech="fake"),
        timer_interval=3600.0,
    )
    providers = {s: Relabel(getattr(fakes, s), m) for s, m in MODELS.items()}
    transport = InMemoryTransport(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0))
    total = Decimal(0)
    by_step: Counter[str] = Counter()
    started = time.perf_counter()
    async with Service(settings, providers=providers, transport=transport) as svc:
        photos: dict[int, BlobRef] = {}
        for d in draws:
            if d.photo is not None and d.photo not in photos:
                data = b"\x89PNG\r\n\x1a\n" + f"product photo {d.photo}".encode() * 40
                photos[d.photo] = await svc.blobs.put(data, "image/png", f"p{d.photo}.png")
        for start in range(0, len(draws), batch):
            ids = []
            for i, d in enumerate(draws[start:start + batch], start):
                inquiry = InquiryReceived(
                    inquiry_id=f"bench-{i}", customer=Customer(id=f"c{i % 97}"), message=d.message,
                    attachments=(photos[d.photo],) if d.photo is not None else (),
                    voice_reply=d.voice,
                )
                await svc.submit(inquiry)
                ids.append(inquiry.inquiry_id)
            for inquiry_id in ids:
                done = (await svc.wait(inquiry_id, timeout=120)).data
                assert isinstance(done, ResponseReady), done
                assert done.cost is not None
                total += done.cost.total
                for step, value in done.cost.by_step.items():
                    by_step[step.split("[")[0]] += value  # type: ignore[assignment]
        stats = next((a.provider.stats for a in svc.runtime.actors  # type: ignore[attr-defined]
                      if isinstance(getattr(a, "provider", None), CachedTranslator)), CacheStats())
    elapsed = time.perf_counter() - started
    calls = Counter(c.capability for c in fakes.calls())
    return {
        "cache": cached,
        "inquiries": len(draws),
        "provider_calls": sum(calls.values()),
        "calls_by_capability": dict(sorted(calls.items())),
        "cost_total": str(total),
        "cost_by_step": {k: str(v) for k, v in sorted(by_step.items())},
        "cache_stats": stats.snapshot() if cached else None,
        "seconds": round(elapsed, 2),
    }


async def run(n: int = 1000, seed: int = 42, out_dir: Path | None = RESULTS,
              quiet: bool = False, latency: float = 0.0) -> dict[str, Any]:
    """``latency``: seconds every fake call takes; with some, identical calls of concurrent
    inquiries overlap, and the cache's single-flight makes them one call."""
    quiet_logging()
    draws = workload(n, seed)
    result = header("cache", n=n, seed=seed, price_table=PRICES.version, latency=latency)
    result["workload"] = {
        "distinct_messages": len({(d.message, d.language) for d in draws}),
        "non_english": sum(d.language != "en" for d in draws),
        "with_photo": sum(d.photo is not None for d in draws),
        "distinct_photos": len({d.photo for d in draws if d.photo is not None}),
        "voice": sum(d.voice for d in draws),
    }
    with tempfile.TemporaryDirectory() as tmp:
        without = await run_variant(draws, False, Path(tmp) / "off", latency=latency)
        with_cache = await run_variant(draws, True, Path(tmp) / "on", latency=latency)
    saved_calls = without["provider_calls"] - with_cache["provider_calls"]
    cost_off, cost_on = Decimal(without["cost_total"]), Decimal(with_cache["cost_total"])
    result["without_cache"] = without
    result["with_cache"] = with_cache
    result["summary"] = {
        "provider_calls": {"without": without["provider_calls"], "with": with_cache["provider_calls"],
                           "saved": saved_calls,
                           "saved_pct": round(100 * saved_calls / max(without["provider_calls"], 1), 1)},
        "cost": {"without": str(cost_off), "with": str(cost_on), "saved": str(cost_off - cost_on),
                 "saved_pct": round(float(100 * (cost_off - cost_on) / cost_off), 1) if cost_off else 0.0,
                 "metered_saved": (with_cache["cache_stats"] or {}).get("total_saved")},
    }
    if not quiet:
        s = result["summary"]
        print(f"{n} inquiries: provider calls {s['provider_calls']['without']} -> "
              f"{s['provider_calls']['with']} ({s['provider_calls']['saved_pct']}% fewer); cost "
              f"{s['cost']['without']} -> {s['cost']['with']} USD ({s['cost']['saved_pct']}% less; "
              f"metered saving {s['cost']['metered_saved']})")
    return save(result, out_dir, "cache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds each fake provider call takes (default 0)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.n, args.seed, latency=args.latency))
    if "path" in result:
        print(result["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
