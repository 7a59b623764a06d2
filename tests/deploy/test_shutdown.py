"""Graceful shutdown of a worker, as Kubernetes does it: SIGTERM while a slow provider call is in
flight, then SIGKILL after ``terminationGracePeriodSeconds``. The worker must finish the call,
publish its result, acknowledge the message and exit 0 well before the grace period ends, so the
message is never redelivered and the call never paid twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from events import ResponseReady
from service.testing import make_inquiry
from tests.deploy.manifests import transport_grace
from tests.distributed.cluster import Cluster, amqp_url, postgres_url

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

LATENCY = 3.0
"""Seconds every fake provider call takes (``AIAPPS_FAKE_LATENCY``)."""
GRACE = transport_grace()
"""How long a stopping worker lets in-flight handlers run (the transport's ``grace``); the
Kubernetes manifests give the pods ``terminationGracePeriodSeconds`` above it."""
WORKER_ACTORS = "language,translation,responder,speech"


async def wait_until_claimed(cluster: Cluster, timeout: float = 30) -> None:
    """Until a worker holds a request's claim without a recorded result: it is in the provider
    call (the inbox row a worker writes before calling its provider)."""
    conn = await asyncpg.connect(postgres_url())
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    busy = await conn.fetchval(
                        f"SELECT count(*) FROM {cluster.schema}.inbox "
                        "WHERE owner IS NOT NULL AND body IS NULL"
                    )
                except asyncpg.UndefinedTableError:
                    busy = 0
                if busy:
                    return
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def queue_depth(cluster: Cluster, group: str) -> tuple[int, int]:
    """Messages ready and consumers on a group's queue."""
    connection = await aio_pika.connect(amqp_url())
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{cluster.exchange}.{group}", passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await connection.close()


class TestWorkerShutdown:
    async def test_sigterm_finishes_the_message_in_flight(self, tmp_path: Path) -> None:
        """SIGTERM during a 3 s provider call: the call completes, its result is published and the
        message acknowledged; the worker exits 0 within the grace period; the saga completes
        with exactly one charge and nothing is left in (or returned to) the queue."""
        cluster = Cluster(tmp_path, AIAPPS_FAKE_LATENCY=str(LATENCY))
        try:
            cluster.spawn("coordinator", "coordinator")
            worker = cluster.spawn("worker", "worker", "--actors", WORKER_ACTORS)
            await cluster.wait_consumers("saga-coordinator")
            await cluster.wait_consumers("actor.responder")

            inquiry = make_inquiry("shutdown-1", "My order is late, where is it?", language="en")
            async with cluster.client() as client:
                await client.submit(inquiry)
                await wait_until_claimed(cluster)
                signalled = time.monotonic()
                worker.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.to_thread(worker.wait, GRACE + 10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    pytest.fail(f"the worker did not exit within {GRACE + 10:g}s of SIGTERM:\n"
                                + cluster.log("worker"))
                stopped_after = time.monotonic() - signalled
                done = await client.wait(inquiry.inquiry_id, timeout=30)

            log = cluster.log("worker")
            assert code == 0, log
            assert stopped_after < GRACE, f"took {stopped_after:.1f}s, grace is {GRACE:g}s"
            assert stopped_after >= LATENCY / 2, "it did not wait for the call in flight"
            assert "SIGTERM: stopping" in log, log
            assert "requeueing" not in log, log
            assert isinstance(done.data, ResponseReady), done.data
            assert done.data.degraded == ()
            charges = [c for c in cluster.charges() if c["event"] == "charge"]
            assert [c["capability"] for c in charges] == ["respond"], charges
            ready, consumers = await queue_depth(cluster, "actor.responder")
            assert (ready, consumers) == (0, 0), "the message was returned to the queue"
            print(f"worker stopped {stopped_after:.2f}s after SIGTERM (provider latency "
                  f"{LATENCY:g}s, grace {GRACE:g}s)")

            # the coordinator, idle now, stops at once and cleanly too
            coordinator = cluster.processes["coordinator"]
            signalled = time.monotonic()
            coordinator.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(coordinator.wait, GRACE + 10)
            assert code == 0, cluster.log("coordinator")
            assert time.monotonic() - signalled < GRACE
        finally:
            await cluster.close()
