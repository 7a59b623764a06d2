"""Benchmark scale-out: throughput of a CPU-bound actor with 1, 2 and 4 worker processes on
RabbitMQ, as competing consumers of one queue.

The actor is vision with :class:`~bench.cpu_provider.CpuBoundAnalyzer`: every request costs a
fixed ``--cpu-ms`` of CPU in pure Python (holding the GIL and the event loop), so one worker
process can use one core at most, and more processes are the only way up. Each worker is a
real process (``python -m bench.worker --actors vision --cpu-ms 20``) with the inbox of a
distributed deployment (PostgreSQL by default: a claim and a recorded result per request).

This process is the client: once the ``k`` workers consume, it publishes ``n`` requests
(``AnalyzeImageRequested``) and counts their ``ImageAnalyzed`` results. Throughput is
measured from the first result to the last (``(n - 1) / span``). Rounds interleave the
worker counts (1, 2, 4 / 2, 4, 1 / 4, 1, 2 ...) and the ratios to 1 worker are taken per
round, then their median. The workers' CPU time per request (from ``/proc``) shows how much
of each request is the burn and how much is the runtime around it.

On a machine with ``c`` cores the ceiling is ``c`` workers, less what the broker, the
database and this client use: with 2 cores, 4 workers cannot beat 2.

::

    .venv/bin/python -m bench.scaleout                        # 1, 2, 4 workers, ~1.5 min
    .venv/bin/python -m bench.scaleout --workers 1,2 --n 200 --cpu-ms 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from actors.blobstore import FileBlobStore
from bench.common import RESULTS, Processes, amqp_url, header, postgres_url, quiet_logging, save
from events.envelope import Envelope
from events.support import AnalyzeImageRequested, ImageAnalyzed, StepFailed

IMAGE = b"\x89PNG\r\n\x1a\n" + b"scale-out image " * 64
RESULT_GROUP = "bench-scaleout-results"


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` so far (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of every core so far, from ``/proc/stat`` (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


class Client:
    """Publishes requests and counts results, on our own transport."""

    def __init__(self, procs: Processes) -> None:
        from bus.rabbitmq import RabbitMQTransport

        self.transport = RabbitMQTransport(procs.amqp, exchange=procs.exchange, prefetch=256)
        self.expected: set[str] = set()
        self.times: list[float] = []
        self.failed = 0
        self.done = asyncio.Event()

    async def __aenter__(self) -> Client:
        await self.transport.subscribe(
            RESULT_GROUP, [ImageAnalyzed.event_type, StepFailed.event_type], self._on_result,
            ephemeral=True,
        )
        await self.transport.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    async def _on_result(self, env: Envelope) -> None:
        if env.correlationid not in self.expected:
            return  # a late duplicate of an earlier round
        self.expected.discard(env.correlationid)
        if isinstance(env.data, StepFailed):
            self.failed += 1
        self.times.append(time.perf_counter())
        if not self.expected:
            self.done.set()

    async def round(
        self, n: int, blobs: FileBlobStore, timeout: float
    ) -> tuple[float, float, float]:
        """Publish ``n`` requests; returns (first publish, first result, last result). Every
        request has an image of its own, so the result cache (on by default) never hits."""
        tag = uuid.uuid4().hex[:8]
        images = await asyncio.gather(*(
            blobs.put(IMAGE + f"{tag}-{i}".encode(), "image/png", "scale.png") for i in range(n)
        ))
        envelopes = [
            Envelope.new(AnalyzeImageRequested(image=image), correlationid=f"scale-{tag}-{i}",
                         subject="analyze_image[0]")
            for i, image in enumerate(images)
        ]
        self.expected = {e.correlationid for e in envelopes}
        self.times = []
        self.done.clear()
        t0 = time.perf_counter()
        for i in range(0, n, 100):
            await asyncio.gather(*(self.transport.publish(e) for e in envelopes[i:i + 100]))
        await asyncio.wait_for(self.done.wait(), timeout)
        return t0, self.times[0], self.times[-1]


async def run(
    *,
    n: int = 200,
    cpu_ms: float = 20.0,
    workers: Sequence[int] = (1, 2, 4),
    rounds: int = 5,
    concurrency: int = 4,
    store: str = "postgres",
    amqp: str | None = None,
    postgres: str | None = None,
    out_dir: Path | None = RESULTS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns (and, with ``out_dir``, writes) the results."""

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    if store not in ("postgres", "memory"):
        raise ValueError("store must be 'postgres' or 'memory'")
    quiet_logging()
    counts = sorted(set(workers))
    store_url = postgres_url(postgres) if store == "postgres" else "memory://"
    result = header(
        "scaleout", n=n, cpu_ms=cpu_ms, workers=counts, rounds=rounds,
        concurrency_per_worker=concurrency, inbox_store=store,
    )
    samples: dict[int, list[dict[str, float]]] = {k: [] for k in counts}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp, amqp_url(amqp), store_url, AIAPPS_CONCURRENCY=str(concurrency))
        try:
            blobs = FileBlobStore(tmp / "blobs")
            from bench.saga_overhead import result_cache

            result["params"]["result_cache"] = result_cache(procs.settings())
            async with Client(procs) as client:
                # a warm-up: the queues exist, the database has its schema, caches are warm
                await _round(procs, client, 1, max(n // 10, 5), cpu_ms, blobs, log, warmup=True)
                for r in range(rounds):
                    order = counts[r % len(counts):] + counts[:r % len(counts)]
                    for k in order:
                        sample = await _round(procs, client, k, n, cpu_ms, blobs, log)
                        samples[k].append(sample)
                        log(f"  round {r + 1}/{rounds} {k} worker(s): "
                            f"{sample['throughput']:7.1f} requests/s, "
                            f"{sample['worker_cpu_ms_per_request']:5.1f} ms worker CPU/request, "
                            f"machine {sample['machine_busy']:.0%} busy, "
                            f"{sample['others_share']:.0%} not our workers")
        finally:
            await procs.close()
    result["workers"] = _summarise(samples, counts, cpu_ms)
    result["ideal_per_worker"] = 1000 / cpu_ms if cpu_ms else None
    return save(result, out_dir, "scaleout")


async def _round(
    procs: Processes, client: Client, k: int, n: int, cpu_ms: float, blobs: FileBlobStore,
    log: Callable[[str], None], *, warmup: bool = False,
) -> dict[str, float]:
    names = [f"worker-{k}-{i}-{uuid.uuid4().hex[:4]}" for i in range(k)]
    for name in names:
        procs.spawn(name, "--actors", "vision", "--cpu-ms", str(cpu_ms))
    try:
        await procs.wait_consumers("actor.vision", k)
        cpu0 = [proc_cpu_seconds(procs.processes[name].pid) for name in names]
        busy0 = machine_cpu()
        t0, first, last = await client.round(n, blobs, timeout=max(120.0, n * cpu_ms / 1000 * 4))
        busy1 = machine_cpu()
        cpu1 = [proc_cpu_seconds(procs.processes[name].pid) for name in names]
    finally:
        await procs.stop(names)
    if warmup:
        return {}
    cpu = (
        sum(b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None)
        if all(c is not None for c in cpu0 + cpu1) else float("nan")
    )
    busy = others = float("nan")
    if busy0 is not None and busy1 is not None and busy1[1] > busy0[1]:
        core_seconds = (busy1[1] - busy0[1]) / os.sysconf("SC_CLK_TCK")
        busy = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        others = busy - cpu / core_seconds
    return {
        "throughput": (n - 1) / (last - first) if last > first else 0.0,
        # how busy the whole machine was during the round, and the share of it that was
        # neither our workers: the broker, the database, this client and other people's jobs
        "machine_busy": busy,
        "others_share": others,
        "throughput_from_publish": n / (last - t0),
        "worker_cpu_ms_per_request": cpu / n * 1000,
        "failed": float(client.failed),
    }


def _summarise(
    samples: dict[int, list[dict[str, float]]], counts: list[int], cpu_ms: float
) -> dict[str, Any]:
    base = samples[counts[0]]
    out: dict[str, Any] = {}
    for k in counts:
        rates = [s["throughput"] for s in samples[k]]
        paired = [s["throughput"] / b["throughput"]
                  for s, b in zip(samples[k], base, strict=True) if b["throughput"]]
        cpu = statistics.median(s["worker_cpu_ms_per_request"] for s in samples[k])
        out[str(k)] = {
            "throughput_median": statistics.median(rates),
            "throughput": rates,
            "throughput_from_publish": [s["throughput_from_publish"] for s in samples[k]],
            "ratio_vs_1": statistics.median(paired) if paired else None,
            "ratios_vs_1": paired,
            "linear": k / counts[0],
            "worker_cpu_ms_per_request_median": cpu,
            "burn_share_of_worker_cpu": cpu_ms / cpu if cpu else None,
            "failed": sum(s["failed"] for s in samples[k]),
            "rounds": samples[k],
            "machine_busy_median": statistics.median(s["machine_busy"] for s in samples[k]),
            "others_share_median": statistics.median(s["others_share"] for s in samples[k]),
        }
    return out


def table(result: dict[str, Any]) -> str:
    p = result["params"]
    cores = result["machine"].get("cores")
    lines = [
        f"scale-out: vision burning {p['cpu_ms']:g} ms CPU per request, {p['n']} requests x "
        f"{p['rounds']} rounds, {p['concurrency_per_worker']} handlers per worker, inbox "
        f"{p['inbox_store']}, {cores} cores",
        "",
        "| workers | requests/s (median) | ratio vs 1 worker (median of paired) | linear "
        "| worker CPU ms/request | burn share | machine busy | of which not our workers |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, w in result["workers"].items():
        lines.append(
            f"| {k} | {w['throughput_median']:.1f} | {_f(w['ratio_vs_1'])} | {w['linear']:.0f} "
            f"| {w['worker_cpu_ms_per_request_median']:.1f} | {_f(w['burn_share_of_worker_cpu'])} "
            f"| {_pct(w.get('machine_busy_median'))} | {_pct(w.get('others_share_median'))} |"
        )
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="requests per round")
    parser.add_argument("--cpu-ms", type=float, default=20.0, help="CPU per request (ms)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="handlers per worker")
    parser.add_argument("--store", choices=["postgres", "memory"], default="postgres",
                        help="the workers' inbox: shared PostgreSQL, or one in memory each")
    parser.add_argument("--amqp", help="AMQP URL (default $AIAPPS_TEST_AMQP_URL or local)")
    parser.add_argument("--postgres", help="PostgreSQL URL (default $AIAPPS_TEST_POSTGRES_URL)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    try:
        counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers: comma-separated integers")
    if not counts or min(counts) < 1:
        parser.error("--workers: at least one count, each >= 1")
    result = asyncio.run(run(
        n=args.n, cpu_ms=args.cpu_ms, workers=counts, rounds=args.rounds,
        concurrency=args.concurrency, store=args.store, amqp=args.amqp, postgres=args.postgres,
        out_dir=None if args.no_save else RESULTS,
    ))
    print(table(result))
    if "path" in result:
        print(f"\nresults: {result['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
