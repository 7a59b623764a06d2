"""The Azure Service Bus transport, on ``azure-servicebus`` (async).

Topology, for a topic ``T`` (default ``ai-apps``) and a subscriber group ``G`` (both made by
:func:`bus.servicebus_admin.provision`, ``ai-apps servicebus provision``; at run time they are
assumed to exist unless ``provision=True``):

* ``T``: one topic for every event.
* ``T/Subscriptions/G``: the group's subscription. Its rules (:func:`~bus.servicebus_admin.rules_for`)
  are a correlation filter on the *subject*, which is the event type, per subscribed type (or a SQL
  filter taking every untargeted event for :data:`~bus.base.ALL_TYPES`), and a correlation filter
  on the application property ``x-target-group = G`` for copies meant for this group alone.
  Competing consumers of the group share it; each :meth:`~ServiceBusTransport.subscribe` gets its
  own receiver (peek-lock, ``prefetch``) and runs up to ``concurrency`` handlers at once.
* ``T/Subscriptions/G/$DeadLetterQueue``: the group's dead letters.

On the wire a message is the structured CloudEvent (``application/cloudevents+json``) with
``message_id`` = event id, ``correlation_id`` = correlation id, ``subject`` = event type and the
CloudEvents extensions as application properties (``ce-tenant``, ``ce-traceparent``…), so any
AMQP or Service Bus client can read or write it.

**Retries.** Service Bus's ``abandon`` redelivers at once, so a retry with a delay re-sends a
*copy* of the message scheduled for later (``scheduled_enqueue_time_utc`` = now + the policy's
delay), targeted at the failing group only (``x-target-group``, no subject so that no type rule of
another group takes it), carrying the attempts so far in ``x-attempts``; then the original is
completed. Holding the message in the handler task for the delay and then abandoning it was
the alternative, rejected because it keeps a concurrency slot and a lock busy for up to
``max_delay`` while the queue waits behind it, and because a broker that does not count
deliveries (the test broker) would retry it for ever. The copy is confirmed before the original
is completed: a crash in between gives a duplicate, never a loss. If the copy cannot be sent the
original is abandoned (an immediate retry the broker counts). The attempt number of a delivery
is ``x-attempts`` + the broker's zero-based ``delivery_count`` + 1, so locks lost and messages
given back on shutdown count too; the subscription's ``max_delivery_count`` is the broker's own
backstop behind ``retry.max_attempts``.

**Dead letters** are made with ``dead_letter_message``: ``DeadLetterReason`` is the error
message and ``DeadLetterErrorDescription`` a small JSON object with the error class, the
attempts, the group and the time. :meth:`~ServiceBusTransport.dead_letters` peeks at them (no
lock, nothing changes); where peeking is not implemented (``$management`` answers 501, as on the
test broker) it receives them all and abandons them, so they stay. ``redrive`` receives them,
sends each chosen one back to the topic as a copy targeted at its group with a fresh attempt
count, and completes it; the others are abandoned.

**Long handlers.** Every message is registered with an ``AutoLockRenewer`` for
``max_lock_renewal`` seconds (default 10 minutes) while its handler runs, so a 3-minute image
generation keeps its lock and is not delivered to another consumer meanwhile.

**Ephemeral groups** (a CLI waiting for its replies) get a subscription of their own, created at
run time through the management API (:class:`~bus.servicebus_admin.SubscriptionAdmin`) with
``auto_delete_on_idle`` of 5 minutes (Service Bus's minimum), deleted on :meth:`close`; a failure
there is logged and the message completed: no retry, no dead letter.

**Observers** added with :meth:`~ServiceBusTransport.add_observer` (:class:`~bus.base.DeliveryObserver`)
are told of each retry once its copy is sent (or, when it cannot be, once the original is
abandoned: an immediate retry), of each dead letter once the broker took it, and of each drop.
What the broker dead-letters by itself (``max_delivery_count``, expiry) is not seen here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from azure.core.exceptions import AzureError
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import AutoLockRenewer, ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusConnectionError,
    ServiceBusError,
)

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
from bus.servicebus_admin import (
    EPHEMERAL_IDLE,
    H_TARGET,
    AzureSubscriptionAdmin,
    SubscriptionAdmin,
    SubscriptionSettings,
    fully_qualified_namespace,
    rules_for,
    subscription_name,
)
from events.base import EventRegistry, registry
from events.envelope import CONTENT_TYPE, Envelope, decode, encode, utcnow
from events.errors import DecodeError

log = structlog.get_logger("bus.servicebus")

H_ATTEMPTS = "x-attempts"
"""Failed deliveries before this copy was sent (absent on an original)."""
H_EVENT_TYPE = "x-event-type"
"""The event type of a targeted copy, whose subject is left empty."""
DLQ_REASON = "DeadLetterReason"
DLQ_DESCRIPTION = "DeadLetterErrorDescription"
EXTENSIONS = ("tenant", "source", "subject", "causationid", "traceparent", "tracestate", "replayof")
"""CloudEvents attributes copied to ``ce-<name>`` application properties (the body has them all)."""

_MAX_REASON = 1024
_OURS = frozenset({H_ATTEMPTS, H_TARGET, H_EVENT_TYPE, DLQ_REASON, DLQ_DESCRIPTION})

# What the SDK raises when the namespace or the connection fails. ServiceBusError is an
# AzureError; OSError covers sockets the SDK does not wrap.
_BUS_ERRORS: tuple[type[BaseException], ...] = (AzureError, OSError)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (ValueError, AzureError, OSError)
_RECEIVE_ERRORS: tuple[type[BaseException], ...] = (TransportError, AzureError, OSError)
_REGISTER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, AzureError)
_QUIET_ERRORS: tuple[type[BaseException], ...] = (AzureError, OSError, RuntimeError)


@dataclass(slots=True, eq=False)
class _Subscription:
    handler: Handler
    concurrency: int
    slots: asyncio.Semaphore
    receiver: ServiceBusReceiver | None = None
    loop: asyncio.Task[None] | None = None


@dataclass(slots=True, eq=False)
class _Group:
    name: str
    subscription: str
    ephemeral: bool
    types: set[str]
    subs: list[_Subscription] = field(default_factory=list)
    ready: bool = False
    """The subscription is known to exist (created or provisioned by this transport)."""


class ServiceBusTransport:
    """A :class:`~bus.base.Transport` on Azure Service Bus (see the module doc).

    Connect with a ``connection_string`` (``Endpoint=sb://…;SharedAccessKeyName=…``; the
    emulator's, with ``UseDevelopmentEmulator=true``, works too) or with a ``namespace`` and a
    ``credential`` (default: ``DefaultAzureCredential`` from ``azure-identity``).

    ``prefetch`` is each receiver's prefetch count; ``concurrency`` on :meth:`subscribe` bounds
    the handlers in flight for that subscription and defaults to ``prefetch``. ``grace`` is how
    long :meth:`close` waits for in-flight handlers before abandoning their messages.
    ``admin`` manages subscriptions at run time (ephemeral groups; with ``provision=True``, every
    group this transport subscribes); by default the ``ServiceBusAdministrationClient``.
    ``known_groups`` are the groups :meth:`dead_letters` and :meth:`redrive` look at without a
    ``group``, in addition to those this transport subscribed (a CLI subscribes none).
    ``client_options`` go to ``ServiceBusClient`` (``retry_total``, ``transport_type``…).
    """

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        namespace: str | None = None,
        credential: Any = None,
        topic: str = "ai-apps",
        retry: RetryPolicy | None = None,
        prefetch: int = 16,
        max_lock_renewal: float = 600.0,
        grace: float = 30.0,
        publish_timeout: float = 30.0,
        receive_wait: float = 1.0,
        dead_letter_wait: float = 1.0,
        max_delivery_count: int = 10,
        known_groups: Collection[str] = (),
        admin: SubscriptionAdmin | None = None,
        provision: bool = False,
        client_options: dict[str, Any] | None = None,
        types: EventRegistry = registry,
    ) -> None:
        if bool(connection_string) == bool(namespace):
            raise ValueError("give either a connection string or a namespace")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.connection_string = connection_string
        self.namespace = fully_qualified_namespace(namespace) if namespace else None
        self.credential = credential
        self.topic = topic
        self.retry = retry or RetryPolicy()
        self.prefetch = prefetch
        self.max_lock_renewal = max_lock_renewal
        self.grace = grace
        self.publish_timeout = publish_timeout
        self.receive_wait = receive_wait
        self.dead_letter_wait = dead_letter_wait
        self.max_delivery_count = max_delivery_count
        self.known_groups = tuple(known_groups)
        self.provision = provision
        self.client_options = dict(client_options or {})
        self._types = types
        self._admin = admin
        self._owns_admin = admin is None
        self._groups: dict[str, _Group] = {}
        self._client: ServiceBusClient | None = None
        self._owned_credential: Any = None
        self._sender: ServiceBusSender | None = None
        self._renewer: AutoLockRenewer | None = None
        self._lock = asyncio.Lock()
        self._outbox: list[tuple[list[ServiceBusMessage], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._dlq: dict[str, ServiceBusReceiver] = {}
        self._peek = True
        self._observers = Observers()
        self._started = False
        self._draining = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ServiceBusTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, open a receiver for every subscription made so far and begin consuming."""
        if self._started:
            return
        self._closed = False
        self._draining = False
        self._connect()
        self._renewer = AutoLockRenewer(
            max_lock_renewal_duration=self.max_lock_renewal, on_lock_renew_failure=_lock_lost
        )
        self._started = True
        try:
            if self.provision:
                await self._ensure_topic()
            # the sender too (retries and re-drives send): opening a link takes a few round
            # trips, so they all open at once
            await _all_or_none(
                [self._get_sender(), *(self._setup_group(g) for g in list(self._groups.values()))]
            )
        except BaseException:
            await self.close()  # leave nothing open behind a failed start
            raise

    async def close(self) -> None:
        """Stop receiving, give in-flight handlers up to ``grace`` seconds, abandon the messages
        of those still running (they go to another consumer), delete ephemeral subscriptions
        and disconnect."""
        if self._client is None:
            self._started = False
            self._closed = True
            return
        self._draining = True
        loops = [s.loop for g in self._groups.values() for s in g.subs if s.loop is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.grace)
            if pending:
                log.warning("close: handlers still running after grace; abandoning",
                            count=len(pending), grace=self.grace)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=10)
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), self.publish_timeout)
        self._closed = True
        closing: list[Any] = []
        for group in self._groups.values():
            for sub in group.subs:
                sub.loop = None
                if sub.receiver is not None:
                    closing.append(sub.receiver.close())
                    sub.receiver = None
            if group.ephemeral and group.ready:
                closing.append(self._delete_ephemeral(group))
            group.ready = False
        closing += [r.close() for r in self._dlq.values()]
        self._dlq.clear()
        if self._renewer is not None:
            closing.append(self._renewer.close())
            self._renewer = None
        if self._sender is not None:
            closing.append(self._sender.close())
            self._sender = None
        # each close of the SDK takes a few round trips: all at once
        await asyncio.gather(*(_quietly(c) for c in closing))
        client, self._client = self._client, None
        await _quietly(client.close())
        if self._owned_credential is not None:
            await _quietly(self._owned_credential.close())
            self._owned_credential = None
        if self._admin is not None and self._owns_admin:
            await _quietly(self._admin.close())
            self._admin = None
        self._started = False

    # -- publish / subscribe ---------------------------------------------------------------

    @property
    def destination(self) -> Destination:
        """The topic every event is sent to, and the namespace (for telemetry)."""
        host = self.namespace
        if host is None and self.connection_string:
            for part in self.connection_string.split(";"):
                name, _, value = part.partition("=")
                if name.strip().lower() == "endpoint":
                    host = value.strip().removeprefix("sb://").split("/", 1)[0].split(":")[0]
        return Destination(self.topic, host or None)

    async def publish(self, envelope: Envelope) -> None:
        """Send ``envelope`` to the topic; returns once Service Bus has accepted it. Concurrent
        publishes are sent together in message batches."""
        await self._send([message_of(envelope)])

    async def publish_many(self, envelopes: Iterable[Envelope]) -> None:
        """Send several events in as few message batches as they fit in."""
        await self._send([message_of(e) for e in envelopes])

    async def publish_at(self, envelope: Envelope, when: datetime) -> None:
        """Send ``envelope`` to be enqueued at ``when`` (a scheduled message: saga deadlines can
        travel this way; the store-based timers work either way)."""
        message = message_of(envelope)
        message.scheduled_enqueue_time_utc = when.astimezone(UTC)
        await self._send([message])

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
            name = f"{group}.{uuid.uuid4().hex[:8]}" if ephemeral else group
            grp = self._groups[group] = _Group(group, subscription_name(name), ephemeral, set())
        elif grp.ephemeral != ephemeral:
            raise ValueError(f"group {group!r} is already subscribed with ephemeral={grp.ephemeral}")
        new_types = set(event_types) - grp.types
        grp.types.update(event_types)
        if new_types and grp.ready and (grp.ephemeral or self.provision):
            grp.ready = False  # its rules change
        limit = concurrency or self.prefetch
        grp.subs.append(_Subscription(handler, limit, asyncio.Semaphore(limit)))
        if self._started:
            await self._setup_group(grp)

    async def declare(self, group: str, event_types: Collection[str]) -> None:
        """With ``provision=True``: create or update ``group``'s subscription with the rules
        for ``event_types`` (and any this transport subscribed the group to), so its events
        are kept before it has a receiver. Otherwise nothing: the subscriptions are provisioned
        beforehand (``ai-apps servicebus provision``, for every group of the deployment), and
        a subscription keeps its messages whether or not anyone receives."""
        if isinstance(event_types, str):
            raise TypeError("event_types must be a collection of type names, not a str")
        known = self._groups.get(group)
        if known is not None and known.ephemeral:
            raise ValueError(f"group {group!r} is ephemeral: it cannot be declared")
        if not self.provision:
            return
        types = set(event_types) | (known.types if known is not None else set())
        await self._ensure_subscription(_Group(group, subscription_name(group), False, types))

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
        """The oldest ``limit`` dead letters (all with None), oldest first, at most ``limit``
        read from each subscription's dead-letter queue. They stay where they are (see the
        module doc)."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        letters: list[DeadLetter] = []
        for name in self._dlq_groups(group):
            async with self._dlq_receiver(name) as receiver:
                if receiver is None:
                    continue
                if self._peek:
                    peeked = await self._peek_all(receiver, limit)
                    if peeked is not None:
                        letters += [_dead_letter_of(name, m) for m in peeked]
                        continue
                    # the SDK shuts a handler down after a failed operation: start afresh
                    await self._forget_dlq(name)
            async with self._dlq_receiver(name) as receiver:
                if receiver is None:
                    continue
                held = await self._receive_all(receiver, limit)
                try:
                    letters += [_dead_letter_of(name, m) for m in held]
                finally:
                    await asyncio.gather(*(_quietly(receiver.abandon_message(m)) for m in held))
        letters.sort(key=lambda d: d.time)
        return letters[:limit] if limit is not None else letters

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        """Send the chosen dead letters back to their group as copies with a fresh attempt count
        (confirmed), then complete them. Returns how many."""
        wanted = None if ids is None else set(ids)
        moved = 0
        for name in self._dlq_groups(group):
            if wanted is not None and moved >= len(wanted):
                break
            async with self._dlq_receiver(name) as receiver:
                if receiver is None:
                    continue
                held = await self._receive_all(receiver)
                settled: set[int] = set()
                try:
                    for index, message in enumerate(held):
                        if wanted is not None and _dead_letter_id(message) not in wanted:
                            continue
                        await self._send([_targeted_copy(message, name, attempts=None)])
                        await receiver.complete_message(message)
                        settled.add(index)
                        moved += 1
                except _BUS_ERRORS as exc:
                    raise TransportError(f"re-drive of {name!r} failed: {exc!r}") from exc
                finally:
                    await asyncio.gather(*(
                        _quietly(receiver.abandon_message(m))
                        for i, m in enumerate(held) if i not in settled
                    ))
        return moved

    # -- internals: connection -------------------------------------------------------------

    def _connect(self) -> ServiceBusClient:
        if self._client is not None:
            return self._client
        options = {"retry_total": 3, **self.client_options}
        try:
            if self.connection_string:
                self._client = ServiceBusClient.from_connection_string(
                    self.connection_string, **options
                )
            else:
                credential = self.credential
                if credential is None:
                    from azure.identity.aio import DefaultAzureCredential

                    credential = self._owned_credential = DefaultAzureCredential()
                assert self.namespace is not None
                self._client = ServiceBusClient(self.namespace, credential, **options)
        except _CONNECT_ERRORS as exc:
            raise TransportError(f"cannot connect to Service Bus: {exc}") from exc
        return self._client

    async def _get_sender(self) -> ServiceBusSender:
        if self._sender is not None:
            return self._sender
        async with self._lock:
            if self._sender is None:
                client = self._connect()
                sender = client.get_topic_sender(self.topic)
                await _open(
                    sender,
                    missing=f"topic {self.topic!r} does not exist: run 'ai-apps servicebus provision'",
                    failed=f"cannot open a sender on {self.topic!r}",
                )
                self._sender = sender
            return self._sender

    def _admin_client(self) -> SubscriptionAdmin:
        if self._admin is None:
            self._admin = AzureSubscriptionAdmin(
                self.connection_string, namespace=self.namespace, credential=self.credential
            )
        return self._admin

    @contextlib.asynccontextmanager
    async def _dlq_receiver(self, group: str) -> AsyncIterator[ServiceBusReceiver | None]:
        """The receiver of ``group``'s dead-letter sub-queue (kept open for the next call), or
        None when the group has no subscription. One that fails is closed and forgotten."""
        receiver = self._dlq.get(group)
        if receiver is None:
            client = self._connect()
            receiver = client.get_subscription_receiver(
                self.topic, subscription_name(group), sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0,
            )
            try:
                await _open(receiver, missing="", failed=f"cannot read the dead letters of {group!r}")
            except NotProvisioned:
                log.info("no subscription, so no dead letters", group=group)
                yield None
                return
            self._dlq[group] = receiver
        try:
            yield receiver
        except BaseException:
            await self._forget_dlq(group)
            raise

    async def _forget_dlq(self, group: str) -> None:
        receiver = self._dlq.pop(group, None)
        if receiver is not None:
            await _quietly(receiver.close())

    # -- internals: groups -----------------------------------------------------------------

    async def _setup_group(self, group: _Group) -> None:
        if not group.ready and (group.ephemeral or self.provision):
            await self._ensure_subscription(group)
        group.ready = True
        for sub in group.subs:
            if sub.loop is None:
                sub.receiver = await self._open_receiver(group)
                sub.loop = asyncio.create_task(
                    self._receive_loop(group, sub), name=f"servicebus:{group.name}"
                )

    async def _ensure_subscription(self, group: _Group) -> None:
        settings = SubscriptionSettings(
            max_delivery_count=self.max_delivery_count,
            dead_lettering_on_message_expiration=not group.ephemeral,
            auto_delete_on_idle=EPHEMERAL_IDLE if group.ephemeral else None,
        )
        admin = self._admin_client()
        try:
            await admin.ensure_subscription(
                self.topic, group.subscription, rules_for(group.name, group.types), settings
            )
        except _BUS_ERRORS as exc:
            what = "an ephemeral group needs" if group.ephemeral else "provision=True needs"
            raise TransportError(
                f"cannot create the subscription {self.topic}/{group.subscription} ({what} the "
                f"Service Bus management API): {exc}"
            ) from exc

    async def _ensure_topic(self) -> None:
        try:
            await self._admin_client().ensure_topic(self.topic)
        except _BUS_ERRORS as exc:
            raise TransportError(
                f"cannot create the topic {self.topic!r} (provision=True needs the Service Bus "
                f"management API): {exc}"
            ) from exc

    async def _delete_ephemeral(self, group: _Group) -> None:
        try:
            await self._admin_client().delete_subscription(self.topic, group.subscription)
        except _BUS_ERRORS as exc:
            # auto_delete_on_idle removes it later
            log.info("close: ephemeral subscription not deleted", group=group.name, error=repr(exc))

    async def _open_receiver(self, group: _Group) -> ServiceBusReceiver:
        client = self._connect()
        receiver = client.get_subscription_receiver(
            self.topic, group.subscription, receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=self.prefetch,
        )
        await _open(
            receiver,
            missing=f"subscription {self.topic}/{group.subscription} does not exist: run "
                    "'ai-apps servicebus provision'",
            failed=f"cannot receive from {group.subscription!r}",
        )
        return receiver

    def _dlq_groups(self, group: str | None) -> list[str]:
        if group is not None:
            return [group]
        names = {g.name for g in self._groups.values() if not g.ephemeral}
        names.update(self.known_groups)
        return sorted(names)

    # -- internals: receiving --------------------------------------------------------------

    async def _receive_loop(self, group: _Group, sub: _Subscription) -> None:
        """Wait for a free handler slot, take one message and hand it to a task of its own. A
        failing receiver is closed and opened again, with a backoff.

        One message per call: ``receive_messages`` returns at once when it has as many as asked
        for (the prefetched ones first), but waits on for more when it has fewer, which would
        delay every delivery. Messages that arrive while no call is waiting are released by the
        SDK, so a busy consumer leaves them to the others."""
        pause = 0.1
        while not self._draining:
            await sub.slots.acquire()
            handed = False
            try:
                if sub.receiver is None:
                    sub.receiver = await self._open_receiver(group)
                receiver = sub.receiver
                messages = await receiver.receive_messages(
                    max_message_count=1, max_wait_time=self.receive_wait
                )
                for message in messages:
                    task = asyncio.create_task(self._handle(group, sub, receiver, message))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                    handed = True
                pause = 0.1
            except _RECEIVE_ERRORS as exc:
                log.warning("receive failed; reopening", group=group.name, error=repr(exc))
                if sub.receiver is not None:
                    await _quietly(sub.receiver.close())
                    sub.receiver = None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                if not handed:
                    sub.slots.release()

    async def _handle(
        self,
        group: _Group,
        sub: _Subscription,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
    ) -> None:
        try:
            if self._draining:
                # taken while close() stopped the loops: give it back
                await _quietly(receiver.abandon_message(message))
                return
            watch = self._watch_lock(receiver, message)
            try:
                await self._deliver(group, sub.handler, receiver, message)
            finally:
                if watch is not None:
                    watch.cancel()
        except asyncio.CancelledError:
            # close() after the grace period: another consumer gets it
            await _quietly(receiver.abandon_message(message))
            raise
        except Exception:
            # a bug of ours, not the handler's (that one is caught in _deliver)
            log.exception("delivery failed; abandoned", group=group.name)
            await _quietly(receiver.abandon_message(message))
        finally:
            sub.slots.release()

    def _watch_lock(
        self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage
    ) -> asyncio.TimerHandle | None:
        """Register the message for lock renewal if its handler is still running after a
        quarter of its lock time (5 s at most): quick handlers, the most, never need it, and
        the renewer checks each registered lock once a second for as long as it is held."""
        locked_until = message.locked_until_utc
        if self._renewer is None or locked_until is None:
            return None
        remaining = (locked_until - datetime.now(UTC)).total_seconds()
        delay = min(max(remaining / 4, 0.0), 5.0)

        def register() -> None:
            if self._renewer is None or message._settled:  # the SDK's own flag
                return
            try:
                self._renewer.register(
                    receiver, message, max_lock_renewal_duration=self.max_lock_renewal
                )
            except _REGISTER_ERRORS as exc:
                log.warning("cannot renew the lock", message_id=message.message_id, error=repr(exc))

        return asyncio.get_running_loop().call_later(delay, register)

    async def _deliver(
        self,
        group: _Group,
        handler: Handler,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
    ) -> None:
        body = _body(message)  # before settling: a settled message has no body
        attempts = attempts_of(message)
        try:
            envelope = decode(body, self._types)
        except DecodeError as exc:
            await self._failed(group, receiver, message, body, exc, attempts, None, final=True)
            return
        try:
            await handler(envelope)
        except Exception as exc:
            final = attempts >= self.retry.max_attempts or not _retryable(exc)
            await self._failed(group, receiver, message, body, exc, attempts, envelope, final=final)
            return
        await _settle(receiver.complete_message(message), group.name)

    async def _failed(
        self,
        group: _Group,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
        body: bytes,
        exc: Exception,
        attempts: int,
        envelope: Envelope | None,
        *,
        final: bool,
    ) -> None:
        event_type = envelope.type if envelope else _event_type(message)
        if group.ephemeral:
            log.warning("handler failed in an ephemeral group; dropped", group=group.name,
                        type=event_type, error=repr(exc))
            await _settle(receiver.complete_message(message), group.name)
            self._observers.dropped(group.name, event_type, attempts=attempts, exc=exc)
            return
        if final:
            log.warning("dead-lettered", group=group.name, type=event_type, attempts=attempts,
                        error=repr(exc))
            description = json.dumps({
                "error_class": type(exc).__name__, "attempts": attempts, "group": group.name,
                "at": utcnow().isoformat(),
            })
            settled = await _settle(
                receiver.dead_letter_message(
                    message, reason=_clip(_reason(exc)), error_description=description,
                ),
                group.name,
            )
            if settled:  # else the lock was lost: the broker delivers it again
                self._observers.dead_lettered(group.name, event_type, attempts=attempts, exc=exc)
            return
        delay = self.retry.delay(attempts)
        log.info("retrying", group=group.name, type=event_type, attempt=attempts,
                 delay=round(delay, 3), error=repr(exc))
        copy = _targeted_copy(message, group.name, attempts=attempts, body=body)
        if delay > 0:
            copy.scheduled_enqueue_time_utc = datetime.now(UTC) + timedelta(seconds=delay)
        try:
            await self._send([copy])
        except TransportError as error:
            # not parked anywhere: give it back (an immediate retry) rather than lose it
            log.error("cannot schedule the retry; abandoned", group=group.name, error=repr(error))
            if await _settle(receiver.abandon_message(message), group.name):
                self._observers.retried(group.name, event_type, attempt=attempts, delay=0.0,
                                        exc=exc)
            return
        # the copy is on the topic: the retry is scheduled, whatever becomes of the original
        self._observers.retried(group.name, event_type, attempt=attempts, delay=max(delay, 0.0),
                                exc=exc)
        await _settle(receiver.complete_message(message), group.name)

    async def _peek_all(
        self, receiver: ServiceBusReceiver, limit: int | None = None
    ) -> list[ServiceBusReceivedMessage] | None:
        """The first ``limit`` (every) message, peeked (from the first: a receiver kept open
        would otherwise go on from where it stopped); None where the namespace does not
        implement peeking."""
        messages: list[ServiceBusReceivedMessage] = []
        start = 1
        try:
            while limit is None or len(messages) < limit:
                count = 100 if limit is None else min(100, limit - len(messages))
                page = await receiver.peek_messages(max_message_count=count, sequence_number=start)
                if not page:
                    return messages
                messages += page
                start = max(m.sequence_number or 0 for m in page) + 1
            return messages
        except ServiceBusConnectionError as exc:
            raise TransportError(f"cannot peek at dead letters: {exc}") from exc
        except ServiceBusError as exc:
            if not _not_implemented(exc):
                raise TransportError(f"cannot peek at dead letters: {exc}") from exc
            log.info("peek not implemented here; dead letters are read by receive and abandon")
            self._peek = False
            return None

    async def _receive_all(
        self, receiver: ServiceBusReceiver, limit: int | None = None
    ) -> list[ServiceBusReceivedMessage]:
        """The first ``limit`` (every) message, locked (the caller settles or abandons each)."""
        held: list[ServiceBusReceivedMessage] = []
        try:
            while limit is None or len(held) < limit:
                count = 100 if limit is None else min(100, limit - len(held))
                page = await receiver.receive_messages(
                    max_message_count=count, max_wait_time=self.dead_letter_wait
                )
                if not page:
                    return held
                held += page
            return held
        except _BUS_ERRORS as exc:
            for message in held:
                await _quietly(receiver.abandon_message(message))
            raise TransportError(f"cannot read dead letters: {exc}") from exc

    # -- internals: sending ----------------------------------------------------------------

    async def _send(self, messages: list[ServiceBusMessage]) -> None:
        """Queue ``messages`` for the sending task and wait until Service Bus has them."""
        if self._closed:
            raise TransportError("transport is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((messages, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="servicebus:send")
        await future

    async def _flush(self) -> None:
        """Send what is queued, in batches, until nothing is: publishes made while a batch is in
        flight go together in the next."""
        while self._outbox:
            pending, self._outbox = self._outbox, []
            try:
                sender = await self._get_sender()
                errors = await self._send_batches(sender, pending)
            except TransportError as exc:
                errors = dict.fromkeys(range(len(pending)), exc)
            for index, (_, future) in enumerate(pending):
                if future.done():
                    continue
                if index in errors:
                    future.set_exception(errors[index])
                else:
                    future.set_result(None)

    async def _send_batches(
        self, sender: ServiceBusSender, pending: Sequence[tuple[list[ServiceBusMessage], Any]]
    ) -> dict[int, TransportError]:
        errors: dict[int, TransportError] = {}
        batch: ServiceBusMessageBatch | None = None
        owners: set[int] = set()

        async def send() -> None:
            nonlocal batch, owners
            if batch is not None and len(batch):
                try:
                    await sender.send_messages(batch, timeout=self.publish_timeout)
                except _BUS_ERRORS as exc:
                    error = TransportError(f"send to {self.topic!r} failed: {exc}")
                    error.__cause__ = exc
                    errors.update(dict.fromkeys(owners, error))
            batch, owners = None, set()

        try:
            for index, (messages, future) in enumerate(pending):
                if future.done():
                    continue  # the publisher was cancelled: it cannot count on this message
                for message in messages:
                    for _ in range(2):
                        if batch is None:
                            batch = await sender.create_message_batch()
                        try:
                            batch.add_message(message)
                        except MessageSizeExceededError as exc:
                            if len(batch) == 0:
                                errors[index] = TransportError(
                                    f"event too large for a Service Bus message: {exc}"
                                )
                                break
                            await send()
                            continue
                        owners.add(index)
                        break
            await send()
        except _BUS_ERRORS as exc:
            error = TransportError(f"send to {self.topic!r} failed: {exc}")
            error.__cause__ = exc
            return dict.fromkeys(range(len(pending)), error)
        return errors


# -- mapping -------------------------------------------------------------------------------


def message_of(envelope: Envelope) -> ServiceBusMessage:
    """The Service Bus message of an event (see the module doc)."""
    properties: dict[str | bytes, Any] = {}
    for name in EXTENSIONS:
        value = getattr(envelope, name)
        if value is not None:
            properties[f"ce-{name}"] = str(value)
    return ServiceBusMessage(
        encode(envelope),
        message_id=envelope.id,
        correlation_id=envelope.correlationid,
        subject=envelope.type,
        content_type=CONTENT_TYPE,
        application_properties=properties,
    )


def attempts_of(message: ServiceBusReceivedMessage) -> int:
    """Which delivery of its event this is: the attempts a copy carries, plus the broker's
    zero-based delivery count (None, as some brokers send it on a first delivery, is 0), plus 1."""
    properties = _properties(message)
    return _int(properties.get(H_ATTEMPTS)) + (message.delivery_count or 0) + 1


def _targeted_copy(
    message: ServiceBusReceivedMessage, group: str, *, attempts: int | None, body: bytes | None = None
) -> ServiceBusMessage:
    """A copy of ``message`` for ``group`` alone: with ``attempts`` (a retry) or a fresh count
    (a re-drive). It gets a message id of its own, so that duplicate detection, if the topic has
    it, does not drop it."""
    properties: dict[str | bytes, Any] = {
        k: v for k, v in _properties(message).items() if k not in _OURS
    }
    properties[H_TARGET] = group
    event_type = _event_type(message)
    if event_type:
        properties[H_EVENT_TYPE] = event_type
    if attempts is not None:
        properties[H_ATTEMPTS] = attempts
    return ServiceBusMessage(
        body if body is not None else _body(message),
        message_id=str(uuid.uuid4()),
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        application_properties=properties,
    )


def _dead_letter_of(group: str, message: ServiceBusReceivedMessage) -> DeadLetter:
    properties = _properties(message)
    reason = _text(message.dead_letter_reason or properties.get(DLQ_REASON))
    description = _text(message.dead_letter_error_description or properties.get(DLQ_DESCRIPTION))
    meta = _json_object(description)
    at = _time(meta.get("at")) or message.enqueued_time_utc or utcnow()
    return DeadLetter(
        id=_dead_letter_id(message),
        group=_text(meta.get("group")) or group,
        body=_body(message),
        reason=reason or description,
        # dead-lettered by the broker itself (MaxDeliveryCountExceeded, TTLExpiredException…):
        # its reason is the class of error there is
        error_class=_text(meta.get("error_class")) or reason,
        attempts=_int(meta.get("attempts")) or attempts_of(message),
        time=at if at.tzinfo else at.replace(tzinfo=UTC),
        event_type=_event_type(message) or None,
        correlationid=message.correlation_id,
        headers={k: _text(v) for k, v in properties.items()},
    )


def _dead_letter_id(message: ServiceBusReceivedMessage) -> str:
    return message.message_id or f"seq-{message.sequence_number}"


def _event_type(message: ServiceBusReceivedMessage) -> str:
    return message.subject or _text(_properties(message).get(H_EVENT_TYPE))


def _properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """Application properties with text keys and values (the SDK gives bytes)."""
    return {
        _text(k): (_text(v) if isinstance(v, bytes) else v)
        for k, v in (message.application_properties or {}).items()
    }


def _body(message: ServiceBusReceivedMessage) -> bytes:
    body: Any = message.body
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        return b"".join(bytes(part) for part in body)
    except TypeError:
        return json.dumps(body, default=str).encode()


# -- helpers -------------------------------------------------------------------------------


class NotProvisioned(TransportError):
    """The topic or subscription does not exist on the namespace."""

    retryable = False


async def _open(handler: ServiceBusSender | ServiceBusReceiver, *, missing: str, failed: str) -> None:
    """Open a sender or receiver, or close it again if that fails or is cancelled."""
    try:
        await handler.__aenter__()
    except BaseException as exc:
        await _quietly(handler.close())
        if isinstance(exc, MessagingEntityNotFoundError):
            raise NotProvisioned(missing) from exc
        if isinstance(exc, _BUS_ERRORS):
            raise TransportError(f"{failed}: {exc}") from exc
        raise


async def _all_or_none(calls: Sequence[Coroutine[Any, Any, Any]]) -> None:
    """Run ``calls`` concurrently; at the first failure cancel the others, wait for them, and
    raise it."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def _settle(call: Any, group: str) -> bool:
    """Complete, abandon or dead-letter; whether that went through. If not, the lock is gone
    and the broker redelivers the message, which at-least-once delivery allows."""
    try:
        await call
    except _BUS_ERRORS as exc:
        log.warning("settlement failed; the broker will redeliver", group=group, error=repr(exc))
        return False
    return True


async def _quietly(call: Any) -> None:
    """Await a close or an abandon whose failure changes nothing for us."""
    try:
        await call
    except _QUIET_ERRORS as exc:
        log.debug("ignored", error=repr(exc))


async def _lock_lost(renewable: Any, error: Exception | None) -> None:
    log.warning("message lock lost; the message will be delivered again",
                message_id=getattr(renewable, "message_id", None), error=repr(error))


def _not_implemented(exc: ServiceBusError) -> bool:
    text = str(exc)
    return "not-implemented" in text or "Status Code: 501" in text




def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}








__all__ = [
    "H_ATTEMPTS",
    "H_EVENT_TYPE",
    "H_TARGET",
    "NotProvisioned",
    "ServiceBusTransport",
    "attempts_of",
    "message_of",
]
