"""The event recorder: appends every event that crosses the bus to the event store."""

from __future__ import annotations

from collections.abc import Sequence

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
        # appends run concurrently (and several recorders compete), so the store's order is
        # only roughly causal; readers that need causal order use causal_order()
        await self.transport.subscribe(RECORDER_GROUP, [ALL_TYPES], self.handle)

    async def handle(self, envelope: Envelope) -> None:
        await self.store.append_events([envelope])


def causal_order(envelopes: Sequence[Envelope]) -> list[Envelope]:
    """Events with every cause before its effects (by ``causationid``); otherwise by time,
    then by the order given. Events whose cause is not in the list count as roots."""
    by_id = {e.id: e for e in envelopes}
    children: dict[str | None, list[Envelope]] = {}
    for env in envelopes:
        parent = env.causationid if env.causationid in by_id else None
        children.setdefault(parent, []).append(env)
    position = {e.id: i for i, e in enumerate(envelopes)}
    out: list[Envelope] = []
    ready = sorted(children.get(None, []), key=lambda e: (e.time, position[e.id]))
    while ready:
        env = ready.pop(0)
        out.append(env)
        ready.extend(children.get(env.id, []))
        ready.sort(key=lambda e: (e.time, position[e.id]))
    return out
