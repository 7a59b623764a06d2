"""The in-process transport: the embedded default, and a real backend for tests.

Messages are encoded to bytes on publish and decoded on delivery, exactly as on a broker, so
the codec and the dead-lettering of bad messages are exercised the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import structlog

from bus._wire import Observers
from bus._wire import reason as _reason
from bus._wire import retryable as _retryable
from bus.base import (
    ALL_TYPES,
    DeadLetter,
    DeliveryObserver,
    Destination,
    Handler,
    RetryPolicy,
    TransportError,
)
from events.base import EventRegistry, registry
from events.envelope import Envelope, decode, encode, utcnow
from events.errors import DecodeError

log = structlog.get_logger("bus.memory")


@dataclass(slots=True)
class _Delivery:
    id: str
    body: bytes
    routing_key: str
    attempts: int = 0


@dataclass(slots=True)
class _Group:
    name: str
    types: set[str]
    handlers: list[tuple[Handler, int]]
    ephemeral: bool = False
    queue: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    held: list[_Delivery] = field(default_factory=list)
    """Events for a declared group that no handler has subscribed to yet: they wait here
    (not counted as pending, so :meth:`InMemoryTransport.idle` does not wait for a consumer
    that may never come) and are queued when the first handler subscribes."""
    holding: bool = True
    """Whether events are kept in :attr:`held` while the group has no handler: until the
    transport starts (see :meth:`InMemoryTransport.declare`)."""

    def wants(self, routing_key: str) -> bool:
        return ALL_TYPES in self.types or routing_key in self.types


class InMemoryTransport:
    """An asyncio bus in one process, with subscriber groups, retries and dead letters.

    An ephemeral group, as on a broker, is neither retried nor dead-lettered: a message its
    handler fails on is logged and dropped. Retries, dead letters and drops are reported to
    the observers added with :meth:`add_observer`."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        types: EventRegistry = registry,
        drain_timeout: float = 5.0,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.drain_timeout = drain_timeout
        self.concurrency = concurrency
        self._types = types
        self._groups: dict[str, _Group] = {}
        self._dead: deque[DeadLetter] = deque()
        self._started = False
        self._closing = False
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._observers = Observers()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> InMemoryTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._closing = False
        for group in self._groups.values():
            if not group.handlers:
                self._stop_holding(group)
            self._spawn(group)

    async def close(self) -> None:
        if not self._started:
            return
        if self.drain_timeout > 0:
            # what is queued or in flight is handled first: nothing in memory survives a close
            with contextlib.suppress(TimeoutError):
                await self.idle(self.drain_timeout)
        self._closing = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        workers = [w for g in self._groups.values() for w in g.workers]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for group in self._groups.values():
            group.workers.clear()
        self._started = False

    # -- publish / subscribe ---------------------------------------------------------------

    async def publish(self, envelope: Envelope) -> None:
        if self._closing:
            raise TransportError("transport is closed")
        self._route(encode(envelope), envelope.type)

    def publish_raw(self, body: bytes, routing_key: str) -> None:
        """Put raw bytes on the bus as if another client had published them (for tests and
        for re-driving)."""
        self._route(body, routing_key)

    async def subscribe(
        self,
        group: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        concurrency: int | None = None,
        ephemeral: bool = False,
    ) -> None:
        grp = self._groups.get(group)
        if grp is None:
            grp = self._groups[group] = _Group(group, set(event_types), [], ephemeral)
        elif grp.ephemeral != ephemeral:
            raise ValueError(f"group {group!r} is already subscribed with ephemeral={grp.ephemeral}")
        else:
            grp.types.update(event_types)
        grp.handlers.append((handler, concurrency or self.concurrency))
        held, grp.held = grp.held, []
        for delivery in held:
            self._enqueue(grp, delivery)
        if self._started:
            self._spawn(grp, only_last=True)

    async def declare(self, group: str, event_types: Collection[str]) -> None:
        """Keep ``event_types`` for ``group`` from now on, until a handler subscribes to it,
        as long as that is before :meth:`start`.

        Nothing in memory outlives the process, so the only consumer a declared group can
        ever have is one subscribed in this process, and a process subscribes its groups
        before it starts the transport (as ai-apps' ``Service.start`` does). A group still
        without a handler at start never gets one: what it held is dropped then, with one
        warning naming it and the count, and nothing more is kept for it (a handler that
        subscribes later after all gets the events published from then on). A group declared
        after start keeps nothing either. So what is held is bounded by what is published
        before start, and a partial in-memory deployment (some actors only) does not keep
        the other groups' events for ever."""
        if isinstance(event_types, str):
            raise TypeError("event_types must be a collection of type names, not a str")
        grp = self._groups.get(group)
        if grp is None:
            grp = self._groups[group] = _Group(group, set(event_types), [])
            if self._started:
                self._stop_holding(grp)
        elif grp.ephemeral:
            raise ValueError(f"group {group!r} is ephemeral: it cannot be declared")
        else:
            grp.types.update(event_types)

    # -- observers -------------------------------------------------------------------------

    def add_observer(self, observer: DeliveryObserver) -> None:
        """Report retries, dead letters and drops to ``observer``."""
        self._observers.add(observer)

    def remove_observer(self, observer: DeliveryObserver) -> None:
        self._observers.remove(observer)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        return await self.peek_dead_letters(group)

    async def peek_dead_letters(
        self, group: str | None = None, limit: int | None = None
    ) -> list[DeadLetter]:
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        letters = [d for d in self._dead if group is None or d.group == group]
        return letters[:limit] if limit is not None else letters

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        chosen = [
            d
            for d in self._dead
            if (ids is None or d.id in ids) and (group is None or d.group == group)
        ]
        for letter in chosen:
            grp = self._groups.get(letter.group)
            if grp is None:  # checked before the letter leaves the dead letters
                raise TransportError(f"group {letter.group!r} no longer subscribes")
            self._dead.remove(letter)
            self._enqueue(
                grp, _Delivery(letter.id, letter.body, letter.event_type or "", attempts=0)
            )
        return len(chosen)

    # -- waiting ---------------------------------------------------------------------------

    async def idle(self, timeout: float | None = None) -> None:
        """Wait until no message is queued, in flight or waiting for a retry."""
        async with asyncio.timeout(timeout):
            while True:
                await self._idle.wait()
                # a handler may publish as it finishes; give the loop one turn to settle
                await asyncio.sleep(0)
                if self._pending == 0:
                    return

    destination = Destination("memory")
    """For telemetry: the in-process bus is the one destination of every event."""

    @property
    def pending(self) -> int:
        """Messages queued, in flight, or waiting for a retry."""
        return self._pending

    @property
    def held(self) -> int:
        """Events kept for declared groups no handler has subscribed to yet (before start)."""
        return sum(len(g.held) for g in self._groups.values())

    # -- internals -------------------------------------------------------------------------

    def _route(self, body: bytes, routing_key: str) -> None:
        for group in self._groups.values():
            if (group.handlers or group.holding) and group.wants(routing_key):
                self._enqueue(group, _Delivery(str(uuid.uuid4()), body, routing_key))

    def _enqueue(self, group: _Group, delivery: _Delivery) -> None:
        if not group.handlers:
            group.held.append(delivery)
            return
        self._pending += 1
        self._idle.clear()
        group.queue.put_nowait(delivery)

    def _stop_holding(self, group: _Group) -> None:
        """``group`` has no handler at start (or was declared after it): it never will in
        this process, so keeping its events would only fill memory."""
        if not group.holding:
            return
        group.holding = False
        dropped, group.held = len(group.held), []
        if dropped:
            log.warning("declared group has no handler in this process; its events dropped",
                        group=group.name, dropped=dropped)
        else:
            log.info("declared group has no handler in this process; its events are not kept",
                     group=group.name)

    def _done(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    def _spawn(self, group: _Group, *, only_last: bool = False) -> None:
        handlers = group.handlers[-1:] if only_last else group.handlers
        for handler, concurrency in handlers:
            for _ in range(concurrency):
                group.workers.append(asyncio.create_task(self._consume(group, handler)))

    async def _consume(self, group: _Group, handler: Handler) -> None:
        while True:
            delivery = await group.queue.get()
            try:
                await self._deliver(group, handler, delivery)
            finally:
                group.queue.task_done()

    async def _deliver(self, group: _Group, handler: Handler, delivery: _Delivery) -> None:
        delivery.attempts += 1
        try:
            envelope = decode(delivery.body, self._types)
        except DecodeError as exc:
            if group.ephemeral:
                self._drop(group, delivery, exc, delivery.routing_key)
            else:
                self._dead_letter(group, delivery, exc, envelope=None)
            self._done()
            return
        try:
            await handler(envelope)
        except asyncio.CancelledError:
            # shutting down mid-handler: the message goes back, as a broker would do
            group.queue.put_nowait(delivery)
            raise
        except Exception as exc:
            if group.ephemeral:
                self._drop(group, delivery, exc, envelope.type)
                self._done()
                return
            if delivery.attempts >= self.retry.max_attempts or not _retryable(exc):
                log.warning(
                    "dead-lettered", group=group.name, type=envelope.type,
                    attempts=delivery.attempts, error=repr(exc),
                )
                self._dead_letter(group, delivery, exc, envelope=envelope)
                self._done()
                return
            delay = self.retry.delay(delivery.attempts)
            log.info(
                "retrying", group=group.name, type=envelope.type, attempt=delivery.attempts,
                delay=round(delay, 3), error=repr(exc),
            )
            self._schedule(group, delivery, delay)
            self._observers.retried(
                group.name, envelope.type, attempt=delivery.attempts, delay=delay, exc=exc
            )
            return
        self._done()

    def _drop(self, group: _Group, delivery: _Delivery, exc: Exception, event_type: str) -> None:
        log.warning("handler failed in an ephemeral group; dropped", group=group.name,
                    type=event_type, error=repr(exc))
        self._observers.dropped(group.name, event_type, attempts=delivery.attempts, exc=exc)

    def _schedule(self, group: _Group, delivery: _Delivery, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def requeue() -> None:
            self._timers.discard(timer)
            group.queue.put_nowait(delivery)

        timer = loop.call_later(delay, requeue)
        self._timers.add(timer)

    def _dead_letter(
        self, group: _Group, delivery: _Delivery, exc: BaseException, envelope: Envelope | None
    ) -> None:
        event_type = envelope.type if envelope else delivery.routing_key or None
        self._dead.append(
            DeadLetter(
                id=delivery.id,
                group=group.name,
                body=delivery.body,
                reason=_reason(exc),
                error_class=type(exc).__name__,
                attempts=delivery.attempts,
                time=utcnow(),
                event_type=event_type,
                correlationid=envelope.correlationid if envelope else None,
            )
        )
        self._observers.dead_lettered(group.name, event_type, attempts=delivery.attempts, exc=exc)

