"""The transport contract, written once. A backend's test module subclasses
:class:`TransportContract` and provides a ``transport`` fixture (started, empty, with a retry
policy of 3 attempts and short delays) and a ``publish_raw(body, routing_key)`` fixture.

Part of the contract: the transport reports each retry, dead letter and drop to its delivery
observers (:class:`~bus.base.ObservableTransport`), which is what the bus metrics count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from bus.base import ALL_TYPES, ObservableTransport, Transport
from events import Customer, DetectLanguageRequested, Envelope, InquiryReceived, encode
from events.errors import AiAppsError

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


@dataclass(frozen=True)
class Seen:
    """One report to a delivery observer. ``attempts`` is ``attempt`` for a retry."""

    hook: str
    group: str
    event_type: str
    attempts: int
    error_class: str
    delay: float | None = None
    reason: str | None = None


class RecordingObserver:
    """A :class:`~bus.base.DeliveryObserver` that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def of(self, hook: str) -> list[Seen]:
        return [s for s in self.seen if s.hook == hook]

    def retried(
        self, group: str, event_type: str, *, attempt: int, delay: float, error_class: str
    ) -> None:
        self.seen.append(Seen("retried", group, event_type, attempt, error_class, delay=delay))

    def dead_lettered(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self.seen.append(Seen("dead_lettered", group, event_type, attempts, error_class, reason=reason))

    def dropped(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self.seen.append(Seen("dropped", group, event_type, attempts, error_class, reason=reason))


class BrokenObserver:
    """An observer that fails at every report."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")

    def retried(
        self, group: str, event_type: str, *, attempt: int, delay: float, error_class: str
    ) -> None:
        self._fail()

    def dead_lettered(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self._fail()

    def dropped(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self._fail()


def observed(transport: Transport) -> RecordingObserver:
    """A recording observer added to ``transport``, which must report deliveries."""
    assert isinstance(transport, ObservableTransport), f"{type(transport).__name__} has no observers"
    observer = RecordingObserver()
    transport.add_observer(observer)
    return observer


class Permanent(AiAppsError):
    """An error retrying cannot help."""

    retryable = False


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

    async def test_a_declared_group_keeps_events_for_its_first_consumer(
        self, transport: Transport
    ) -> None:
        """Events published after a group is declared, before any consumer of it subscribed,
        are delivered once one does; events before the declaration are not kept. In the order
        a process starts: declare the deployment's groups, subscribe, start. (On a broker the
        consumer may come later, from another process; in memory it can only be one subscribed
        before start: see test_transport_memory.)"""
        # another group of the deployment first (on Service Bus it makes the topic exist)
        await transport.declare("other", [DetectLanguageRequested.event_type])
        await transport.publish(inquiry(correlation="before"))
        await transport.declare("late", [InquiryReceived.event_type])
        await transport.declare("late", [InquiryReceived.event_type])  # idempotent
        await transport.publish(inquiry(correlation="waiting-1"))
        await transport.publish(inquiry(correlation="waiting-2"))
        await asyncio.sleep(0.2)
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)

        await transport.subscribe("late", [InquiryReceived.event_type], handler)
        await transport.start()
        await eventually(lambda: len(got) == 2)
        await transport.publish(inquiry(correlation="after"))
        await eventually(lambda: len(got) == 3)
        await asyncio.sleep(0.2)
        assert sorted(got) == ["after", "waiting-1", "waiting-2"]

    async def test_declare_refuses_an_ephemeral_group(self, transport: Transport) -> None:
        """An ephemeral group has no durable queue to declare."""

        async def handler(env: Envelope) -> None:
            return None

        await transport.subscribe("replies", [InquiryReceived.event_type], handler, ephemeral=True)
        with pytest.raises(ValueError, match="ephemeral"):
            await transport.declare("replies", [InquiryReceived.event_type])

    async def test_peek_dead_letters_reads_the_oldest_few(self, transport: Transport) -> None:
        """peek_dead_letters gives the oldest ``limit`` dead letters and leaves every one in
        place; a limit below 1 is refused."""

        async def handler(env: Envelope) -> None:
            raise Permanent("no use")

        await transport.subscribe("g", [InquiryReceived.event_type], handler, concurrency=1)
        await transport.start()
        for i in range(3):
            await transport.publish(inquiry(correlation=f"dead-{i}"))
            await dead_letters_eventually(transport, i + 1)
        first = await transport.peek_dead_letters(limit=2)
        assert [d.correlationid for d in first] == ["dead-0", "dead-1"]
        assert [d.correlationid for d in await transport.peek_dead_letters("g", 1)] == ["dead-0"]
        assert len(await transport.dead_letters()) == 3
        with pytest.raises(ValueError, match="limit"):
            await transport.peek_dead_letters(limit=0)

    async def test_wire_format_is_a_structured_cloudevent(self, transport: Transport) -> None:
        """What travels is a CloudEvents 1.0 JSON object with our extensions."""
        body = json.loads(encode(inquiry(7)))
        assert body["specversion"] == "1.0"
        assert body["type"] == "InquiryReceived"
        assert body["correlationid"] == "inq-7"
        assert body["data"]["message"] == "hello 7"
        assert {"id", "source", "time", "datacontenttype"} <= body.keys()

    # -- delivery observers ---------------------------------------------------------------

    async def test_observers_are_told_of_each_retry(self, transport: Transport) -> None:
        """A handler that fails twice then succeeds: two retries reported, with the group, the
        type, the attempt and the error class; no dead letter."""
        seen = observed(transport)
        attempts: list[int] = []

        async def handler(env: Envelope) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("flaky")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(1))
        await eventually(lambda: len(attempts) == 3 and len(seen.seen) >= 2)
        await asyncio.sleep(0.2)
        retried = seen.of("retried")
        assert [(s.group, s.event_type, s.attempts, s.error_class) for s in retried] == [
            ("g", "InquiryReceived", 1, "RuntimeError"),
            ("g", "InquiryReceived", 2, "RuntimeError"),
        ]
        delays = [s.delay for s in retried]
        assert all(d is not None and d >= 0 for d in delays)
        assert seen.of("dead_lettered") == []
        assert seen.of("dropped") == []

    async def test_observers_are_told_of_a_dead_letter_after_the_last_retry(
        self, transport: Transport
    ) -> None:
        """A handler that always fails: max_attempts - 1 retries, then one dead letter with
        the attempts, the error class and the reason."""
        seen = observed(transport)

        async def handler(env: Envelope) -> None:
            raise ValueError("cannot handle this one")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(correlation="poison"))
        await eventually(lambda: len(seen.of("dead_lettered")) == 1)
        await asyncio.sleep(0.2)
        assert [s.attempts for s in seen.of("retried")] == [1, 2]
        (dead,) = seen.of("dead_lettered")
        assert (dead.group, dead.event_type, dead.attempts, dead.error_class) == (
            "g", "InquiryReceived", 3, "ValueError"
        )
        assert dead.reason is not None
        assert "cannot handle this one" in dead.reason
        assert len(await dead_letters_eventually(transport, 1)) == 1

    async def test_observers_are_told_of_an_error_not_worth_retrying(
        self, transport: Transport
    ) -> None:
        """An error that says retrying cannot help is dead-lettered at once: no retry reported."""
        seen = observed(transport)

        async def handler(env: Envelope) -> None:
            raise Permanent("no use")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(1))
        await eventually(lambda: len(seen.of("dead_lettered")) == 1)
        await asyncio.sleep(0.2)
        assert seen.of("retried") == []
        (dead,) = seen.of("dead_lettered")
        assert (dead.attempts, dead.error_class) == (1, "Permanent")

    async def test_observers_are_told_of_an_undecodable_message(
        self, transport: Transport, publish_raw: PublishRaw
    ) -> None:
        """A message that cannot be decoded never reaches the handler, but its dead letter is
        reported, under the type the broker message claims."""
        seen = observed(transport)
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)

        await transport.subscribe("g", [ALL_TYPES], handler)
        await transport.start()
        await publish_raw(b"{not json", "InquiryReceived")
        await transport.publish(inquiry(correlation="after"))
        await eventually(lambda: got == ["after"] and len(seen.of("dead_lettered")) == 1)
        (dead,) = seen.of("dead_lettered")
        assert (dead.group, dead.event_type, dead.attempts, dead.error_class) == (
            "g", "InquiryReceived", 1, "DecodeError"
        )
        assert dead.reason is not None
        assert "not JSON" in dead.reason
        assert seen.of("retried") == []

    async def test_an_ephemeral_group_drops_what_fails_and_says_so(self, transport: Transport) -> None:
        """An ephemeral group is neither retried nor dead-lettered: the failure is reported as a
        drop, and the handler is not called again."""
        seen = observed(transport)
        calls: list[str] = []

        async def handler(env: Envelope) -> None:
            calls.append(env.correlationid)
            raise RuntimeError("reply listener broke")

        await transport.subscribe("replies", [InquiryReceived.event_type], handler, ephemeral=True)
        await transport.start()
        await transport.publish(inquiry(1))
        await eventually(lambda: len(seen.of("dropped")) == 1)
        await asyncio.sleep(0.3)
        assert calls == ["inq-1"]
        (dropped,) = seen.seen
        assert (dropped.hook, dropped.group, dropped.event_type, dropped.attempts) == (
            "dropped", "replies", "InquiryReceived", 1
        )
        assert dropped.error_class == "RuntimeError"

    async def test_an_observer_that_raises_changes_nothing(self, transport: Transport) -> None:
        """A failing observer is logged and skipped: the retry and the dead letter still
        happen, and the observers after it are still told."""
        assert isinstance(transport, ObservableTransport)
        broken = BrokenObserver()
        transport.add_observer(broken)
        transport.add_observer(broken)  # once is enough
        seen = observed(transport)
        handled: list[str] = []

        async def handler(env: Envelope) -> None:
            handled.append(env.correlationid)
            if env.correlationid == "poison" or handled.count(env.correlationid) < 2:
                raise RuntimeError("failing")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(correlation="flaky"))
        await transport.publish(inquiry(correlation="poison"))
        (letter,) = await dead_letters_eventually(transport, 1)
        await eventually(lambda: handled.count("flaky") == 2 and len(seen.seen) == 4)
        await asyncio.sleep(0.2)
        assert letter.correlationid == "poison"
        assert handled.count("flaky") == 2
        assert sorted(s.hook for s in seen.seen) == ["dead_lettered", "retried", "retried", "retried"]
        assert broken.calls == 4

        transport.remove_observer(seen)
        await transport.publish(inquiry(correlation="poison"))
        await eventually(lambda: broken.calls == 7)
        assert len(seen.seen) == 4
