"""A real distributed deployment for tests: coordinator and worker processes (``python -m
service.cli``) on RabbitMQ and PostgreSQL, each test on its own exchange and schema."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events.envelope import Envelope, decode
from saga.state import SagaState, StepStatus
from service import Service
from service.processes import ProcessGroup


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


class Cluster(ProcessGroup):
    """Processes sharing one exchange, one schema, one blob folder and one fake call log."""

    def __init__(self, tmp: Path, **settings: str) -> None:
        self.call_log = tmp / "calls.jsonl"
        self.crash_file = tmp / "crash"
        super().__init__(
            tmp, amqp_url(), postgres_url(), prefix="test",
            AIAPPS_FAKE_CALL_LOG=str(self.call_log),
            AIAPPS_FAKE_CRASH_FILE=str(self.crash_file),
            AIAPPS_TIMER_INTERVAL="0.1",
            AIAPPS_OUTBOX_INTERVAL="1",
            AIAPPS_BUS_RETRY_DELAY="0.05",
            AIAPPS_CONCURRENCY="16",
            AIAPPS_CLAIM_LEASE="3",
            AIAPPS_LOG_LEVEL="INFO",
            **settings,
        )

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
        conn = await asyncpg.connect(self.store)
        try:
            rows = await conn.fetch(
                f"SELECT correlation_id FROM {self.schema}.events "
                "WHERE type IN ('ResponseReady', 'InquiryFailed')"
            )
        finally:
            await conn.close()
        return Counter(r["correlation_id"] for r in rows)

    async def sagas(self) -> list[SagaState]:
        """Every saga in the shared store, as the coordinators saved it."""
        conn = await asyncpg.connect(self.store)
        try:
            rows = await conn.fetch(f"SELECT state FROM {self.schema}.sagas")
        finally:
            await conn.close()
        return [SagaState.model_validate_json(r["state"]) for r in rows]

    async def ready_messages(self, group: str) -> int:
        """Messages waiting in the group's queue (0 when it does not exist)."""
        import aio_pika

        connection = await aio_pika.connect(self.amqp)
        try:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(f"{self.exchange}.{group}", passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return 0
            return queue.declaration_result.message_count or 0
        finally:
            await connection.close()

    async def events(self, correlation_id: str) -> list[Envelope]:
        """A request's events in the shared event store, in store order."""
        conn = await asyncpg.connect(self.store)
        try:
            rows = await conn.fetch(
                f"SELECT body FROM {self.schema}.events WHERE correlation_id = $1 ORDER BY seq",
                correlation_id,
            )
        finally:
            await conn.close()
        return [decode(r["body"]) for r in rows]

    async def timers_left(self) -> int:
        conn = await asyncpg.connect(self.store)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self.schema}.timers"))
        finally:
            await conn.close()

    async def redispatched_steps(self) -> list[tuple[str, str, int, str]]:
        """(saga, step, attempts, status) of every step that was not dispatched exactly once
        (a step skipped by its condition, or a fan-out parent, is dispatched never and is left
        out). A request lost on the way and sent again by the saga's deadline shows here."""
        return [
            (state.id, step.key, step.attempts, step.status.value)
            for state in await self.sagas()
            for step in state.steps.values()
            if step.status not in (StepStatus.SKIPPED, StepStatus.EXPANDED)
            and step.attempts != 1
        ]

    async def close(self) -> list[str]:
        killed = await super().close()
        assert not killed, f"{killed} did not stop within 30 s of SIGTERM"
        return killed
