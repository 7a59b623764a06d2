"""The RabbitMQ transport, on aio-pika's robust connection.

Topology, for an exchange named ``X`` (default ``ai-apps``) and a subscriber group ``G``:

* ``X``: a durable *topic* exchange; the routing key of every event is its type, so a group
  subscribed to :data:`~bus.base.ALL_TYPES` binds with ``#``.
* ``X.G``: the group's durable queue (classic, or quorum with ``queue_type="quorum"``), bound to
  ``X`` once per subscribed type. Competing consumers of the group share it.
* ``X.G.retry.<ms>``: one queue per retry delay bucket, with ``x-message-ttl=<ms>`` and a
  dead-letter route back to ``X.G`` through the default exchange. A failed message is
  re-published there with ``x-attempts`` incremented and the original acknowledged, so a slow
  retry never blocks the messages behind it. The buckets are powers of two of the policy's
  initial delay, capped at its maximum, so a few queues serve every delay.
* ``X.G.dlq``: the group's dead letters, each with the headers ``x-death-reason``,
  ``x-error-class``, ``x-attempts``, ``x-group``, ``x-dead-lettered-at`` and ``x-dead-letter-id``
  (the stable id :meth:`RabbitMQTransport.dead_letters` reports and ``redrive`` takes).

An *ephemeral* group gets an exclusive auto-delete queue instead, and no retry or dead-letter
queue: a failing message is logged and acknowledged.

**Declared before consumed.** :meth:`RabbitMQTransport.declare` makes a group's queue, its
bindings and its DLQ without consuming; every ai-apps process declares the whole deployment at
start, so an event published before its group's first consumer ever ran waits in the queue.
(Events go to the exchange unmandated: a type no group takes is dropped, as in memory.) Copies
published to a queue by name (retries, dead letters, re-drives) are *mandatory*: if the queue
was deleted the broker returns the copy, the queue is declared again and the copy sent once
more, and if that fails too the original is handed back to its group's queue (below); it is
never acked unparked.

**Redeliveries count.** A delivery the broker marks ``redelivered`` had a predecessor that was
never settled: its consumer died (``kill -9``, out of memory) or lost its channel. That counts
as a failed attempt (:class:`DeliveryNotSettled`): the message is re-published with
``x-attempts`` + 1 and the redelivered one acked, so a message that kills every worker it
reaches lands in the DLQ after ``max_attempts`` deliveries instead of crash-looping. The copy
goes straight back to the group's queue, without the retry delay (the message did not fail: a
request answered before the crash is answered from the inbox at once); should it reach this
process before the original's ack is written, its handler waits for that ack, so a copy that
kills the process does not bring its original back too. This works on classic and quorum
queues alike; it does not rely on a quorum queue's ``x-delivery-count``. RabbitMQ 3.10 sets no
delivery limit on quorum queues by default (a message is redelivered for ever); do not add a
``delivery-limit`` policy to the group queues: with no dead-letter exchange on them, the broker
*drops* a message that reaches it (checked on 3.10.8).

**Handed back, not requeued.** So that ``redelivered`` keeps meaning "its consumer died or lost
its channel", a message this process gives back while alive goes back as a confirmed copy and
the original is acked: at :meth:`~RabbitMQTransport.close`, one prefetched but not started, or
one whose handler was cut off after the grace (both with ``x-attempts`` unchanged: the
interruption is ours, not the message's), and a failed message whose retry or dead letter could
not be parked (charged with that attempt, and back at once). Only when no copy can be published
(the connection is gone) is the original requeued, and its redelivery then counts as an attempt.
Nothing is acked before its copy is confirmed; a copy confirmed and the ack then lost is a
duplicate, which the inbox absorbs.

Each retry, dead letter and drop is reported, once the broker has confirmed it, to the
observers added with :meth:`RabbitMQTransport.add_observer` (:class:`~bus.base.DeliveryObserver`).

On the wire a message is the structured CloudEvent (``application/cloudevents+json``), persistent,
with ``message_id`` = event id, ``correlation_id`` = correlation id, ``type`` = event type,
``timestamp`` = event time and a ``ce-tenant`` header, so any AMQP client can read or write it.
A copy the transport publishes again (a retry, a dead letter, a re-drive, a message handed back)
has a ``message_id`` of its own, and the first one in ``x-original-message-id``: the client
matches a broker's return to its publish by that id, and two copies of one event in flight at
once (two groups retrying it) must not get each other's returns. The body, and with it the
event id the inbox deduplicates by, is never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import aio_pika
import aiormq
import structlog
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from yarl import URL

from bus._wire import Observers
from bus._wire import header_int as _int
from bus._wire import header_text as _text
from bus._wire import header_time as _time
from bus._wire import reason as _reason
from bus._wire import retryable as _retryable
from bus.base import (
    DeadLetter,
    DeliveryObserver,
    Destination,
    Handler,
    RetryPolicy,
    TransportError,
)
from events.base import EventRegistry, registry
from events.envelope import CONTENT_TYPE, Envelope, decode, encode, utcnow
from events.errors import DecodeError

log = structlog.get_logger("bus.rabbitmq")

QueueType = Literal["classic", "quorum"]

H_ATTEMPTS = "x-attempts"
"""Deliveries of this message that have already failed (absent on the first delivery)."""
H_REASON = "x-death-reason"
H_ERROR_CLASS = "x-error-class"
H_GROUP = "x-group"
H_DEAD_AT = "x-dead-lettered-at"
H_DEAD_ID = "x-dead-letter-id"
H_ROUTING_KEY = "x-routing-key"
"""The routing key the message was first published with (retries travel by queue name)."""
H_TENANT = "ce-tenant"
H_MESSAGE_ID = "x-original-message-id"
"""The ``message_id`` the message was first published with (ours: the event id). Each copy the
transport publishes (a retry, a dead letter, a re-drive, a message handed back) gets a
``message_id`` of its own, because the client matches a broker's return to its publish by that
id; this header keeps the first one."""

_HAND_BACK_TIMEOUT = 5.0
"""How long giving a message back (a confirmed copy) may take before it is requeued instead."""

_DEAD_HEADERS = frozenset({H_REASON, H_ERROR_CLASS, H_ATTEMPTS, H_GROUP, H_DEAD_AT, H_DEAD_ID})

# What the client library raises when the broker or the connection fails (TimeoutError is an
# OSError). aiormq's
# ChannelInvalidStateError is a RuntimeError, and aio-pika raises bare RuntimeErrors for a
# connection that is closing, so RuntimeError belongs here at this boundary.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    RuntimeError,
    ConnectionError,
    OSError,
)


class Unroutable(TransportError):
    """The broker returned a message published to a queue by name: the queue does not exist
    (it was deleted under the transport)."""


class DeliveryNotSettled(TransportError):
    """A delivery of the message ended with neither an ack nor a nack: its consumer died
    (``kill -9``, out of memory) or lost its channel while holding it, and the broker gave the
    message again (``redelivered``). The transport counts that delivery as a failed attempt, so
    a message that keeps killing its consumer is dead-lettered instead of crashing workers
    for ever."""


@dataclass(slots=True, eq=False)
class _Subscription:
    handler: Handler
    concurrency: int
    semaphore: asyncio.Semaphore
    tag: str | None = None


@dataclass(slots=True, eq=False)
class _Group:
    name: str
    queue_name: str
    ephemeral: bool
    types: set[str]
    subs: list[_Subscription] = field(default_factory=list)
    channel: AbstractRobustChannel | None = None
    queue: AbstractQueue | None = None
    prefetch: int = 0
    bound: set[str] = field(default_factory=set)
    retry_queues: set[str] = field(default_factory=set)


class RabbitMQTransport:
    """A :class:`~bus.base.Transport` on RabbitMQ (AMQP 0-9-1) through aio-pika.

    ``prefetch`` is the broker's credit per consumer (``basic.qos``); ``concurrency`` on
    :meth:`subscribe` bounds the handlers in flight for that subscription and defaults to
    ``prefetch`` (the credit is raised to the largest concurrency of the group). ``grace`` is how
    long :meth:`close` waits for in-flight handlers; ``publish_timeout`` how long a publish waits
    for the broker (through a reconnect) before raising :class:`~bus.base.TransportError`.
    ``known_groups`` are the groups :meth:`dead_letters` and :meth:`redrive` look at without a
    ``group``, in addition to those this transport subscribed (a CLI subscribes none).
    """

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        prefetch: int = 16,
        exchange: str = "ai-apps",
        queue_type: QueueType = "classic",
        grace: float = 30.0,
        publish_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        known_groups: Collection[str] = (),
        types: EventRegistry = registry,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if queue_type not in ("classic", "quorum"):
            raise ValueError("queue_type must be 'classic' or 'quorum'")
        self.url = url
        self.retry = retry or RetryPolicy()
        self.prefetch = prefetch
        self.exchange_name = exchange
        self.queue_type: QueueType = queue_type
        self.grace = grace
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.known_groups = tuple(known_groups)
        self._types = types
        self._groups: dict[str, _Group] = {}
        self._declared: set[str] = set()
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._topology: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connect_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._started = False
        self._draining = False
        self._closed = False
        # The jitter-free policy decides the delay bucket, so a group's retry queues are known
        # when it is set up and the hot path never declares anything.
        self._steady = dataclasses.replace(self.retry, jitter=0.0)
        self._observers = Observers()
        # copies sent straight back to their group's queue whose original is not acked yet,
        # by the copy's message id (see _return_copy)
        self._handoffs: dict[str, asyncio.Event] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> RabbitMQTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, declare every subscribed group's queues and begin consuming."""
        if self._started:
            return
        self._closed = False
        self._draining = False
        await self._connect()
        try:
            for group in list(self._groups.values()):
                await self._setup_group(group)
        except BaseException:
            # do not leave a robust connection behind: it would keep reconnecting, and it
            # swallows the cancellation asyncio.run sends at exit
            await self.close()
            raise
        self._started = True

    async def close(self) -> None:
        """Cancel the consumers, give in-flight handlers up to ``grace`` seconds, hand the
        messages of those still running (and of those not started) back to their queue,
        uncounted, and disconnect."""
        conn = self._conn
        if conn is None:
            self._started = False
            return
        self._draining = True
        for group in self._groups.values():
            await self._cancel_consumers(group)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.grace)
            if pending:
                log.warning("close: handlers still running after grace; requeueing",
                            count=len(pending), grace=self.grace)
                for task in pending:
                    task.cancel()
                # each cancelled delivery hands its message back on the way out
                await asyncio.wait(pending, timeout=_HAND_BACK_TIMEOUT + 1)
        self._closed = True
        self._conn = self._pub = self._exchange = self._topology = None
        for group in self._groups.values():
            group.channel = group.queue = None
            group.prefetch = 0
            group.bound.clear()
            group.retry_queues.clear()
            for sub in group.subs:
                sub.tag = None
        self._started = False
        try:
            await conn.close()
        except _BROKER_ERRORS as exc:  # already gone: nothing left to release
            log.debug("close: connection close failed", error=repr(exc))

    # -- publish / subscribe ---------------------------------------------------------------

    async def publish(self, envelope: Envelope) -> None:
        """Publish ``envelope`` with its type as routing key; returns after the broker's
        confirm. While the connection is down it waits up to ``publish_timeout`` for the
        reconnect, then raises :class:`~bus.base.TransportError`."""
        exchange = self._exchange
        if exchange is None:
            if self._closed:
                raise TransportError("transport is closed")
            await self._connect()
            exchange = self._exchange
            assert exchange is not None
        message = Message(
            encode(envelope),
            content_type=CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=envelope.id,
            correlation_id=envelope.correlationid,
            type=envelope.type,
            timestamp=envelope.time,
            headers={H_TENANT: envelope.tenant},
        )
        await self._confirm(exchange, message, envelope.type)

    async def subscribe(
        self,
        group: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        concurrency: int | None = None,
        ephemeral: bool = False,
    ) -> None:
        """Deliver ``event_types`` to ``handler`` as part of ``group`` (see the protocol)."""
        if isinstance(event_types, str):
            raise TypeError("event_types must be a collection of type names, not a str")
        grp = self._groups.get(group)
        if grp is None:
            name = f"{self.exchange_name}.{group}"
            if ephemeral:
                # unique per process: an exclusive queue cannot be shared, even by mistake
                name = f"{name}.{uuid.uuid4().hex[:8]}"
            grp = self._groups[group] = _Group(group, name, ephemeral, set())
        elif grp.ephemeral != ephemeral:
            raise ValueError(f"group {group!r} is already subscribed with ephemeral={grp.ephemeral}")
        grp.types.update(event_types)
        limit = concurrency or self.prefetch
        grp.subs.append(_Subscription(handler, limit, asyncio.Semaphore(limit)))
        if self._started:
            await self._setup_group(grp)

    async def declare(self, group: str, event_types: Collection[str]) -> None:
        """Declare ``group``'s durable queue bound to ``event_types``, and its dead-letter
        queue, without consuming: from now on the group's events wait in the queue for its
        first consumer, in whichever process that starts. Declared on a robust channel of its
        own, which declares them again after a reconnect (to a broker that lost them)."""
        if isinstance(event_types, str):
            raise TypeError("event_types must be a collection of type names, not a str")
        known = self._groups.get(group)
        if known is not None and known.ephemeral:
            raise ValueError(f"group {group!r} is ephemeral: it has no durable queue")
        await self._connect()
        assert self._conn is not None
        name = f"{self.exchange_name}.{group}"
        try:
            if self._topology is None:
                channel = self._conn.channel(publisher_confirms=False)
                await channel.initialize()
                self._topology = channel
            queue = await self._topology.declare_queue(
                name, durable=True, arguments=self._queue_args()
            )
            self._declared.add(name)
            await self._topology.declare_queue(f"{name}.dlq", durable=True)
            self._declared.add(f"{name}.dlq")
            for event_type in sorted(set(event_types)):
                await queue.bind(self.exchange_name, routing_key=event_type)
        except _BROKER_ERRORS as exc:
            # a refused declaration (another queue type, say) closes the channel: start afresh
            broken, self._topology = self._topology, None
            if broken is not None:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await broken.close()
            raise TransportError(f"cannot declare group {group!r}: {exc!r}") from exc

    # -- observers -------------------------------------------------------------------------

    def add_observer(self, observer: DeliveryObserver) -> None:
        """Report retries, dead letters and drops to ``observer``."""
        self._observers.add(observer)

    def remove_observer(self, observer: DeliveryObserver) -> None:
        self._observers.remove(observer)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        """Every dead letter, oldest first (see :meth:`peek_dead_letters`)."""
        return await self.peek_dead_letters(group)

    async def peek_dead_letters(
        self, group: str | None = None, limit: int | None = None
    ) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (all with None), oldest first. They stay in their
        queues: each is read unacknowledged (``basic.get``, at most ``limit`` of each queue)
        on a private channel that is then closed, which returns them to the broker. While a
        listing holds them they are invisible to everyone else: a concurrent listing does not
        show them and a concurrent :meth:`redrive` does not find them."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        await self._connect()
        letters: list[DeadLetter] = []
        for name in self._dlq_groups(group):
            async with self._scratch_channel() as channel:
                messages = await self._drain_dlq(channel, name, limit)
                letters.extend(_dead_letter_of(name, m) for m in messages or ())
        letters.sort(key=lambda d: d.time)
        return letters[:limit] if limit is not None else letters

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        """Publish the chosen dead letters to their group's queue with a fresh attempt count
        (confirmed), then remove them from the dead-letter queue. Returns how many.

        Each DLQ is read one message at a time: a chosen one is re-driven and acked at once,
        one passed over stays unacknowledged on a private channel until that queue is done
        (then it goes back, in place). With ``ids`` the reading stops as soon as every id is
        found; without, it re-drives as many as the queue held when it began, so letters
        dead-lettered again meanwhile are not re-driven in a loop. A letter held at that
        moment by a concurrent listing is not found (and not counted)."""
        await self._connect()
        wanted = None if ids is None else set(ids)
        moved = 0
        for name in self._dlq_groups(group):
            if wanted is not None and not wanted:
                break
            async with self._scratch_channel() as channel:
                moved += await self._redrive_group(channel, name, wanted)
        return moved

    async def _redrive_group(
        self, channel: AbstractChannel, group: str, wanted: set[str] | None
    ) -> int:
        try:
            dlq = await channel.declare_queue(f"{self.exchange_name}.{group}.dlq", passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        budget = dlq.declaration_result.message_count or 0
        target = f"{self.exchange_name}.{group}"
        target_checked = False
        moved = 0
        for _ in range(budget):
            if wanted is not None and not wanted:
                break
            message = await dlq.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break
            letter_id = _dead_letter_id(message)
            if wanted is not None and letter_id not in wanted:
                continue  # held until the channel closes, then back in its place
            if not target_checked:
                try:
                    await channel.declare_queue(target, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity as exc:
                    raise TransportError(f"group {group!r} has no queue {target!r}") from exc
                target_checked = True
            headers = {
                k: v for k, v in message.headers.items()
                if k not in _DEAD_HEADERS and not _is_broker_death(k)
            }
            await self._confirm_default(_copy(message, headers), target)
            await message.ack()
            moved += 1
            if wanted is not None:
                wanted.discard(letter_id)
        return moved

    # -- introspection ---------------------------------------------------------------------

    @property
    def destination(self) -> Destination:
        """The exchange every event is published to, and the broker (for telemetry)."""
        try:
            url = URL(self.url)
            host = url.host
            port = url.port or (5671 if url.scheme == "amqps" else 5672)
        except ValueError:
            host = port = None
        return Destination(self.exchange_name, host, port)

    @property
    def declared_queues(self) -> frozenset[str]:
        """Names of every queue this transport declared (for tests and tooling)."""
        return frozenset(self._declared)

    # -- internals: connection -------------------------------------------------------------

    async def _connect(self) -> None:
        if self._exchange is not None:
            return
        async with self._connect_lock:
            if self._exchange is not None:
                return
            self._closed = False
            try:
                conn = await aio_pika.connect_robust(
                    self.url,
                    timeout=self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                    client_properties={"connection_name": f"ai-apps ({self.exchange_name})"},
                )
            except _BROKER_ERRORS as exc:
                raise TransportError(f"cannot connect to {_safe_url(self.url)}: {exc!r}") from exc
            try:
                # a returned (mandatory, unroutable) message raises PublishError
                pub = conn.channel(publisher_confirms=True, on_return_raises=True)
                await pub.initialize()
                exchange = await pub.declare_exchange(
                    self.exchange_name, ExchangeType.TOPIC, durable=True
                )
            except _BROKER_ERRORS as exc:
                await conn.close()
                raise TransportError(
                    f"cannot declare exchange {self.exchange_name!r}: {exc!r}"
                ) from exc
            self._conn, self._pub, self._exchange = conn, pub, exchange

    @contextlib.asynccontextmanager
    async def _scratch_channel(self) -> AsyncIterator[AbstractChannel]:
        """A plain (not robust) channel for reads that may fail or must give messages back:
        a passive declare of a missing queue closes it, and closing it requeues what it got."""
        assert self._conn is not None
        channel = aio_pika.Channel(self._conn, publisher_confirms=False)
        try:
            await channel.initialize()
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot open a channel: {exc!r}") from exc
        try:
            yield channel
        except _BROKER_ERRORS as exc:
            raise TransportError(f"dead-letter operation failed: {exc!r}") from exc
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await channel.close()

    # -- internals: topology ---------------------------------------------------------------

    async def _setup_group(self, group: _Group) -> None:
        assert self._conn is not None
        try:
            if group.channel is None:
                channel = self._conn.channel(publisher_confirms=False)
                await channel.initialize()
                group.channel = channel
                # re-declared here so that a restore after reconnect never depends on the
                # publishing channel having restored the exchange first
                await channel.declare_exchange(self.exchange_name, ExchangeType.TOPIC, durable=True)
                if group.ephemeral:
                    group.queue = await channel.declare_queue(
                        group.queue_name, durable=False, exclusive=True, auto_delete=True
                    )
                else:
                    group.queue = await channel.declare_queue(
                        group.queue_name, durable=True, arguments=self._queue_args()
                    )
                    self._declared.add(group.queue_name)
                    # always classic: it is read by requeueing, and a quorum queue's delivery
                    # limit would drop dead letters after enough listings
                    await channel.declare_queue(f"{group.queue_name}.dlq", durable=True)
                    self._declared.add(f"{group.queue_name}.dlq")
                    for retry in range(1, self.retry.max_attempts):
                        await self._declare_retry_queue(group, self._bucket_ms(retry))
            channel, queue = group.channel, group.queue
            assert channel is not None
            assert queue is not None
            prefetch = max([self.prefetch, *(s.concurrency for s in group.subs)])
            if prefetch != group.prefetch:
                # per-consumer credit (global=False): it applies to consumers made after it
                await channel.set_qos(prefetch_count=prefetch)
                group.prefetch = prefetch
            for event_type in sorted(group.types - group.bound):
                await queue.bind(self.exchange_name, routing_key=event_type)
                group.bound.add(event_type)
            for sub in group.subs:
                if sub.tag is None:
                    sub.tag = await queue.consume(self._consumer(group, sub))
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot set up group {group.name!r}: {exc!r}") from exc

    def _queue_args(self) -> dict[str, Any] | None:
        # classic queues get no x-queue-type, so that queues declared before this argument
        # existed (or by other clients) still match
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else None

    def _bucket_ms(self, retry: int) -> int:
        """The delay bucket of retry ``retry``: the policy's delay rounded (in log scale) to a
        power of two of the initial delay, capped at the maximum delay. 0: no delay."""
        delay = self._steady.delay(retry) * 1000
        if delay < 1:
            return 0
        base = max(self.retry.initial_delay * 1000, 1.0)
        exponent = max(round(math.log2(delay / base)), 0)
        bucket: float = min(base * 2.0**exponent, max(self.retry.max_delay * 1000, 1.0))
        return max(round(bucket), 1)

    async def _declare_retry_queue(self, group: _Group, ms: int) -> str:
        name = f"{group.queue_name}.retry.{ms}"
        if ms == 0 or name in group.retry_queues:
            return name
        assert group.channel is not None
        args: dict[str, Any] = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": group.queue_name,
        }
        if self.queue_type == "quorum":
            # a quorum queue dead-letters at most once unless told otherwise
            args |= {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        await group.channel.declare_queue(name, durable=True, arguments=args)
        group.retry_queues.add(name)
        self._declared.add(name)
        return name

    async def _cancel_consumers(self, group: _Group) -> None:
        queue = group.queue
        for sub in group.subs:
            if queue is None or sub.tag is None:
                continue
            try:
                async with asyncio.timeout(5):
                    await queue.cancel(sub.tag)
            except _BROKER_ERRORS as exc:
                # the channel is gone, and with it the consumer
                log.debug("close: cancel failed", group=group.name, error=repr(exc))

    def _dlq_groups(self, group: str | None) -> list[str]:
        if group is not None:
            return [group]
        names = {g.name for g in self._groups.values() if not g.ephemeral}
        names.update(self.known_groups)
        return sorted(names)

    async def _drain_dlq(
        self, channel: AbstractChannel, group: str, limit: int | None = None
    ) -> list[AbstractIncomingMessage] | None:
        """The first ``limit`` (every) message of ``group``'s DLQ, unacknowledged; None when
        there is no DLQ."""
        try:
            queue = await channel.declare_queue(f"{self.exchange_name}.{group}.dlq", passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        messages: list[AbstractIncomingMessage] = []
        while limit is None or len(messages) < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break
            messages.append(message)
        return messages

    # -- internals: delivery ---------------------------------------------------------------

    def _consumer(
        self, group: _Group, sub: _Subscription
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._inflight.add(task)
            try:
                async with sub.semaphore:
                    # not if close() began while it waited for a slot (prefetched before the
                    # consumer was cancelled)
                    run = not self._draining
                    if run:
                        await self._deliver(group, sub.handler, message)
                if not run:
                    await self._hand_back(group, message)  # (the slot free for the next)
            except asyncio.CancelledError:
                # close() after the grace period (the handler, if it started, was cut off by
                # our shutdown, not by the message), or the channel died under the handler (then
                # the broker has the message back already). The hand-back may wait, as the
                # cancellation was delivered; a second one is not absorbed.
                task.uncancel()
                await self._hand_back(group, message)
                raise
            except Exception:
                # a bug of ours, not the handler's (that one is caught in _deliver): never leave
                # the message unacknowledged for the life of the channel, and never drop it.
                # Requeued as it is: its redelivery counts, so a message that keeps hitting
                # the bug ends in the dead letters
                log.exception("delivery failed; requeued", group=group.name)
                await _settle(message)
            finally:
                self._inflight.discard(task)

        return on_message

    async def _deliver(
        self, group: _Group, handler: Handler, message: AbstractIncomingMessage
    ) -> None:
        attempts = _int(message.headers.get(H_ATTEMPTS)) + 1
        handoff = self._handoffs.get(message.message_id or "")
        if handoff is not None:
            # a copy this process sent back, reaching it before the original's ack went out:
            # should this delivery kill the process, the original must not come back too
            await handoff.wait()
        try:
            envelope = decode(message.body, self._types)
        except DecodeError as exc:
            await self._failed(group, message, exc, attempts, None, final=True)
            return
        if message.redelivered and not group.ephemeral:
            # The broker gives the message again: delivery number ``attempts`` ended unsettled
            # (the consumer died or lost its channel). The broker's flag says only "again",
            # not how often (classic queues keep no count), so the count travels in a copy:
            # re-published with x-attempts + 1, the original acked. A message that kills every
            # worker it reaches is thus dead-lettered after max_attempts deliveries, on classic
            # and quorum queues alike. The copy goes straight back to the group's queue, not
            # through a retry delay: the message itself did not fail (a request whose result
            # was recorded before the crash is answered from the inbox at once), and the
            # crash-loop protection needs only the count.
            lost = DeliveryNotSettled(
                f"attempt {attempts} was never settled: its consumer died (killed, out of "
                "memory) or lost its channel before acknowledging it"
            )
            final = attempts >= self.retry.max_attempts
            await self._failed(
                group, message, lost, attempts, envelope, final=final, immediate=True
            )
            return
        try:
            await handler(envelope)
        except Exception as exc:
            final = attempts >= self.retry.max_attempts or not _retryable(exc)
            await self._failed(group, message, exc, attempts, envelope, final=final)
            return
        await _ack(message)

    async def _failed(
        self,
        group: _Group,
        message: AbstractIncomingMessage,
        exc: Exception,
        attempts: int,
        envelope: Envelope | None,
        *,
        final: bool,
        immediate: bool = False,
    ) -> None:
        """Retry (after the policy's delay, or at once when ``immediate``) or dead-letter
        (``final``) a message whose delivery number ``attempts`` failed with ``exc``."""
        event_type = envelope.type if envelope else _claimed_type(message)
        if group.ephemeral:
            log.warning("handler failed in an ephemeral group; dropped", group=group.name,
                        type=event_type, error=repr(exc))
            await _ack(message)
            self._observers.dropped(group.name, event_type, attempts=attempts, exc=exc)
            return
        ms = 0 if final or immediate else self._bucket_ms(attempts)
        try:
            if final:
                log.warning("dead-lettered", group=group.name, type=event_type,
                            attempts=attempts, error=repr(exc))
                await self._dead_letter(group, message, exc, attempts, envelope)
            else:
                log.info("retrying", group=group.name, type=event_type, attempt=attempts,
                         delay=ms / 1000, error=repr(exc))
                await self._schedule_retry(group, message, attempts, ms)
        except TransportError as error:
            # not parked anywhere: give it back rather than ack it and lose it, charged with
            # this attempt (and back at once: a retry queue that takes nothing is no delay)
            log.error("cannot retry or dead-letter; handed back", group=group.name,
                      attempts=attempts, error=repr(error))
            await self._hand_back(group, message, attempts=attempts)
            return
        # parked, confirmed: the decision took effect, whether or not the ack gets through
        if final:
            self._observers.dead_lettered(group.name, event_type, attempts=attempts, exc=exc)
        else:
            self._observers.retried(
                group.name, event_type, attempt=attempts, delay=ms / 1000, exc=exc
            )
        await _ack(message)

    async def _schedule_retry(
        self, group: _Group, message: AbstractIncomingMessage, attempts: int, ms: int
    ) -> None:
        headers = _clean_headers(message)
        headers[H_ATTEMPTS] = attempts
        if ms == 0:
            await self._return_copy(group, message, headers)
            return
        name = await self._declare_retry(group, ms)
        await self._park(
            group, _copy(message, headers), name, lambda: self._declare_retry(group, ms, again=True)
        )

    async def _hand_back(
        self, group: _Group, message: AbstractIncomingMessage, *, attempts: int | None = None
    ) -> None:
        """Give back a message this live process took and will not finish: not handled at
        close, cut off after the grace, or a retry or dead letter that could not be parked.

        It goes back as a confirmed copy, with ``x-attempts`` = ``attempts`` (when None:
        unchanged, as no handler ran or ours was cut off by shutdown, except that a
        ``redelivered`` one is charged with its predecessor's death), and the original is
        acked, so
        the broker's ``redelivered`` flag keeps meaning "a consumer died or lost its channel
        holding it". Only when no copy can be published (the connection is gone) is the
        original requeued, and its redelivery then counts as an attempt. A copy confirmed and
        the ack then lost is a duplicate, which the inbox absorbs; nothing is acked before its
        copy is confirmed."""
        if message.processed:
            return
        if group.ephemeral or not _channel_open(message):
            # an ephemeral queue goes with this process; a closed channel: the broker has it
            await _settle(message)
            return
        headers = _clean_headers(message)
        if attempts is None and message.redelivered:
            # redelivered and not yet looked at: the death it tells of is charged here, as
            # _deliver would have, or the copy (not redelivered) would forget it
            attempts = _int(message.headers.get(H_ATTEMPTS)) + 1
        if attempts is not None:
            headers[H_ATTEMPTS] = attempts
        try:
            async with asyncio.timeout(_HAND_BACK_TIMEOUT):
                await self._return_copy(group, message, headers)
        except (TransportError, TimeoutError) as exc:
            log.warning("cannot hand the message back; requeued (its redelivery counts)",
                        group=group.name, error=repr(exc))
            await _settle(message)

    async def _return_copy(
        self, group: _Group, message: AbstractIncomingMessage, headers: dict[str, Any]
    ) -> None:
        """Send a copy of ``message`` with ``headers`` straight to its group's queue,
        confirmed, then ack the original; raises :class:`~bus.base.TransportError` (the
        original untouched) if the copy is not confirmed.

        The copy can reach a consumer of this very process before the original's ack is
        written (the broker delivers before it confirms a persistent message): that delivery
        waits for the ack (:meth:`_deliver`), or a copy that kills the process would leave both
        it and its original to come back, and each make copies of its own."""
        copy = _copy(message, headers)
        assert copy.message_id is not None
        settled = self._handoffs[copy.message_id] = asyncio.Event()
        try:
            await self._confirm_default(copy, group.queue_name)
            await _ack(message)
        finally:
            del self._handoffs[copy.message_id]
            settled.set()

    async def _declare_retry(self, group: _Group, ms: int, *, again: bool = False) -> str:
        name = f"{group.queue_name}.retry.{ms}"
        if again:
            group.retry_queues.discard(name)
        if name not in group.retry_queues:
            try:
                await self._declare_retry_queue(group, ms)
            except _BROKER_ERRORS as exc:
                raise TransportError(f"cannot declare {name!r}: {exc!r}") from exc
        return name

    async def _declare_dlq(self, group: _Group) -> None:
        assert group.channel is not None
        try:
            await group.channel.declare_queue(f"{group.queue_name}.dlq", durable=True)
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot declare {group.queue_name}.dlq: {exc!r}") from exc

    async def _park(
        self, group: _Group, copy: Message, queue: str, declare: Callable[[], Awaitable[object]]
    ) -> None:
        """Publish ``copy`` to a retry queue or the dead letters, confirmed. A queue deleted
        under us (the broker returns the copy) is declared again and the copy sent once more;
        if that fails too the error propagates and the original goes back to its queue."""
        try:
            await self._confirm_default(copy, queue)
        except Unroutable:
            log.warning("queue missing; declaring it again", group=group.name, queue=queue)
            await declare()
            await self._confirm_default(copy, queue)

    async def _dead_letter(
        self,
        group: _Group,
        message: AbstractIncomingMessage,
        exc: Exception,
        attempts: int,
        envelope: Envelope | None,
    ) -> None:
        headers = _clean_headers(message)
        headers |= {
            H_REASON: _reason(exc),
            H_ERROR_CLASS: type(exc).__name__,
            H_ATTEMPTS: attempts,
            H_GROUP: group.name,
            H_DEAD_AT: utcnow().isoformat(),
            H_DEAD_ID: str(uuid.uuid4()),
        }
        copy = _copy(message, headers)
        if envelope is not None:
            copy.type = envelope.type
            copy.correlation_id = envelope.correlationid
        else:
            copy.type = _text(headers.get(H_ROUTING_KEY)) or message.type
        await self._park(group, copy, f"{group.queue_name}.dlq", lambda: self._declare_dlq(group))

    # -- internals: confirmed publishing ---------------------------------------------------

    async def _confirm_default(self, message: Message, queue: str) -> None:
        """Publish straight to ``queue`` through the default exchange, confirmed and
        *mandatory*: a queue that does not exist (deleted under us) makes the broker return
        the message, which raises :class:`Unroutable` instead of dropping it silently."""
        if self._pub is None:
            raise TransportError("transport is closed")
        if message.message_id is None:
            # the broker's return is matched to its publish by message id (see _copy): it
            # must be set, and unique among the publishes in flight
            message.message_id = str(uuid.uuid4())
        await self._confirm(self._pub.default_exchange, message, queue, mandatory=True)

    async def _confirm(
        self, exchange: AbstractExchange, message: Message, key: str, *, mandatory: bool = False
    ) -> None:
        # events go to the topic exchange unmandated: an event no group subscribes to is
        # dropped, as in memory (every process declares the deployment's groups at start, so
        # the event types the wiring knows always have a queue); copies sent to a queue by
        # name (retries, dead letters, re-drives) are mandatory
        try:
            await exchange.publish(message, key, mandatory=mandatory, timeout=self.publish_timeout)
            return
        except aiormq.exceptions.PublishError as exc:
            raise Unroutable(f"no queue takes {key!r}: the broker returned the message") from exc
        except asyncio.CancelledError:
            if _cancelling():
                raise
            error: BaseException = ConnectionError("channel closed under the publish")
        except _BROKER_ERRORS as exc:
            error = exc
        await self._confirm_again(exchange, message, key, error, mandatory=mandatory)

    async def _confirm_again(
        self,
        exchange: AbstractExchange,
        message: Message,
        key: str,
        error: BaseException,
        *,
        mandatory: bool,
    ) -> None:
        """The slow path: wait for the robust channel to come back and publish again, until
        ``publish_timeout``. A lost confirm may mean the broker has the message: a retry can
        duplicate it, which at-least-once delivery allows; losing it would not be."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        pause = 0.05
        while True:
            remaining = deadline - loop.time()
            pub = self._pub
            if self._closed or pub is None:
                raise TransportError(f"transport closed while publishing: {error!r}") from error
            if remaining <= 0:
                raise TransportError(
                    f"publish of {key!r} not confirmed within {self.publish_timeout}s: {error!r}"
                ) from error
            log.info("publish failed; waiting for the broker", routing_key=key, error=repr(error))
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.sleep(pause)
                    await pub.ready()
                    await exchange.publish(message, key, mandatory=mandatory, timeout=remaining)
                return
            except aiormq.exceptions.PublishError as exc:
                raise Unroutable(
                    f"no queue takes {key!r}: the broker returned the message"
                ) from exc
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                error = ConnectionError("channel closed under the publish")
            except _BROKER_ERRORS as exc:
                error = exc
            pause = min(pause * 2, 1.0)


# -- helpers -------------------------------------------------------------------------------


def _channel_open(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is still open (so it can still be acked)."""
    try:
        return not message.channel.is_closed
    except RuntimeError:  # aio-pika's ChannelInvalidStateError: closed
        return False


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (rather than a future it awaited,
    which aiormq cancels when the channel closes)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _ack(message: AbstractIncomingMessage) -> None:
    if message.processed:  # acked with its copy's confirm (_return_copy)
        return
    try:
        await message.ack()
    except _BROKER_ERRORS as exc:
        # the channel died: the broker redelivers the message, which at-least-once allows
        log.debug("ack failed; the broker will redeliver", error=repr(exc))


async def _settle(message: AbstractIncomingMessage) -> None:
    """Return an unfinished message to its queue."""
    if message.processed:
        return
    with contextlib.suppress(*_BROKER_ERRORS):
        await message.nack(requeue=True)




def _claimed_type(message: AbstractIncomingMessage) -> str | None:
    """The event type of a message that could not be decoded, as its AMQP properties tell it:
    the ``type`` property, else the routing key it was first published with (a retry travels
    by queue name, with that key in a header)."""
    return (
        message.type
        or _text(message.headers.get(H_ROUTING_KEY))
        or message.routing_key
        or None
    )


def _is_broker_death(key: str) -> bool:
    """A header the broker owns: its dead-lettering history, or a quorum queue's delivery
    count (which a copy starts afresh; ``x-attempts`` carries the count)."""
    return key in ("x-death", "x-delivery-count") or key.startswith(
        ("x-first-death-", "x-last-death-")
    )


def _clean_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The message's headers without the broker's dead-lettering history (which we do not
    need: ``x-attempts`` counts), and with its first routing key kept."""
    headers = {k: v for k, v in message.headers.items() if not _is_broker_death(k)}
    if H_ROUTING_KEY not in headers and message.routing_key:
        headers[H_ROUTING_KEY] = message.routing_key
    return headers


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> Message:
    """A copy of ``message`` to publish again, with ``headers`` and a ``message_id`` of its own.

    aiormq matches a returned (mandatory, unroutable) message to the newest publish with its
    ``message_id`` on the channel: two copies of one event in flight at once with the same id
    (two groups retrying it together) would get each other's returns, and a copy returned
    unparked would look confirmed and its original be acknowledged: lost. The first id is kept
    in ``x-original-message-id``; the event id is in the body either way."""
    if H_MESSAGE_ID not in headers and message.message_id:
        headers[H_MESSAGE_ID] = message.message_id
    return Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id,
        message_id=str(uuid.uuid4()),
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        reply_to=message.reply_to,
        # not user_id (the broker refuses one that is not the publishing user's) nor
        # expiration (it would start again in a retry queue)
    )


def _dead_letter_id(message: AbstractIncomingMessage) -> str:
    return _text(message.headers.get(H_DEAD_ID)) or message.message_id or ""


def _dead_letter_of(group: str, message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers
    return DeadLetter(
        id=_dead_letter_id(message),
        group=_text(headers.get(H_GROUP)) or group,
        body=message.body,
        reason=_text(headers.get(H_REASON)),
        error_class=_text(headers.get(H_ERROR_CLASS)),
        attempts=_int(headers.get(H_ATTEMPTS)),
        time=_time(headers.get(H_DEAD_AT)) or _time(message.timestamp) or utcnow(),
        event_type=message.type or _text(headers.get(H_ROUTING_KEY)) or None,
        correlationid=message.correlation_id,
        headers={k: _text(v) for k, v in headers.items() if not _is_broker_death(k)},
    )








def _safe_url(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


__all__ = ["RabbitMQTransport"]
