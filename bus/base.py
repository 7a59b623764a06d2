"""The transport contract every bus backend implements, and the values it works with."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from events.envelope import Envelope
from events.errors import AiAppsError

Handler = Callable[[Envelope], Awaitable[None]]
"""Handles one event. Returning acknowledges it; raising asks the transport to retry it."""

ALL_TYPES = "#"
"""Subscribe to every event type (the event store and audit taps use it)."""


class TransportError(AiAppsError):
    """The bus itself failed: not connected, a publish not confirmed, a bad URL."""

    retryable = True


class DeadLetterNotFound(TransportError):
    retryable = False


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a transport sends every event, as telemetry names it: the RabbitMQ exchange, the
    Service Bus topic, the in-memory bus; and the broker's address when there is one. A
    transport that has one shows it as its ``destination`` attribute (optional: nothing but
    telemetry reads it)."""

    name: str
    server_address: str | None = None
    server_port: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a subscriber group retries a failing handler before dead-lettering the message.

    ``max_attempts`` counts the first delivery: 5 means one delivery and four retries.
    The delay before retry *n* (1-based) is ``initial_delay * multiplier**(n-1)``, capped at
    ``max_delay``, with ±``jitter`` (a fraction) so that retries of a burst spread out.
    """

    max_attempts: int = 5
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        base = min(self.initial_delay * self.multiplier ** max(retry - 1, 0), self.max_delay)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return base


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a subscriber group gave up on, kept with why."""

    id: str
    group: str
    body: bytes
    reason: str
    error_class: str
    attempts: int
    time: datetime
    event_type: str | None = None
    correlationid: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


UNKNOWN_TYPE = "unknown"
"""The event type reported to observers for a message whose type cannot be told at all."""


class DeliveryObserver(Protocol):
    """Told what a transport decided about a message its handler (or its decoder) failed on.

    A transport calls these at the point the decision took effect: a retry was scheduled, the
    message was parked in the dead letters, or it was dropped (an ephemeral group neither
    retries nor dead-letters). ``event_type`` is the event's type, or, for a message that could
    not be decoded, the type the broker message claims (its routing key, subject or type
    property), else :data:`UNKNOWN_TYPE`. ``error_class`` is the class name of the error;
    ``attempt``/``attempts`` count the first delivery. Calls come from the delivery path on the
    event loop: keep them quick and never block. An observer that raises is logged and
    ignored; it never changes what happens to the message.
    """

    def retried(
        self, group: str, event_type: str, *, attempt: int, delay: float, error_class: str
    ) -> None:
        """Delivery number ``attempt`` failed; the message comes back in ``delay`` seconds."""

    def dead_lettered(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        """The message is in ``group``'s dead letters after ``attempts`` deliveries (1 for one
        that could not be decoded or whose error is not retryable)."""

    def dropped(
        self, group: str, event_type: str, *, attempts: int, error_class: str, reason: str
    ) -> None:
        """An ephemeral group's handler (or decoder) failed: the message is acknowledged and
        gone. Only ephemeral groups drop; they are never retried nor dead-lettered."""


@runtime_checkable
class ObservableTransport(Protocol):
    """A transport that reports retries, dead letters and drops to observers
    (:class:`DeliveryObserver`). Every backend here does; it is kept apart from
    :class:`Transport` so that a transport without it (a test double, a recorder) is still a
    transport."""

    def add_observer(self, observer: DeliveryObserver) -> None:
        """Report to ``observer`` from now on (adding the same observer twice adds it once)."""

    def remove_observer(self, observer: DeliveryObserver) -> None:
        """Stop reporting to ``observer`` (nothing happens if it was not added)."""


def observe(transport: object, observer: DeliveryObserver) -> bool:
    """Add ``observer`` to ``transport`` if it reports deliveries; whether it does."""
    if isinstance(transport, ObservableTransport):
        transport.add_observer(observer)
        return True
    return False


@runtime_checkable
class Transport(Protocol):
    """A message bus: publish events, subscribe groups of competing consumers.

    Every group receives every event whose type it subscribed to; within a group each event is
    handled by one consumer. Delivery is at least once: the message is acknowledged after the
    handler returns; a handler that raises is retried with backoff and then dead-lettered with
    the reason. A message that cannot be decoded is dead-lettered at once. (The backends also
    report each retry and dead letter to observers: :class:`ObservableTransport`.)
    """

    async def start(self) -> None:
        """Connect and begin consuming for every subscription made so far."""

    async def close(self) -> None:
        """Stop taking messages, let in-flight handlers finish (or return their messages), and
        disconnect."""

    async def publish(self, envelope: Envelope) -> None:
        """Publish an event; returns once the bus has accepted it (publisher confirm)."""

    async def subscribe(
        self,
        group: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        concurrency: int | None = None,
        ephemeral: bool = False,
    ) -> None:
        """Deliver events of ``event_types`` (or :data:`ALL_TYPES`) to ``handler`` as part of
        ``group``. Call before or after :meth:`start`. An ``ephemeral`` group belongs to this
        subscriber alone and disappears when it closes (a CLI waiting for its replies); it has
        no dead-letter queue and is not retried."""

    async def declare(self, group: str, event_types: Collection[str]) -> None:
        """Make sure durable ``group`` exists and takes ``event_types`` (or
        :data:`ALL_TYPES`), without consuming: events of those types published from now on
        are kept for the group until one of its consumers takes them, even if none has ever
        run. Every process of a deployment declares every group it knows at start, so a
        message published before its consumer's process starts waits instead of being lost.
        Idempotent; bindings are only ever added. (In memory, where a consumer can only be in
        the same process, they are kept only for a group subscribed before :meth:`start`: see
        :meth:`bus.memory.InMemoryTransport.declare`.)"""

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        """Every dead-lettered message, oldest first, optionally of one group; they stay
        where they are (:meth:`peek_dead_letters` reads only the oldest few)."""

    async def peek_dead_letters(
        self, group: str | None = None, limit: int | None = None
    ) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (every one with None), optionally of one group,
        left where they are. A broker backend reads at most ``limit`` messages of each
        dead-letter queue, so a long queue is not read into memory to show a few."""

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        """Send dead letters back to their group's queue with a fresh attempt count.

        ``ids=None`` re-drives all (of ``group`` if given): those there when it starts, not the
        ones dead-lettered again meanwhile. Returns how many were re-driven; with ``ids``, an
        id not found (re-driven already, or held by a concurrent listing on a broker) is not
        counted."""
