"""Test helpers shipped with the library: the whole service in one process on fake providers,
an in-memory bus and a manual clock, so a test can script failures and move time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from actors.cache import result_cache
from actors.providers.fake import FakeProviders
from bus.base import RetryPolicy
from bus.memory import InMemoryTransport
from events.common import BlobRef
from events.envelope import Envelope
from events.support import Customer, InquiryReceived
from saga.clock import ManualClock
from saga.memory_store import InMemorySagaStore
from saga.state import SagaState
from saga.store import SagaStore
from service.settings import ProviderSettings, Settings
from service.wiring import Service


def fake_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for a test: fake providers, memory bus, blobs under ``tmp``, fast retries."""
    values: dict[str, Any] = {
        "bus": "memory://",
        "store": "memory://",
        "blobs": tmp / "blobs",
        "providers": ProviderSettings(
            language="fake", vision="fake", translation="fake", responder="fake", speech="fake"
        ),
        "bus_retry_delay": 0.01,
        "timer_interval": 3600.0,  # tests fire timers themselves after moving the clock
        "shutdown_grace": 0.05,  # a hung fake call is cancelled at close, not waited for
    }
    values.update(overrides)
    return Settings(**values)


class FakeService(Service):
    """The embedded service on fakes. ``providers`` holds the fakes to script; ``clock`` is a
    :class:`ManualClock`; :meth:`settle` runs the bus until nothing is left to do."""

    def __init__(
        self,
        tmp: Path,
        *,
        store: SagaStore | None = None,
        providers: FakeProviders | None = None,
        clock: ManualClock | None = None,
        **overrides: Any,
    ) -> None:
        self.fakes = providers or FakeProviders()
        self.clock = clock or ManualClock()
        self.memory = InMemoryTransport(
            retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0), drain_timeout=0
        )
        super().__init__(
            fake_settings(tmp, **overrides),
            providers={
                "language": self.fakes.language, "vision": self.fakes.vision,
                "translation": self.fakes.translation, "responder": self.fakes.responder,
                "speech": self.fakes.speech,
            },
            clock=self.clock,
            transport=self.memory,
            store=store or InMemorySagaStore(),
        )

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every event is handled, except those whose fake provider hangs."""
        async with asyncio.timeout(timeout):
            while True:
                if self.memory.pending <= self._hanging():
                    for _ in range(5):
                        await asyncio.sleep(0)
                    if self.memory.pending <= self._hanging():
                        return
                await asyncio.sleep(0.001)

    def _hanging(self) -> int:
        # a duplicate delivery waiting for the claim of a hung call is as stuck as the call,
        # and so is a request waiting for an identical call in flight (the cache's
        # single-flight) until that call is too old to wait for
        hung = sum(b.hanging for b in self.fakes.behaviours().values())
        if not hung:
            return 0
        cache = result_cache(self.runtime.actors)
        return hung + self.runtime.waiting_on_claims + (cache.waiting if cache else 0)

    async def advance(self, seconds: float) -> int:
        """Move the clock, fire the timers now due, and settle. Returns timers fired."""
        self.clock.advance(seconds)
        assert self.coordinator is not None
        fired = await self.coordinator.fire_due_timers()
        await self.settle()
        return fired

    async def saga(self, inquiry_id: str) -> SagaState:
        state = await self.store.load(inquiry_id)
        assert state is not None, f"no saga {inquiry_id}"
        return state

    async def terminal_events(self, inquiry_id: str) -> list[Envelope]:
        """Every terminal event of the inquiry that was stored (must be exactly one)."""
        return [
            e for e in await self.store.events(inquiry_id)
            if e.type in ("ResponseReady", "InquiryFailed")
        ]


def make_inquiry(
    inquiry_id: str = "inq-1",
    message: str = "How do I reset my password?",
    *,
    language: str | None = None,
    attachments: tuple[BlobRef, ...] = (),
    voice_reply: bool = False,
    name: str | None = "Alex",
) -> InquiryReceived:
    return InquiryReceived(
        inquiry_id=inquiry_id, customer=Customer(id="cust-1", name=name), channel="web",
        language=language, message=message, attachments=attachments, voice_reply=voice_reply,
    )
