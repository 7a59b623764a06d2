"""The transport contract, written once. A backend's test module subclasses
:class:`TransportContract` and provides a ``transport`` fixture (started, empty, with a retry
policy of 3 attempts and short delays) and a ``publish_raw(body, routing_key)`` fixture."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from bus.base import ALL_TYPES, Transport
from events import Customer, DetectLanguageRequested, Envelope, InquiryReceived, encode

PublishRaw = Callable[[bytes, str], Awaitable[None]]


def inquiry(n: int = 0, correlation: str | None = None) -> Envelope:
    cid = correlation or f"inq-{n}"
    return Envelope.new(
        InquiryReceived(inquiry_id=cid, customer=Customer(id="c1"), message=f"hello {n}"),
        correlationid=cid,
    )


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def dead_letters_eventually(transport: Transport, count: int, timeout: float = 10.0) -> list:
    async with asyncio.timeout(timeout):
        while True:
            letters = await transport.dead_letters()
            if len(letters) >= count:
                return letters
            await asyncio.sleep(0.05)


class TransportContract:
    """Behaviour every transport must show."""

    async def test_delivers_to_subscribed_group(self, transport: Transport) -> None:
        """An event reaches a group subscribed to its type, decoded and equal to what was sent."""
        got: list[Envelope] = []

        async def handler(env: Envelope) -> None:
            got.append(env)

        await transport.subscribe("g1", [InquiryReceived.event_type], handler)
        await transport.start()
        sent = inquiry(1)
        await transport.publish(sent)
        await eventually(lambda: len(got) == 1)
        assert got[0] == sent

    async def test_every_group_gets_each_event_once(self, transport: Transport) -> None:
        """Two groups each get every event; within a group competing consumers share them."""
        a: list[str] = []
        b: list[str] = []

        async def ha(env: Envelope) -> None:
            a.append(env.id)

        async def hb(env: Envelope) -> None:
            b.append(env.id)

        await transport.subscribe("ga", [InquiryReceived.event_type], ha, concurrency=4)
        await transport.subscribe("gb", [ALL_TYPES], hb)
        await transport.start()
        sent = [inquiry(i) for i in range(20)]
        for env in sent:
            await transport.publish(env)
        await eventually(lambda: len(a) == 20 and len(b) == 20)
        assert sorted(a) == sorted(e.id for e in sent)
        assert sorted(b) == sorted(e.id for e in sent)

    async def test_unsubscribed_types_are_not_delivered(self, transport: Transport) -> None:
        """A group gets only the types it subscribed to."""
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.type)

        await transport.subscribe("g", [DetectLanguageRequested.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(1))
        await transport.publish(Envelope.new(DetectLanguageRequested(text="hola"), correlationid="x"))
        await eventually(lambda: len(got) == 1)
        await asyncio.sleep(0.1)
        assert got == [DetectLanguageRequested.event_type]

    async def test_failing_handler_is_retried_then_succeeds(self, transport: Transport) -> None:
        """A handler that fails twice is called again and its third attempt is acknowledged."""
        attempts: list[int] = []

        async def handler(env: Envelope) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("flaky")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(1))
        await eventually(lambda: len(attempts) == 3)
        await asyncio.sleep(0.2)
        assert len(attempts) == 3
        assert await transport.dead_letters() == []

    async def test_poison_message_is_dead_lettered_with_reason(self, transport: Transport) -> None:
        """After the configured attempts a failing message is dead-lettered with its reason and
        attempt count, and the consumer goes on with the next message."""
        ok: list[str] = []

        async def handler(env: Envelope) -> None:
            if env.correlationid == "poison":
                raise ValueError("cannot handle this one")
            ok.append(env.correlationid)

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(correlation="poison"))
        await transport.publish(inquiry(correlation="fine"))
        letters = await dead_letters_eventually(transport, 1)
        await eventually(lambda: ok == ["fine"])
        (letter,) = letters
        assert letter.group == "g"
        assert letter.attempts == 3
        assert "cannot handle this one" in letter.reason
        assert letter.error_class == "ValueError"
        assert letter.event_type == InquiryReceived.event_type
        assert letter.correlationid == "poison"

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"{not json", "not JSON"),
            (json.dumps({"specversion": "1.0", "id": "1", "source": "/x", "type": "NoSuchEvent",
                         "time": "2026-01-01T00:00:00Z", "correlationid": "c", "data": {}}).encode(),
             "unknown event type"),
            (json.dumps({"specversion": "1.0", "id": "1", "source": "/x",
                         "type": "InquiryReceived", "time": "2026-01-01T00:00:00Z",
                         "correlationid": "c", "data": {"inquiry_id": "i"}}).encode(),
             "invalid InquiryReceived payload"),
        ],
        ids=["bad-json", "unknown-type", "missing-field"],
    )
    async def test_undecodable_message_is_dead_lettered_at_once(
        self, transport: Transport, publish_raw: PublishRaw, body: bytes, reason: str
    ) -> None:
        """Bad JSON, an unknown type or an invalid payload goes to the dead letters on its
        first delivery, with the reason; the handler never sees it; the consumer goes on."""
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)

        await transport.subscribe("g", [ALL_TYPES], handler)
        await transport.start()
        await publish_raw(body, "InquiryReceived")
        await transport.publish(inquiry(correlation="after"))
        (letter,) = await dead_letters_eventually(transport, 1)
        await eventually(lambda: got == ["after"])
        assert reason in letter.reason
        assert letter.attempts == 1
        assert letter.body == body

    async def test_redrive_sends_dead_letters_back(self, transport: Transport) -> None:
        """A re-driven dead letter is delivered again with a fresh attempt count."""
        healed = asyncio.Event()
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            if not healed.is_set():
                raise RuntimeError("not yet")
            got.append(env.correlationid)

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(correlation="later"))
        (letter,) = await dead_letters_eventually(transport, 1)
        healed.set()
        assert await transport.redrive([letter.id]) == 1
        await eventually(lambda: got == ["later"])
        assert await transport.dead_letters() == []

    async def test_wire_format_is_a_structured_cloudevent(self, transport: Transport) -> None:
        """What travels is a CloudEvents 1.0 JSON object with our extensions."""
        body = json.loads(encode(inquiry(7)))
        assert body["specversion"] == "1.0"
        assert body["type"] == "InquiryReceived"
        assert body["correlationid"] == "inq-7"
        assert body["data"]["message"] == "hello 7"
        assert {"id", "source", "time", "datacontenttype"} <= body.keys()
