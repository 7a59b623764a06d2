"""Responses out over Server-Sent Events, on a real uvicorn server: a helpdesk posts, a
chatbot's stream receives the ResponseReady; a reconnect with Last-Event-ID gets what it
missed, once; streams are confined to the caller's tenant and filtered as asked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from tests.gateway.conftest import Gateway, inquiry_body, sse


async def post(gw: Gateway, tenant: str = "acme", **fields: object) -> str:
    response = await gw.post(inquiry_body(**fields), tenant=tenant)
    assert response.status_code == 202, response.text
    inquiry_id: str = response.json()["inquiry_id"]
    return inquiry_id


class TestStream:
    async def test_helpdesk_posts_and_chatbot_receives(self, served: Gateway) -> None:
        """The chatbot's SSE stream gets the ResponseReady of the helpdesk's inquiry: id the
        store's sequence, event the type, data the CloudEvent."""
        async with sse(served.client, served.keys["acme"]) as stream:
            inquiry_id = await post(served)
            event = await stream.next()
        assert event.event == "ResponseReady"
        assert event.id is not None
        assert event.id.isdigit()
        cloudevent = event.json()
        assert cloudevent["type"] == "ResponseReady"
        assert cloudevent["correlationid"] == inquiry_id
        assert cloudevent["tenant"] == "acme"
        assert cloudevent["data"]["inquiry_id"] == inquiry_id
        assert cloudevent["data"]["text"]

    async def test_reconnect_with_last_event_id_gets_what_it_missed_once(
        self, served: Gateway
    ) -> None:
        """Disconnected while two inquiries finish: reconnecting with Last-Event-ID delivers
        those two, in order, and then live events, with no repeats."""
        key = served.keys["acme"]
        async with sse(served.client, key) as stream:
            first = await post(served)
            seen = await stream.next()
        assert seen.json()["correlationid"] == first
        assert seen.id is not None

        missed = [await post(served), await post(served)]
        for inquiry_id in missed:
            await served.service.wait(inquiry_id, timeout=10)
        await served.service.settle()

        async with sse(served.client, key, last_event_id=seen.id) as stream:
            replayed = await stream.events(2)
            live_id = await post(served)
            live = await stream.next()
            await stream.nothing_for(1.5)
        assert [e.json()["correlationid"] for e in replayed] == missed
        assert live.json()["correlationid"] == live_id
        ids = [int(seen.id), *(int(e.id or 0) for e in replayed), int(live.id or 0)]
        assert ids == sorted(ids)
        assert len(set(ids)) == 4

        # the same through ?after= (for clients that cannot set headers)
        async with sse(served.client, key, {"after": seen.id}) as stream:
            again = await stream.events(3)
        assert [e.id for e in again] == [e.id for e in (*replayed, live)]

    async def test_streams_are_confined_to_the_tenant(self, served: Gateway) -> None:
        """globex's stream gets nothing of acme's, even when it asks for acme's inquiry."""
        async with sse(served.client, served.keys["globex"]) as theirs, \
                sse(served.client, served.keys["acme"]) as ours:
            inquiry_id = await post(served)
            assert (await ours.next()).json()["correlationid"] == inquiry_id
            await theirs.nothing_for(1.0)
        async with sse(served.client, served.keys["globex"],
                       {"inquiry_id": inquiry_id}) as targeted:
            await targeted.nothing_for(1.0)
        async with sse(served.client, served.keys["globex"], {"after": 0}) as everything:
            await everything.nothing_for(1.0)

    async def test_channel_and_inquiry_filters(self, served: Gateway) -> None:
        """channel= gets only that channel's inquiries; inquiry_id= gets that inquiry's
        response even if it came before the stream opened."""
        key = served.keys["acme"]
        async with sse(served.client, key, {"channel": "email"}) as emails:
            await post(served, channel="chat")
            wanted = await post(served, channel="email")
            event = await emails.next()
            assert event.json()["correlationid"] == wanted
            await emails.nothing_for(1.0)
        async with sse(served.client, key, {"inquiry_id": wanted}) as one:
            assert (await one.next()).json()["correlationid"] == wanted
            await post(served)
            await one.nothing_for(1.0)

    async def test_keepalives_and_revoked_key_ends_the_stream(self, served: Gateway) -> None:
        """An idle stream gets keep-alive comments; once its key is revoked it ends."""
        key = served.keys["acme"]
        async with sse(served.client, key) as stream:
            await stream.nothing_for(1.2)
            assert "keep-alive" in stream.comments
            await served.service.store.revoke_api_key(key.split("_")[1], datetime.now(UTC))
            await stream.ended()
            assert "the API key was revoked" in stream.comments

    async def test_bad_last_event_id(self, served: Gateway) -> None:
        response = await served.client.get(
            "/v1/responses/stream", headers={**served.auth(), "Last-Event-ID": "abc"})
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert "Last-Event-ID" in response.json()["detail"]

    async def test_disconnect_releases_the_stream(self, served: Gateway) -> None:
        """A chatbot that goes away leaves no stream behind."""
        hub = served.app.state.gateway.hub
        async with sse(served.client, served.keys["acme"]):
            assert hub.streams == 1
        async with asyncio.timeout(5):
            while hub.streams:
                await asyncio.sleep(0.02)


async def test_many_streams_each_get_every_event_once(served: Gateway) -> None:
    """Five chatbots of one tenant, ten inquiries: every stream gets the ten, once each."""
    key = served.keys["acme"]
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as client:
        streams = [sse(client, key) for _ in range(5)]
        readers = [await s.__aenter__() for s in streams]
        try:
            ids = [await post(served) for _ in range(10)]
            for reader in readers:
                got = [e.json()["correlationid"] for e in await reader.events(10)]
                assert sorted(got) == sorted(ids)
        finally:
            for s in reversed(streams):
                await s.__aexit__(None, None, None)
