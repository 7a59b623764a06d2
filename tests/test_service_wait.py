"""``Service.wait``: the answer arrives on the reply subscription, or is found in the event
store when the subscription missed it (a broker restart deleted the ephemeral queue)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from events import Envelope, InquiryFailed
from saga import InMemorySagaStore
from service import wiring
from service.testing import fake_settings
from service.wiring import Service


async def test_wait_finds_an_answer_the_subscription_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wiring, "STORE_POLL_FIRST", 0.05)
    store = InMemorySagaStore()
    svc = Service(fake_settings(tmp_path), coordinator=False, actors=[], store=store)
    answer = Envelope.new(InquiryFailed(inquiry_id="inq-9", reason="no answer"),
                          correlationid="inq-9")
    async with svc:
        waiting = asyncio.create_task(svc.wait("inq-9", timeout=10))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await store.append_events([answer])  # stored, never delivered to this process
        got = await waiting
    assert got.id == answer.id


async def test_wait_times_out_when_there_is_no_answer(tmp_path: Path) -> None:
    svc = Service(fake_settings(tmp_path), coordinator=False, actors=[],
                  store=InMemorySagaStore())
    async with svc:
        with pytest.raises(TimeoutError):
            await svc.wait("inq-none", timeout=0.2)
        assert not svc._waiters
