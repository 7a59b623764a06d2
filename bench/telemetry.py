"""Benchmark what telemetry costs on the hop of ``bench.hop`` (consume an event, validate it,
publish a follow-up) over the in-memory bus, with

* ``off``: the transport as it is (``AIAPPS_TELEMETRY__ENABLED=false``, the default);
* ``on``: telemetry on with no exporter configured (no ``OTEL_*`` variables): no spans are
  made, the context is carried through, the metrics are counted;
* ``exporter``: telemetry on with an in-memory span exporter (a synchronous processor): every
  publish and every handling is a span, as with OTLP, without the network.

The three run in interleaved rounds (off, on, exporter, off, ...) in one process, so that drift
in the machine's speed hits them alike; the result is the ratio of each to ``off`` (events/s
and CPU per event), not the absolute times. ``OTEL_*`` variables are set aside while it runs,
so that a developer's collector is not what is measured.

::

    .venv/bin/python -m bench.telemetry                   # defaults (~20 s)
    .venv/bin/python -m bench.telemetry --n 5000 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import RESULTS, header, quiet_logging, save
from bench.hop import Sample, _interleave, memory_ours
from bus.memory import InMemoryTransport

VARIANTS = ("off", "on", "exporter")
BASELINE = "off"


@contextlib.contextmanager
def _no_otel_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


async def hop(n: int, variant: str, workers: int = 8) -> Sample:
    """One round of ``n`` hops with telemetry as ``variant`` says."""
    from service.telemetry import Telemetry, TelemetrySettings

    inner = InMemoryTransport(concurrency=workers)
    telemetry: Telemetry | None = None
    if variant == "on":
        telemetry = Telemetry(TelemetrySettings(enabled=True))
    elif variant == "exporter":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        telemetry = Telemetry(TelemetrySettings(enabled=True), span_exporter=InMemorySpanExporter())
    elif variant != "off":
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    transport = telemetry.instrument_transport(inner) if telemetry is not None else inner
    try:
        return await memory_ours(n, workers, transport)
    finally:
        if telemetry is not None:
            telemetry.shutdown()


def _summary(samples: list[Sample]) -> dict[str, Any]:
    rates = [s.rate for s in samples]
    return {
        "median": statistics.median(rates), "min": min(rates), "max": max(rates),
        "samples": rates,
        "cpu_us_per_event_median": statistics.median(s.cpu_us for s in samples),
        "cpu_us_per_event": [s.cpu_us for s in samples],
    }


async def run(
    *, n: int = 2000, rounds: int = 5, workers: int = 8, out_dir: Path | None = RESULTS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns (and, with ``out_dir``, writes) the results."""

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    quiet_logging()
    result = header("telemetry", n=n, rounds=rounds, workers=workers)
    log(f"telemetry: {rounds} rounds of {n} hops, {workers} workers, in memory")
    with _no_otel_environment():
        samples = await _interleave(
            {v: _variant(v, workers) for v in VARIANTS}, n, rounds, log
        )
    base = samples[BASELINE]
    variants: dict[str, Any] = {}
    for name in VARIANTS:
        summary = _summary(samples[name])
        # each round ran the variants back to back: the median of per-round ratios is less
        # exposed to the machine's drift than the ratio of the medians
        summary["paired_ratio_median"] = statistics.median(
            s.rate / b.rate for s, b in zip(samples[name], base, strict=True) if b.rate
        )
        summary["cpu_ratio_median"] = statistics.median(
            s.cpu_us / b.cpu_us for s, b in zip(samples[name], base, strict=True) if b.cpu_us
        )
        variants[name] = summary
    result["variants"] = variants
    return save(result, out_dir, "telemetry")


def _variant(name: str, workers: int) -> Callable[[int], Any]:
    return lambda k: hop(k, name, workers)


DESCRIPTIONS = {
    "off": "telemetry off (the default)",
    "on": "on, no exporter configured",
    "exporter": "on, in-memory span exporter",
}


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table: each variant against telemetry off."""
    params = result["params"]
    lines = [
        f"telemetry benchmark: {params['n']} hops x {params['rounds']} rounds, in memory",
        "",
        "| telemetry | events/s (median) | throughput / off (median of rounds) "
        "| CPU us/event | CPU / off (median of rounds) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {DESCRIPTIONS.get(name, name)} | {v['median']:,.0f} "
            f"| {v['paired_ratio_median']:.2f} | {v['cpu_us_per_event_median']:.0f} "
            f"| {v['cpu_ratio_median']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="hops per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(n=args.n, rounds=args.rounds, workers=args.workers,
                             out_dir=None if args.no_save else RESULTS))
    print(table(result))
    if "path" in result:
        print(f"\nresults: {result['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
