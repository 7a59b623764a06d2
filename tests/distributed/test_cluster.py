"""A distributed run that loses nothing: coordinator and worker processes on RabbitMQ and
PostgreSQL, with workers killed, the broker restarted and messages poisoned."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events import InquiryReceived, ResponseReady
from service.settings import REPO_ROOT
from service.testing import make_inquiry
from tests.distributed.cluster import Cluster
from tests.distributed.cluster import amqp_url as cluster_amqp_url
from tests.rabbitmqctl import rabbitmqctl, require_restartable

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

ALL = "language,vision,translation,responder,speech"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        await c.close()


async def start(cluster: Cluster, coordinators: int = 1, workers: int = 2) -> None:
    for i in range(coordinators):
        cluster.spawn(f"coordinator-{i}", "coordinator")
    for i in range(workers):
        cluster.spawn(f"worker-{i}", "worker", "--actors", ALL)
    await cluster.wait_consumers("saga-coordinator", coordinators)
    await cluster.wait_consumers("actor.responder", workers)
    await cluster.wait_consumers("actor.translation", workers)


def inquiries(n: int, prefix: str) -> list[InquiryReceived]:
    return [
        make_inquiry(f"{prefix}-{i}", f"message {prefix}-{i}: my order is late",
                     language=["es", None, "en"][i % 3], voice_reply=i % 4 == 0)
        for i in range(n)
    ]


async def submit_all(cluster: Cluster, items: list[InquiryReceived], timeout: float) -> dict:
    async with cluster.client() as client:
        for item in items:
            await client.submit(item)
        done = await asyncio.gather(*(client.wait(i.inquiry_id, timeout) for i in items))
    return {e.correlationid: e for e in done}


class TestDistributedRun:
    async def test_two_hundred_inquiries_each_end_once(self, cluster: Cluster) -> None:
        """Two coordinators and two workers on one PostgreSQL database: 200 inquiries, every
        one ends in exactly one terminal event, and no provider call is paid twice."""
        await start(cluster, coordinators=2, workers=2)
        items = inquiries(200, "run")
        done = await submit_all(cluster, items, timeout=120)
        assert len(done) == 200
        assert all(isinstance(e.data, ResponseReady) for e in done.values())
        assert all(e.data.degraded == () for e in done.values())  # type: ignore[union-attr]
        counts = await recorded(cluster, 200)
        assert set(counts) == {i.inquiry_id for i in items}
        assert set(counts.values()) == {1}
        assert cluster.double_charges() == []
        assert await cluster.redispatched_steps() == []
        pids = {c["pid"] for c in cluster.charges() if c["capability"] == "respond"}
        assert len(pids) == 2, "both workers should have taken requests"

    async def test_two_coordinators_fire_each_deadline_once(self, tmp_path: Path) -> None:
        """Two coordinator processes on one database, and a responder slower than its step's
        timeout: each respond dispatch times out exactly once (its deadline fired once, by
        one coordinator, as their logs show), is retried once, times out again and falls back;
        every saga ends in one terminal event; both coordinators fired timers; none is left."""
        cluster = Cluster(
            tmp_path, AIAPPS_FAKE_LATENCY="0.6", AIAPPS_STEP_TIMEOUTS='{"respond": 0.3}',
            AIAPPS_STEP_MAX_ATTEMPTS="2", AIAPPS_BREAKER_FAILURE_THRESHOLD="1000000",
        )
        try:
            await start(cluster, coordinators=2, workers=1)
            items = inquiries(24, "late")
            async with cluster.client() as client:
                for item in items:  # spread out, so deadlines come due over many scans
                    await client.submit(item)
                    await asyncio.sleep(0.05)
                done = await asyncio.gather(*(client.wait(i.inquiry_id, 90) for i in items))
            assert all(isinstance(e.data, ResponseReady) for e in done)
            assert all(e.data.degraded == ("respond",) for e in done)  # type: ignore[union-attr]
            counts = await recorded(cluster, 24)
            assert set(counts.values()) == {1}
            for state in await cluster.sagas():
                respond = state.steps["respond"]
                assert (respond.status.value, respond.attempts) == ("fallback", 2), state.id
                assert respond.error is not None
                assert respond.error.error_class == "timeout"
                # one request per dispatch: a deadline fired twice would have sent a third
                requests = [e for e in await cluster.events(state.id)
                            if e.type == "GenerateResponseRequested"]
                assert len(requests) == 2, state.id
            assert await cluster.timers_left() == 0
            # what each coordinator fired, from its log: every timer once, by one of them
            fired: Counter[tuple[str, str, str, int]] = Counter()
            by: dict[str, int] = {}
            for name in ("coordinator-0", "coordinator-1"):
                lines = [json.loads(line) for line in cluster.log(name).splitlines()
                         if line.startswith("{")]
                mine = [(e["saga"], e["step"], e["kind"], e["attempt"]) for e in lines
                        if e.get("event") == "timer fired"]
                fired.update(mine)
                by[name] = len(mine)
            # per saga: the retry between the two dispatches, and the deadline of each
            # dispatch, unless the worker, bound by the same deadline (the request carries
            # it), answered 'timeout' first and the deadline was cancelled unfired
            assert set(fired.values()) == {1}, [k for k, n in fired.items() if n > 1]
            kinds = Counter(kind for _, _, kind, _ in fired)
            assert kinds["retry"] == 24
            assert kinds["deadline"] <= 24 * 2
            assert all(n > 0 for n in by.values()), f"one coordinator fired nothing: {by}"
        finally:
            await cluster.close()

    async def test_killed_worker_messages_are_redelivered(self, tmp_path: Path) -> None:
        """kill -9 of a worker holding unacknowledged messages: they go to the other worker;
        every inquiry still ends exactly once; no step is charged twice."""
        cluster = Cluster(tmp_path, AIAPPS_FAKE_LATENCY="1.0")
        try:
            await start(cluster, coordinators=1, workers=2)
            victim = cluster.processes["worker-0"].pid
            items = inquiries(40, "kill")
            task = asyncio.create_task(submit_all(cluster, items, timeout=120))
            async with asyncio.timeout(30):
                while not any(c["pid"] == victim for c in cluster.charges()):
                    await asyncio.sleep(0.02)
            # every call in flight started less than ~0.3 s ago and takes 1 s: none completes
            await asyncio.sleep(0.3)
            cluster.kill("worker-0")
            in_flight = [c for c in cluster.charges() if c["pid"] == victim]
            assert in_flight, "the victim held no work"
            assert all(c["event"] == "start" for c in in_flight)
            done = await task
            assert len(done) == 40
            assert all(isinstance(e.data, ResponseReady) for e in done.values())
            counts = await recorded(cluster, 40)
            assert set(counts.values()) == {1}
            assert cluster.double_charges() == []
            assert await cluster.redispatched_steps() == []
            redone = {json.dumps(c["args"]) for c in in_flight}
            survivors = {json.dumps(c["args"]) for c in cluster.charges()
                         if c["event"] == "charge" and c["pid"] != victim}
            assert redone <= survivors, "the killed worker's requests were not redelivered"
        finally:
            await cluster.close()

    async def test_broker_restart_loses_nothing(self, tmp_path: Path) -> None:
        """RabbitMQ's app stopped and started mid-run: publishers and consumers reconnect,
        every inquiry still ends exactly once, and no provider call is paid twice (a call whose
        delivery the dropped connection cancelled finishes and is answered from the inbox).

        Opt-in like the transport's restart test (``AIAPPS_TEST_RESTART_BROKER=1``, set by CI,
        which owns the broker): it breaks every other client of the broker."""
        await require_restartable(cluster_amqp_url())
        cluster = Cluster(tmp_path, AIAPPS_FAKE_LATENCY="0.2")
        try:
            await start(cluster, coordinators=1, workers=2)
            items = inquiries(30, "bounce")
            task = asyncio.create_task(submit_all(cluster, items, timeout=180))
            async with asyncio.timeout(30):
                while not cluster.charges():
                    await asyncio.sleep(0.02)
            await rabbitmqctl("stop_app")
            await asyncio.sleep(2)
            await rabbitmqctl("start_app")
            done = await task
            assert len(done) == 30
            assert all(isinstance(e.data, ResponseReady) for e in done.values())
            assert all(e.data.degraded == () for e in done.values())  # type: ignore[union-attr]
            counts = await recorded(cluster, 30)
            assert set(counts.values()) == {1}
            assert cluster.double_charges() == []
            # nothing lost and sent again by a saga deadline: every step dispatched once
            assert await cluster.redispatched_steps() == []
        finally:
            await cluster.close()

    async def test_an_inquiry_published_before_any_coordinator_ran_completes(
        self, cluster: Cluster, tmp_path: Path
    ) -> None:
        """`ai-apps inquiry` on an exchange no process has used yet, before any coordinator
        ever ran: the inquiry waits in the coordinator's durable queue (every process declares
        the whole topology at start). The coordinator then dispatches its requests before any
        worker ran: they wait in the actors' queues. Once both are up the inquiry completes,
        every step dispatched once, and the command prints the saga's timeline from the
        shared store."""
        path = tmp_path / "early.json"
        path.write_text(json.dumps({"inquiry_id": "early-1", "customer": {"id": "c1"},
                                    "message": "my order is late", "language": "es"}))
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.cli", "inquiry", str(path), "--json",
            "--timeout", "60", env=cluster.env, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(30):  # published, with nobody to take it
                while await cluster.ready_messages("saga-coordinator") < 1:
                    await asyncio.sleep(0.1)
            cluster.spawn("coordinator-0", "coordinator")
            async with asyncio.timeout(30):  # the coordinator took it and sent the requests
                while not any(s.id == "early-1" for s in await cluster.sagas()):
                    await asyncio.sleep(0.1)
            cluster.spawn("worker-0", "worker", "--actors", ALL)
            stdout, stderr = await asyncio.wait_for(command.communicate(), 90)
        finally:
            if command.returncode is None:
                command.kill()
                await command.wait()
        assert command.returncode == 0, stdout.decode() + stderr.decode()
        (report,) = json.loads(stdout)
        assert report["type"] == "ResponseReady"
        assert report["result"]["degraded"] == []
        assert {"translate_in", "respond", "translate_out"} <= {
            row["step"] for row in report["timeline"]
        }
        assert await cluster.redispatched_steps() == []

    async def test_poison_message_dead_lettered_listed_and_redriven(
        self, cluster: Cluster
    ) -> None:
        """A message whose handler keeps crashing reaches its group's dead-letter queue after
        the configured attempts, `ai-apps dlq list` shows it with the reason, and after the
        fix `ai-apps dlq redrive` gets it processed."""
        cluster.env["AIAPPS_BUS_MAX_ATTEMPTS"] = "3"
        await start(cluster, coordinators=1, workers=1)
        cluster.crash_file.write_text("crash")
        async with cluster.client() as client:
            await client.submit(make_inquiry("poison-1", "please help", language="en"))
            letters: list[dict] = []
            async with asyncio.timeout(30):
                while not letters:
                    await asyncio.sleep(0.3)
                    letters = json.loads(_cli(cluster, "dlq", "list", "--json"))
            (letter,) = letters
            assert letter["group"] == "actor.responder"
            assert letter["type"] == "GenerateResponseRequested"
            assert letter["attempts"] == 3
            assert "fake respond crashed" in letter["reason"]
            assert letter["error_class"] == "RuntimeError"

            cluster.crash_file.unlink()
            assert "re-driven: 1" in _cli(cluster, "dlq", "redrive", letter["id"])
            done = await client.wait("poison-1", timeout=30)
        assert isinstance(done.data, ResponseReady)
        assert done.data.degraded == ()
        assert json.loads(_cli(cluster, "dlq", "list", "--json")) == []


async def recorded(cluster: Cluster, n: int) -> Counter[str]:
    """The terminal events in the event store, once the recorders have stored ``n`` of them
    (and a moment more, so a duplicate would show)."""
    async with asyncio.timeout(60):
        while len(await cluster.terminal_counts()) < n:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    return await cluster.terminal_counts()


def _cli(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env={**cluster.env, "COLUMNS": "200"},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


