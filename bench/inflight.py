"""Benchmark many sagas in flight in one process: support inquiries submitted all at once
(1,000 by default, 10,000 for the headline figure), every provider call taking 1 s.

The whole service runs in this process (in-memory bus, SQLite file store: the embedded
default), with the fakes of :mod:`bench.worker` (a Spanish inquiry with an image and a voice
reply, so every step runs). Measured, within the one run:

* **time to finish** (first submit to last terminal event) against the **ideal**: the
  critical path of the workflow for that inquiry (computed from its definition, as in
  :mod:`bench.saga_overhead`), which is what unbounded concurrency would take. The actors'
  ``concurrency`` setting bounds the provider calls each actor has in flight, so it is set
  to ``n`` (reported); the coordinator's own concurrency is reported too.
* **memory per in-flight saga**: growth of the resident set from just before the first
  submit to its peak (sampled every 50 ms), divided by the sagas in flight at that peak.
  The Python heap alone (``tracemalloc``) is measured instead with ``--tracemalloc``; it
  slows the run down.
* **write amplification** of the SQLite store, per saga: statements and rows written
  (every write goes through a counting wrapper on the store's connection; rows from SQLite's
  ``total_changes``), commits, bytes of values written, bytes the process handed to the
  kernel (``wchar`` of ``/proc/self/io``: WAL pages and checkpoints), the database's growth
  after a checkpoint, and events kept in the event store.

::

    .venv/bin/python -m bench.inflight                   # 1,000 inquiries, ~2 min on 2 cores
    .venv/bin/python -m bench.inflight --n 10000         # the headline figure: much longer
    .venv/bin/python -m bench.inflight --n 2000 --store memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS, header, quiet_logging, save
from bench.saga_overhead import (
    critical_path,
    result_cache,
    spanish_inquiry,
    steps_run,
    unique_image,
)
from bench.worker import fake_providers, provider_map
from bus.memory import InMemoryTransport
from events.envelope import Envelope
from events.support import ResponseReady
from saga.sqlite_store import SqliteSagaStore
from saga.workflows.support import support_workflow
from service.settings import ProviderSettings, Settings
from service.wiring import Service

LONG_TIMEOUT = 3600.0
"""Step and provider-call timeouts of the run (unless ``default_timeouts``): a backlog then
shows as time to finish, instead of as timeouts, fallbacks and an open circuit."""

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:  # not Linux: the peak so far is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def written_bytes() -> int | None:
    """Bytes this process has passed to write(2) and friends (``wchar``), if known."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _size(value: object) -> int:
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    return 8  # a number or NULL


@dataclass
class WriteCounter:
    """Counts what the store writes through its aiosqlite connection."""

    statements: Counter[str] = field(default_factory=Counter)
    """Write statements by ``VERB table`` (one per row of an ``executemany``)."""
    value_bytes: int = 0
    commits: int = 0
    reads: int = 0

    def install(self, store: SqliteSagaStore) -> None:
        db = store.db
        execute, executemany, commit = db.execute, db.executemany, db.commit

        def counted_execute(sql: str, parameters: Any = None) -> Any:
            self._count(sql, [parameters or ()])
            return execute(sql, parameters)

        def counted_executemany(sql: str, parameters: Any) -> Any:
            rows = list(parameters)
            self._count(sql, rows)
            return executemany(sql, rows)

        async def counted_commit() -> None:
            self.commits += 1
            await commit()

        # instance attributes shadow the methods the store calls (the object is unchanged)
        db.execute = counted_execute  # type: ignore[method-assign]
        db.executemany = counted_executemany  # type: ignore[method-assign]
        db.commit = counted_commit  # type: ignore[method-assign]

    def _count(self, sql: str, rows: list[Any]) -> None:
        words = sql.split()
        verb = words[0].upper() if words else ""
        if verb not in _WRITES:
            self.reads += 1
            return
        table = _table(words)
        self.statements[f"{verb} {table}"] += len(rows)
        self.value_bytes += sum(_size(v) for row in rows for v in row)


def _table(words: list[str]) -> str:
    upper = [w.upper() for w in words]
    for keyword in ("INTO", "FROM", "UPDATE"):
        if keyword in upper:
            i = upper.index(keyword) + 1
            if i < len(words):
                return words[i].split("(")[0]
    return "?"


@dataclass
class Sampler:
    """RSS and sagas in flight, every ``interval`` seconds while the run lasts."""

    in_flight: Callable[[], int]
    interval: float = 0.05
    t0: float = 0.0
    points: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds since start, RSS bytes, sagas in flight)."""

    async def run(self) -> None:
        while True:
            self.points.append((time.perf_counter() - self.t0, rss_bytes(), self.in_flight()))
            await asyncio.sleep(self.interval)


async def run(
    *,
    n: int = 1000,
    latency: float = 1.0,
    concurrency: int | None = None,
    coordinator_concurrency: int = 64,
    default_timeouts: bool = False,
    store_kind: str = "sqlite",
    cache: bool = True,
    use_tracemalloc: bool = False,
    timeout: float = 600.0,
    out_dir: Path | None = RESULTS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns (and, with ``out_dir``, writes) the results."""

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    if store_kind not in ("sqlite", "memory"):
        raise ValueError("store_kind must be 'sqlite' or 'memory'")
    quiet_logging()
    per_saga = max(n, 1)
    actor_concurrency = concurrency or max(n, 1)
    result = header(
        "inflight", n=n, latency_s=latency, actor_concurrency=actor_concurrency,
        coordinator_concurrency=coordinator_concurrency,
        store="sqlite (file, WAL)" if store_kind == "sqlite" else "memory",
        timeouts="defaults" if default_timeouts else f"{LONG_TIMEOUT:g} s",
        bus="memory", memory_measure="tracemalloc" if use_tracemalloc else "rss",
    )
    with tempfile.TemporaryDirectory(prefix="bench-inflight-") as tmp_name:
        tmp = Path(tmp_name)
        db_path = tmp / "inflight.db"
        # the result cache is on by default; off, every call goes to its provider as before
        # (the inputs are all distinct) but nothing is looked up or stored for it
        extra: dict[str, Any] = {} if cache else {"cost": {"cache": {"enabled": False}}}
        settings = Settings(
            bus="memory://", blobs=tmp / "blobs",
            store=f"sqlite:///{db_path}" if store_kind == "sqlite" else "memory://",
            providers=ProviderSettings(
                language="fake", vision="fake", translation="fake", responder="fake",
                speech="fake",
            ),
            concurrency=actor_concurrency, log_level="WARNING",
            step_timeouts={} if default_timeouts else {
                s.name: LONG_TIMEOUT for s in support_workflow().steps
            },
            **extra,
        )
        svc = Service(settings, providers=provider_map(fake_providers(latency)))
        assert svc.coordinator is not None
        svc.coordinator.concurrency = coordinator_concurrency
        if not default_timeouts:
            for actor in svc.runtime.actors:
                actor.call_timeout = LONG_TIMEOUT
        store = svc.store if isinstance(svc.store, SqliteSagaStore) else None
        counter = WriteCounter()
        log(f"inflight: starting the service ({actor_concurrency} handlers per actor group, "
            f"{store_kind} store)")
        async with svc:
            if store is not None:
                counter.install(store)
            result["params"]["result_cache"] = result_cache(settings)
            log(f"inflight: writing {n} distinct images to the blob store")
            ids = [f"inflight-{i}" for i in range(n)]
            images = []
            for i in range(0, n, 500):
                images += await asyncio.gather(*(
                    svc.blobs.put(unique_image(key), "image/png", "label.png")
                    for key in ids[i:i + 500]
                ))
            inquiries = [spanish_inquiry(key, image) for key, image in zip(ids, images,
                                                                             strict=True)]
            finished: list[float] = []
            terminal: dict[str, Envelope] = {}
            submitted = 0
            sampler = Sampler(lambda: submitted - len(finished))

            gc.collect()
            if use_tracemalloc:
                tracemalloc.start()
                heap0 = tracemalloc.get_traced_memory()[0]
            rss0 = rss_bytes()
            wchar0 = written_bytes()
            changes0 = store.db.total_changes if store is not None else 0
            statements0 = sum(counter.statements.values())
            reads0, commits0 = counter.reads, counter.commits
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            sampler.t0 = t0
            sampling = asyncio.create_task(sampler.run())

            async def wait(inquiry_id: str) -> None:
                env = await svc.wait(inquiry_id, timeout=timeout)
                finished.append(time.perf_counter() - t0)
                terminal[inquiry_id] = env

            log(f"inflight: submitting {n} inquiries ({latency:g} s per provider call)")
            waiters = []
            for inquiry in inquiries:
                await svc.submit(inquiry)
                submitted += 1
                waiters.append(asyncio.create_task(wait(inquiry.inquiry_id)))
            submit_s = time.perf_counter() - t0
            progress = asyncio.create_task(_progress(log, finished, n, t0))
            try:
                await asyncio.gather(*waiters)
            finally:
                progress.cancel()
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            if use_tracemalloc:
                heap_peak = tracemalloc.get_traced_memory()[1] - heap0
                tracemalloc.stop()
            # the recorder may still be appending the last terminal events
            if isinstance(svc.transport, InMemoryTransport):
                await svc.transport.idle(timeout=120)
            wchar1 = written_bytes()
            rows_changed = store.db.total_changes - changes0 if store is not None else 0
            sample_state = await svc.store.load(inquiries[0].inquiry_id)
            sample_events = len(await svc.store.events(inquiries[0].inquiry_id))
            db_stats = await _db_stats(store) if store is not None else {}
        size_after = (
            await asyncio.to_thread(_checkpointed_size, db_path) if store is not None else 0
        )

    assert sample_state is not None
    ran = steps_run(sample_state)
    ideal_s, chain = critical_path(support_workflow(), latency, ran)
    outcomes = Counter(
        "completed" if isinstance(e.data, ResponseReady) and not e.data.degraded
        else "degraded" if isinstance(e.data, ResponseReady) else "failed"
        for e in terminal.values()
    )
    peak_t, peak_rss, peak_in_flight = max(sampler.points, key=lambda p: p[1])
    in_flight_max = max(p[2] for p in sampler.points)
    writes = sum(counter.statements.values()) - statements0
    result["workflow"] = {"steps_run": ran, "critical_path_steps": chain}
    result["finish"] = {
        "ideal_s": ideal_s,
        "elapsed_s": elapsed,
        "elapsed_over_ideal": elapsed / ideal_s if ideal_s else None,
        "submit_s": submit_s,
        "first_finished_s": min(finished) if finished else None,
        "median_finished_s": sorted(finished)[len(finished) // 2] if finished else None,
        "sagas_per_s": n / elapsed if elapsed else None,
        # this process's CPU (every thread: the event loop and SQLite's) per saga, and the
        # share of the wall time it kept a core busy: what separates the run from its ideal
        "cpu_s": cpu,
        "cpu_ms_per_saga": cpu / per_saga * 1000,
        "cpu_utilisation": cpu / elapsed if elapsed else None,
        "outcomes": dict(outcomes),
    }
    result["memory"] = {
        "rss_before_mb": rss0 / 2**20,
        "rss_peak_mb": peak_rss / 2**20,
        "rss_peak_at_s": peak_t,
        "in_flight_at_peak": peak_in_flight,
        "in_flight_max": in_flight_max,
        # the heap is not given back as sagas finish, so the peak comes late: divide by the
        # most sagas that were in flight together (all of them, as they are submitted at once)
        "rss_per_in_flight_saga_kb": (peak_rss - rss0) / max(in_flight_max, 1) / 1024,
    }
    if use_tracemalloc:
        result["memory"]["heap_peak_per_saga_kb"] = heap_peak / per_saga / 1024
    result["events_of_one_saga"] = sample_events
    result["store"] = None if store is None else {
        "write_statements_per_saga": writes / per_saga,
        "write_statements_by_table_per_saga": {
            k: v / per_saga for k, v in sorted(counter.statements.items())
        },
        "rows_changed_per_saga": rows_changed / per_saga,
        "commits_per_saga": (counter.commits - commits0) / per_saga,
        "read_statements_per_saga": (counter.reads - reads0) / per_saga,
        "value_bytes_written_per_saga": counter.value_bytes / per_saga,
        "process_bytes_written_per_saga": (
            (wchar1 - wchar0) / per_saga if wchar0 is not None and wchar1 is not None else None
        ),
        "db_bytes_per_saga": size_after / per_saga,
        **{f"{k}_per_saga": v / per_saga for k, v in db_stats.items() if k != "state_bytes"},
        "saga_state_bytes": db_stats["state_bytes"] / per_saga,
    }
    result["timeline"] = [
        [round(t, 3), round(r / 2**20, 1), f] for t, r, f in sampler.points[:: max(
            len(sampler.points) // 400, 1)]
    ]
    result["finished_s"] = [round(x, 3) for x in sorted(finished)[:: max(n // 500, 1)]]
    return save(result, out_dir, "inflight")


async def _progress(log: Callable[[str], None], finished: list[float], n: int, t0: float) -> None:
    while True:
        await asyncio.sleep(5)
        log(f"  {time.perf_counter() - t0:5.1f} s: {len(finished)}/{n} finished")


async def _db_stats(store: SqliteSagaStore) -> dict[str, int]:
    """What is kept at the end: sagas, events, and what is left in outbox, timers, inbox."""
    out: dict[str, int] = {}
    for key, query in (
        ("sagas_rows", "SELECT count(*) FROM sagas"),
        ("events_stored", "SELECT count(*) FROM events"),
        ("outbox_rows_left", "SELECT count(*) FROM outbox"),
        ("timer_rows_left", "SELECT count(*) FROM timers"),
        ("inbox_rows", "SELECT count(*) FROM inbox"),
        ("state_bytes", "SELECT coalesce(sum(length(state)), 0) FROM sagas"),
    ):
        async with store.db.execute(query) as cur:
            row = await cur.fetchone()
        out[key] = int(row[0]) if row else 0
    return out


def _checkpointed_size(path: Path) -> int:
    """The database's size once its WAL is folded in (a plain connection, after close)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def table(result: dict[str, Any]) -> str:
    p, t, m, s = result["params"], result["finish"], result["memory"], result["store"]
    lines = [
        f"sagas in flight: {p['n']} inquiries at once, {p['latency_s']:g} s per provider call, "
        f"actor concurrency {p['actor_concurrency']}, coordinator concurrency "
        f"{p['coordinator_concurrency']}, {p.get('store', 'sqlite')} store",
        "",
        "| ideal s | finished in s | / ideal | sagas/s | CPU ms per saga | outcomes "
        "| RSS peak MB | KB per in-flight saga |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| {t['ideal_s']:.1f} | {t['elapsed_s']:.1f} | {t['elapsed_over_ideal']:.2f} "
        f"| {t['sagas_per_s']:.0f} | {t['cpu_ms_per_saga']:.1f} "
        f"| {', '.join(f'{k} {v}' for k, v in t['outcomes'].items())} "
        f"| {m['rss_peak_mb']:.0f} | {m['rss_per_in_flight_saga_kb']:.1f} |",
    ]
    if s is not None:
        lines += [
            "",
            "| per saga | write statements | rows changed | commits | value bytes "
            "| bytes to kernel | DB bytes | events stored |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| SQLite | {s['write_statements_per_saga']:.1f} | {s['rows_changed_per_saga']:.1f} "
            f"| {s['commits_per_saga']:.1f} | {s['value_bytes_written_per_saga']:,.0f} "
            f"| {_num(s['process_bytes_written_per_saga'])} | {s['db_bytes_per_saga']:,.0f} "
            f"| {s['events_stored_per_saga']:.1f} |",
        ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="inquiries in flight")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per provider call")
    parser.add_argument("--concurrency", type=int, help="handlers per actor group (default n)")
    parser.add_argument("--coordinator-concurrency", type=int, default=64)
    parser.add_argument("--default-timeouts", action="store_true",
                        help="keep the default step timeouts (a backlog then times steps out)")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite",
                        help="the saga store (write amplification is measured for sqlite)")
    parser.add_argument("--no-result-cache", action="store_true",
                        help="turn the result cache off (it is on by default)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="measure the Python heap with tracemalloc instead of RSS")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(
        n=args.n, latency=args.latency, concurrency=args.concurrency,
        coordinator_concurrency=args.coordinator_concurrency,
        default_timeouts=args.default_timeouts, store_kind=args.store,
        cache=not args.no_result_cache,
        use_tracemalloc=args.tracemalloc,
        out_dir=None if args.no_save else RESULTS,
    ))
    print(table(result))
    if "path" in result:
        print(f"\nresults: {result['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
