"""The gateway as a client of a distributed deployment: coordinator and worker processes on
RabbitMQ and PostgreSQL, the gateway in this process with only a bus client and the shared
store. A helpdesk posts over HTTP; a chatbot's stream gets the ResponseReady, and after a
reconnect with Last-Event-ID gets what it missed, once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.gateway import GatewaySettings, create_api_key, create_app
from service.wiring import Service
from tests.distributed.cluster import Cluster
from tests.gateway.conftest import bearer, inquiry_body, serve_app, sse

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.spawn("coordinator", "coordinator")
        c.spawn("worker", "worker")
        await c.wait_consumers("saga-coordinator")
        await c.wait_consumers("actor.responder")
        yield c
    finally:
        await c.close()


async def test_post_over_http_stream_over_sse_on_rabbitmq(cluster: Cluster) -> None:
    settings = cluster.settings()
    service = Service(settings, coordinator=False, actors=[])
    app = create_app(service, settings, gateway=GatewaySettings(stream_poll_interval=0.5))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        key = (await create_api_key(service.store, "acme"))[1]
        other = (await create_api_key(service.store, "globex"))[1]
        assert (await client.get("/ready")).json()["checks"]["bus"] == "connected"

        async with sse(client, key) as stream, sse(client, other) as theirs:
            posted = await client.post("/v1/inquiries", json=inquiry_body(),
                                       headers=bearer(key))
            assert posted.status_code == 202, posted.text
            first_id = posted.json()["inquiry_id"]
            first = await stream.next(60)
            assert first.event == "ResponseReady"
            assert first.json()["correlationid"] == first_id
            await theirs.nothing_for(0.5)

        missed = []
        for _ in range(2):
            response = await client.post("/v1/inquiries", json=inquiry_body(),
                                         headers=bearer(key))
            missed.append(response.json()["inquiry_id"])
        for inquiry_id in missed:
            await service.wait(inquiry_id, timeout=60)

        async with sse(client, key, last_event_id=first.id) as stream:
            replayed = await stream.events(2, timeout=30)
            await stream.nothing_for(1.0)
        assert sorted(e.json()["correlationid"] for e in replayed) == sorted(missed)

        status = await client.get(f"/v1/inquiries/{first_id}", headers=bearer(key))
        assert status.json()["status"] == "completed"
        events = await client.get(f"/v1/inquiries/{first_id}/events", headers=bearer(key))
        assert events.json()["events"][-1]["type"] == "ResponseReady"
        hidden = await client.get(f"/v1/inquiries/{first_id}", headers=bearer(other))
        assert hidden.status_code == 404
