"""The cache benchmark runs (tiny size; no timing asserted) and its figures add up."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

from bench import cache


async def test_cache_bench_runs(tmp_path: Path) -> None:
    result = await cache.run(n=40, seed=3, out_dir=tmp_path, quiet=True)
    text = await asyncio.to_thread(Path(result["path"]).read_text)
    saved = json.loads(text)["summary"]
    assert saved["provider_calls"]["with"] < saved["provider_calls"]["without"]
    assert Decimal(saved["cost"]["with"]) < Decimal(saved["cost"]["without"])
    # what the cache metered as saved is the difference in cost, up to two effects that depend
    # on the order concurrent inquiries run in: inputs that normalise to one key but differ in
    # length (the hit is metered at the cached call's price), and identical misses in flight
    # together (each pays)
    metered, saved_cost = Decimal(saved["cost"]["metered_saved"]), Decimal(saved["cost"]["saved"])
    assert metered > 0
    assert abs(metered - saved_cost) <= saved_cost * Decimal("0.1")
