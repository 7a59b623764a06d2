"""The in-memory transport passes the transport contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bus import InMemoryTransport, RetryPolicy
from events import Envelope
from tests.conformance.transport import PublishRaw, TransportContract, inquiry


@pytest.fixture
async def transport() -> AsyncIterator[InMemoryTransport]:
    t = InMemoryTransport(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0))
    yield t
    await t.close()


@pytest.fixture
def publish_raw(transport: InMemoryTransport) -> PublishRaw:
    async def publish(body: bytes, routing_key: str) -> None:
        transport.publish_raw(body, routing_key)

    return publish


class TestInMemoryTransport(TransportContract):
    """The embedded default behaves as every transport must."""

    async def test_idle_waits_for_retries(self, transport: InMemoryTransport) -> None:
        """idle() returns only when nothing is queued, in flight or waiting for a retry."""
        calls: list[int] = []

        async def handler(env: object) -> None:
            calls.append(1)
            if len(calls) < 2:
                raise RuntimeError("once")

        await transport.subscribe("g", ["InquiryReceived"], handler)
        await transport.start()
        await transport.publish(inquiry(1))
        await transport.idle(timeout=5)
        assert len(calls) == 2
        assert transport.pending == 0


class TestDeclaredGroupsInMemory:
    """A declared group keeps events only until start: in one process, one without a handler by
    then never gets one, and keeping its events would fill memory for ever."""

    async def test_held_events_are_dropped_at_start_with_one_warning(self) -> None:
        """What a declared group without a handler held is dropped at start (one warning with
        the group and the count), and nothing more is kept for it afterwards."""
        t = InMemoryTransport()
        await t.declare("never", ["InquiryReceived"])
        for i in range(3):
            await t.publish(inquiry(i))
        assert t.held == 3
        with capture_logs() as logs:
            await t.start()
        try:
            assert t.held == 0
            warnings = [e for e in logs if e["log_level"] == "warning"]
            assert [(e["group"], e["dropped"]) for e in warnings] == [("never", 3)]
            for i in range(100):
                await t.publish(inquiry(i))
            assert t.held == 0
            assert t.pending == 0
        finally:
            await t.close()

    async def test_a_group_declared_after_start_keeps_nothing(self) -> None:
        """A group declared once the transport runs has no handler to wait for: its events are
        not kept, while a handler that subscribes later still gets what is published then."""
        t = InMemoryTransport()
        await t.start()
        try:
            await t.declare("late", ["InquiryReceived"])
            await t.publish(inquiry(1))
            assert t.held == 0
            got: list[str] = []

            async def handler(env: Envelope) -> None:
                got.append(env.correlationid)

            await t.subscribe("late", ["InquiryReceived"], handler)
            await t.publish(inquiry(2))
            await t.idle(timeout=5)
            assert got == ["inq-2"]
        finally:
            await t.close()

    async def test_a_group_subscribed_before_start_gets_what_it_held(self) -> None:
        """The order a process starts in (declare every group, subscribe its own, start): the
        events published meanwhile reach the subscribed group, and only the other is dropped."""
        t = InMemoryTransport()
        got: list[str] = []

        async def handler(env: Envelope) -> None:
            got.append(env.correlationid)

        await t.declare("mine", ["InquiryReceived"])
        await t.declare("theirs", ["InquiryReceived"])
        await t.publish(inquiry(1))
        await t.subscribe("mine", ["InquiryReceived"], handler)
        await t.start()
        try:
            await t.idle(timeout=5)
            assert got == ["inq-1"]
            assert t.held == 0
        finally:
            await t.close()
