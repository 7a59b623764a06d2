"""Benchmark what the saga machinery adds to a request: end-to-end latency of the support
workflow against its critical path.

The inquiry is in Spanish, with an image and a voice reply asked for, so every step of the
support workflow runs: ``analyze_image`` alongside ``detect_language → translate_in``, then
``respond → translate_out → synthesize_voice``. Every provider is a fake that sleeps a fixed
latency per call (50 ms by default). The *critical path* is computed from the workflow's
definition (the longest chain of ``needs``, each step weighing its service's latency, over
the steps that ran for this inquiry), not written down by hand. The overhead is
``p50 - critical path``.

Variants, interleaved one inquiry at a time (memory, sqlite, rabbitmq, memory, ...) so that
the machine's drift hits them alike; each inquiry runs alone (latency, not throughput):

* ``memory``: the whole service in this process, in-memory bus and in-memory store.
* ``sqlite``: the whole service in this process, in-memory bus and a SQLite file store.
* ``rabbitmq``: a distributed deployment: one coordinator process and one worker process
  with every actor (``python -m bench.worker``), RabbitMQ and PostgreSQL; this process is the
  client that publishes the inquiry and waits for its ``ResponseReady``.

Goal: p50 within 10 ms of the critical path in-process, within 30 ms over RabbitMQ::

    .venv/bin/python -m bench.saga_overhead                     # all three, ~1 min
    .venv/bin/python -m bench.saga_overhead --only memory,sqlite --n 100 --latency 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from actors.providers.fake import FakeProviders
from bench.common import (
    RESULTS,
    Processes,
    amqp_url,
    header,
    percentile,
    postgres_url,
    quiet_logging,
    save,
)
from bench.worker import fake_providers, provider_map
from events.common import BlobRef
from events.envelope import Envelope
from events.support import Customer, InquiryReceived, ResponseReady
from saga.state import SagaState, StepStatus
from saga.workflow import Workflow
from saga.workflows.support import support_workflow
from service.settings import ProviderSettings, Settings
from service.wiring import Service

VARIANTS = ("memory", "sqlite", "rabbitmq")
GOAL_MS = {"memory": 10.0, "sqlite": 10.0, "rabbitmq": 30.0}
DESCRIPTION = {
    "memory": "in-process Service: memory bus + memory store",
    "sqlite": "in-process Service: memory bus + SQLite file store",
    "rabbitmq": "processes: 1 coordinator + 1 worker (all actors), RabbitMQ + PostgreSQL; "
                "client in the bench process",
}
IMAGE = b"\x89PNG\r\n\x1a\n" + b"bench image " * 64


# -- the critical path, from the workflow definition ------------------------------------------


def steps_run(state: SagaState) -> dict[str, int]:
    """The steps of a finished saga that called their service, with how many items each
    (1 for a plain step, the branches of a ``for_each`` step)."""
    ran: dict[str, int] = {}
    for key, step in state.steps.items():
        if "[" in key:
            continue
        if step.status is StepStatus.SUCCEEDED:
            ran[key] = 1
        elif step.status is StepStatus.EXPANDED:
            done = [b for b in step.branches if state.steps[b].status is StepStatus.SUCCEEDED]
            if done:
                ran[key] = len(done)
    return ran


def critical_path(
    workflow: Workflow, latency: float | Mapping[str, float], ran: Mapping[str, int]
) -> tuple[float, list[str]]:
    """The longest dependent chain of ``workflow`` in seconds, and its steps.

    Each step that ran weighs its service's ``latency`` (one number for every service, or a
    mapping by service); a ``for_each`` step's branches run in parallel (in waves of
    ``max_parallel`` when it is set); a step that did not run weighs nothing. Steps are in
    definition order, which is a topological order (a step's needs are defined before it)."""
    finish: dict[str, tuple[float, list[str]]] = {}
    for step in workflow.steps:
        start, chain = max(
            (finish[n] for n in step.needs), key=lambda f: f[0], default=(0.0, [])
        )
        items = ran.get(step.name, 0)
        if items:
            waves = math.ceil(items / (step.max_parallel or items))
            cost = waves * (latency if isinstance(latency, float | int) else latency[step.service])
            finish[step.name] = (start + cost, [*chain, step.name])
        else:
            finish[step.name] = (start, chain)
    total, chain = max(finish.values(), key=lambda f: f[0], default=(0.0, []))
    return total, chain


# -- one inquiry against one target --------------------------------------------------------------


def spanish_inquiry(inquiry_id: str, image: BlobRef) -> InquiryReceived:
    """A Spanish inquiry with an image and a voice reply: every support step runs. Its text
    names ``inquiry_id`` (and :func:`unique_image` makes its image), so that no two inquiries
    ask a provider the same thing: the result cache, on by default, misses every time and
    every step pays its latency."""
    return InquiryReceived(
        inquiry_id=inquiry_id,
        customer=Customer(id="bench-customer", name="Lucía"),
        channel="web",
        message=f"Mi cafetera llegó rota (pedido {inquiry_id}). Adjunto una foto de la "
                "etiqueta del pedido.",
        attachments=(image,),
        voice_reply=True,
    )


def unique_image(key: str) -> bytes:
    """The bytes of an image that no other ``key`` has."""
    return IMAGE + key.encode()


def result_cache(settings: Settings) -> str:
    """Whether the result cache is on in ``settings``, for the record."""
    cache = getattr(getattr(settings, "cost", None), "cache", None)
    if cache is None:
        return "not in this version"
    return "on" if getattr(cache, "enabled", False) else "off"


@dataclass
class Sample:
    e2e_ms: float
    start_leg_ms: float
    """Submit to the coordinator starting the saga (its clock)."""
    steps_over_ms: float
    """Sum over the critical chain of (step span - provider latency): the round trips."""
    end_leg_ms: float
    """The saga finishing to the client holding the terminal event."""


@dataclass
class Target:
    name: str
    service: Service
    latency: float
    samples: list[Sample] = field(default_factory=list)
    ran: dict[str, int] = field(default_factory=dict)
    count: int = 0
    floor: Callable[[], Awaitable[tuple[float, float]]] | None = None
    """One durable round trip of each kind: (commit ms, confirmed publish ms)."""
    floors: list[tuple[float, float]] = field(default_factory=list)

    async def one(self, record: bool = True) -> SagaState:
        self.count += 1
        inquiry_id = f"saga-{self.name}-{self.count}-{time.time_ns()}"
        image = await self.service.blobs.put(unique_image(inquiry_id), "image/png", "label.png")
        inquiry = spanish_inquiry(inquiry_id, image)
        wall = datetime.now(UTC)
        t0 = time.perf_counter()
        await self.service.submit(inquiry)
        done: Envelope = await self.service.wait(inquiry.inquiry_id, timeout=60)
        elapsed = time.perf_counter() - t0
        received = datetime.now(UTC)
        if not isinstance(done.data, ResponseReady) or done.data.degraded:
            raise RuntimeError(f"{self.name}: the inquiry did not complete cleanly: {done.data!r}")
        state = await self.service.store.load(inquiry.inquiry_id)
        assert state is not None
        assert state.finished_at is not None
        if record:
            self.samples.append(self._sample(state, elapsed, wall, received))
        return state

    def _sample(
        self, state: SagaState, elapsed: float, wall: datetime, received: datetime
    ) -> Sample:
        _, chain = critical_path(support_workflow(), self.latency, steps_run(state))
        over = 0.0
        for name in chain:
            keys = state.steps[name].branches or [name]
            spans = [
                (s.finished_at - s.started_at).total_seconds()
                for s in (state.steps[k] for k in keys)
                if s.finished_at is not None and s.started_at is not None
            ]
            over += max(spans, default=0.0) - self.latency
        assert state.finished_at is not None
        return Sample(
            e2e_ms=elapsed * 1000,
            start_leg_ms=(state.started_at - wall).total_seconds() * 1000,
            steps_over_ms=over * 1000,
            end_leg_ms=(received - state.finished_at).total_seconds() * 1000,
        )


def _settings(tmp: Path, store: str, concurrency: int) -> Settings:
    return Settings(
        bus="memory://", store=store, blobs=tmp / "blobs",
        providers=ProviderSettings(
            language="fake", vision="fake", translation="fake", responder="fake", speech="fake"
        ),
        concurrency=concurrency, log_level="WARNING",
    )


@contextlib.asynccontextmanager
async def in_process(
    name: str, tmp: Path, latency: float, tracer: Tracer | None = None
) -> AsyncIterator[Target]:
    store = "memory://" if name == "memory" else f"sqlite:///{tmp / f'{name}.db'}"
    fakes = fake_providers(latency)
    svc = Service(_settings(tmp / name, store, 16), providers=provider_map(fakes))
    if tracer is not None:
        tracer.install(svc, fakes)
    async with svc:
        yield Target(name, svc, latency)


TRACE_PHASES = {
    "request_to_provider": "request published → provider called (bus, decode, inbox claim, "
                           "blob read for vision)",
    "timer_lateness": "provider call beyond its latency (the fake's timer waking up late)",
    "provider_to_result": "provider returned → result published (inbox record, envelope, "
                          "blob write for speech)",
    "result_to_coordinator": "result published → coordinator handles it (bus, decode)",
    "coordinator": "coordinator: load, apply, save with outbox, publish the next request, "
                   "mark published",
}


class Tracer:
    """Timestamps of each step's round trip, by request id, in a separate in-process run (not
    the timed one): where a step's time goes. Installed as instance attributes over the
    transport's ``publish``, the coordinator's ``handle`` and each fake's ``before``."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.marks: dict[str, dict[str, float]] = {}

    def _mark(self, key: str | None, what: str) -> None:
        if key:
            self.marks.setdefault(key, {})[what] = time.perf_counter()

    def install(self, svc: Service, fakes: FakeProviders) -> None:
        import structlog

        publish = svc.transport.publish

        async def traced_publish(env: Envelope) -> None:
            if env.type.endswith("Requested"):
                self._mark(env.id, "requested")
            else:
                self._mark(env.causationid, "replied")
            await publish(env)

        svc.transport.publish = traced_publish  # type: ignore[method-assign,assignment]
        assert svc.coordinator is not None
        handle = svc.coordinator.handle

        async def traced_handle(env: Envelope) -> None:
            started = time.perf_counter()
            await handle(env)
            if env.causationid in self.marks:
                self.marks[env.causationid]["applying"] = started
                self._mark(env.causationid, "applied")

        svc.coordinator.handle = traced_handle  # type: ignore[method-assign,assignment]
        for behaviour in fakes.behaviours().values():
            before = behaviour.before

            async def traced_before(
                capability: str, *args: object, _before: Any = before
            ) -> None:
                # the actor runtime's middleware binds the request's id for its log lines
                request = structlog.contextvars.get_contextvars().get("event_id")
                self._mark(request, "provider_start")
                await _before(capability, *args)
                self._mark(request, "provider_end")

            behaviour.before = traced_before  # type: ignore[method-assign]

    def phases(self) -> dict[str, float]:
        """The median of each phase over every traced step, in ms."""
        rows: dict[str, list[float]] = {k: [] for k in TRACE_PHASES}
        wanted = ("requested", "provider_start", "provider_end", "replied", "applying",
                  "applied")
        for m in self.marks.values():
            if not all(k in m for k in wanted):
                continue
            rows["request_to_provider"].append(m["provider_start"] - m["requested"])
            rows["timer_lateness"].append(m["provider_end"] - m["provider_start"] - self.latency)
            rows["provider_to_result"].append(m["replied"] - m["provider_end"])
            rows["result_to_coordinator"].append(m["applying"] - m["replied"])
            rows["coordinator"].append(m["applied"] - m["applying"])
        return {k: statistics.median(v) * 1000 for k, v in rows.items() if v}


@contextlib.asynccontextmanager
async def distributed(
    tmp: Path, latency: float, amqp: str, postgres: str, log: Callable[[str], None]
) -> AsyncIterator[Target]:
    procs = Processes(tmp / "rabbitmq", amqp, postgres, AIAPPS_CONCURRENCY="16")
    procs.tmp.mkdir(parents=True, exist_ok=True)
    try:
        procs.spawn("coordinator", "--coordinator")
        procs.spawn("worker", "--actors", "all", "--latency", str(latency), "--language", "es")
        await procs.wait_consumers("saga-coordinator", 1)
        for service in ("language", "vision", "translation", "responder", "speech"):
            await procs.wait_consumers(f"actor.{service}", 1)
        log(f"  rabbitmq: coordinator and worker up (exchange {procs.exchange})")
        client = Service(procs.settings(), coordinator=False, actors=[])
        async with client, DurableFloor(amqp, postgres, procs.exchange, procs.schema) as floor:
            yield Target("rabbitmq", client, latency, floor=floor.sample)
    finally:
        await procs.close()


class DurableFloor:
    """The cost of the durable operations a step cannot do without, measured alongside:
    one PostgreSQL commit of a small row, and one persistent publish to a durable queue
    that waits for the broker's confirm. Both wait for the disk (fsync) on a default set-up."""

    def __init__(self, amqp: str, postgres: str, exchange: str, schema: str) -> None:
        self.amqp, self.postgres = amqp, postgres
        self.queue = f"{exchange}.floor"
        self.table = f"{schema}.bench_floor"
        self.pg: Any = None
        self.conn: Any = None
        self.channel: Any = None

    async def __aenter__(self) -> DurableFloor:
        import aio_pika
        import asyncpg

        self.pg = await asyncpg.connect(self.postgres)
        await self.pg.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id TEXT, body TEXT)")
        self.conn = await aio_pika.connect(self.amqp)
        self.channel = await self.conn.channel(publisher_confirms=True)
        await self.channel.declare_queue(self.queue, durable=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.channel.queue_delete(self.queue)
        await self.conn.close()
        await self.pg.close()

    async def sample(self) -> tuple[float, float]:
        import aio_pika

        t0 = time.perf_counter()
        await self.pg.execute(f"INSERT INTO {self.table} VALUES ($1, $2)", "x", "y" * 200)
        t1 = time.perf_counter()
        await self.channel.default_exchange.publish(
            aio_pika.Message(b"y" * 600, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            self.queue,
        )
        t2 = time.perf_counter()
        return (t1 - t0) * 1000, (t2 - t1) * 1000


# -- driver ---------------------------------------------------------------------------------


def summary(
    target: Target, critical_ms: float, chain_steps: int, overshoot_ms: float
) -> dict[str, Any]:
    e2e = [s.e2e_ms for s in target.samples]
    p50 = percentile(e2e, 50)
    overhead = p50 - critical_ms
    goal = GOAL_MS[target.name]
    extra: dict[str, Any] = {}
    if target.floors:
        commit = statistics.median(f[0] for f in target.floors)
        confirm = statistics.median(f[1] for f in target.floors)
        # per step on the chain: the coordinator saves (commit) and publishes the request
        # (confirm), the worker claims the request and records its result (2 commits) and
        # publishes the result (confirm); plus the start (save, publish) and the end (save,
        # publish of the terminal event)
        durable = (chain_steps * (3 * commit + 2 * confirm)) + 2 * (commit + confirm)
        extra = {
            "durable_floor": {
                "pg_commit_ms_median": commit,
                "publish_confirm_ms_median": confirm,
                "commits_on_chain": 3 * chain_steps + 2,
                "confirms_on_chain": 2 * chain_steps + 2,
                "floor_ms": durable,
                "overhead_over_floor": overhead / durable if durable else None,
            }
        }
    return extra | {
        "description": DESCRIPTION[target.name],
        "n": len(e2e),
        "p50_ms": p50,
        "p90_ms": percentile(e2e, 90),
        "p99_ms": percentile(e2e, 99),
        "min_ms": min(e2e),
        "max_ms": max(e2e),
        "mean_ms": statistics.fmean(e2e),
        "overhead_p50_ms": overhead,
        "overhead_p50_ms_net_of_timer_overshoot": overhead - chain_steps * overshoot_ms,
        "overhead_p99_ms": percentile(e2e, 99) - critical_ms,
        "p50_over_critical": p50 / critical_ms if critical_ms else None,
        "goal_ms": goal,
        "goal_met": overhead <= goal,
        # where the p50 overhead goes (medians of each part; they need not add up exactly)
        "breakdown_median_ms": {
            "submit_to_saga_start": statistics.median(s.start_leg_ms for s in target.samples),
            "step_round_trips": statistics.median(s.steps_over_ms for s in target.samples),
            "saga_end_to_client": statistics.median(s.end_leg_ms for s in target.samples),
        },
        "samples_ms": e2e,
    }


async def run(
    *,
    n: int = 40,
    latency: float = 0.05,
    only: Collection[str] | None = None,
    warmup: int = 3,
    trace: int = 5,
    amqp: str | None = None,
    postgres: str | None = None,
    out_dir: Path | None = RESULTS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns (and, with ``out_dir``, writes) the results."""

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    chosen = [v for v in VARIANTS if only is None or v in only]
    unknown = set(only or ()) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    quiet_logging()
    result = header("saga", n=n, latency_s=latency, warmup=warmup, variants=chosen)
    workflow = support_workflow()
    with tempfile.TemporaryDirectory(prefix="bench-saga-") as tmp_name:
        tmp = Path(tmp_name)
        async with contextlib.AsyncExitStack() as stack:
            targets: list[Target] = []
            for name in chosen:
                log(f"saga: starting {name} ({DESCRIPTION[name]})")
                if name == "rabbitmq":
                    target = await stack.enter_async_context(
                        distributed(tmp, latency, amqp_url(amqp), postgres_url(postgres), log)
                    )
                else:
                    target = await stack.enter_async_context(in_process(name, tmp, latency))
                targets.append(target)
                result["params"].setdefault("result_cache", result_cache(target.service.settings))
            for target in targets:  # warm-up: imports, caches, connections, prepared plans
                for _ in range(warmup):
                    state = await target.one(record=False)
                target.ran = steps_run(state)
            log(f"saga: {n} inquiries per variant, interleaved, {latency * 1000:g} ms per call")
            overshoot: list[float] = []
            for i in range(n):
                for target in targets:
                    await target.one()
                    if target.floor is not None:
                        target.floors.append(await target.floor())
                # how late a timer of the providers' latency wakes this loop up (a fake
                # provider's call is such a timer): part of every step, not of our code
                t0 = time.perf_counter()
                await asyncio.sleep(latency)
                overshoot.append((time.perf_counter() - t0 - latency) * 1000)
                if not quiet and (i + 1) % max(n // 5, 1) == 0:
                    log("  " + "  ".join(
                        f"{t.name} {statistics.median(s.e2e_ms for s in t.samples):6.1f} ms"
                        for t in targets) + f"  ({i + 1}/{n})")
        traces: dict[str, dict[str, float]] = {}
        for name in chosen:
            if name == "rabbitmq" or trace <= 0:
                continue
            tracer = Tracer(latency)
            async with in_process(name, tmp / "trace", latency, tracer) as traced:
                for _ in range(warmup):
                    await traced.one(record=False)
                tracer.marks.clear()
                for _ in range(trace):
                    await traced.one(record=False)
            traces[name] = tracer.phases()
    ran = targets[0].ran if targets else {}
    if any(t.ran != ran for t in targets):
        raise RuntimeError(f"the variants ran different steps: {[t.ran for t in targets]}")
    missing = [s.name for s in workflow.steps if s.name not in ran]
    critical_s, chain = critical_path(workflow, latency, ran)
    critical_ms = critical_s * 1000
    result["workflow"] = {
        "name": workflow.name,
        "steps_run": ran,
        "steps_not_run": missing,
        "critical_path_steps": chain,
        "critical_path_ms": critical_ms,
        "needs": {s.name: list(s.needs) for s in workflow.steps},
    }
    result["timer_overshoot_ms_median"] = statistics.median(overshoot) if n else 0.0
    result["variants"] = {
        t.name: summary(t, critical_ms, len(chain), result["timer_overshoot_ms_median"])
        for t in targets
    }
    for name, phases in traces.items():
        result["variants"][name]["trace_median_ms"] = phases
    result["trace"] = {"inquiries": trace, "phases": TRACE_PHASES}
    return save(result, out_dir, "saga")


def table(result: dict[str, Any]) -> str:
    w = result["workflow"]
    lines = [
        f"saga overhead: support workflow, {result['params']['latency_s'] * 1000:g} ms per "
        f"provider call, critical path {w['critical_path_ms']:.0f} ms "
        f"({' → '.join(w['critical_path_steps'])}), {result['params']['n']} inquiries per "
        "variant",
        "",
        "| variant | p50 ms | p99 ms | p50 / critical path | overhead p50 ms | goal ms | met "
        "| start leg / step round trips / end leg (median ms) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, v in result["variants"].items():
        b = v["breakdown_median_ms"]
        lines.append(
            f"| {name} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {_ratio(v['p50_over_critical'])} "
            f"| {v['overhead_p50_ms']:.1f} | ≤ {v['goal_ms']:g} "
            f"| {'yes' if v['goal_met'] else 'no'} "
            f"| {b['submit_to_saga_start']:.1f} / {b['step_round_trips']:.1f} / "
            f"{b['saga_end_to_client']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"timer overshoot (a sleep of the provider latency wakes up late by, median): "
        f"{result['timer_overshoot_ms_median']:.2f} ms per call"
    )
    traced = {k: v["trace_median_ms"] for k, v in result["variants"].items()
              if v.get("trace_median_ms")}
    if traced:
        lines += [
            "",
            f"where a step's time goes (median per step over {result['trace']['inquiries']} "
            "traced inquiries, a separate run):",
            "",
            "| phase | " + " | ".join(f"{k} ms" for k in traced) + " |",
            "|---|" + "---:|" * len(traced),
        ]
        for phase, label in result["trace"]["phases"].items():
            lines.append(f"| {label} | " + " | ".join(
                f"{t.get(phase, float('nan')):.2f}" for t in traced.values()) + " |")
        lines.append("")
    for name, v in result["variants"].items():
        f = v.get("durable_floor")
        if f:
            lines.append(
                f"{name} durable floor on the chain: {f['commits_on_chain']} commits x "
                f"{f['pg_commit_ms_median']:.2f} ms + {f['confirms_on_chain']} confirmed publishes "
                f"x {f['publish_confirm_ms_median']:.2f} ms = {f['floor_ms']:.1f} ms; "
                f"overhead / floor = {_ratio(f['overhead_over_floor'])}"
            )
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="inquiries per variant")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per provider call")
    parser.add_argument("--only", help=f"comma-separated variants of {', '.join(VARIANTS)}")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--trace", type=int, default=5,
                        help="inquiries traced per in-process variant after the timed ones")
    parser.add_argument("--amqp", help="AMQP URL (default $AIAPPS_TEST_AMQP_URL or local)")
    parser.add_argument("--postgres", help="PostgreSQL URL (default $AIAPPS_TEST_POSTGRES_URL)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    only = [v.strip() for v in args.only.split(",")] if args.only else None
    if only and set(only) - set(VARIANTS):
        parser.error(f"--only: choose from {', '.join(VARIANTS)}")
    result = asyncio.run(run(
        n=args.n, latency=args.latency, only=only, warmup=args.warmup, trace=args.trace,
        amqp=args.amqp,
        postgres=args.postgres, out_dir=None if args.no_save else RESULTS,
    ))
    print(table(result))
    if "path" in result:
        print(f"\nresults: {result['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
