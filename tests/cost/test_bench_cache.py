"""The cache benchmark runs (tiny size; no timing asserted) and its figures add up."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import cache


async def summary(tmp_path: Path, **params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    result = await cache.run(n=40, seed=3, out_dir=tmp_path, quiet=True, **params)
    saved = json.loads(await asyncio.to_thread(Path(result["path"]).read_text))
    return saved["summary"], saved["with_cache"]


async def test_cache_bench_runs(tmp_path: Path) -> None:
    saved, _ = await summary(tmp_path)
    assert saved["provider_calls"]["with"] < saved["provider_calls"]["without"]
    assert Decimal(saved["cost"]["with"]) < Decimal(saved["cost"]["without"])
    # what the cache metered as saved is exactly the difference in cost: every repeated input
    # of this workload is byte-identical (so no hit is metered at another input's price, the
    # one effect normalisation could have), and identical misses in flight together share one
    # call (single-flight), its followers metered as hits
    metered, saved_cost = Decimal(saved["cost"]["metered_saved"]), Decimal(saved["cost"]["saved"])
    assert metered > 0
    assert metered == saved_cost


async def test_overlapping_identical_calls_pay_once(tmp_path: Path) -> None:
    """With slow providers the same inputs of concurrent inquiries are in flight together:
    single-flight makes them one call, so the cache saves as many calls as with instant
    providers, and its meter still adds up to the cent."""
    instant, _ = await summary(tmp_path / "instant")
    slow, with_cache = await summary(tmp_path / "slow", latency=0.005)
    assert sum(with_cache["cache_stats"]["coalesced"].values()) > 0
    assert slow["provider_calls"] == instant["provider_calls"]
    assert Decimal(slow["cost"]["metered_saved"]) == Decimal(slow["cost"]["saved"])
