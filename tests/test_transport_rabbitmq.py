"""The RabbitMQ transport passes the transport contract against a real broker, and keeps its
promises about interoperability, quorum queues, reconnects and shutdown.

The broker is ``AIAPPS_TEST_AMQP_URL``. Outside CI it defaults to a local guest broker, and the
tests skip when that default does not answer. In CI (``CI`` set) the variable is required, and
a broker that was named (in CI or not) but does not answer fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
from yarl import URL

from bus import RetryPolicy
from bus.rabbitmq import H_ATTEMPTS, H_MESSAGE_ID, RabbitMQTransport
from events import CONTENT_TYPE, Envelope, InquiryReceived, encode
from tests.conformance.transport import (
    PublishRaw,
    TransportContract,
    dead_letters_eventually,
    eventually,
    inquiry,
    observed,
)
from tests.rabbitmqctl import rabbitmqctl, require_restartable

pytestmark = pytest.mark.rabbitmq

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)

Factory = Callable[..., RabbitMQTransport]


def broker_required() -> bool:
    """Whether a broker that does not answer fails the tests (in CI, or when a URL was given)
    rather than skipping them (the implicit local default)."""
    return bool(os.environ.get("CI") or os.environ.get("AIAPPS_TEST_AMQP_URL"))


def amqp_url() -> str:
    url = os.environ.get("AIAPPS_TEST_AMQP_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("CI is set but AIAPPS_TEST_AMQP_URL is not: the RabbitMQ tests need a broker")
    return LOCAL_URL


@pytest.fixture
async def broker() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A plain aio-pika connection: the 'other client', and the janitor."""
    url = amqp_url()
    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        if broker_required():
            raise  # a missing broker is a failure, loudly
        pytest.skip(f"no RabbitMQ at {url}: {exc!r}")
    async with conn:
        yield conn


@pytest.fixture
def exchange_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_transport(
    broker: aio_pika.abc.AbstractConnection, exchange_name: str
) -> AsyncIterator[Factory]:
    """Builds transports on this test's exchange; closes them and deletes what they declared."""
    made: list[RabbitMQTransport] = []

    def make(**kwargs: object) -> RabbitMQTransport:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("exchange", exchange_name)
        kwargs.setdefault("reconnect_interval", 0.2)
        url = kwargs.pop("url", amqp_url())
        t = RabbitMQTransport(str(url), **kwargs)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        await t.close()
    queues = set().union(*(t.declared_queues for t in made)) if made else set()
    # a connection of its own: a broker restart in the test has closed ``broker``
    async with await aio_pika.connect(amqp_url(), timeout=10) as janitor:
        channel = await janitor.channel()
        for name in queues:
            await channel.queue_delete(name)
        await channel.exchange_delete(exchange_name)


@pytest.fixture
async def transport(make_transport: Factory) -> RabbitMQTransport:
    return make_transport()


@pytest.fixture
async def publish_raw(
    broker: aio_pika.abc.AbstractConnection, exchange_name: str
) -> AsyncIterator[PublishRaw]:
    channel = await broker.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )

    async def publish(body: bytes, routing_key: str) -> None:
        await exchange.publish(aio_pika.Message(body), routing_key)

    yield publish
    await channel.close()


async def queue_depth(broker: aio_pika.abc.AbstractConnection, name: str) -> int:
    """Ready messages in ``name`` (unacknowledged ones are not counted)."""
    channel = await broker.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        assert count is not None
        return count
    finally:
        await channel.close()


async def take_all(
    broker: aio_pika.abc.AbstractConnection, name: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every ready message of queue ``name``, taken (acked) by another client."""
    channel = await broker.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        taken = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            taken.append(message)
        return taken
    finally:
        await channel.close()


class TestRabbitMQTransport(TransportContract):
    """RabbitMQ behaves as every transport must, and as an AMQP citizen."""

    async def test_plain_amqp_client_can_publish_cloudevents(
        self, transport: RabbitMQTransport, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A structured CloudEvent published by a client that knows nothing of ai-apps is
        consumed like our own."""
        got: list[Envelope] = []

        async def handler(env: Envelope) -> None:
            got.append(env)

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        body = json.dumps({
            "specversion": "1.0", "id": "ext-1", "source": "/elsewhere",
            "type": "InquiryReceived", "time": "2026-01-01T00:00:00Z", "correlationid": "c-ext",
            "datacontenttype": "application/json",
            "data": {"inquiry_id": "i-ext", "customer": {"id": "c9"}, "message": "hi"},
        }).encode()
        channel = await broker.channel()
        exchange = await channel.get_exchange(exchange_name)
        await exchange.publish(
            aio_pika.Message(body, content_type=CONTENT_TYPE), routing_key="InquiryReceived"
        )
        await channel.close()
        await eventually(lambda: len(got) == 1)
        assert got[0].id == "ext-1"
        assert got[0].correlationid == "c-ext"

    async def test_plain_amqp_client_can_read_our_events(
        self, transport: RabbitMQTransport, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """What we publish is a persistent structured CloudEvent with its id, correlation and
        type in the AMQP properties."""
        await transport.start()
        channel = await broker.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange_name, routing_key="#")
        sent = inquiry(3)
        await transport.publish(sent)
        message = await queue.get(timeout=5)
        await message.ack()
        await channel.close()
        assert message.body == encode(sent)
        assert message.content_type == CONTENT_TYPE
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.message_id == sent.id
        assert message.correlation_id == sent.correlationid
        assert message.type == "InquiryReceived"
        assert message.headers["ce-tenant"] == "default"
        assert json.loads(message.body)["specversion"] == "1.0"

    async def test_retries_do_not_block_the_queue(self, make_transport: Factory) -> None:
        """A message waiting for a long retry does not hold back the ones behind it."""
        t = make_transport(retry=RetryPolicy(max_attempts=2, initial_delay=2.0, jitter=0))
        ok: list[str] = []
        failed: list[str] = []

        async def handler(env: Envelope) -> None:
            if env.correlationid == "slow" and not failed:
                failed.append(env.correlationid)
                raise RuntimeError("later")
            ok.append(env.correlationid)

        await t.subscribe("g", [InquiryReceived.event_type], handler, concurrency=1)
        await t.start()
        await t.publish(inquiry(correlation="slow"))
        for i in range(5):
            await t.publish(inquiry(correlation=f"n{i}"))
        await eventually(lambda: len(ok) == 5, timeout=1.5)
        assert "slow" not in ok
        await eventually(lambda: "slow" in ok, timeout=5)

    async def test_non_retryable_error_is_dead_lettered_at_once(
        self, transport: RabbitMQTransport
    ) -> None:
        """An AiAppsError that says it is not retryable skips the retries."""
        from events.errors import InvalidPayload

        calls: list[int] = []

        async def handler(env: Envelope) -> None:
            calls.append(1)
            raise InvalidPayload("never valid")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(correlation="bad"))
        (letter,) = await dead_letters_eventually(transport, 1)
        assert calls == [1]
        assert letter.attempts == 1
        assert letter.error_class == "InvalidPayload"
        assert letter.headers[H_ATTEMPTS] == "1"
        assert letter.headers["x-group"] == "g"

    async def test_dead_letters_of_an_unsubscribed_group(
        self, transport: RabbitMQTransport, make_transport: Factory
    ) -> None:
        """Another process (a CLI) lists and re-drives a group it never subscribed, by name."""
        async def handler(env: Envelope) -> None:
            raise RuntimeError("no")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        await transport.publish(inquiry(correlation="x"))
        await dead_letters_eventually(transport, 1)
        cli = make_transport()
        await cli.start()
        assert await cli.dead_letters() == []  # it knows of no group
        assert await cli.dead_letters("nonexistent") == []
        (letter,) = await cli.dead_letters("g")
        assert letter.correlationid == "x"
        assert (await cli.dead_letters("g"))[0].id == letter.id  # listing keeps them, same id
        known = make_transport(known_groups=["g"])
        assert [d.id for d in await known.dead_letters()] == [letter.id]
        assert await cli.redrive(group="g") == 1

    async def test_ephemeral_group_drops_failures(self, transport: RabbitMQTransport) -> None:
        """An ephemeral group has no retries and no dead letters; its queue is exclusive."""
        calls: list[str] = []

        async def handler(env: Envelope) -> None:
            calls.append(env.correlationid)
            if env.correlationid == "boom":
                raise RuntimeError("boom")

        await transport.subscribe("replies.x", [InquiryReceived.event_type], handler,
                                  ephemeral=True)
        await transport.start()
        await transport.publish(inquiry(correlation="boom"))
        await transport.publish(inquiry(correlation="fine"))
        await eventually(lambda: calls == ["boom", "fine"])
        await asyncio.sleep(0.2)
        assert calls == ["boom", "fine"]
        assert await transport.dead_letters() == []
        assert not any("replies.x" in q for q in transport.declared_queues)

    async def test_listing_and_redriving_read_no_further_than_needed(
        self, transport: RabbitMQTransport, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A listing with a limit takes that many dead letters from a queue, and a re-drive
        of given ids stops once it found them: the letters behind were never taken (the
        broker has never handed them out, so they are not flagged as redelivered)."""
        from events.errors import InvalidPayload

        async def handler(env: Envelope) -> None:
            raise InvalidPayload("never valid")

        await transport.subscribe("g", [InquiryReceived.event_type], handler, concurrency=1)
        await transport.start()
        dlq = f"{exchange_name}.g.dlq"

        async def dead(prefix: str) -> None:
            for i in range(4):
                await transport.publish(inquiry(correlation=f"{prefix}-{i}"))
            async with asyncio.timeout(10):
                while await queue_depth(broker, dlq) < 4:
                    await asyncio.sleep(0.05)

        async def taken_before() -> list[bool]:
            """Whether each letter, in queue order, was handed out before (then all back)."""
            channel = await broker.channel()
            queue = await channel.declare_queue(dlq, passive=True)
            flags = []
            while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
                flags.append(message.redelivered)
            await channel.close()
            return flags

        await dead("listed")
        (oldest,) = await transport.peek_dead_letters(limit=1)
        assert oldest.correlationid == "listed-0"
        assert await taken_before() == [True, False, False, False]

        channel = await broker.channel()
        await (await channel.declare_queue(dlq, passive=True)).purge()
        await channel.close()
        await dead("redriven")
        (first,) = await transport.peek_dead_letters(limit=1)
        assert await transport.redrive([first.id]) == 1
        async with asyncio.timeout(10):  # it fails again: a new letter at the end
            while await queue_depth(broker, dlq) < 4:
                await asyncio.sleep(0.05)
        assert await taken_before() == [False, False, False, False]

    async def test_redrive_of_everything_ends_when_the_cause_persists(
        self, transport: RabbitMQTransport
    ) -> None:
        """Re-driving every letter of a group whose handler still fails re-drives each once:
        the letters dead-lettered again meanwhile are left for next time."""
        from events.errors import InvalidPayload

        async def handler(env: Envelope) -> None:
            raise InvalidPayload("still broken")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        for i in range(3):
            await transport.publish(inquiry(correlation=f"dead-{i}"))
        await dead_letters_eventually(transport, 3)
        assert await transport.redrive(group="g") == 3
        assert len(await dead_letters_eventually(transport, 3)) == 3

    async def test_quorum_queue_group(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A quorum-queue group delivers, retries through its (quorum) retry queues and
        dead-letters."""
        t = make_transport(queue_type="quorum")
        attempts: dict[str, int] = {}

        async def handler(env: Envelope) -> None:
            n = attempts[env.correlationid] = attempts.get(env.correlationid, 0) + 1
            if env.correlationid == "poison" or n < 2:
                raise RuntimeError("flaky")

        await t.subscribe("q", [InquiryReceived.event_type], handler)
        await t.start()
        await t.publish(inquiry(correlation="flaky"))
        await t.publish(inquiry(correlation="poison"))
        (letter,) = await dead_letters_eventually(t, 1)
        await eventually(lambda: attempts.get("flaky") == 2)
        assert letter.correlationid == "poison"
        assert letter.attempts == 3
        # the queue really is a quorum queue: declaring it classic is refused
        channel = await broker.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(f"{exchange_name}.q", durable=True)

    async def test_a_deleted_retry_queue_is_declared_again(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A retry queue deleted under a running group: the retry is not dropped (its publish
        is mandatory); the queue is declared again and the message comes back."""
        t = make_transport()
        calls: list[str] = []
        retry_queue = f"{exchange_name}.g.retry.10"

        async def handler(env: Envelope) -> None:
            calls.append(env.correlationid)
            if len(calls) == 1:
                channel = await broker.channel()
                await channel.queue_delete(retry_queue)
                await channel.close()
                raise RuntimeError("once")

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        assert retry_queue in t.declared_queues
        await t.publish(inquiry(correlation="retried"))
        await eventually(lambda: calls == ["retried", "retried"])
        assert await queue_depth(broker, retry_queue) == 0  # it exists again
        assert await t.dead_letters() == []

    async def test_a_deleted_dead_letter_queue_is_declared_again(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """The dead-letter queue deleted under a running group: a dead letter is not dropped
        after its message is acknowledged; the queue is declared again and holds it."""
        from events.errors import InvalidPayload

        t = make_transport()
        deleted = asyncio.Event()

        async def handler(env: Envelope) -> None:
            channel = await broker.channel()
            await channel.queue_delete(f"{exchange_name}.g.dlq")
            await channel.close()
            deleted.set()
            raise InvalidPayload("never valid")

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        await t.publish(inquiry(correlation="bad"))
        await asyncio.wait_for(deleted.wait(), 5)  # (a listing meanwhile would see it vanish)
        (letter,) = await dead_letters_eventually(t, 1)
        assert letter.correlationid == "bad"
        assert letter.error_class == "InvalidPayload"

    async def test_copies_of_one_event_parked_at_once_are_not_mixed_up(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """Two groups fail on the same events at the same moment and park their retry copies
        on the one publishing channel while one group's retry queue is missing: the broker's
        returns for that group's copies are matched to them (each copy has a message id of its
        own), so each is declared again and sent; no copy passes for confirmed and no
        original is acknowledged unparked."""
        n, rounds = 30, 4
        t = make_transport(prefetch=n, retry=RetryPolicy(max_attempts=3, initial_delay=0.2,
                                                         jitter=0))
        gate = [asyncio.Event()]
        calls: dict[str, dict[str, int]] = {"a": {}, "b": {}}

        def failing_once(group: str) -> Callable[[Envelope], Awaitable[None]]:
            async def handler(env: Envelope) -> None:
                seen = calls[group][env.id] = calls[group].get(env.id, 0) + 1
                if seen == 1:
                    await gate[0].wait()  # every first attempt of both groups fails together
                    raise ConnectionError("store away")

            return handler

        await t.subscribe("a", [InquiryReceived.event_type], failing_once("a"))
        await t.subscribe("b", [InquiryReceived.event_type], failing_once("b"))
        await t.start()
        for r in range(rounds):
            channel = await broker.channel()
            await channel.queue_delete(f"{exchange_name}.a.retry.200")  # (declared again)
            await channel.close()
            gate[0] = asyncio.Event()
            for i in range(n):
                await t.publish(inquiry(i))
            seen_all = n * (r + 1)
            await eventually(lambda seen_all=seen_all: all(len(g) == seen_all for g in calls.values()))
            # a's and b's copies interleave on the channel: with one id shared by the copies
            # of an event, about one round in two lost some of a's messages here
            gate[0].set()
            await eventually(
                lambda: all(v == 2 for g in calls.values() for v in g.values()), timeout=15
            )
        assert await t.dead_letters() == []

    async def test_copies_have_their_own_message_id_and_keep_the_first(
        self, transport: RabbitMQTransport, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A dead letter (like every copy) has a message id of its own and carries the one it
        was first published with (the event id) in ``x-original-message-id``, through a
        re-drive too; the event itself, and so its id, is unchanged."""
        from events.errors import InvalidPayload

        handled: list[str] = []

        async def handler(env: Envelope) -> None:
            handled.append(env.id)
            raise InvalidPayload("never valid")

        await transport.subscribe("g", [InquiryReceived.event_type], handler)
        await transport.start()
        sent = inquiry(correlation="copied")
        await transport.publish(sent)
        (letter,) = await dead_letters_eventually(transport, 1)
        assert letter.headers[H_MESSAGE_ID] == sent.id
        channel = await broker.channel()
        dlq = await channel.declare_queue(f"{exchange_name}.g.dlq", passive=True)
        message = await dlq.get(no_ack=False, timeout=5)
        await channel.close()  # back in the queue
        assert message.message_id not in (None, sent.id)
        assert message.headers[H_MESSAGE_ID] == sent.id
        assert json.loads(message.body)["id"] == sent.id

        assert await transport.redrive([letter.id]) == 1
        await eventually(lambda: len(handled) == 2)
        (again,) = await dead_letters_eventually(transport, 1)
        assert again.id != letter.id
        assert again.headers[H_MESSAGE_ID] == sent.id
        assert handled == [sent.id, sent.id]

    async def test_a_redelivered_message_comes_back_at_once(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A message whose consumer died holding it is counted (a retry reported with
        DeliveryNotSettled) but sent straight back to the group's queue, not through the retry
        delay: its handler runs again at once (a request already answered is answered from the
        inbox without waiting), with the attempt it was charged."""
        t = make_transport(retry=RetryPolicy(max_attempts=3, initial_delay=30, jitter=0))
        seen = observed(t)
        await t.declare("g", [InquiryReceived.event_type])
        await t.publish(inquiry(correlation="orphan"))
        channel = await broker.channel()
        queue = await channel.declare_queue(f"{exchange_name}.g", passive=True)
        taken = await queue.get(no_ack=False, timeout=5)
        assert not taken.redelivered
        await channel.close()  # "dies" holding it: back in the queue, flagged redelivered
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        await eventually(lambda: got == ["orphan"], timeout=3)
        assert [(s.hook, s.attempts, s.error_class, s.delay) for s in seen.seen] == [
            ("retried", 1, "DeliveryNotSettled", 0.0)
        ]
        await asyncio.sleep(0.2)
        assert got == ["orphan"]
        assert await queue_depth(broker, f"{exchange_name}.g") == 0

    @pytest.mark.parametrize("queue_type", ["classic", "quorum"])
    async def test_a_message_that_kills_its_consumer_is_dead_lettered(
        self, make_transport: Factory, queue_type: str
    ) -> None:
        """A delivery whose consumer dies before settling it (its connection cut under the
        handler, as a kill -9 does) counts as an attempt: after max_attempts the message is
        dead-lettered with a reason that says so, and the group goes on with the others. On
        classic queues and on quorum queues (which on RabbitMQ 3.10 have no delivery limit
        unless one is set, and would redeliver it for ever too)."""
        async with _Proxy(URL(amqp_url())) as proxy:
            # the retry delay is long: a redelivered message comes back at once all the same
            t = make_transport(url=proxy.url, grace=1, queue_type=queue_type, retry=RetryPolicy(
                max_attempts=3, initial_delay=30, jitter=0))
            seen = observed(t)
            deadly: list[int] = []
            ok: list[str] = []

            async def handler(env: Envelope) -> None:
                if env.correlationid == "deadly":
                    deadly.append(1)
                    proxy.kill()  # the process "dies" holding the message
                    await asyncio.sleep(30)
                ok.append(env.correlationid)

            await t.subscribe("g", [InquiryReceived.event_type], handler)
            await t.start()
            # published and read by another client: this one's connection is cut again and
            # again (a publish whose confirm is cut off is sent again: a duplicate)
            reader = make_transport(known_groups=["g"], queue_type=queue_type)
            await reader.publish(inquiry(correlation="deadly"))
            letters = await dead_letters_eventually(reader, 1, timeout=40)
            await asyncio.sleep(1)
            assert len(await reader.dead_letters()) == 1, letters
            (letter,) = letters
            assert len(deadly) == 3
            assert letter.correlationid == "deadly"
            assert letter.attempts == 3
            assert letter.error_class == "DeliveryNotSettled"
            assert "never settled" in letter.reason
            assert [(s.hook, s.attempts, s.error_class, s.delay) for s in seen.seen] == [
                ("retried", 1, "DeliveryNotSettled", 0.0),
                ("retried", 2, "DeliveryNotSettled", 0.0),
                ("dead_lettered", 3, "DeliveryNotSettled", None),
            ]
            await reader.publish(inquiry(correlation="fine"))
            await eventually(lambda: ok == ["fine"], timeout=20)
            await t.close()

    async def test_publish_before_start_and_after_close(self, make_transport: Factory) -> None:
        """publish connects on demand; after close it raises TransportError."""
        from bus import TransportError

        t = make_transport()
        await t.publish(inquiry(1))
        await t.close()
        with pytest.raises(TransportError):
            await t.publish(inquiry(2))

    async def test_close_lets_a_running_handler_finish(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """close() waits for a handler in flight; it finishes, its message is acknowledged
        and nothing is left to redeliver."""
        t = make_transport(grace=10)
        started = asyncio.Event()
        finished: list[str] = []

        async def handler(env: Envelope) -> None:
            started.set()
            await asyncio.sleep(0.5)
            finished.append(env.correlationid)

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        await t.publish(inquiry(correlation="slow"))
        await asyncio.wait_for(started.wait(), 5)
        await t.close()
        assert finished == ["slow"]
        assert await queue_depth(broker, f"{exchange_name}.g") == 0

    async def test_close_after_grace_returns_the_message(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A handler still running when the grace period ends is cancelled and its message
        goes back to the queue for another consumer."""
        t = make_transport(grace=0.2)
        started = asyncio.Event()
        cancelled: list[bool] = []

        async def handler(env: Envelope) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        await t.publish(inquiry(correlation="stuck"))
        await asyncio.wait_for(started.wait(), 5)
        await t.close()
        assert cancelled == [True]
        (back,) = await take_all(broker, f"{exchange_name}.g")
        # handed back as a copy, not requeued: not flagged as a death, and not charged (the
        # handler was cut off by our shutdown, not by the message)
        assert not back.redelivered
        assert H_ATTEMPTS not in back.headers

    async def test_close_hands_back_what_it_did_not_start(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """Messages prefetched but still waiting for a handler slot when close() begins go back
        uncounted: after more graceful restarts than max_attempts none is retried or
        dead-lettered, each is handled once, and the one left is as it was sent."""
        seen: list[str] = []
        reports = []

        async def slow(env: Envelope) -> None:
            seen.append(env.correlationid)
            await asyncio.sleep(0.5)

        for restart in range(3):
            t = make_transport(prefetch=4, grace=5)
            reports.append(observed(t))
            await t.subscribe("g", [InquiryReceived.event_type], slow, concurrency=1)
            await t.start()
            before = len(seen)
            if restart == 0:
                for i in range(4):
                    await t.publish(inquiry(correlation=f"m{i}"))
            await eventually(lambda before=before: len(seen) > before, timeout=5)
            await t.close()  # the running one finishes, the rest go back
        assert seen == ["m0", "m1", "m2"]
        assert [r.seen for r in reports] == [[], [], []]
        assert await queue_depth(broker, f"{exchange_name}.g.dlq") == 0
        (left,) = await take_all(broker, f"{exchange_name}.g")
        assert json.loads(left.body)["correlationid"] == "m3"
        assert not left.redelivered
        assert H_ATTEMPTS not in left.headers

    async def test_a_redelivered_message_handed_back_keeps_its_charge(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A redelivered message still waiting for a slot at close is handed back charged with
        the death its flag told of: the copy is not flagged, so it must carry the count."""
        t = make_transport(prefetch=4, grace=5)
        started = asyncio.Event()

        async def slow(env: Envelope) -> None:
            started.set()
            await asyncio.sleep(0.5)

        await t.declare("g", [InquiryReceived.event_type])
        await t.publish(inquiry(correlation="orphan"))
        other = await broker.channel()
        queue = await other.declare_queue(f"{exchange_name}.g", passive=True)
        assert await queue.get(no_ack=False, timeout=5) is not None  # held by a "doomed" client
        await t.subscribe("g", [InquiryReceived.event_type], slow, concurrency=1)
        await t.start()
        await t.publish(inquiry(correlation="slow"))
        await asyncio.wait_for(started.wait(), 5)
        await other.close()  # it "dies": the orphan comes back, redelivered, behind "slow"
        await asyncio.sleep(0.2)
        await t.close()
        (back,) = await take_all(broker, f"{exchange_name}.g")
        assert json.loads(back.body)["correlationid"] == "orphan"
        assert not back.redelivered
        assert back.headers[H_ATTEMPTS] == 1

    async def test_a_retry_that_cannot_be_parked_comes_back_counted(
        self, make_transport: Factory, broker: aio_pika.abc.AbstractConnection,
        exchange_name: str,
    ) -> None:
        """A retry queue that refuses the copy (here: full, rejecting publishes): the message
        is handed back to its group's queue as a copy charged with the failed attempt, and
        handled again, instead of coming back 'redelivered' and being charged (and parked)
        again and again."""
        t = make_transport(publish_timeout=1)
        calls: list[str] = []

        async def handler(env: Envelope) -> None:
            calls.append(env.correlationid)
            if len(calls) == 1:
                raise RuntimeError("once")

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        seen = observed(t)
        retry_queue = f"{exchange_name}.g.retry.10"
        channel = await broker.channel()
        await channel.queue_delete(retry_queue)
        await channel.declare_queue(retry_queue, durable=True, arguments={
            "x-message-ttl": 10, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{exchange_name}.g",
            "x-max-length": 0, "x-overflow": "reject-publish",
        })
        await channel.close()
        await t.publish(inquiry(correlation="refused"))
        await eventually(lambda: len(calls) == 2, timeout=10)
        await asyncio.sleep(0.2)
        assert calls == ["refused", "refused"]
        assert seen.seen == []  # no retry took effect, and no DeliveryNotSettled
        assert await queue_depth(broker, f"{exchange_name}.g") == 0

    async def test_handler_in_flight_when_connection_drops_is_redelivered(
        self, make_transport: Factory
    ) -> None:
        """The connection dies under a running handler: the broker redelivers the message after
        the reconnect, and consumption resumes."""
        async with _Proxy(URL(amqp_url())) as proxy:
            t = make_transport(url=proxy.url)
            calls: list[str] = []
            first = asyncio.Event()

            async def handler(env: Envelope) -> None:
                calls.append(env.correlationid)
                if len(calls) == 1:
                    first.set()
                    await asyncio.sleep(30)  # cut off by the drop

            await t.subscribe("g", [InquiryReceived.event_type], handler)
            await t.start()
            await t.publish(inquiry(correlation="held"))
            await asyncio.wait_for(first.wait(), 5)
            proxy.drop()
            await eventually(lambda: len(calls) == 2, timeout=20)
            assert calls == ["held", "held"]
            await t.publish(inquiry(correlation="after"))
            await eventually(lambda: calls[-1] == "after", timeout=10)
            await t.close()

    async def test_publish_waits_for_reconnect(self, make_transport: Factory) -> None:
        """A publish while the connection is down waits for the reconnect and is confirmed."""
        async with _Proxy(URL(amqp_url())) as proxy:
            t = make_transport(url=proxy.url)
            got: list[str] = []

            async def handler(env: Envelope) -> None:
                got.append(env.correlationid)

            await t.subscribe("g", [InquiryReceived.event_type], handler)
            await t.start()
            proxy.pause()
            publishing = asyncio.create_task(t.publish(inquiry(correlation="during")))
            await asyncio.sleep(0.5)
            assert not publishing.done()
            proxy.resume()
            await asyncio.wait_for(publishing, 20)
            await eventually(lambda: got == ["during"], timeout=10)
            await t.close()

    async def test_publish_gives_up_with_transport_error(self, make_transport: Factory) -> None:
        """With the broker gone for longer than publish_timeout, publish raises."""
        from bus import TransportError

        async with _Proxy(URL(amqp_url())) as proxy:
            t = make_transport(url=proxy.url, publish_timeout=1.0)
            await t.start()
            proxy.pause()
            with pytest.raises(TransportError):
                await t.publish(inquiry(1))
            proxy.resume()
            await t.close()

    @pytest.mark.slow
    @pytest.mark.timeout(120)
    async def test_survives_broker_restart(self, make_transport: Factory) -> None:
        """``rabbitmqctl stop_app``/``start_app``: consumers resume, a publish made during the
        outage completes after it, and nothing is lost.

        Opt-in (``AIAPPS_TEST_RESTART_BROKER=1``): restarting the broker breaks every other
        client of it, such as a second test run on the same machine. The proxy tests above
        cover dropped connections without touching the broker."""
        await require_restartable(amqp_url())
        t = make_transport()
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        for i in range(5):
            await t.publish(inquiry(correlation=f"before-{i}"))
        await eventually(lambda: len(got) == 5)
        await rabbitmqctl("stop_app")
        try:
            during = asyncio.create_task(t.publish(inquiry(correlation="during")))
            await asyncio.sleep(1)
        finally:
            await rabbitmqctl("start_app")
        await asyncio.wait_for(during, 40)
        for i in range(5):
            await t.publish(inquiry(correlation=f"after-{i}"))
        expected = {f"before-{i}" for i in range(5)} | {f"after-{i}" for i in range(5)}
        expected.add("during")
        await eventually(lambda: expected <= set(got), timeout=40)


class _Proxy:
    """A TCP proxy in front of the broker, to cut or stall connections without touching the
    broker (other clients of it are unaffected)."""

    def __init__(self, upstream: URL) -> None:
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()  # toward the clients
        self._deaf: set[asyncio.StreamWriter] = set()  # (see kill)
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self.url = ""

    async def __aenter__(self) -> _Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = str(self._upstream.with_host("127.0.0.1").with_port(port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop(self) -> None:
        """Cut every open connection."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def kill(self, linger: float = 0.2) -> None:
        """Cut every open connection as the death of the client's process does: from now on
        the client hears nothing, while what it had written (into a socket the kernel still
        flushes) reaches the broker for ``linger`` seconds; then the connections close. (The
        client, still alive in the test, is deaf meanwhile: it can answer nothing.)"""
        self._deaf |= self._clients
        asyncio.get_running_loop().call_later(linger, self.drop)

    def pause(self) -> None:
        """Cut every connection and refuse new ones until :meth:`resume`."""
        self._paused = True
        self.drop()

    def resume(self) -> None:
        self._paused = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._paused:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self._upstream.host, self._upstream.port or 5672
            )
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        self._clients.add(writer)
        a = asyncio.create_task(self._pipe(reader, up_writer))
        b = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks |= {a, b}
        await asyncio.gather(a, b, return_exceptions=True)
        self._tasks -= {a, b}
        self._clients.discard(writer)
        self._deaf.discard(writer)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if writer in self._deaf:
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

