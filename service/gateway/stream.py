"""Responses out: Server-Sent Events of ``ResponseReady`` and ``InquiryFailed`` per tenant.

Every stream reads the event store from the last sequence number it sent, so replay (a
``Last-Event-ID`` after a reconnect) and live delivery are one path with one order, and each
event goes out once per stream. The bus only wakes streams: the gateway subscribes an
ephemeral group to the terminal events, appends each to the event store (idempotent by id, so
it is readable even before the recorder gets to it) and wakes that tenant's streams. Idle
streams also read the store every ``stream_poll_interval`` seconds and send a keep-alive
comment every ``stream_keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import structlog
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from bus.base import Transport
from events.envelope import Envelope, encode
from events.support import InquiryFailed, ResponseReady
from saga.store import SagaStore

log = structlog.get_logger("gateway.stream")

STREAM_TYPES = (ResponseReady.event_type, InquiryFailed.event_type)


class ResponseHub:
    """Wakes the streams of a tenant when a terminal event of that tenant crosses the bus."""

    def __init__(self, transport: Transport, store: SagaStore) -> None:
        self.transport = transport
        self.store = store
        self.group = f"gateway.{uuid.uuid4().hex[:12]}"
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self.closing = False

    async def start(self) -> None:
        await self.transport.subscribe(self.group, STREAM_TYPES, self._on_event, ephemeral=True)

    async def _on_event(self, envelope: Envelope) -> None:
        try:
            await self.store.append_events([envelope])
        except Exception as exc:  # the recorder appends it too; streams poll as well
            log.warning("could not record a terminal event", error=repr(exc),
                        correlation_id=envelope.correlationid)
        self.wake(envelope.tenant)

    def wake(self, tenant: str) -> None:
        for event in self._listeners.get(tenant, ()):
            event.set()

    @contextlib.contextmanager
    def listen(self, tenant: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._listeners.setdefault(tenant, set()).add(event)
        try:
            yield event
        finally:
            listeners = self._listeners.get(tenant)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    del self._listeners[tenant]

    @property
    def streams(self) -> int:
        return sum(len(v) for v in self._listeners.values())

    def close(self) -> None:
        """Tell every stream to end."""
        self.closing = True
        for listeners in self._listeners.values():
            for event in listeners:
                event.set()


def sse_event(seq: int, envelope: Envelope) -> str:
    """One SSE event: ``id`` the store sequence, ``event`` the type, ``data`` the CloudEvent
    (compact JSON has no raw newline, so it is one ``data`` line)."""
    return f"id: {seq}\nevent: {envelope.type}\ndata: {encode(envelope).decode()}\n\n"


async def event_stream(
    hub: ResponseHub,
    store: SagaStore,
    tenant: str,
    after: int,
    *,
    inquiry_id: str | None = None,
    channel: str | None = None,
    batch: int = 100,
    poll_interval: float = 5.0,
    keepalive: float = 15.0,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[str]:
    """The SSE text of a tenant's terminal events after sequence ``after``, then live."""
    channels: dict[str, str | None] = {}

    async def channel_of(envelope: Envelope) -> str | None:
        cid = envelope.correlationid
        if cid not in channels:
            state = await store.load(cid)
            channels[cid] = (
                str(state.start.data.get("channel")) if state is not None else None
            )
        return channels[cid]

    last = after
    with hub.listen(tenant) as woken:
        yield f"retry: 3000\n: stream of {', '.join(STREAM_TYPES)} after {last}\n\n"
        quiet_since = time.monotonic()
        while not hub.closing:
            woken.clear()
            rows = await store.events_since(
                last, tenant, STREAM_TYPES, batch, correlationid=inquiry_id
            )
            for seq, envelope in rows:
                last = seq
                if channel is not None and await channel_of(envelope) != channel:
                    continue
                yield sse_event(seq, envelope)
                quiet_since = time.monotonic()
            if len(rows) == batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), poll_interval)
            if time.monotonic() - quiet_since >= keepalive:
                if still_allowed is not None and not await still_allowed():
                    yield ": the API key was revoked\n\n"
                    return
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()


class EventStreamResponse(Response):
    """A ``text/event-stream`` response that ends as soon as the client goes away (it
    listens for ``http.disconnect`` whatever the server's ASGI version) or the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers({
            "Cache-Control": "no-store", "X-Accel-Buffering": "no", **(headers or {}),
        })

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})

        async def pump() -> None:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk.encode(),
                            "more_body": True})

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    return

        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(pump()),
                                          asyncio.create_task(watch())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        streamed = outcomes[0]
        if isinstance(streamed, BaseException) and not isinstance(
            streamed, asyncio.CancelledError
        ):
            raise streamed  # a failure of the stream itself
        if streamed is None:  # the stream ended (shutdown, revoked key): end the response
            await send({"type": "http.response.body", "body": b"", "more_body": False})
