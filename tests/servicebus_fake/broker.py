"""A small AMQP 1.0 broker that speaks just enough Azure Service Bus for ``azure-servicebus``.

It runs python-qpid-proton's reactor in a background thread on a loopback port, and the real
SDK talks to it through an emulator-style connection string (plain ``amqp://``, no TLS).

What it does:

* **Topics and subscriptions**: a message sent to a topic is copied into every subscription with
  a rule that matches it. It has no management API: the rules are given directly
  (:meth:`FakeServiceBus.set_rules`), as predicates on the message. A link to an entity that
  does not exist is refused with ``amqp:not-found``, as Service Bus does.
* **Peek-lock**: a delivery stays locked until the client settles it: ``accepted`` (complete)
  removes it, ``modified`` (abandon) puts it back with its delivery count plus one, ``rejected``
  (dead-letter) moves it to ``<entity>/$DeadLetterQueue`` with the ``DeadLetterReason`` and
  ``DeadLetterErrorDescription`` properties, ``released`` puts it back as it was. Each outcome is
  echoed and settled, which the SDK awaits. A link or connection that goes away returns what it
  held, counted as a delivery (as a lock expiring would be).
* **Locks** last ``lock_seconds`` (an hour by default). An expired lock puts the message back,
  counted as a delivery, and a later settlement of it is refused with
  ``com.microsoft:message-lock-lost``; ``com.microsoft:renew-lock`` on ``$management`` extends it.
* **Service Bus annotations** on what it delivers: the delivery tag is the lock token, and
  ``x-opt-sequence-number``, ``x-opt-enqueued-time``, ``x-opt-locked-until`` and the header's
  (zero-based) ``delivery-count`` are set.
* **Batches** (message format ``0x80013700``: data sections that are each an encoded message) are
  split into their messages.
* **Scheduled messages**: one sent with ``x-opt-scheduled-enqueue-time`` is enqueued then.
* **``$cbs``**: every ``put-token`` is answered with status 200.
* **``$management``**: ``com.microsoft:peek-message`` (unless ``peek=False``) and
  ``com.microsoft:renew-lock`` are answered; the other operations (schedule, defer, receive by
  sequence number, sessions…) get status 501, not implemented, which the SDK does not retry.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Data,
    Delivery,
    Link,
    Message,
    Terminus,
    symbol,
    timestamp,
    ulong,
)
from proton.handlers import MessagingHandler
from proton.reactor import ApplicationEvent, Container, EventInjector

Rule = Callable[[Message], bool]
"""A subscription rule: does this message belong in the subscription?"""

T = TypeVar("T")

LOCK_SECONDS = 3600.0
"""How long a lock lasts unless the broker is given another ``lock_seconds``."""
_DLQ = "/$deadletterqueue"
_SECTION_CODES = range(0x70, 0x79)  # header … footer: the described section types


@dataclass(slots=True, eq=False)
class Stored:
    """A message waiting in, or locked in, an entity."""

    message: Message
    seq: int
    enqueued_ms: int
    delivery_count: int = 0


@dataclass(slots=True, eq=False)
class Entity:
    """A queue: a subscription, or a dead-letter sub-queue."""

    name: str
    ready: deque[Stored] = field(default_factory=deque)
    locked: dict[Delivery, Stored] = field(default_factory=dict)
    until: dict[Delivery, float] = field(default_factory=dict)
    """When each lock expires (``time.time()``)."""
    lock_seconds: float | None = None
    """This entity's lock duration, if not the broker's."""
    consumers: list[Link] = field(default_factory=list)


class FakeServiceBus:
    """The fake broker. ``with FakeServiceBus() as bus:`` starts it on a free loopback port."""

    def __init__(
        self, host: str = "127.0.0.1", *, peek: bool = True, lock_seconds: float = LOCK_SECONDS
    ) -> None:
        self.host = host
        self.lock_seconds = lock_seconds
        self.peek = peek
        """Whether ``com.microsoft:peek-message`` is answered (else: 501, like the rest)."""
        self.port = _free_port(host)
        self.rules: dict[str, dict[str, list[Rule]]] = {}
        self.entities: dict[str, Entity] = {}
        self.renewals = 0
        """Locks renewed through ``com.microsoft:renew-lock``."""
        self.transfers = 0
        """Transfers received from clients (a batch is one)."""
        self.batches = 0
        """How many of them were batches."""
        self.requests: list[tuple[str, str]] = []
        """Every ``$cbs``/``$management`` request seen: (address, operation)."""
        self._handler = _Handler(self)
        self._container = Container(self._handler)
        self._injector = EventInjector()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._seq = itertools.count(1)
        self._scheduled: list[tuple[float, int, str, Message]] = []
        self._tokens: dict[bytes, tuple[Entity, Delivery]] = {}
        self._token_of: dict[Delivery, bytes] = {}
        self._lost: set[Delivery] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def connection_string(self) -> str:
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=fake;"
            "SharedAccessKey=fake;UseDevelopmentEmulator=true;"
        )

    def start(self) -> FakeServiceBus:
        self._container.selectable(self._injector)
        self._thread = threading.Thread(target=self._run, name="fake-servicebus")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake Service Bus did not start")
        return self

    def _run(self) -> None:
        try:
            self._container.run()
        except BaseException as exc:  # a bug of the fake: make the next call() say so
            self.failure = exc
            raise

    def stop(self) -> None:
        if self._thread is None:
            return
        self._injector.trigger(ApplicationEvent("stop"))
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeServiceBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use (thread-safe: run on the broker's thread) ----------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the broker's thread and return its result."""
        if self.failure is not None:
            raise RuntimeError("the fake Service Bus has crashed") from self.failure
        fut: Future[T] = Future()
        self._calls.put((fn, fut))
        self._injector.trigger(ApplicationEvent("call"))
        return fut.result(10)

    def create_topic(self, topic: str) -> None:
        self.call(lambda: self.rules.setdefault(topic.lower(), {}) and None)

    def set_rules(
        self, topic: str, subscription: str, rules: list[Rule], *, lock_seconds: float | None = None
    ) -> None:
        """Create a subscription of ``topic`` (and the topic), or replace its rules."""

        def apply() -> None:
            self.rules.setdefault(topic.lower(), {})[subscription.lower()] = list(rules)
            self._entity(f"{topic}/subscriptions/{subscription}").lock_seconds = lock_seconds
            self._entity(f"{topic}/subscriptions/{subscription}{_DLQ}")

        self.call(apply)

    def delete_subscription(self, topic: str, subscription: str) -> None:
        def apply() -> None:
            self.rules.get(topic.lower(), {}).pop(subscription.lower(), None)
            prefix = f"{topic}/subscriptions/{subscription}".lower()
            for name in [n for n in self.entities if n == prefix or n == prefix + _DLQ]:
                del self.entities[name]

        self.call(apply)

    def depth(self, address: str) -> tuple[int, int]:
        """(ready, locked) messages of an entity."""

        def count() -> tuple[int, int]:
            entity = self.entities.get(_normalize(address))
            return (len(entity.ready), len(entity.locked)) if entity else (0, 0)

        return self.call(count)

    def publish(self, topic: str, message: Message) -> None:
        """Put a message on a topic as a client would send it."""
        self.call(lambda: self._accept(topic, message))

    def delivery_counts(self, address: str) -> list[int]:
        """The (zero-based) delivery counts of the messages ready in an entity."""

        def read() -> list[int]:
            entity = self.entities.get(_normalize(address))
            return [s.delivery_count for s in entity.ready] if entity else []

        return self.call(read)

    def messages(self, address: str) -> list[Message]:
        """Copies of the messages ready in an entity, oldest first."""

        def read() -> list[Message]:
            entity = self.entities.get(_normalize(address))
            return [_copy(s.message) for s in entity.ready] if entity else []

        return self.call(read)

    # -- internals (broker thread only) --------------------------------------------------------

    def _entity(self, address: str) -> Entity:
        name = _normalize(address)
        entity = self.entities.get(name)
        if entity is None:
            entity = self.entities[name] = Entity(name)
        return entity

    def _accept(self, address: str, message: Message) -> None:
        """A message sent by a client: to a topic's subscriptions, or to a queue."""
        annotations: Any = message.annotations or {}
        when = annotations.get(symbol("x-opt-scheduled-enqueue-time"))
        if when is not None and int(when) / 1000 > time.time():
            heapq.heappush(self._scheduled, (int(when) / 1000, next(self._seq), address, message))
            self._wake(int(when) / 1000)
            return
        name = _normalize(address)
        for sub, rules in self.rules.get(name, {}).items():
            if any(rule(message) for rule in rules):
                self._enqueue(self._entity(f"{name}/subscriptions/{sub}"), _copy(message))

    def _wake(self, at: float) -> None:
        self._container.schedule(max(at - time.time(), 0.001), self._handler)

    def _on_timer(self) -> None:
        """Enqueue the scheduled messages now due, and take back the locks now expired."""
        now = time.time()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, address, message = heapq.heappop(self._scheduled)
            annotations = dict(message.annotations or {})
            annotations.pop(symbol("x-opt-scheduled-enqueue-time"), None)
            message.annotations = annotations
            self._accept(address, message)
        for entity in list(self.entities.values()):
            expired = [d for d, until in entity.until.items() if until <= now]
            for delivery in expired:
                self._unlock(entity, delivery)
                self._lost.add(delivery)
            if expired:
                self._pump(entity)
        # the reactor's clock may run behind, so a timer can fire early: wake up again
        deadlines = [u for e in self.entities.values() for u in e.until.values()]
        if self._scheduled:
            deadlines.append(self._scheduled[0][0])
        if deadlines:
            self._wake(min(deadlines))

    def _unlock(self, entity: Entity, delivery: Delivery, *, counted: bool = True) -> None:
        """Put a locked message back in front of its queue."""
        stored = entity.locked.pop(delivery)
        entity.until.pop(delivery, None)
        self._tokens.pop(self._token_of.pop(delivery, b""), None)
        if counted:
            stored.delivery_count += 1
        entity.ready.appendleft(stored)

    def _enqueue(self, entity: Entity, message: Message, delivery_count: int = 0) -> None:
        entity.ready.append(Stored(message, next(self._seq), _now_ms(), delivery_count))
        self._pump(entity)

    def _pump(self, entity: Entity) -> None:
        while entity.ready:
            link = next((c for c in entity.consumers if c.credit > 0), None)
            if link is None:
                return
            # round robin between competing consumers
            entity.consumers.remove(link)
            entity.consumers.append(link)
            stored = entity.ready.popleft()
            lock_seconds = entity.lock_seconds or self.lock_seconds
            until = time.time() + lock_seconds
            out = self._outgoing(stored, locked_until=until)
            token = uuid.uuid4().bytes_le
            delivery = link.delivery(token)  # type: ignore[arg-type]  # binary: the lock token
            link.send(out.encode())
            link.advance()
            entity.locked[delivery] = stored
            entity.until[delivery] = until
            self._tokens[token] = (entity, delivery)
            self._token_of[delivery] = token
            if lock_seconds < LOCK_SECONDS:
                self._wake(until)

    def _outgoing(self, stored: Stored, *, locked_until: float | None) -> Message:
        """The message as delivered, with the annotations Service Bus adds."""
        out = _copy(stored.message)
        out.durable = True  # as on Service Bus; it makes the header (and its count) travel
        out.delivery_count = stored.delivery_count
        annotations = {
            **(stored.message.annotations or {}),
            symbol("x-opt-sequence-number"): stored.seq,
            symbol("x-opt-enqueued-time"): timestamp(stored.enqueued_ms),
        }
        if locked_until is not None:
            annotations[symbol("x-opt-locked-until")] = timestamp(int(locked_until * 1000))
        out.annotations = annotations
        return out

    def _settled(self, delivery: Delivery) -> None:
        """The client settled a delivery of ours: complete, abandon, dead-letter, release."""
        if delivery in self._lost:
            self._lost.discard(delivery)
            delivery.local.condition = Condition(
                "com.microsoft:message-lock-lost", "the lock of the message has expired"
            )
            delivery.update(Delivery.REJECTED)
            delivery.settle()
            return
        entity = self.entities.get(_normalize(delivery.link.source.address or ""))
        state = delivery.remote_state
        if entity is not None and delivery in entity.locked:
            if state == Delivery.ACCEPTED:
                entity.locked.pop(delivery)
                entity.until.pop(delivery, None)
                self._tokens.pop(self._token_of.pop(delivery, b""), None)
            elif state == Delivery.REJECTED:
                stored = entity.locked[delivery]
                self._unlock(entity, delivery, counted=False)
                entity.ready.remove(stored)
                self._dead_letter(entity, stored, delivery.remote.condition)
            else:
                # modified (abandon) counts a delivery; released does not; modified with
                # undeliverable-here (defer) is not supported: the message goes back
                self._unlock(entity, delivery, counted=state == Delivery.MODIFIED)
        delivery.update(state)
        delivery.settle()
        if entity is not None:
            self._pump(entity)

    def _dead_letter(self, entity: Entity, stored: Stored, condition: Condition | None) -> None:
        raw: Any = condition.info if condition else None
        info: dict[Any, Any] = dict(raw or {})
        message = _copy(stored.message)
        properties = dict(message.properties or {})
        for key in ("DeadLetterReason", "DeadLetterErrorDescription"):
            value = info.get(symbol(key), info.get(key))
            if value is not None:
                properties[key] = str(value)
        message.properties = properties  # type: ignore[assignment]  # proton's stub says None
        message.annotations = {
            **(message.annotations or {}),
            symbol("x-opt-deadletter-source"): entity.name,
        }
        self._enqueue(self._entity(entity.name + _DLQ), message, stored.delivery_count)

    def _returned(self, link: Link) -> None:
        """A consumer link went away: what it held goes back, one delivery counted."""
        for entity in self.entities.values():
            if link in entity.consumers:
                entity.consumers.remove(link)
            held = [d for d in entity.locked if d.link == link]
            for delivery in held:
                self._unlock(entity, delivery)
            if held:
                self._pump(entity)

    def _request(self, link: Link, request: Message) -> None:
        """A request on ``$cbs`` or ``$management``: answer on the link that reads replies."""
        address = _normalize(link.target.address or "")
        request_properties: Any = request.properties or {}
        operation = str(request_properties.get("operation", ""))
        self.requests.append((address, operation))
        body: Any = None
        properties: dict[str, Any] = {"status-code": 200, "status-description": "OK"}
        fields: dict[Any, Any] = request.body if isinstance(request.body, dict) else {}
        if operation == "com.microsoft:peek-message" and self.peek:
            body, status = self._peek(address.removesuffix("/$management"), fields)
            properties = {"statusCode": status, "statusDescription": "OK"}
        elif operation == "com.microsoft:renew-lock":
            body, status = self._renew(fields)
            properties = {"statusCode": status, "statusDescription": "OK"}
            if status != 200:
                properties["errorCondition"] = symbol("com.microsoft:message-lock-lost")
        elif operation != "put-token":
            # not retried by the SDK: it fails at once, as on a namespace without the feature
            properties = {
                "statusCode": 501,
                "statusDescription": f"the fake Service Bus does not implement {operation!r}",
                "errorCondition": symbol("amqp:not-implemented"),
            }
        reply = Message(correlation_id=request.id, properties=properties, body=body)
        if request.reply_to:
            reply.address = request.reply_to
        for candidate in _links(link.connection):
            if candidate.is_sender and _normalize(candidate.source.address or "") in (
                address, _normalize(request.reply_to or "")
            ):
                candidate.delivery(candidate.delivery_tag())
                candidate.send(reply.encode())
                candidate.advance()
                return

    def _renew(self, request: dict[Any, Any]) -> tuple[Any, int]:
        """``com.microsoft:renew-lock``: each lock lasts ``lock_seconds`` from now."""
        expirations = []
        for token in request.get("lock-tokens", []):
            found = self._tokens.get(uuid.UUID(str(token)).bytes_le)
            if found is None:
                return None, 410
            entity, delivery = found
            until = entity.until[delivery] = time.time() + (entity.lock_seconds or self.lock_seconds)
            expirations.append(timestamp(int(until * 1000)))
            self._wake(until)
        self.renewals += len(expirations)
        descriptor: Any = UNDESCRIBED
        return {"expirations": Array(descriptor, Data.TIMESTAMP, *expirations)}, 200

    def _peek(self, address: str, request: dict[Any, Any]) -> tuple[Any, int]:
        """``com.microsoft:peek-message``: copies of the messages from a sequence number on."""
        entity = self.entities.get(address)
        start = int(request.get("from-sequence-number", 0))
        count = int(request.get("message-count", 1))
        stored = sorted([*entity.ready, *entity.locked.values()], key=lambda s: s.seq) if entity else []
        chosen = [s for s in stored if s.seq >= start][:count]
        if not chosen:
            return None, 204
        return {"messages": [{"message": self._outgoing(s, locked_until=None).encode()} for s in chosen]}, 200

class _Handler(MessagingHandler):
    def __init__(self, broker: FakeServiceBus) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=False)
        self.broker = broker
        self.acceptor: Any = None
        self.refused: set[Link] = set()

    def on_reactor_init(self, event: Any) -> None:
        self.acceptor = event.container.listen(f"{self.broker.host}:{self.broker.port}")
        self.broker._ready.set()

    def on_connection_init(self, event: Any) -> None:
        transport = event.transport
        if transport is not None:
            sasl = transport.sasl()
            sasl.allowed_mechs("ANONYMOUS PLAIN")
            sasl.allow_insecure_mechs = True

    def on_link_opening(self, event: Any) -> None:
        link = event.link
        if link.is_sender:
            address = link.remote_source.address or ""
            link.source.address = address
        else:
            address = link.remote_target.address or ""
            link.target.address = address
        name = _normalize(address)
        if name.endswith(("$cbs", "$management")):
            if link.is_receiver:
                link.flow(1000)
            return
        known = name in self.broker.entities if link.is_sender else name in self.broker.rules
        if not known:
            # as Service Bus does: attach, then detach with amqp:not-found
            # the AMQP way to refuse a link: a null terminus, then a detach with the error
            (link.source if link.is_sender else link.target).type = Terminus.UNSPECIFIED
            link.condition = Condition("amqp:not-found", f"the messaging entity {name!r} does not exist")
            self.refused.add(link)
        elif link.is_sender:
            self.broker.entities[name].consumers.append(link)
        else:
            link.flow(1000)

    def on_link_opened(self, event: Any) -> None:
        if event.link in self.refused:
            self.refused.discard(event.link)
            event.link.close()

    def on_sendable(self, event: Any) -> None:
        entity = self.broker.entities.get(_normalize(event.link.source.address or ""))
        if entity is not None:
            self.broker._pump(entity)

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link.is_sender:
            entity = self.broker.entities.get(_normalize(link.source.address or ""))
            if entity is not None:
                self.broker._pump(entity)
            # a receiver closing drains its credit first, and waits for the answer
            link.drained()

    def on_delivery(self, event: Any) -> None:
        delivery = event.delivery
        link = delivery.link
        if link.is_sender:
            if delivery.remote_state and (delivery.updated or delivery.settled):
                self.broker._settled(delivery)
            return
        if not delivery.readable or delivery.partial:
            return
        raw = link.recv(delivery.pending)
        link.advance()
        address = _normalize(link.target.address or "")
        if address.endswith("$cbs") or address.endswith("$management"):
            request = Message()
            request.decode(raw)
            self.broker._request(link, request)
        else:
            messages, batch = _split(raw)
            self.broker.transfers += 1
            self.broker.batches += batch
            for message in messages:
                self.broker._accept(address, message)
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        if link.credit < 500:
            link.flow(1000 - link.credit)

    def on_link_closing(self, event: Any) -> None:
        self.broker._returned(event.link)

    def on_connection_closing(self, event: Any) -> None:
        for link in _links(event.connection):
            self.broker._returned(link)

    def on_transport_closed(self, event: Any) -> None:
        if event.connection is not None:
            for link in _links(event.connection):
                self.broker._returned(link)

    def on_timer_task(self, event: Any) -> None:
        self.broker._on_timer()

    def on_call(self, event: Any) -> None:
        while True:
            try:
                fn, fut = self.broker._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

    def on_stop(self, event: Any) -> None:
        self.on_call(event)
        if self.acceptor is not None:
            self.acceptor.close()
        container = self.broker._container
        for connection in _connections(container):
            connection.close()
        self.broker._injector.close()
        container.stop()


# -- helpers -------------------------------------------------------------------------------


def _normalize(address: str) -> str:
    """An entity name as the broker keys it: no scheme or host, lower case."""
    if "://" in address:
        address = urlparse(address).path
    return address.strip("/").lower()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _copy(message: Message) -> Message:
    copy = Message()
    copy.decode(message.encode())
    return copy


def _split(raw: bytes) -> tuple[list[Message], bool]:
    """The messages in a transfer (itself, or those a batch carries in its data sections), and
    whether it was a batch."""
    sections = _data_sections(raw)
    if sections and all(_is_encoded_message(s) for s in sections):
        out = []
        for section in sections:
            message = Message()
            message.decode(section)
            out.append(message)
        return out, True
    message = Message()
    message.decode(raw)
    return [message], False


def _data_sections(raw: bytes) -> list[bytes]:
    data = Data()
    sections: list[bytes] = []
    rest = bytes(raw)
    while rest:
        data.clear()
        used = data.decode(rest)
        if used <= 0:
            break
        rest = rest[used:]
        data.rewind()
        data.next()
        value: Any = data.get_object()
        descriptor = getattr(value, "descriptor", None)
        if descriptor == ulong(0x75):
            sections.append(bytes(value.value))
        elif descriptor in (ulong(0x76), ulong(0x77)):
            return []  # an amqp-sequence or amqp-value body: not a batch
    return sections


def _is_encoded_message(blob: bytes) -> bool:
    return len(blob) > 3 and blob[0] == 0x00 and blob[1] == 0x53 and blob[2] in _SECTION_CODES


def _links(connection: Any) -> list[Link]:
    links = []
    link = connection.link_head(0)
    while link is not None:
        links.append(link)
        link = link.next(0)
    return links


def _connections(container: Any) -> list[Any]:
    with contextlib.suppress(AttributeError):
        return list(container._connections)  # not public; stop() then closes the rest
    return []


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


__all__ = ["LOCK_SECONDS", "Entity", "FakeServiceBus", "Rule", "Stored"]

