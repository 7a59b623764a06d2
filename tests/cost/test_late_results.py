"""Paid calls are billed even when their answers come too late (after their attempt timed out,
or after the saga ended); and every dispatched request carries its deadline, which the actor
runtime honours: an expired request is not called, a call in progress ends by it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import pytest

from actors.capabilities import Translation
from actors.errors import ThrottledError
from actors.providers.fake import FakeTranslator
from actors.runtime import Actor, ActorRuntime
from actors.services import TranslationActor
from actors.throttle import LocalRateLimiter, Quota, ThrottledProvider, waiting_at_most
from bus.memory import InMemoryTransport
from events import Envelope, ResponseReady, StepFailed, TextTranslated, TranslateTextRequested
from events.envelope import decode, encode
from saga.clock import ManualClock
from saga.memory_store import InMemorySagaStore
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry
from tests.cost.test_budget import PRICES

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
NO_CACHE = CostSettings(cache=CacheSettings(enabled=False))


class LateTranslator(FakeTranslator):
    """Holds its first call until ``release()``: an answer that comes after the timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = True

    def release(self) -> None:
        self.gate.set()

    async def translate(
        self, text: str, to_language: str, from_language: str | None = None
    ) -> Translation:
        if self.held:
            self.held = False
            self.behaviour.hanging += 1
            try:
                await self.gate.wait()
            finally:
                self.behaviour.hanging -= 1
        return await super().translate(text, to_language, from_language)


def late_service(tmp_path: Path, **overrides: object) -> tuple[FakeService, LateTranslator]:
    svc = FakeService(tmp_path, pricing=PRICES, cost=NO_CACHE, **overrides)  # type: ignore[arg-type]
    late = LateTranslator()
    svc.fakes.translation = late
    translator = next(a for a in svc.runtime.actors if isinstance(a, TranslationActor))
    translator.provider = late
    return svc, late


async def ledger(svc: FakeService, saga_id: str) -> list[tuple[str, Decimal]]:
    store = svc.store
    assert isinstance(store, InMemorySagaStore)
    return sorted((e.step, e.cost) for e in store._ledger.values() if e.correlation_id == saga_id)


class TestStaleResults:
    async def test_an_answer_after_its_timeout_is_billed_and_counted(
        self, tmp_path: Path
    ) -> None:
        """The first translation answers after its attempt timed out: it is not used (the
        retry's answer is), but both calls are in the ledger and in the saga's cost."""
        svc, late = late_service(tmp_path)
        async with svc:
            await svc.submit(make_inquiry("inq-1", message="hola", language="es"))
            await svc.settle()
            await svc.advance(30)  # translate_in times out; a retry is due in a second
            late.release()
            await svc.settle()  # the late answer comes in
            state = await svc.saga("inq-1")
            (request_id,) = state.late_costs
            assert state.late_costs[request_id].step == "translate_in"
            assert not state.late_costs[request_id].after_end
            await svc.advance(1)  # the retry, answered at once
            done = (await svc.wait("inq-1", timeout=10)).data
            billed = await ledger(svc, "inq-1")
        per_call = Decimal(20) * 4 / 1_000_000  # "hola"
        assert isinstance(done, ResponseReady)
        assert done.degraded == ()
        assert [c for s, c in billed if s == "translate_in"] == [per_call, per_call]
        assert done.cost is not None
        assert done.cost.by_step["translate_in"] == 2 * per_call
        assert done.cost.total == sum(c for _, c in billed)

    async def test_an_answer_after_the_saga_ended_is_billed(self, tmp_path: Path) -> None:
        """The saga gave up on the translation and answered; the translation's late answer
        goes to the ledger and the saga's late costs (the terminal event is out), once."""
        svc, late = late_service(tmp_path, step_max_attempts=1)
        async with svc:
            await svc.submit(make_inquiry("inq-1", message="hola", language="es"))
            await svc.settle()
            await svc.advance(30)  # no retry: the step falls back, the saga completes
            done = (await svc.wait("inq-1", timeout=10)).data
            before = await ledger(svc, "inq-1")
            late.release()
            await svc.settle()
            after = await ledger(svc, "inq-1")
            state = await svc.saga("inq-1")
            # the same result delivered again is not billed again
            result = next(e for e in await svc.store.events("inq-1")
                          if isinstance(e.data, TextTranslated))
            await svc.memory.publish(result)
            await svc.settle()
            again = await ledger(svc, "inq-1")
        assert isinstance(done, ResponseReady)
        assert "translate_in" in done.degraded
        assert ("translate_in", Decimal(20) * 4 / 1_000_000) in after
        assert len(after) == len(before) + 1
        assert again == after
        (late_cost,) = state.late_costs.values()
        assert late_cost.after_end
        assert done.cost is not None
        assert "translate_in" not in done.cost.by_step


class TestDeadlines:
    async def test_every_dispatched_request_carries_its_step_deadline(
        self, tmp_path: Path
    ) -> None:
        """The request's ``deadline`` is the step's; it survives the wire (CloudEvents
        structured JSON); the terminal and result events carry none."""
        async with FakeService(tmp_path) as svc:
            await svc.submit(make_inquiry("inq-1", message="hola", language="es"))
            await svc.wait("inq-1", timeout=10)
            events = await svc.store.events("inq-1")
        request = next(e for e in events if isinstance(e.data, TranslateTextRequested))
        assert request.deadline == svc.clock.now() + timedelta(seconds=30)
        assert b'"deadline":' in encode(request)
        assert decode(encode(request)).deadline == request.deadline
        assert all(e.deadline is None for e in events
                   if not e.type.endswith("Requested") or e.type == "InquiryReceived")


class Hanging(Actor):
    service: ClassVar[str] = "translation"
    consumes: ClassVar[type[TranslateTextRequested]] = TranslateTextRequested

    def __init__(self) -> None:
        self.provider = object()
        self.calls = 0

    async def perform(self, request: object) -> TextTranslated:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("never answers")


async def run_one(runtime: ActorRuntime, transport: InMemoryTransport,
                  request: Envelope) -> list[StepFailed | TextTranslated]:
    answers: list[StepFailed | TextTranslated] = []

    async def collect(env: Envelope) -> None:
        assert isinstance(env.data, StepFailed | TextTranslated)
        answers.append(env.data)

    await transport.subscribe("answers", ["StepFailed", "TextTranslated"], collect)
    await runtime.start()
    await transport.start()
    await transport.publish(request)
    await transport.idle(timeout=5)
    return answers


def request(deadline: datetime | None) -> Envelope:
    env = Envelope.new(TranslateTextRequested(text="hola", to_language="en"),
                       correlationid="s1", subject="translate_in")
    return env.model_copy(update={"deadline": deadline})


class TestActorHonoursDeadlines:
    async def test_an_expired_request_is_not_called(self) -> None:
        """It sat in the queue past its deadline: no provider call; a retryable 'expired'
        failure says why (so the coordinator treats it as the timeout it is)."""
        clock = ManualClock()
        fake = FakeTranslator()
        async with InMemoryTransport() as transport:
            runtime = ActorRuntime(transport, [TranslationActor(fake)], clock=clock.now,
                                   inbox=InMemorySagaStore())
            answers = await run_one(runtime, transport, request(clock.now() - timedelta(seconds=1)))
        assert fake.behaviour.calls == []
        (failure,) = answers
        assert isinstance(failure, StepFailed)
        assert (failure.error_class, failure.retryable) == ("expired", True)
        assert runtime.expired == 1

    async def test_an_answered_request_is_answered_again_though_expired(self) -> None:
        """A redelivery after the deadline still gets the recorded answer (it cost nothing)."""
        clock = ManualClock()
        fake = FakeTranslator()
        inbox = InMemorySagaStore()
        env = request(clock.now() + timedelta(seconds=5))
        async with InMemoryTransport() as transport:
            runtime = ActorRuntime(transport, [TranslationActor(fake)], clock=clock.now,
                                   inbox=inbox)
            answers = await run_one(runtime, transport, env)
            clock.advance(10)
            await transport.publish(env)
            await transport.idle(timeout=5)
        assert len(fake.behaviour.calls) == 1
        assert [type(a) for a in answers] == [TextTranslated, TextTranslated]
        assert runtime.expired == 0

    async def test_no_call_when_the_deadline_passed_while_waiting_for_a_claim(self) -> None:
        """Live when delivered, expired while this worker waited for a dead worker's claim
        to run out: once the claim is taken over the request is answered 'expired', with no
        provider call, and the claim is given back."""
        fake = FakeTranslator()
        inbox = InMemorySagaStore()
        env = request(datetime.now(UTC) + timedelta(seconds=0.15))
        assert await inbox.claim_request(env.id, "dead-worker", 0.3)  # its lease runs on
        async with InMemoryTransport() as transport:
            runtime = ActorRuntime(transport, [TranslationActor(fake)], inbox=inbox,
                                   claim_lease=0.4)
            answers = await run_one(runtime, transport, env)
        assert fake.behaviour.calls == []
        assert [getattr(a, "error_class", None) for a in answers] == ["expired"]
        assert runtime.expired == 1
        assert await inbox.claim_request(env.id, "another-worker", 1.0)  # given back

    async def test_a_call_in_progress_ends_by_the_deadline(self) -> None:
        """A provider that never answers is given up at the deadline, not call_timeout."""
        actor = Hanging()
        async with InMemoryTransport() as transport:
            runtime = ActorRuntime(transport, [actor])
            started = asyncio.get_running_loop().time()
            answers = await run_one(runtime, transport,
                                    request(datetime.now(UTC) + timedelta(seconds=0.3)))
            elapsed = asyncio.get_running_loop().time() - started
        (failure,) = answers
        assert isinstance(failure, StepFailed)
        assert failure.error_class == "timeout"
        assert "deadline" in failure.message
        assert actor.calls == 1
        assert elapsed < actor.call_timeout / 10

    async def test_a_throttle_wait_ends_by_the_deadline(self) -> None:
        """An empty bucket would make the call wait 30 s; the deadline allows 2: the wait
        is not even begun, the throttled error says why."""
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        fake = FakeTranslator()
        limiter = LocalRateLimiter(Quota(requests_per_minute=2))
        wrapped = ThrottledProvider(fake, limiter, deployment="d", sleep=sleep)
        await wrapped.translate("one", "en")
        await wrapped.translate("two", "en")  # the bucket is empty now: 30 s to the next
        with waiting_at_most(2.0), pytest.raises(ThrottledError, match="deadline"):
            await wrapped.translate("three", "en")
        assert slept == []
        assert len(fake.behaviour.calls) == 2
