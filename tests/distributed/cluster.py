"""A real distributed deployment for tests: coordinator and worker processes (``python -m
service.cli``) on RabbitMQ and PostgreSQL, each test on its own exchange and schema."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from service import Service, Settings
from service.settings import REPO_ROOT


def _url(var: str, default: str, what: str) -> str:
    url = os.environ.get(var)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {var} is not: the distributed tests need {what}")
    return default


def amqp_url() -> str:
    return _url("AIAPPS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ")


def postgres_url() -> str:
    return _url("AIAPPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test",
                "PostgreSQL")


class Cluster:
    """Processes sharing one exchange, one schema, one blob folder and one fake call log."""

    def __init__(self, tmp: Path, **settings: str) -> None:
        self.tmp = tmp
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"test-{tag}"
        self.schema = f"test_{tag}"
        self.call_log = tmp / "calls.jsonl"
        self.crash_file = tmp / "crash"
        self.env = {
            **os.environ,
            "AIAPPS_BUS": amqp_url(),
            "AIAPPS_BUS_EXCHANGE": self.exchange,
            "AIAPPS_STORE": postgres_url(),
            "AIAPPS_STORE_SCHEMA": self.schema,
            "AIAPPS_BLOBS": str(tmp / "blobs"),
            "AIAPPS_FAKE_CALL_LOG": str(self.call_log),
            "AIAPPS_FAKE_CRASH_FILE": str(self.crash_file),
            "AIAPPS_TIMER_INTERVAL": "0.1",
            "AIAPPS_OUTBOX_INTERVAL": "1",
            "AIAPPS_BUS_RETRY_DELAY": "0.05",
            "AIAPPS_CONCURRENCY": "16",
            "AIAPPS_CLAIM_LEASE": "3",
            "AIAPPS_LOG_LEVEL": "INFO",
            "AIAPPS_LOG_FORMAT": "json",
            **{f"AIAPPS_PROVIDERS__{s}": "fake"
               for s in ("LANGUAGE", "VISION", "TRANSLATION", "RESPONDER", "SPEECH")},
            **settings,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def settings(self) -> Settings:
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
                [sys.executable, "-m", "service.cli", *args], env=self.env, cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    async def wait_consumers(self, group: str, count: int = 1, timeout: float = 60) -> None:
        """Until ``count`` consumers listen on the group's queue (the processes are up)."""
        connection = await aio_pika.connect(amqp_url())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    channel = await connection.channel()
                    try:
                        queue = await channel.declare_queue(
                            f"{self.exchange}.{group}", passive=True
                        )
                        consumers = queue.declaration_result.consumer_count
                    except aio_pika.exceptions.ChannelClosed:
                        consumers = 0
                    finally:
                        if not channel.is_closed:
                            await channel.close()
                    if consumers >= count:
                        return
                    await asyncio.sleep(0.2)
        finally:
            await connection.close()

    def client(self) -> Service:
        """A helpdesk: publishes inquiries and waits for their terminal events."""
        return Service(self.settings(), coordinator=False, actors=[])

    def charges(self) -> list[dict[str, Any]]:
        if not self.call_log.exists():
            return []
        return [json.loads(line) for line in self.call_log.read_text().splitlines()]

    def double_charges(self) -> list[tuple[str, str]]:
        seen = Counter(
            (c["capability"], json.dumps(c["args"])) for c in self.charges()
            if c["event"] == "charge"
        )
        return [k for k, n in seen.items() if n > 1]

    async def terminal_counts(self) -> Counter[str]:
        conn = await asyncpg.connect(postgres_url())
        try:
            rows = await conn.fetch(
                f"SELECT correlation_id FROM {self.schema}.events "
                "WHERE type IN ('ResponseReady', 'InquiryFailed')"
            )
        finally:
            await conn.close()
        return Counter(r["correlation_id"] for r in rows)

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(10)

    async def close(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.processes.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise AssertionError(f"{name} did not stop within 30 s of SIGTERM") from None
        await self._drop()

    async def _drop(self) -> None:
        conn = await asyncpg.connect(postgres_url())
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        finally:
            await conn.close()
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
        # every queue of this test's exchange: groups, their retry queues and dead letters
        names = [n.strip() for n in stdout.decode().splitlines()
                 if n.strip().startswith(f"{self.exchange}.")]
        connection = await aio_pika.connect(amqp_url())
        try:
            channel = await connection.channel()
            for name in names:
                try:
                    await channel.queue_delete(name)
                except aio_pika.exceptions.ChannelClosed:
                    channel = await connection.channel()
            await channel.exchange_delete(self.exchange)
        finally:
            await connection.close()
