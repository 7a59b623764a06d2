"""The event recorder: appends every event that crosses the bus to the event store."""

from __future__ import annotations

from bus.base import ALL_TYPES, Transport
from events.envelope import Envelope
from saga.store import SagaStore

RECORDER_GROUP = "event-store"


class EventRecorder:
    """A subscriber group of its own on every event type; appends are idempotent by id."""

    def __init__(self, transport: Transport, store: SagaStore) -> None:
        self.transport = transport
        self.store = store

    async def start(self) -> None:
        # one at a time, so the store's order is the order the bus delivered them in
        await self.transport.subscribe(RECORDER_GROUP, [ALL_TYPES], self.handle, concurrency=1)

    async def handle(self, envelope: Envelope) -> None:
        await self.store.append_events([envelope])
