"""The in-memory transport passes the transport contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus import InMemoryTransport, RetryPolicy
from tests.conformance.transport import PublishRaw, TransportContract


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
        from tests.conformance.transport import inquiry

        await transport.publish(inquiry(1))
        await transport.idle(timeout=5)
        assert len(calls) == 2
        assert transport.pending == 0
