"""Retries, dead letters and drops as metrics: the transport reports what it did with a failed
message to the instrumented transport's observer, which counts it by type, group and error
class (``ai_apps.messaging.retried``, ``.dead_lettered``, ``.dropped``). Over the in-memory
bus, over RabbitMQ and over the fake Service Bus broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aio_pika
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from proton import Message

from bus import InMemoryTransport, RetryPolicy, Transport
from bus.base import ObservableTransport
from bus.rabbitmq import RabbitMQTransport
from bus.servicebus import ServiceBusTransport
from events import Envelope, InquiryReceived
from saga.replay import RecordingTransport
from service.telemetry import Telemetry, TelemetrySettings
from service.telemetry.transport import EPHEMERAL_GROUP, InstrumentedTransport
from tests.conformance.transport import RecordingObserver, eventually, inquiry
from tests.servicebus_fake import FakeAdmin, FakeServiceBus
from tests.test_transport_rabbitmq import amqp_url, broker_required

pytestmark = pytest.mark.otel

RETRIED = "ai_apps.messaging.retried"
DEAD_LETTERED = "ai_apps.messaging.dead_lettered"
DROPPED = "ai_apps.messaging.dropped"
HANDLER_ERRORS = "ai_apps.messaging.handler.errors"
INQUIRY = InquiryReceived.event_type
SHORT = {"system": "messaging.system", "type": "ai_apps.event_type",
         "group": "messaging.consumer.group.name", "error": "error.type"}
INVALID_INQUIRY = (
    b'{"specversion": "1.0", "id": "1", "source": "/x", "type": "InquiryReceived", '
    b'"time": "2026-01-01T00:00:00Z", "correlationid": "c", "data": {"inquiry_id": "i"}}'
)


def fast(max_attempts: int) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, initial_delay=0.01, jitter=0)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metered(reader: InMemoryMetricReader) -> Iterator[Telemetry]:
    t = Telemetry(TelemetrySettings(enabled=True), metric_readers=[reader])
    yield t
    t.shutdown()


class Points:
    """The data points of our counters, read once from the in-memory reader."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: list[tuple[str, dict[str, Any], float]] = []
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in getattr(metric.data, "data_points", ()):
                        if hasattr(point, "value"):
                            self.points.append((metric.name, dict(point.attributes or {}), point.value))

    def total(self, name: str, **where: str) -> float:
        """The sum of ``name`` over the points whose attributes include ``where``, given by
        short names: ``system``, ``type``, ``group``, ``error``."""
        wanted = {SHORT[k]: v for k, v in where.items()}
        return sum(
            value for metric, attributes, value in self.points
            if metric == name and wanted.items() <= attributes.items()
        )

    def labels(self, name: str) -> list[dict[str, Any]]:
        return [attributes for metric, attributes, value in self.points if metric == name and value]


def counted(reader: InMemoryMetricReader) -> Callable[[], Points]:
    return lambda: Points(reader)


async def settle_on(read: Callable[[], Points], done: Callable[[Points], bool]) -> Points:
    """The points once ``done`` holds, and again a moment later (nothing more may come)."""
    await eventually(lambda: done(read()))
    await asyncio.sleep(0.3)
    return read()


# -- in memory -----------------------------------------------------------------------------


@pytest.fixture
async def memory_bus(metered: Telemetry) -> AsyncIterator[tuple[InMemoryTransport, Transport]]:
    inner = InMemoryTransport(retry=fast(4), drain_timeout=0)
    bus = metered.instrument_transport(inner)
    yield inner, bus
    await bus.close()


class TestOverMemory:
    async def test_failing_twice_then_succeeding_counts_two_retries_and_no_dead_letter(
        self, memory_bus: tuple[InMemoryTransport, Transport], reader: InMemoryMetricReader
    ) -> None:
        inner, bus = memory_bus
        calls: list[int] = []

        async def handler(env: Envelope) -> None:
            calls.append(1)
            if len(calls) <= 2:
                raise RuntimeError("flaky")

        await bus.subscribe("g", [INQUIRY], handler)
        await bus.start()
        await bus.publish(inquiry(1))
        await inner.idle(5)
        points = Points(reader)
        assert len(calls) == 3
        assert points.labels(RETRIED) == [{
            "messaging.system": "ai_apps.memory", "messaging.operation.name": "retry",
            "messaging.destination.name": "memory", "ai_apps.event_type": INQUIRY,
            "messaging.consumer.group.name": "g", "error.type": "RuntimeError",
        }]
        assert points.total(RETRIED) == 2
        assert points.total(DEAD_LETTERED) == 0
        assert points.total(HANDLER_ERRORS) == 2

    async def test_always_failing_counts_max_attempts_less_one_retries_and_one_dead_letter(
        self, memory_bus: tuple[InMemoryTransport, Transport], reader: InMemoryMetricReader
    ) -> None:
        inner, bus = memory_bus

        async def handler(env: Envelope) -> None:
            raise ValueError("never")

        await bus.subscribe("g", [INQUIRY], handler)
        await bus.start()
        await bus.publish(inquiry(1))
        await inner.idle(5)
        points = Points(reader)
        assert inner.retry.max_attempts == 4
        assert points.total(RETRIED, group="g", error="ValueError") == 3
        assert points.total(DEAD_LETTERED) == 1
        assert points.total(
            DEAD_LETTERED, type=INQUIRY,
            group="g", error="ValueError",
        ) == 1
        assert len(await bus.dead_letters("g")) == 1

    async def test_undecodable_and_invalid_messages_count_as_dead_letters(
        self, memory_bus: tuple[InMemoryTransport, Transport], reader: InMemoryMetricReader
    ) -> None:
        """They never reach a handler (no handler error is counted), but their dead letters
        are, by error class, under the type they were published with."""
        inner, bus = memory_bus
        got: list[Envelope] = []

        async def handler(env: Envelope) -> None:
            got.append(env)

        await bus.subscribe("store", ["#"], handler)
        await bus.start()
        inner.publish_raw(b"{not json", INQUIRY)
        inner.publish_raw(INVALID_INQUIRY, INQUIRY)
        inner.publish_raw(b"[]", "")
        await inner.idle(5)
        points = Points(reader)
        assert got == []
        assert points.total(DEAD_LETTERED) == 3
        assert points.total(DEAD_LETTERED, type=INQUIRY,
                            error="DecodeError") == 1
        assert points.total(DEAD_LETTERED, type=INQUIRY,
                            error="InvalidPayload") == 1
        assert points.total(DEAD_LETTERED, type="unknown") == 1
        assert points.total(RETRIED) == 0
        assert points.total(HANDLER_ERRORS) == 0

    async def test_an_ephemeral_group_counts_drops_not_retries(
        self, memory_bus: tuple[InMemoryTransport, Transport], reader: InMemoryMetricReader
    ) -> None:
        inner, bus = memory_bus
        calls: list[int] = []

        async def handler(env: Envelope) -> None:
            calls.append(1)
            raise RuntimeError("listener broke")

        await bus.subscribe(f"replies.{uuid.uuid4().hex[:8]}", [INQUIRY], handler, ephemeral=True)
        await bus.start()
        await bus.publish(inquiry(1))
        await inner.idle(5)
        points = Points(reader)
        assert calls == [1]
        assert points.labels(DROPPED) == [{
            "messaging.system": "ai_apps.memory", "messaging.operation.name": "drop",
            "messaging.destination.name": "memory", "ai_apps.event_type": INQUIRY,
            "messaging.consumer.group.name": EPHEMERAL_GROUP, "error.type": "RuntimeError",
        }]
        assert points.total(DROPPED) == 1
        assert points.total(RETRIED) == 0
        assert points.total(DEAD_LETTERED) == 0
        assert await bus.dead_letters() == []

    async def test_the_counters_are_in_the_prometheus_text(
        self, memory_bus: tuple[InMemoryTransport, Transport], metered: Telemetry
    ) -> None:
        inner, bus = memory_bus

        async def handler(env: Envelope) -> None:
            raise ValueError("never")

        await bus.subscribe("g", [INQUIRY], handler)
        await bus.start()
        await bus.publish(inquiry(1))
        await inner.idle(5)
        text = metered.metrics_text().decode()
        assert "ai_apps_messaging_retried_total{" in text
        assert "ai_apps_messaging_dead_lettered_total{" in text
        (line,) = [x for x in text.splitlines() if x.startswith("ai_apps_messaging_retried_total{")]
        assert 'messaging_consumer_group_name="g"' in line
        assert 'error_type="ValueError"' in line
        assert line.endswith(" 3.0")

    async def test_other_observers_go_through_the_instrumented_transport(
        self, memory_bus: tuple[InMemoryTransport, Transport], reader: InMemoryMetricReader
    ) -> None:
        inner, bus = memory_bus
        assert isinstance(bus, ObservableTransport)
        seen = RecordingObserver()
        bus.add_observer(seen)

        async def handler(env: Envelope) -> None:
            raise ValueError("never")

        await bus.subscribe("g", [INQUIRY], handler)
        await bus.start()
        await bus.publish(inquiry(1))
        await inner.idle(5)
        assert [s.hook for s in seen.seen] == ["retried"] * 3 + ["dead_lettered"]
        assert Points(reader).total(DEAD_LETTERED) == 1

    def test_a_transport_without_observers_is_still_instrumented(self, metered: Telemetry) -> None:
        """A transport that reports nothing (a recorder, a test double) is decorated as
        before; adding an observer to it through the decorator says why it cannot."""
        bus = metered.instrument_transport(RecordingTransport())
        assert isinstance(bus, InstrumentedTransport)
        with pytest.raises(TypeError, match="RecordingTransport"):
            bus.add_observer(RecordingObserver())


# -- RabbitMQ ------------------------------------------------------------------------------


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitMQTransport]:
    """A RabbitMQ transport on an exchange of its own on the test broker (skipped without a
    broker, failed in CI or when one was named); what it declared is deleted after."""
    url = amqp_url()
    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        if broker_required():
            raise
        pytest.skip(f"no RabbitMQ at {url}: {exc!r}")
    await conn.close()
    name = f"test-{uuid.uuid4().hex[:12]}"
    transport = RabbitMQTransport(url, exchange=name, retry=fast(3), reconnect_interval=0.2)
    yield transport
    await transport.close()
    async with await aio_pika.connect(url, timeout=10) as janitor:
        channel = await janitor.channel()
        for queue in transport.declared_queues:
            await channel.queue_delete(queue)
        await channel.exchange_delete(name)


@pytest.mark.rabbitmq
async def test_over_rabbitmq(
    rabbit: RabbitMQTransport, metered: Telemetry, reader: InMemoryMetricReader
) -> None:
    """Two retries then success, a poison message (two retries, a dead letter) and an
    undecodable message (a dead letter at once), counted from the broker's own flows."""
    bus = metered.instrument_transport(rabbit)
    handled: list[str] = []

    async def handler(env: Envelope) -> None:
        handled.append(env.correlationid)
        if env.correlationid == "poison" or handled.count(env.correlationid) <= 2:
            raise RuntimeError("failing")

    await bus.subscribe("g", [INQUIRY], handler)
    try:
        await bus.start()
        await bus.publish(inquiry(correlation="flaky"))
        await bus.publish(inquiry(correlation="poison"))
        async with await aio_pika.connect(amqp_url(), timeout=5) as other:
            channel = await other.channel()
            exchange = await channel.get_exchange(rabbit.exchange_name)
            await exchange.publish(aio_pika.Message(b"{not json"), routing_key=INQUIRY)
        points = await settle_on(
            counted(reader), lambda p: p.total(DEAD_LETTERED) >= 2 and p.total(RETRIED) >= 4
        )
        assert handled.count("flaky") == 3
        assert len(await bus.dead_letters("g")) == 2
    finally:
        await bus.close()
    ours = {"system": "rabbitmq", "type": INQUIRY, "group": "g"}
    assert points.total(RETRIED, **ours, error="RuntimeError") == 4
    assert points.total(RETRIED) == 4
    assert points.total(DEAD_LETTERED, **ours, error="RuntimeError") == 1
    assert points.total(DEAD_LETTERED, **ours, error="DecodeError") == 1
    assert points.total(DEAD_LETTERED) == 2


# -- Service Bus (the fake broker) ---------------------------------------------------------


@pytest.mark.servicebus
async def test_over_the_fake_service_bus(metered: Telemetry, reader: InMemoryMetricReader) -> None:
    """The same counts from the Service Bus transport's flows (scheduled retry copies, the
    broker's dead-letter sub-queue), against the fake AMQP 1.0 broker."""
    topic = f"t-{uuid.uuid4().hex[:10]}"
    with FakeServiceBus() as broker:
        inner = ServiceBusTransport(
            broker.connection_string, topic=topic, retry=fast(3), admin=FakeAdmin(broker),
            provision=True, receive_wait=0.5, dead_letter_wait=0.2, grace=5,
        )
        bus = metered.instrument_transport(inner)
        handled: list[str] = []

        async def handler(env: Envelope) -> None:
            handled.append(env.correlationid)
            if env.correlationid == "poison" or handled.count(env.correlationid) <= 2:
                raise RuntimeError("failing")

        await bus.subscribe("g", [INQUIRY], handler)
        try:
            await bus.start()
            await bus.publish(inquiry(correlation="flaky"))
            await bus.publish(inquiry(correlation="poison"))
            broker.publish(topic, Message(body=b"{not json", subject=INQUIRY, inferred=True))
            points = await settle_on(
                counted(reader), lambda p: p.total(DEAD_LETTERED) >= 2 and p.total(RETRIED) >= 4
            )
            assert handled.count("flaky") == 3
        finally:
            await bus.close()
    assert points.total(RETRIED, system="servicebus", error="RuntimeError",
                        group="g") == 4
    assert points.total(DEAD_LETTERED, error="RuntimeError") == 1
    assert points.total(DEAD_LETTERED, type=INQUIRY,
                        error="DecodeError") == 1
    assert points.total(DEAD_LETTERED) == 2


@pytest.mark.rabbitmq
async def test_spans_over_rabbitmq_name_the_exchange_routing_key_and_broker(
    rabbit: RabbitMQTransport,
) -> None:
    """``messaging.destination.name`` is the exchange, the routing key the event type, and
    ``server.address``/``server.port`` the broker's, as the transport says."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from yarl import URL

    spans = InMemorySpanExporter()
    telemetry = Telemetry(TelemetrySettings(enabled=True), span_exporter=spans)
    bus = telemetry.instrument_transport(rabbit)
    got: list[str] = []

    async def handler(env: Envelope) -> None:
        got.append(env.id)

    await bus.subscribe("g", [INQUIRY], handler)
    try:
        await bus.start()
        await bus.publish(inquiry(1))
        await eventually(lambda: bool(got))
    finally:
        await bus.close()
        telemetry.shutdown()
    broker = URL(amqp_url())
    finished = spans.get_finished_spans()
    assert {s.name for s in finished} == {f"publish {INQUIRY}", f"process {INQUIRY}"}
    for span in finished:
        assert span.attributes is not None
        assert span.attributes["messaging.destination.name"] == rabbit.exchange_name
        assert span.attributes["messaging.rabbitmq.destination.routing_key"] == INQUIRY
        assert span.attributes["server.address"] == broker.host
        assert span.attributes["server.port"] == (broker.port or 5672)


def test_the_service_bus_destination_is_its_topic_on_its_namespace() -> None:
    from bus.base import Destination
    from bus.servicebus import ServiceBusTransport

    by_string = ServiceBusTransport(
        "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s=",
        topic="events",
    )
    assert by_string.destination == Destination("events", "acme.servicebus.windows.net")
    by_namespace = ServiceBusTransport(namespace="acme", credential=object())
    assert by_namespace.destination == Destination("ai-apps", "acme.servicebus.windows.net")
