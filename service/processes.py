"""A group of real ai-apps processes on one exchange and one database schema, configured by
``AIAPPS_*`` variables in their environment: what the distributed tests and the benchmarks
start (coordinators, workers) and tear down. Logs go to ``tmp/<name>.log``.

Needs the ``rabbitmq`` extra (aio-pika), and ``postgres`` (asyncpg) when the store is
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from service.settings import REPO_ROOT, Settings

FAKE_PROVIDERS = {f"AIAPPS_PROVIDERS__{s}": "fake"
                  for s in ("LANGUAGE", "VISION", "TRANSLATION", "RESPONDER", "SPEECH")}


class ProcessGroup:
    """Processes sharing one exchange (``{prefix}-{tag}``), one schema (``{prefix}_{tag}``)
    and one blob folder; each runs ``python -m {module} ARGS`` (``service.cli`` by default)."""

    def __init__(
        self, tmp: Path, amqp: str, store: str, *, prefix: str = "test",
        module: str = "service.cli", **settings: str,
    ) -> None:
        self.tmp = tmp
        self.amqp = amqp
        self.store = store
        self.module = module
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"{prefix}-{tag}"
        self.schema = f"{prefix}_{tag}"
        self.env = {
            **os.environ,
            "AIAPPS_BUS": amqp,
            "AIAPPS_BUS_EXCHANGE": self.exchange,
            "AIAPPS_STORE": store,
            "AIAPPS_STORE_SCHEMA": self.schema,
            "AIAPPS_BLOBS": str(tmp / "blobs"),
            "AIAPPS_LOG_FORMAT": "json",
            **FAKE_PROVIDERS,
            **settings,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def settings(self) -> Settings:
        """The :class:`Settings` the processes read from their environment."""
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
                [sys.executable, "-m", self.module, *args], env=self.env, cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """``kill -9``: no shutdown, no acknowledgements, no goodbyes."""
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(10)

    async def wait_consumers(self, group: str, count: int = 1, timeout: float = 60) -> None:
        """Until ``count`` consumers listen on the group's queue (the processes are up); a
        process that exits meanwhile fails the wait with the end of its log."""
        import aio_pika

        connection = await aio_pika.connect(self.amqp)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for name, proc in self.processes.items():
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

    async def stop(self, names: Sequence[str] | None = None, timeout: float = 30) -> list[str]:
        """SIGTERM the processes (all by default) and wait for them to exit; those that did
        not within ``timeout`` seconds are killed, and their names returned."""
        chosen = list(names) if names is not None else list(self.processes)
        for name in chosen:
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        killed = []
        for name in chosen:
            proc = self.processes.pop(name)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
                killed.append(name)
        return killed

    async def close(self) -> list[str]:
        """Stop every process, drop the schema and delete the exchange and its queues.
        Returns the processes that had to be killed."""
        killed = await self.stop()
        if self.store.startswith(("postgresql://", "postgres://")):
            import asyncpg

            conn = await asyncpg.connect(self.store)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            finally:
                await conn.close()
        await delete_exchange(self.amqp, self.exchange)
        return killed


async def delete_exchange(amqp: str, exchange: str, known: Sequence[str] = ()) -> None:
    """Delete ``exchange`` and every queue named after it (groups, their retry queues and
    dead letters): those ``rabbitmqctl`` lists (when it is installed and allowed), else the
    ``known`` names."""
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
