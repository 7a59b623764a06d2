"""The Azure Service Bus transport.

* The transport contract, with the real ``azure-servicebus`` client, against a fake AMQP 1.0
  broker started on a free loopback port (:mod:`tests.servicebus_fake`), and against a real
  namespace when ``AIAPPS_TEST_SERVICEBUS`` holds a connection string (skipped otherwise).
* More on the fake broker: the wire format, batched sends, retries as scheduled copies for one
  group, lock renewal of a handler that outlives its lock, messages given back on close,
  dead letters read without peeking, ephemeral groups, and the support workflow end to end.
* At the client seam (mocked SDK objects): what needs a real namespace's management API
  (provisioning, the credential path) and the details of scheduling, peeking and errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessagingEntityNotFoundError
from azure.servicebus.management import CorrelationRuleFilter, SqlRuleFilter, TrueRuleFilter
from proton import Message
from typer.testing import CliRunner

from actors.providers.fake import FakeProviders
from bus import ALL_TYPES, RetryPolicy, TransportError
from bus.servicebus import H_ATTEMPTS, H_EVENT_TYPE, ServiceBusTransport, _Group, _Subscription
from bus.servicebus_admin import (
    H_TARGET,
    AzureSubscriptionAdmin,
    provision,
    rules_for,
    subscription_name,
)
from events import (
    CONTENT_TYPE,
    DetectLanguageRequested,
    Envelope,
    InquiryReceived,
    ResponseReady,
    encode,
)
from saga.memory_store import InMemorySagaStore
from service.servicebus_cli import deployment_groups, servicebus_app
from service.testing import fake_settings, make_inquiry
from service.wiring import Service
from tests.conformance.transport import (
    PublishRaw,
    TransportContract,
    dead_letters_eventually,
    eventually,
    inquiry,
)
from tests.servicebus_fake import FakeAdmin, FakeServiceBus, provision_fake

pytestmark = pytest.mark.servicebus

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)
NAMESPACE_ENV = "AIAPPS_TEST_SERVICEBUS"


@pytest.fixture(scope="module")
def broker() -> Iterator[FakeServiceBus]:
    with FakeServiceBus() as bus:
        yield bus


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make(broker: FakeServiceBus, topic: str) -> AsyncIterator[Any]:
    """Builds transports on the fake broker and this test's topic; closes them after."""
    made: list[ServiceBusTransport] = []

    def build(**kwargs: Any) -> ServiceBusTransport:
        kwargs.setdefault("topic", topic)
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("admin", FakeAdmin(broker))
        kwargs.setdefault("provision", True)
        kwargs.setdefault("receive_wait", 0.5)
        kwargs.setdefault("dead_letter_wait", 0.2)
        kwargs.setdefault("grace", 5)
        t = ServiceBusTransport(broker.connection_string, **kwargs)
        made.append(t)
        return t

    yield build
    await asyncio.gather(*(t.close() for t in made))


async def _raw_sender(connection_string: str, topic: str) -> AsyncIterator[PublishRaw]:
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        sender = client.get_topic_sender(topic)

        async def publish(body: bytes, routing_key: str) -> None:
            await sender.send_messages(ServiceBusMessage(body, subject=routing_key))

        yield publish
        await sender.close()


# -- the contract ----------------------------------------------------------------------------


class TestServiceBusOnFakeBroker(TransportContract):
    """The contract with the real SDK against the fake broker."""

    @pytest.fixture
    async def transport(self, make: Any) -> ServiceBusTransport:
        transport: ServiceBusTransport = make()
        return transport

    @pytest.fixture
    def publish_raw(self, broker: FakeServiceBus, topic: str) -> PublishRaw:
        """Raw bytes put on the topic by the broker itself, as any client could send them."""

        async def publish(body: bytes, routing_key: str) -> None:
            broker.publish(topic, Message(body=body, subject=routing_key, inferred=True))

        return publish


def _namespace() -> str:
    conn = os.environ.get(NAMESPACE_ENV)
    if not conn:
        pytest.skip(f"needs a Service Bus namespace: set {NAMESPACE_ENV} to a connection string")
    return conn


class TestServiceBusOnNamespace(TransportContract):
    """The same contract on a real namespace: its topic is made for the test and deleted after;
    the transport provisions its subscriptions with the real management API."""

    @pytest.fixture
    async def transport(self, topic: str) -> AsyncIterator[ServiceBusTransport]:
        conn = _namespace()
        t = ServiceBusTransport(conn, topic=topic, retry=FAST_RETRY, provision=True, grace=5)
        try:
            yield t
        finally:
            await t.close()
            admin = AzureSubscriptionAdmin(conn)
            try:
                await admin.client.delete_topic(topic)
            except ResourceNotFoundError:
                pass
            finally:
                await admin.close()

    @pytest.fixture
    async def publish_raw(self, topic: str) -> AsyncIterator[PublishRaw]:
        async for publish in _raw_sender(_namespace(), topic):
            yield publish


# -- more, on the fake broker ----------------------------------------------------------------


class TestOnFakeBroker:
    async def test_wire_format(self, make: Any, broker: FakeServiceBus, topic: str) -> None:
        """A published event is the structured CloudEvent with its id, correlation, type and
        extensions in the Service Bus message properties."""
        provision_fake(broker, topic, {"tap": [ALL_TYPES]})
        t = make(provision=False)
        sent = inquiry(3).model_copy(update={"tenant": "acme", "traceparent": "00-abc-def-01"})
        await t.publish(sent)
        (message,) = broker.messages(f"{topic}/Subscriptions/tap")
        body: Any = message.body
        properties: Any = message.properties
        assert bytes(body) == encode(sent)
        assert message.id == sent.id
        assert message.correlation_id == sent.correlationid
        assert message.subject == "InquiryReceived"
        assert message.content_type == CONTENT_TYPE
        assert properties["ce-tenant"] == "acme"
        assert properties["ce-traceparent"] == "00-abc-def-01"
        assert json.loads(bytes(body))["specversion"] == "1.0"

    async def test_concurrent_publishes_go_in_batches(
        self, make: Any, broker: FakeServiceBus, topic: str
    ) -> None:
        """Publishes made together travel in message batches, and every event arrives."""
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.id)

        t = make()
        await t.subscribe("g", [InquiryReceived.event_type], handler, concurrency=8)
        await t.start()
        before = broker.transfers
        sent = [inquiry(i) for i in range(40)]
        await asyncio.gather(*(t.publish(e) for e in sent[:30]))
        await t.publish_many(sent[30:])
        await eventually(lambda: len(got) == 40)
        assert sorted(got) == sorted(e.id for e in sent)
        assert broker.transfers - before < 20
        assert broker.batches >= 2

    async def test_retry_is_a_delayed_copy_for_the_failing_group_only(
        self, make: Any, topic: str
    ) -> None:
        """A retry waits the policy's delay, reaches only the group that failed (not another
        group of the same type, nor a group of every type), and counts its attempts."""
        times: list[float] = []
        other: list[str] = []
        everything: list[str] = []

        async def flaky(env: Envelope) -> None:
            times.append(time.monotonic())
            if len(times) == 1:
                raise RuntimeError("once")

        def record(into: list[str]) -> Any:
            async def handler(env: Envelope) -> None:
                into.append(env.id)

            return handler

        t = make(retry=RetryPolicy(max_attempts=3, initial_delay=0.4, jitter=0))
        await t.subscribe("flaky", [InquiryReceived.event_type], flaky)
        await t.subscribe("other", [InquiryReceived.event_type], record(other))
        await t.subscribe("tap", [ALL_TYPES], record(everything))
        await t.start()
        await t.publish(inquiry(1))
        await eventually(lambda: len(times) == 2)
        await asyncio.sleep(0.2)
        assert times[1] - times[0] >= 0.38
        assert len(times) == 2
        assert len(other) == 1
        assert len(everything) == 1

    async def test_long_handler_keeps_its_lock(
        self, make: Any, broker: FakeServiceBus, topic: str
    ) -> None:
        """A handler that runs longer than the lock (here 3 s, on Service Bus up to 5 minutes)
        keeps it through renewals and is handled once, though a second consumer is free; without
        renewal the lock expires and the message is handled twice."""
        for name in (topic, f"{topic}-x"):
            provision_fake(broker, name, {"g": [InquiryReceived.event_type]}, lock_seconds=3)
        calls: dict[str, list[str]] = {"renewed": [], "expired": []}

        def slow(key: str) -> Any:
            async def handler(env: Envelope) -> None:
                calls[key].append(env.id)
                await asyncio.sleep(3.8)

            return handler

        renewals = broker.renewals
        renewed = make(provision=False, grace=0.2)
        expired = make(provision=False, grace=0.2, topic=f"{topic}-x", max_lock_renewal=0.01)
        await renewed.subscribe("g", [InquiryReceived.event_type], slow("renewed"), concurrency=2)
        await expired.subscribe("g", [InquiryReceived.event_type], slow("expired"), concurrency=2)
        await asyncio.gather(renewed.start(), expired.start())
        await asyncio.gather(renewed.publish(inquiry(1)), expired.publish(inquiry(2)))
        await asyncio.sleep(4.2)
        assert len(calls["renewed"]) == 1
        assert broker.renewals > renewals
        assert len(calls["expired"]) == 2

    async def test_close_gives_back_a_running_handler_message(
        self, make: Any, broker: FakeServiceBus, topic: str
    ) -> None:
        """A handler still running when the grace period ends is cancelled and its message is
        abandoned: it is back in the subscription for another consumer, one delivery counted."""
        started = asyncio.Event()
        cancelled: list[bool] = []

        async def stuck(env: Envelope) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        t = make(grace=0.2)
        await t.subscribe("g", [InquiryReceived.event_type], stuck)
        await t.start()
        await t.publish(inquiry(1))
        await asyncio.wait_for(started.wait(), 5)
        await t.close()
        assert cancelled == [True]
        assert broker.delivery_counts(f"{topic}/Subscriptions/g") == [1]

    async def test_dead_letters_without_peek(
        self, make: Any, broker: FakeServiceBus
    ) -> None:
        """Where ``$management`` cannot peek, dead letters are read by receiving them and
        abandoning them: they are still there for the next look, and for a re-drive."""
        t = make()

        async def handler(env: Envelope) -> None:
            raise ValueError("never")

        await t.subscribe("g", [InquiryReceived.event_type], handler)
        await t.start()
        broker.peek = False
        try:
            await t.publish(inquiry(correlation="stays"))
            (letter,) = await dead_letters_eventually(t, 1)
            assert [d.id for d in await t.dead_letters("g")] == [letter.id]
        finally:
            broker.peek = True
        assert letter.attempts == 3
        assert letter.correlationid == "stays"
        assert await t.redrive(group="g") == 1

    async def test_ephemeral_group(self, make: Any, broker: FakeServiceBus, topic: str) -> None:
        """An ephemeral group gets a subscription of its own, made at run time with
        auto-delete-on-idle and deleted on close; a failing handler there is not retried
        and leaves no dead letter."""
        admin = FakeAdmin(broker)
        t = make(admin=admin, provision=False)
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)
            raise RuntimeError("nobody retries this")

        await t.subscribe("replies", [InquiryReceived.event_type], handler, ephemeral=True)
        await t.start()
        ((_, name, settings),) = admin.created
        assert name.startswith("replies.")
        assert settings.auto_delete_on_idle == timedelta(minutes=5)
        await t.publish(inquiry(correlation="r1"))
        await eventually(lambda: got == ["r1"])
        await asyncio.sleep(0.3)
        assert got == ["r1"]
        assert broker.depth(f"{topic}/Subscriptions/{name}/$DeadLetterQueue") == (0, 0)
        await t.close()
        assert admin.deleted == [(topic, name)]

    async def test_unprovisioned_subscription_is_a_clear_error(self, make: Any) -> None:
        """Without provisioning, start() says which subscription is missing and what to run."""
        t = make(provision=False)

        async def handler(env: Envelope) -> None:
            pass

        await t.subscribe("nobody-made-this", [InquiryReceived.event_type], handler)
        with pytest.raises(TransportError, match="servicebus provision") as info:
            await t.start()
        assert isinstance(info.value.__cause__, MessagingEntityNotFoundError)

    async def test_publish_before_start_after_close_and_broker_down(
        self, make: Any, broker: FakeServiceBus, topic: str
    ) -> None:
        """publish connects on demand; after close it raises TransportError, and so does one to
        a namespace that does not answer."""
        broker.create_topic(topic)
        t = make()
        await t.publish(inquiry(1))
        await t.close()
        with pytest.raises(TransportError, match="closed"):
            await t.publish(inquiry(2))
        dead = ServiceBusTransport(
            "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=x;SharedAccessKey=y;"
            "UseDevelopmentEmulator=true;",
            client_options={"retry_total": 0},
        )
        try:
            with pytest.raises(TransportError) as info:
                await dead.publish(inquiry(3))
            assert info.value.__cause__ is not None
        finally:
            await dead.close()


async def test_support_workflow_end_to_end(broker: FakeServiceBus, topic: str, tmp_path: Path) -> None:
    """A Spanish inquiry with a photo and a voice reply runs every step of the support
    workflow, actors and coordinator talking over the fake Service Bus, to ResponseReady."""
    settings = fake_settings(tmp_path, bus_exchange=topic)
    provision_fake(broker, topic, deployment_groups(settings))
    fakes = FakeProviders()
    fakes.language.language = "es"
    fakes.vision.ocr_text = "PEDIDO ORD-1"
    transport = ServiceBusTransport(
        broker.connection_string, topic=topic, admin=FakeAdmin(broker), receive_wait=0.5,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.05, jitter=0),
    )
    svc = Service(
        settings, transport=transport, store=InMemorySagaStore(),
        providers={"language": fakes.language, "vision": fakes.vision,
                   "translation": fakes.translation, "responder": fakes.responder,
                   "speech": fakes.speech},
    )
    async with svc:
        photo = await svc.blobs.put(b"\x89PNG fake image bytes", "image/png", "label.png")
        inquiry_ = make_inquiry(
            message="Mi cafetera llegó rota", attachments=(photo,), voice_reply=True
        )
        await svc.submit(inquiry_)
        done = await svc.wait("inq-1", timeout=30)
    assert isinstance(done.data, ResponseReady)
    assert done.data.language == "es"
    assert done.data.voice is not None
    assert done.data.degraded == ()
    assert {c.capability for c in fakes.calls()} == {
        "analyze", "detect", "translate", "respond", "synthesize"
    }


# -- at the client seam ------------------------------------------------------------------------


def _received(
    body: bytes = b"{}",
    *,
    properties: dict[Any, Any] | None = None,
    delivery_count: int | None = 0,
    locked_for: float = 60.0,
    subject: str | None = "InquiryReceived",
) -> Any:
    """A stand-in for a ServiceBusReceivedMessage (what the transport reads of one)."""
    return SimpleNamespace(
        body=iter([body]), application_properties=properties or {}, delivery_count=delivery_count,
        locked_until_utc=datetime.now(UTC) + timedelta(seconds=locked_for), _settled=False,
        message_id=str(uuid.uuid4()), subject=subject, correlation_id="corr",
        content_type=CONTENT_TYPE, sequence_number=7, enqueued_time_utc=datetime.now(UTC),
        dead_letter_reason=None, dead_letter_error_description=None,
    )


def _receiver() -> Any:
    receiver = MagicMock()
    for name in ("complete_message", "abandon_message", "dead_letter_message", "peek_messages",
                 "receive_messages", "close"):
        setattr(receiver, name, AsyncMock())
    return receiver


def _seam_transport(**kwargs: Any) -> ServiceBusTransport:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=3, initial_delay=2.0, jitter=0))
    return ServiceBusTransport(
        "Endpoint=sb://seam.invalid/;SharedAccessKeyName=x;SharedAccessKey=y", **kwargs
    )


def _group(name: str = "g", handler: Any = None, **kwargs: Any) -> tuple[_Group, _Subscription]:
    sub = _Subscription(handler or AsyncMock(), 1, asyncio.Semaphore(1))
    return _Group(name, name, kwargs.get("ephemeral", False), {"InquiryReceived"}, [sub]), sub


class TestClientSeam:
    async def test_long_handler_is_registered_for_lock_renewal(self) -> None:
        """A handler still running after a quarter of its lock time is registered with the
        AutoLockRenewer for max_lock_renewal seconds; a quick one never is."""
        t = _seam_transport(max_lock_renewal=600.0)
        t._renewer = MagicMock()
        body = inquiry(1).model_dump_json().encode()

        async def slow(env: Envelope) -> None:
            await asyncio.sleep(0.3)

        group, sub = _group(handler=slow)
        receiver, message = _receiver(), _received(body, locked_for=0.4)
        await sub.slots.acquire()
        await t._handle(group, sub, receiver, message)
        t._renewer.register.assert_called_once_with(receiver, message, max_lock_renewal_duration=600.0)
        receiver.complete_message.assert_awaited_once_with(message)

        t._renewer.reset_mock()
        quick, quick_sub = _group(handler=AsyncMock())
        await quick_sub.slots.acquire()
        await t._handle(quick, quick_sub, receiver, _received(body, locked_for=60))
        t._renewer.register.assert_not_called()
        assert not sub.slots.locked()
        assert not quick_sub.slots.locked()

    async def test_retry_sends_a_scheduled_copy_then_completes(self) -> None:
        """A failed delivery is re-sent for its group, scheduled after the policy's delay, with
        its attempts; the original is completed only after the copy is accepted."""
        t = _seam_transport()
        sent: list[ServiceBusMessage] = []
        order: list[str] = []

        async def send(messages: list[ServiceBusMessage]) -> None:
            order.append("send")
            sent.extend(messages)

        t._send = send  # type: ignore[method-assign]
        receiver = _receiver()
        receiver.complete_message.side_effect = lambda m: order.append("complete")
        group, sub = _group(handler=AsyncMock(side_effect=RuntimeError("flaky")))
        body = inquiry(1).model_dump_json().encode()
        message = _received(body, properties={b"ce-tenant": b"t1"}, delivery_count=0)
        await sub.slots.acquire()
        before = datetime.now(UTC)
        await t._handle(group, sub, receiver, message)
        (copy,) = sent
        assert order == ["send", "complete"]
        props = copy.application_properties or {}
        assert props[H_ATTEMPTS] == 1
        assert props[H_TARGET] == "g"
        assert props[H_EVENT_TYPE] == "InquiryReceived"
        assert props["ce-tenant"] == "t1"
        assert copy.subject is None
        assert copy.message_id != message.message_id
        assert copy.scheduled_enqueue_time_utc is not None
        assert timedelta(seconds=1.9) <= copy.scheduled_enqueue_time_utc - before <= timedelta(seconds=3)

    async def test_retry_falls_back_to_abandon(self) -> None:
        """If the copy cannot be sent, the original is abandoned (an immediate retry the
        broker counts) rather than completed and lost."""
        t = _seam_transport()
        t._send = AsyncMock(side_effect=TransportError("down"))  # type: ignore[method-assign]
        receiver = _receiver()
        group, sub = _group(handler=AsyncMock(side_effect=RuntimeError("flaky")))
        await sub.slots.acquire()
        await t._handle(group, sub, receiver, _received(inquiry(1).model_dump_json().encode()))
        receiver.abandon_message.assert_awaited_once()
        receiver.complete_message.assert_not_awaited()

    async def test_attempts_count_copies_and_broker_deliveries(self) -> None:
        """The last attempt (x-attempts 1 + delivery count 1 + 1 = 3) dead-letters with the
        reason and a JSON description the dead-letter listing reads back."""
        t = _seam_transport()
        receiver = _receiver()
        group, sub = _group(handler=AsyncMock(side_effect=ValueError("bad input")))
        message = _received(inquiry(1).model_dump_json().encode(), properties={H_ATTEMPTS: 1},
                            delivery_count=1)
        await sub.slots.acquire()
        await t._handle(group, sub, receiver, message)
        receiver.dead_letter_message.assert_awaited_once()
        kwargs = receiver.dead_letter_message.await_args.kwargs
        assert kwargs["reason"] == "bad input"
        meta = json.loads(kwargs["error_description"])
        assert (meta["attempts"], meta["error_class"], meta["group"]) == (3, "ValueError", "g")

    async def test_publish_at_schedules(self) -> None:
        t = _seam_transport()
        t._send = AsyncMock()  # type: ignore[method-assign]
        when = datetime.now(UTC) + timedelta(minutes=10)
        await t.publish_at(inquiry(1), when)
        call: Any = t._send.await_args
        (message,) = call.args[0]
        assert message.scheduled_enqueue_time_utc == when

    async def test_dead_letters_are_peeked_page_by_page(self) -> None:
        """On a namespace that peeks, every page is read from the first sequence number on,
        and nothing is received or settled."""
        t = _seam_transport()
        receiver = _receiver()
        pages = [[_received(b"a"), _received(b"b")], [_received(b"c")], []]
        for seq, message in zip((4, 9, 12), [*pages[0], *pages[1]], strict=True):
            message.sequence_number = seq
        receiver.peek_messages.side_effect = pages
        t._dlq["g"] = receiver
        letters = await t.dead_letters("g")
        assert sorted(d.body for d in letters) == [b"a", b"b", b"c"]
        starts = [c.kwargs["sequence_number"] for c in receiver.peek_messages.await_args_list]
        assert starts == [1, 10, 13]
        receiver.receive_messages.assert_not_awaited()
        receiver.abandon_message.assert_not_awaited()

    async def test_namespace_with_default_azure_credential(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With a namespace and no credential, DefaultAzureCredential is used (imported only
        then) and closed with the transport."""
        import azure.identity.aio

        credential = MagicMock(close=AsyncMock())
        monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", lambda: credential)
        made: list[tuple[Any, ...]] = []
        client = MagicMock(close=AsyncMock())

        def fake_client(*args: Any, **kwargs: Any) -> Any:
            made.append(args)
            return client

        monkeypatch.setattr("bus.servicebus.ServiceBusClient", fake_client)
        t = ServiceBusTransport(namespace="my-ns")
        t._connect()
        assert made == [("my-ns.servicebus.windows.net", credential)]
        await t.close()
        credential.close.assert_awaited_once()
        client.close.assert_awaited_once()

    async def test_missing_topic_maps_to_transport_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        sender = MagicMock(close=AsyncMock())
        sender.__aenter__ = AsyncMock(side_effect=MessagingEntityNotFoundError(message="gone"))
        client = MagicMock(close=AsyncMock(), get_topic_sender=MagicMock(return_value=sender))
        monkeypatch.setattr(
            "bus.servicebus.ServiceBusClient.from_connection_string", lambda *a, **k: client
        )
        t = _seam_transport()
        with pytest.raises(TransportError, match="does not exist") as info:
            await t.publish(inquiry(1))
        assert isinstance(info.value.__cause__, MessagingEntityNotFoundError)
        await t.close()

    def test_constructor_needs_one_way_to_connect(self) -> None:
        with pytest.raises(ValueError, match="either"):
            ServiceBusTransport()
        with pytest.raises(ValueError, match="either"):
            ServiceBusTransport("Endpoint=sb://x/", namespace="x")


# -- provisioning, at the client seam ----------------------------------------------------------


class FakeAdminClient:
    """An in-memory ``ServiceBusAdministrationClient`` (aio): topics, subscriptions, rules."""

    def __init__(self) -> None:
        self.topics: dict[str, Any] = {}
        self.subscriptions: dict[tuple[str, str], Any] = {}
        self.rules: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0
        self.closed = False

    async def get_topic(self, name: str) -> Any:
        if name not in self.topics:
            raise ResourceNotFoundError("no such topic")
        return self.topics[name]

    async def create_topic(self, name: str, **kwargs: Any) -> None:
        self.writes += 1
        self.topics[name] = SimpleNamespace(name=name, default_message_time_to_live=None, **kwargs)

    async def update_topic(self, topic: Any) -> None:
        self.writes += 1

    async def get_subscription(self, topic: str, name: str) -> Any:
        if (topic, name) not in self.subscriptions:
            raise ResourceNotFoundError("no such subscription")
        return SimpleNamespace(**vars(self.subscriptions[(topic, name)]))

    async def create_subscription(self, topic: str, name: str, **kwargs: Any) -> None:
        self.writes += 1
        self.subscriptions[(topic, name)] = SimpleNamespace(name=name, **kwargs)
        self.rules[(topic, name)] = {
            "$Default": SimpleNamespace(name="$Default", filter=TrueRuleFilter(), action=None)
        }

    async def update_subscription(self, topic: str, subscription: Any) -> None:
        self.writes += 1
        self.subscriptions[(topic, subscription.name)] = SimpleNamespace(**vars(subscription))

    async def delete_subscription(self, topic: str, name: str) -> None:
        self.writes += 1
        if self.subscriptions.pop((topic, name), None) is None:
            raise ResourceNotFoundError("no such subscription")

    async def list_rules(self, topic: str, name: str) -> AsyncIterator[Any]:
        for rule in list(self.rules[(topic, name)].values()):
            yield rule

    async def create_rule(self, topic: str, name: str, rule_name: str, *, filter: Any) -> None:
        self.writes += 1
        self.rules[(topic, name)][rule_name] = SimpleNamespace(name=rule_name, filter=filter, action=None)

    async def delete_rule(self, topic: str, name: str, rule_name: str) -> None:
        self.writes += 1
        del self.rules[(topic, name)][rule_name]

    async def close(self) -> None:
        self.closed = True


class TestProvisioning:
    GROUPS = {"actor.language": ["DetectLanguageRequested"], "event-store": [ALL_TYPES]}

    async def test_creates_everything_then_nothing_to_do(self) -> None:
        """The first run creates the topic, the subscriptions with their settings, removes the
        $Default rule and adds the group's rules; a second run changes nothing."""
        client = FakeAdminClient()
        actions = await provision(
            topic="ai-apps", groups=self.GROUPS, max_delivery_count=12,
            admin=AzureSubscriptionAdmin(client=client),  # type: ignore[arg-type]
        )
        assert actions[0] == "create topic ai-apps"
        assert "delete rule ai-apps/actor.language/$Default" in actions
        sub = client.subscriptions[("ai-apps", "actor.language")]
        assert sub.max_delivery_count == 12
        assert sub.dead_lettering_on_message_expiration is True
        rules = client.rules[("ai-apps", "actor.language")]
        assert set(rules) == {"type.DetectLanguageRequested", "target"}
        assert rules["type.DetectLanguageRequested"].filter.label == "DetectLanguageRequested"
        assert rules["target"].filter.properties == {H_TARGET: "actor.language"}
        store_rules = client.rules[("ai-apps", "event-store")]
        assert isinstance(store_rules["all"].filter, SqlRuleFilter)
        assert store_rules["all"].filter.sql_expression == f"NOT EXISTS([{H_TARGET}])"
        writes = client.writes
        again = await provision(
            topic="ai-apps", groups=self.GROUPS, max_delivery_count=12,
            admin=AzureSubscriptionAdmin(client=client),  # type: ignore[arg-type]
        )
        assert again == []
        assert client.writes == writes

    async def test_updates_what_differs(self) -> None:
        """A changed setting is updated, a changed rule replaced, a stale rule deleted."""
        client = FakeAdminClient()
        admin = AzureSubscriptionAdmin(client=client)  # type: ignore[arg-type]
        await provision(topic="ai-apps", groups=self.GROUPS, admin=admin)
        key = ("ai-apps", "actor.language")
        client.rules[key]["stale"] = SimpleNamespace(
            name="stale", filter=CorrelationRuleFilter(label="Old"), action=None
        )
        client.rules[key]["target"].filter = CorrelationRuleFilter(properties={H_TARGET: "x"})
        actions = await provision(
            topic="ai-apps", groups=self.GROUPS, max_delivery_count=20, admin=admin
        )
        assert actions == [
            "update subscription ai-apps/actor.language: max_delivery_count 10 -> 20",
            "replace rule ai-apps/actor.language/target: x-target-group = 'actor.language'",
            "delete rule ai-apps/actor.language/stale",
            "update subscription ai-apps/event-store: max_delivery_count 10 -> 20",
        ]

    async def test_dry_run_changes_nothing(self) -> None:
        client = FakeAdminClient()
        actions = await provision(
            topic="ai-apps", groups=self.GROUPS, dry_run=True,
            admin=AzureSubscriptionAdmin(client=client),  # type: ignore[arg-type]
        )
        assert "create topic ai-apps" in actions
        assert any(a.startswith("create rule ai-apps/event-store/all") for a in actions)
        assert client.writes == 0
        assert client.topics == {}

    def test_names_and_rules(self) -> None:
        assert subscription_name("actor.language") == "actor.language"
        odd = subscription_name("a group/with spaces" + "x" * 60)
        assert len(odd) <= 50
        assert " " not in odd
        assert "/" not in odd
        assert [r.name for r in rules_for("g", [ALL_TYPES, "B", "A"])] == [
            "all", "type.A", "type.B", "target"
        ]

    def test_cli_provision_dry_run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``ai-apps servicebus provision --dry-run`` reads AIAPPS_BUS, provisions every group
        of the deployment and prints what it would do."""
        client = FakeAdminClient()
        monkeypatch.setattr("bus.servicebus_admin.admin_client", lambda *a, **k: (client, None))
        monkeypatch.setenv("AIAPPS_BUS", "Endpoint=sb://ns.servicebus.windows.net/;"
                                         "SharedAccessKeyName=k;SharedAccessKey=s")
        result = CliRunner().invoke(servicebus_app, ["provision", "--dry-run"])
        assert result.exit_code == 0, result.output
        assert "would create topic ai-apps" in result.output
        for group in ("actor.language", "actor.speech", "saga-coordinator", "event-store"):
            assert f"would create subscription ai-apps/{group}" in result.output
        assert client.writes == 0
        assert client.closed

    def test_cli_refuses_another_bus(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIAPPS_BUS", "amqp://guest:guest@localhost/")
        result = CliRunner().invoke(servicebus_app, ["provision"])
        assert result.exit_code == 2

    def test_deployment_groups(self, tmp_path: Path) -> None:
        groups = deployment_groups(fake_settings(tmp_path))
        assert groups["actor.language"] == [DetectLanguageRequested.event_type]
        assert "ResponseGenerated" in groups["saga-coordinator"]
        assert groups["event-store"] == [ALL_TYPES]
