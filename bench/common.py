"""What the benchmarks share: the machine's description, result files, quiet logging, the
URLs of the local broker and database, and real coordinator/worker processes on them (the
approach of ``tests/distributed/cluster.py``: ``AIAPPS_*`` settings in the environment)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

RESULTS = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def amqp_url(url: str | None = None) -> str:
    return url or os.environ.get("AIAPPS_BENCH_AMQP_URL") or os.environ.get(
        "AIAPPS_TEST_AMQP_URL", DEFAULT_AMQP_URL
    )


def postgres_url(url: str | None = None) -> str:
    return url or os.environ.get("AIAPPS_BENCH_POSTGRES_URL") or os.environ.get(
        "AIAPPS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL
    )


def quiet_logging() -> None:
    """Warnings and errors only: the services log a line per saga at INFO, and rendering
    those would be measured along with the work."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def machine() -> dict[str, Any]:
    """Where a result was measured: cores, Python, load at the start."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    with contextlib.suppress(OSError):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    return info


def header(benchmark: str, **params: Any) -> dict[str, Any]:
    """The common head of a result file."""
    return {
        "benchmark": benchmark,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command(),
        "machine": machine(),
        "params": params,
    }


def command() -> str:
    """The command line that is running (``.venv/bin/python -m bench.run --only saga``)."""
    argv = list(sys.argv) or [""]
    script = Path(argv[0])
    if script.suffix == ".py" and script.parent.name == "bench":
        return shlex.join([".venv/bin/python", "-m", f"bench.{script.stem}", *argv[1:]])
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def save(result: dict[str, Any], out_dir: Path | None, name: str) -> dict[str, Any]:
    """Write ``result`` to ``out_dir/<name>-<timestamp>.json`` (its ``path`` is set)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        started = datetime.fromisoformat(str(result["time"]))
        result.setdefault("duration_s", round((datetime.now(UTC) - started).total_seconds()))
    if out_dir is None:
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{name}-{stamp}.json"
    result["path"] = str(path)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


class Processes:
    """Coordinator and worker processes (``python -m bench.worker``) on one exchange and one
    schema, with the settings in ``AIAPPS_*`` variables, as the distributed tests do. Logs
    go to ``tmp/<name>.log``."""

    def __init__(self, tmp: Path, amqp: str, store: str, **settings: str) -> None:
        self.tmp = tmp
        self.amqp = amqp
        self.store = store
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"bench-{tag}"
        self.schema = f"bench_{tag}"
        self.env = {
            **os.environ,
            "AIAPPS_BUS": amqp,
            "AIAPPS_BUS_EXCHANGE": self.exchange,
            "AIAPPS_STORE": store,
            "AIAPPS_STORE_SCHEMA": self.schema,
            "AIAPPS_BLOBS": str(tmp / "blobs"),
            "AIAPPS_LOG_LEVEL": "WARNING",
            "AIAPPS_LOG_FORMAT": "json",
            **{f"AIAPPS_PROVIDERS__{s}": "fake"
               for s in ("LANGUAGE", "VISION", "TRANSLATION", "RESPONDER", "SPEECH")},
            **settings,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def settings(self) -> Any:
        """The :class:`~service.settings.Settings` the processes read from their environment."""
        from service.settings import Settings

        keys = {k: v for k, v in self.env.items() if k.startswith("AIAPPS_")}
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update(keys)
        try:
            return Settings()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker", *args], env=self.env, cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    async def wait_consumers(self, group: str, count: int, timeout: float = 60) -> None:
        """Until ``count`` consumers listen on the group's queue (the processes are up)."""
        import aio_pika

        connection = await aio_pika.connect(self.amqp)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for name, proc in self.procs.items():
                        if proc.poll() is not None:
                            raise RuntimeError(
                                f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}"
                            )
                    channel = await connection.channel()
                    try:
                        queue = await channel.declare_queue(
                            f"{self.exchange}.{group}", passive=True
                        )
                        consumers = queue.declaration_result.consumer_count or 0
                    except aio_pika.exceptions.ChannelClosed:
                        consumers = 0
                    finally:
                        if not channel.is_closed:
                            await channel.close()
                    if consumers >= count:
                        return
                    await asyncio.sleep(0.1)
        finally:
            await connection.close()

    async def stop(self, names: Sequence[str] | None = None) -> None:
        """SIGTERM the processes (all by default) and wait for them to exit."""
        chosen = list(names) if names is not None else list(self.procs)
        for name in chosen:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in chosen:
            proc = self.procs.pop(name)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)

    async def close(self) -> None:
        """Stop every process, drop the schema and delete the exchange's queues."""
        await self.stop()
        if self.store.startswith(("postgresql://", "postgres://")):
            import asyncpg

            conn = await asyncpg.connect(self.store)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            finally:
                await conn.close()
        await delete_exchange(self.amqp, self.exchange)


async def delete_exchange(amqp: str, exchange: str, known: Sequence[str] = ()) -> None:
    """Delete ``exchange`` and every queue named after it: those ``rabbitmqctl`` lists (when
    it is installed and allowed), else the ``known`` names."""
    import aio_pika

    names = set(known)
    if shutil.which("rabbitmqctl"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listed = await asyncio.to_thread(
                subprocess.run,
                ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
                capture_output=True, text=True, timeout=60, check=False,
            )
            names |= {n.strip() for n in listed.stdout.splitlines()
                      if n.strip().startswith(f"{exchange}.")}
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        for name in sorted(names):
            try:
                await channel.queue_delete(name)
            except aio_pika.exceptions.ChannelClosed:
                channel = await connection.channel()
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()
