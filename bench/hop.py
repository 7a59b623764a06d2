"""Benchmark one hop: consume an event, validate it, publish a follow-up.

Two comparisons, each run in interleaved rounds (ours, baseline, ours, baseline, ...) in one
process so that drift in the machine's speed hits both alike:

* ``memory``: :class:`~bus.memory.InMemoryTransport` with a group handler that publishes a
  follow-up, against a *ceiling*: a bare :class:`asyncio.Queue` with the same number of workers
  doing the same codec work (pydantic decode and validate, build the follow-up, encode).
* ``rabbitmq``: :class:`~bus.rabbitmq.RabbitMQTransport` against raw aio-pika doing the same
  work with the same prefetch, publisher confirms, persistent messages and AMQP properties.
  Each round pre-loads its queue with ``n`` persistent events, then times from the first
  delivery to the ``n``-th confirmed follow-up (connection set-up and pre-loading not timed).

Results go to ``bench/results/hop-<timestamp>.json`` and a Markdown table is printed::

    .venv/bin/python -m bench.hop                      # both, defaults (~30-60 s)
    .venv/bin/python -m bench.hop --only memory --n 20000 --rounds 7
    .venv/bin/python -m bench.hop --only rabbitmq --profile   # cProfile of our hot path
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

from bus.base import Transport
from bus.memory import InMemoryTransport
from events import (
    CONTENT_TYPE,
    Customer,
    DetectLanguageRequested,
    Envelope,
    InquiryReceived,
    decode,
    encode,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
IN_TYPE = InquiryReceived.event_type
OUT_TYPE = DetectLanguageRequested.event_type


def _inputs(n: int) -> list[Envelope]:
    return [
        Envelope.new(
            InquiryReceived(
                inquiry_id=f"bench-{i}",
                customer=Customer(id=f"c{i % 17}", name="Ada Lovelace"),
                message=f"My order {i} has not arrived, can you help?",
            ),
            correlationid=f"bench-{i}",
        )
        for i in range(n)
    ]


def follow_up(env: Envelope) -> Envelope:
    """The hop's work after validation: the follow-up event (the same in every variant)."""
    return env.follow(DetectLanguageRequested(text=cast(InquiryReceived, env.data).message))


class Sample(NamedTuple):
    rate: float
    """Events per second, first delivery to last completion."""
    cpu_us: float
    """This process's CPU time per event, in microseconds: the client's own cost, which the
    broker's speed (and anything else the machine runs) disturbs much less than the rate."""


class _Clock:
    """First-delivery-to-last-completion timing, shared by every variant."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first = self.last = 0.0
        self.first_cpu = self.last_cpu = 0.0
        self.done = asyncio.Event()

    def started(self) -> None:
        if not self.first:
            self.first = time.perf_counter()
            self.first_cpu = time.process_time()

    def finished(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.last = time.perf_counter()
            self.last_cpu = time.process_time()
            self.done.set()

    def sample(self) -> Sample:
        # n-1 intervals between the first delivery and the last completion
        if self.last <= self.first:
            return Sample(0.0, 0.0)
        intervals = self.n - 1
        return Sample(
            intervals / (self.last - self.first),
            (self.last_cpu - self.first_cpu) / intervals * 1e6,
        )


# -- memory ---------------------------------------------------------------------------------


async def memory_ours(n: int, workers: int = 8, transport: Transport | None = None) -> Sample:
    """``n`` hops through our in-memory transport (or ``transport``, one wrapping it: the
    telemetry benchmark's instrumented one), closed at the end."""
    clock = _Clock(n)
    transport = transport or InMemoryTransport(concurrency=workers)

    async def handler(env: Envelope) -> None:
        clock.started()
        await transport.publish(follow_up(env))
        clock.finished()

    await transport.subscribe("hop", [IN_TYPE], handler)
    await transport.start()
    try:
        for env in _inputs(n):
            await transport.publish(env)
        await asyncio.wait_for(clock.done.wait(), 120)
    finally:
        await transport.close()
    return clock.sample()


async def memory_ceiling(n: int, workers: int = 8) -> Sample:
    clock = _Clock(n)
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    outbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def worker() -> None:
        while True:
            body = await inbox.get()
            clock.started()
            outbox.put_nowait(encode(follow_up(decode(body))))
            clock.finished()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        for env in _inputs(n):
            inbox.put_nowait(encode(env))
        await asyncio.wait_for(clock.done.wait(), 120)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return clock.sample()


# -- rabbitmq -------------------------------------------------------------------------------


def _message(env: Envelope) -> Any:
    import aio_pika

    return aio_pika.Message(
        encode(env),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=env.id,
        correlation_id=env.correlationid,
        type=env.type,
        timestamp=env.time,
        headers={"ce-tenant": env.tenant},
    )


class RabbitBench:
    """The broker side: one exchange, a sink queue for the follow-ups, a queue per variant."""

    def __init__(self, url: str, prefetch: int) -> None:
        self.url = url
        self.prefetch = prefetch
        self.exchange = f"bench-{uuid.uuid4().hex[:8]}"
        self.queues: set[str] = set()
        self.admin: Any = None

    async def __aenter__(self) -> RabbitBench:
        import aio_pika

        # robust, so that a broker blip during a long run does not strand the clean-up
        self.admin = await aio_pika.connect_robust(self.url, timeout=10)
        channel = await self.admin.channel()
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        # the follow-ups land in a durable queue, as they would in a real deployment, so that
        # their confirms include the broker's persistence work
        sink = await channel.declare_queue(f"{self.exchange}.sink", durable=True)
        await sink.bind(exchange, OUT_TYPE)
        self.queues.add(sink.name)
        await channel.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            async with asyncio.timeout(30):
                channel = await self.admin.channel()
                for name in self.queues:
                    await channel.queue_delete(name)
                await channel.exchange_delete(self.exchange)
                await channel.close()
        finally:
            # always: a robust connection left open swallows the cancellation asyncio.run
            # sends at exit, and the process never ends
            await self.admin.close()

    async def preload(self, queue: str, n: int) -> None:
        """Put ``n`` persistent input events straight into ``queue`` (and empty the sink)."""
        channel = await self.admin.channel(publisher_confirms=True)
        try:
            await channel.declare_queue(queue, durable=True)
            self.queues.add(queue)
            await (await channel.get_queue(f"{self.exchange}.sink")).purge()
            messages = [_message(env) for env in _inputs(n)]
            for i in range(0, n, 500):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(channel.default_exchange.publish(m, queue) for m in messages[i : i + 500])
                    ),
                    60,
                )
        finally:
            await channel.close()

    async def ours(self, n: int) -> Sample:
        from bus.rabbitmq import RabbitMQTransport

        await self.preload(f"{self.exchange}.hop", n)
        clock = _Clock(n)
        transport = RabbitMQTransport(self.url, exchange=self.exchange, prefetch=self.prefetch)

        async def handler(env: Envelope) -> None:
            clock.started()
            await transport.publish(follow_up(env))
            clock.finished()

        await transport.subscribe("hop", [IN_TYPE], handler)
        try:
            await transport.start()
            await asyncio.wait_for(clock.done.wait(), 120)
        finally:
            await transport.close()
            self.queues |= transport.declared_queues
        return clock.sample()

    async def raw(self, n: int) -> Sample:
        import aio_pika

        queue_name = f"{self.exchange}.raw"
        await self.preload(queue_name, n)
        clock = _Clock(n)
        conn = await aio_pika.connect_robust(self.url)
        try:
            pub = await conn.channel(publisher_confirms=True)
            exchange = await pub.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            sub = await conn.channel(publisher_confirms=False)
            await sub.set_qos(prefetch_count=self.prefetch)
            queue = await sub.declare_queue(queue_name, durable=True)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                clock.started()
                out = follow_up(decode(message.body))
                await exchange.publish(_message(out), out.type, mandatory=False)
                await message.ack()
                clock.finished()

            tag = await queue.consume(on_message)
            await asyncio.wait_for(clock.done.wait(), 120)
            await queue.cancel(tag)
        finally:
            await conn.close()
        return clock.sample()


# -- driver ---------------------------------------------------------------------------------

Variant = Callable[[int], Awaitable[Sample]]


async def _interleave(
    pairs: dict[str, Variant], n: int, rounds: int, log: Callable[[str], None]
) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {name: [] for name in pairs}
    # a short warm-up of each (imports, pydantic schema caches, broker queue creation)
    for variant in pairs.values():
        await variant(max(n // 10, 2))
    for r in range(rounds):
        for name, variant in pairs.items():
            sample = await variant(n)
            samples[name].append(sample)
            log(f"  round {r + 1}/{rounds} {name:<10} {sample.rate:10.0f} events/s "
                f"{sample.cpu_us:8.0f} us CPU/event")
    return samples


def _compare(
    ours: list[Sample], baseline: list[Sample], baseline_name: str, ratio_name: str
) -> dict[str, Any]:
    def summary(samples: list[Sample]) -> dict[str, Any]:
        rates = [s.rate for s in samples]
        return {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "samples": rates,
            "cpu_us_per_event_median": statistics.median(s.cpu_us for s in samples),
            "cpu_us_per_event": [s.cpu_us for s in samples],
        }

    a, b = summary(ours), summary(baseline)
    return {
        "ours": a,
        "baseline": b,
        "baseline_name": baseline_name,
        "ratio_name": ratio_name,
        "ratio": a["median"] / b["median"],
        # each round's pair ran back to back, so the median of the per-round ratios is less
        # exposed to the machine's drift than the ratio of the medians
        "paired_ratio_median": statistics.median(
            o.rate / r.rate for o, r in zip(ours, baseline, strict=True) if r.rate
        ),
        # baseline CPU / our CPU per event: the same sense as the rate ratio (1.0 = as cheap)
        "cpu_ratio": b["cpu_us_per_event_median"] / a["cpu_us_per_event_median"],
    }


async def run(
    *,
    n: int = 2000,
    rounds: int = 5,
    only: str | None = None,
    url: str | None = None,
    prefetch: int = 32,
    workers: int = 8,
    out_dir: Path | None = RESULTS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns (and, with ``out_dir``, writes) the results."""

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    url = url or os.environ.get("AIAPPS_BENCH_AMQP_URL") or os.environ.get(
        "AIAPPS_TEST_AMQP_URL", DEFAULT_URL
    )
    result: dict[str, Any] = {
        "benchmark": "hop",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": n,
        "rounds": rounds,
        "python": sys.version.split()[0],
        "comparisons": {},
    }
    if only in (None, "memory"):
        log(f"memory: {rounds} rounds of {n} events, {workers} workers")
        samples = await _interleave(
            {
                "ours": lambda k: memory_ours(k, workers),
                "ceiling": lambda k: memory_ceiling(k, workers),
            },
            n, rounds, log,
        )
        result["comparisons"]["memory"] = {"workers": workers} | _compare(
            samples["ours"], samples["ceiling"], "asyncio.Queue ceiling", "ours/ceiling"
        )
    if only in (None, "rabbitmq"):
        import aio_pika

        log(f"rabbitmq: {rounds} rounds of {n} events, prefetch {prefetch}")
        async with RabbitBench(url, prefetch) as bench:
            samples = await _interleave({"ours": bench.ours, "raw": bench.raw}, n, rounds, log)
        result["comparisons"]["rabbitmq"] = {
            "prefetch": prefetch, "aio_pika": aio_pika.__version__,
        } | _compare(samples["ours"], samples["raw"], "raw aio-pika", "ours/raw")
    if out_dir is not None:
        result["path"] = str(_save(result, out_dir))
    return result


def _save(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"hop-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table (medians over the rounds)."""
    lines = [
        f"hop benchmark: {result['n']} events x {result['rounds']} rounds (median events/s)",
        "",
        "| bus | ours events/s | baseline | baseline events/s | ratio of medians "
        "| median of paired ratios | CPU us/event ours / baseline (ratio) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for bus, c in result["comparisons"].items():
        lines.append(
            f"| {bus} | {c['ours']['median']:,.0f} | {c['baseline_name']} "
            f"| {c['baseline']['median']:,.0f} | {c['ratio']:.2f} ({c['ratio_name']}) "
            f"| {c['paired_ratio_median']:.2f} "
            f"| {c['ours']['cpu_us_per_event_median']:.0f} / "
            f"{c['baseline']['cpu_us_per_event_median']:.0f} ({c['cpu_ratio']:.2f}) |"
        )
    return "\n".join(lines)


async def profile_ours(url: str, n: int, prefetch: int) -> str:
    """cProfile of one round of our RabbitMQ hop: the hot path, by own time."""
    async with RabbitBench(url, prefetch) as bench:
        await bench.ours(max(n // 10, 2))
        profiler = cProfile.Profile()
        profiler.enable()
        await bench.ours(n)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(r"bus/rabbitmq|bench/hop", 20)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["memory", "rabbitmq"])
    parser.add_argument("--url", help="AMQP URL (default: $AIAPPS_BENCH_AMQP_URL, "
                        "$AIAPPS_TEST_AMQP_URL, or a local guest broker)")
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8, help="memory: workers per side")
    parser.add_argument("--profile", action="store_true",
                        help="profile our RabbitMQ hop with cProfile instead of benchmarking")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    if args.profile:
        url = args.url or os.environ.get("AIAPPS_TEST_AMQP_URL", DEFAULT_URL)
        print(asyncio.run(profile_ours(url, args.n, args.prefetch)))
        return 0
    result = asyncio.run(
        run(
            n=args.n, rounds=args.rounds, only=args.only, url=args.url,
            prefetch=args.prefetch, workers=args.workers,
            out_dir=None if args.no_save else RESULTS,
        )
    )
    print(table(result))
    if "path" in result:
        print(f"\nresults: {result['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
