"""The actor inbox: a request delivered twice is worked on once and paid once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.providers.fake import FakeProviders
from bus import InMemoryTransport, RetryPolicy
from events import Envelope, ResponseGenerated, StepFailed, TranslateTextRequested
from saga import SqliteSagaStore
from service.testing import fake_settings
from service.wiring import Service


class TestInbox:
    async def test_concurrent_duplicate_deliveries_call_the_provider_once(
        self, tmp_path: Path
    ) -> None:
        """Two deliveries of one request in flight at once in one worker: one provider call,
        and both deliveries answer with the same recorded result."""
        fakes = FakeProviders()
        fakes.translation.behaviour.latency = 0.3
        transport = InMemoryTransport(retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
        store = SqliteSagaStore(tmp_path / "s.db")
        answers: list[Envelope] = []

        async def collect(env: Envelope) -> None:
            answers.append(env)

        svc = Service(fake_settings(tmp_path), coordinator=False, actors=["translation"],
                      providers={"translation": fakes.translation}, transport=transport,
                      store=store)
        await transport.subscribe("probe", ["TextTranslated", StepFailed.event_type], collect)
        async with svc:
            request = Envelope.new(TranslateTextRequested(text="hola", to_language="en",
                                                          from_language="es"),
                                   correlationid="c1", subject="translate_in")
            await transport.publish(request)
            await transport.publish(request)  # the same event id: a redelivery
            await transport.idle(10)
        assert len(fakes.translation.behaviour.calls) == 1
        assert len(answers) == 2
        assert answers[0] == answers[1]
        assert all(a.causationid == request.id for a in answers)
        assert not isinstance(answers[0].data, ResponseGenerated)


class TestClaimRelease:
    async def test_crashed_delivery_gives_its_claim_back(self, tmp_path: Path) -> None:
        """A handler that crashes (not a provider error) releases its claim: the bus's retry
        is handled at once instead of waiting out the lease."""
        fakes = FakeProviders()
        crash = tmp_path / "crash"
        crash.write_text("x")
        fakes.translation.behaviour.crash_file = crash
        transport = InMemoryTransport(retry=RetryPolicy(max_attempts=3, initial_delay=0.05,
                                                        jitter=0))
        store = SqliteSagaStore(tmp_path / "s.db")
        answers: list[Envelope] = []

        async def collect(env: Envelope) -> None:
            answers.append(env)
            crash.unlink(missing_ok=True)

        svc = Service(fake_settings(tmp_path, claim_lease=60.0), coordinator=False,
                      actors=["translation"], providers={"translation": fakes.translation},
                      transport=transport, store=store)
        await transport.subscribe("probe", ["TextTranslated"], collect)

        async def heal_after_first_crash() -> None:
            while len(fakes.translation.behaviour.calls) < 1:
                await asyncio.sleep(0.01)
            crash.unlink(missing_ok=True)

        async with svc:
            healer = asyncio.create_task(heal_after_first_crash())
            request = Envelope.new(TranslateTextRequested(text="hola", to_language="en",
                                                          from_language="es"),
                                   correlationid="c1", subject="translate_in")
            await transport.publish(request)
            # with the claim kept, the retry would wait the 60 s lease
            await transport.idle(5)
            await healer
        assert len(answers) == 1
        assert len(fakes.translation.behaviour.calls) == 2
