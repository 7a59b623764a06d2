"""Tracing and metrics around a :class:`~bus.base.Transport`, as a decorator of it.

Publishing makes a PRODUCER span ``publish {type}`` and writes its context into the envelope's
``traceparent``/``tracestate``/``baggage`` before the inner transport sends it, so the span is
the message's creation context. Messaging semantic conventions: ``messaging.destination.name``
is where the transport sends every event (the RabbitMQ exchange, the Service Bus topic,
``memory`` for the in-process bus: its :class:`~bus.base.Destination`), with ``server.address``
and ``server.port`` when it knows them; the event type, which routes the message on every
backend, is ``ai_apps.event_type`` (and ``messaging.rabbitmq.destination.routing_key`` on
RabbitMQ). Span names use the event type rather than the destination: every event has the same
destination, and the type is the low-cardinality name that says what the span is.

A producer span's parent is the current span when there is one (the handler that publishes a
follow-up); otherwise the context the envelope already carries (an event the coordinator emits
from a timer, or re-publishes from its outbox, carries its saga's), otherwise none: a new
trace.

Handling makes a CONSUMER span ``process {type}`` whose parent is the context extracted from
the envelope, current while the handler runs, so whatever the handler publishes is its child.
The context lives in the message body, so a retried or re-driven message is handled in the
trace it was published in.

What the inner transport then does with a failed message is not seen from the handler: it
reports it to a :class:`DeliveryMetrics` observer (:class:`~bus.base.DeliveryObserver`),
registered on the inner transport, which counts retries, dead letters (undecodable messages
included: they never reach a handler) and the drops of ephemeral groups.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Tracer
from structlog.contextvars import bind_contextvars, reset_contextvars

from bus.base import (
    DeadLetter,
    DeliveryObserver,
    Destination,
    Handler,
    ObservableTransport,
    Transport,
    observe,
)
from events.envelope import Envelope
from service.telemetry.otel import Instruments, extract, record_error, with_current_context
from service.telemetry.redaction import Redactor
from service.telemetry.saga import SagaObserver

__all__ = [
    "EPHEMERAL_GROUP", "DeliveryMetrics", "InstrumentedTransport", "destination_of", "extract",
    "messaging_system",
]

_SYSTEMS = {
    "RabbitMQTransport": "rabbitmq", "ServiceBusTransport": "servicebus",
    "InMemoryTransport": "ai_apps.memory",
}
EPHEMERAL_GROUP = "(ephemeral)"
"""The group label in metrics of every ephemeral group (their names are random)."""


def messaging_system(transport: object) -> str:
    """``messaging.system`` for a transport: ``rabbitmq``, ``servicebus``, ``ai_apps.memory``."""
    return _SYSTEMS.get(type(transport).__name__, type(transport).__name__.lower())


def destination_of(transport: object, system: str) -> Destination:
    """The transport's :class:`~bus.base.Destination` (its ``destination`` attribute), else one
    named for its messaging system."""
    destination = getattr(transport, "destination", None)
    return destination if isinstance(destination, Destination) else Destination(system)


class DeliveryMetrics:
    """A :class:`~bus.base.DeliveryObserver` counting retries, dead letters and drops
    (``ai_apps.messaging.retried``, ``.dead_lettered``, ``.dropped``) by event type, subscriber
    group and error class. Only ephemeral groups drop, and their names are random: drops are
    labelled :data:`EPHEMERAL_GROUP`, as the other metrics label those groups."""

    def __init__(self, instruments: Instruments, system: str, destination: str | None = None) -> None:
        self.system = system
        self.destination = destination or system
        self._instruments = instruments

    def _labels(self, operation: str, group: str, event_type: str, error_class: str) -> dict[str, str]:
        return {
            "messaging.system": self.system, "messaging.operation.name": operation,
            "messaging.destination.name": self.destination, "ai_apps.event_type": event_type,
            "messaging.consumer.group.name": group, "error.type": error_class,
        }

    def retried(
        self, group: str, event_type: str, *, attempt: int, delay: float, error_class: str
    ) -> None:
        self._instruments.retried.add(1, self._labels("retry", group, event_type, error_class))

    def dead_lettered(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self._instruments.dead_lettered.add(
            1, self._labels("dead_letter", group, event_type, error_class)
        )

    def dropped(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        self._instruments.dropped.add(
            1, self._labels("drop", EPHEMERAL_GROUP, event_type, error_class)
        )


class InstrumentedTransport:
    """``inner`` with a span around every publish and every handler, and the bus metrics.

    With ``recording`` false (no span exporter) no spans are made: a publish made while a
    trace context is current and an envelope that carries none gets the current one, and a
    handler runs in the context its envelope carries. Anything else (``idle()``,
    ``publish_raw()``, …) is the inner transport's.

    Retries, dead letters and drops are counted by a :class:`DeliveryMetrics` observer added to
    ``inner`` when it reports them (:class:`~bus.base.ObservableTransport`; every backend here
    does); ``add_observer`` adds other observers to ``inner`` too."""

    def __init__(
        self,
        inner: Transport,
        tracer: Tracer,
        instruments: Instruments,
        *,
        sagas: SagaObserver | None = None,
        system: str | None = None,
        recording: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        self.inner = inner
        self.system = system or messaging_system(inner)
        self.destination = destination_of(inner, self.system)
        self.recording = recording
        self.redactor = redactor or Redactor()
        """What an exception recorded on a span is passed through (spans are exported)."""
        self._tracer = tracer
        self._instruments = instruments
        self._sagas = sagas
        self.delivery_metrics = DeliveryMetrics(instruments, self.system, self.destination.name)
        server: dict[str, str | int] = {}
        if self.destination.server_address is not None:
            server["server.address"] = self.destination.server_address
        if self.destination.server_port is not None:
            server["server.port"] = self.destination.server_port
        self._server = server
        observe(inner, self.delivery_metrics)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def _span_attributes(self, operation: str, envelope: Envelope) -> dict[str, str | bool | int]:
        attributes: dict[str, str | bool | int] = {
            "messaging.system": self.system,
            "messaging.operation.type": "send" if operation == "publish" else operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": self.destination.name,
            "ai_apps.event_type": envelope.type,
            "messaging.message.id": envelope.id,
            "messaging.message.conversation_id": envelope.correlationid,
            **self._server,
        }
        if self.system == "rabbitmq":
            attributes["messaging.rabbitmq.destination.routing_key"] = envelope.type
        return attributes

    async def publish(self, envelope: Envelope) -> None:
        labels = {"messaging.system": self.system, "messaging.operation.name": "publish",
                  "messaging.destination.name": self.destination.name,
                  "ai_apps.event_type": envelope.type}
        if self._sagas is not None:
            self._sagas.published(envelope)
        try:
            if self.recording:
                await self._publish_in_span(envelope)
            else:
                if envelope.traceparent is None:
                    envelope = with_current_context(envelope)
                await self.inner.publish(envelope)
        except Exception as exc:
            self._instruments.sent.add(1, {**labels, "error.type": type(exc).__name__})
            raise
        self._instruments.sent.add(1, labels)

    async def _publish_in_span(self, envelope: Envelope) -> None:
        current = trace.get_current_span().get_span_context().is_valid
        # the envelope's context (its baggage too) made current, not only the span's parent
        token = None if current else context.attach(extract(envelope))
        try:
            with self._tracer.start_as_current_span(
                f"publish {envelope.type}", kind=SpanKind.PRODUCER,
                attributes=self._span_attributes("publish", envelope),
                record_exception=False, set_status_on_exception=False,
            ) as span:
                try:
                    await self.inner.publish(with_current_context(envelope))
                except Exception as exc:
                    record_error(span, exc, self.redactor)
                    raise
        finally:
            if token is not None:
                context.detach(token)

    async def subscribe(
        self,
        group: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        concurrency: int | None = None,
        ephemeral: bool = False,
    ) -> None:
        await self.inner.subscribe(
            group, event_types, self._instrumented(group, handler, ephemeral),
            concurrency=concurrency, ephemeral=ephemeral,
        )

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        return await self.inner.dead_letters(group)

    def add_observer(self, observer: DeliveryObserver) -> None:
        """Add ``observer`` to the inner transport (a :class:`TypeError` if it reports
        nothing)."""
        if not isinstance(self.inner, ObservableTransport):
            raise TypeError(f"{type(self.inner).__name__} reports no deliveries to observers")
        self.inner.add_observer(observer)

    def remove_observer(self, observer: DeliveryObserver) -> None:
        if isinstance(self.inner, ObservableTransport):
            self.inner.remove_observer(observer)

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        moved = await self.inner.redrive(ids, group)
        if moved:
            self._instruments.redriven.add(moved, {
                "messaging.system": self.system, "messaging.operation.name": "redrive",
                "messaging.destination.name": self.destination.name,
            })
        return moved

    def _instrumented(self, group: str, handler: Handler, ephemeral: bool) -> Handler:
        tracer, instruments, sagas, system = self._tracer, self._instruments, self._sagas, self.system
        redactor, destination, span_attributes = (
            self.redactor, self.destination.name, self._span_attributes
        )
        group_label = EPHEMERAL_GROUP if ephemeral else group
        recording = self.recording

        async def in_span(envelope: Envelope) -> None:
            attributes = span_attributes("process", envelope)
            attributes["messaging.consumer.group.name"] = group
            if ephemeral:
                attributes["messaging.destination.temporary"] = True
            # the envelope's context is made current (its baggage with it), and the span in it
            token = context.attach(extract(envelope))
            try:
                with tracer.start_as_current_span(
                    f"process {envelope.type}", kind=SpanKind.CONSUMER, attributes=attributes,
                    record_exception=False, set_status_on_exception=False,
                ) as span:
                    try:
                        await handler(envelope)
                    except Exception as exc:
                        record_error(span, exc, redactor)
                        raise
            finally:
                context.detach(token)

        async def in_context(envelope: Envelope) -> None:
            token = context.attach(extract(envelope))
            try:
                await handler(envelope)
            finally:
                context.detach(token)

        run = in_span if recording else in_context

        async def instrumented(envelope: Envelope) -> None:
            labels = {
                "messaging.system": system, "messaging.operation.name": "process",
                "messaging.destination.name": destination, "ai_apps.event_type": envelope.type,
                "messaging.consumer.group.name": group_label,
            }
            if sagas is not None:
                sagas.consumed(envelope)
            # the saga's ids on every line the handler logs (the actors' middleware adds more)
            tokens = bind_contextvars(correlation_id=envelope.correlationid, tenant=envelope.tenant)
            started = time.perf_counter()
            try:
                await run(envelope)
            except Exception as exc:
                labels["error.type"] = type(exc).__name__
                instruments.handler_errors.add(1, labels)
                raise
            finally:
                reset_contextvars(**tokens)
                instruments.consumed.add(1, labels)
                instruments.process_duration.record(time.perf_counter() - started, labels)

        return instrumented

