"""The actor inbox: a request delivered twice is worked on once and paid once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.providers.fake import FakeProviders
from bus import InMemoryTransport, RetryPolicy
from events import (
    Envelope,
    ProviderInfo,
    ResponseGenerated,
    StepFailed,
    TextTranslated,
    TranslateTextRequested,
)
from saga import InMemorySagaStore, SqliteSagaStore
from saga.store import StoreError
from service.testing import fake_settings
from service.wiring import Service


async def cancel_then_redeliver(
    svc: Service, fakes: FakeProviders, transport: InMemoryTransport
) -> Envelope:
    """A translation request delivered to ``svc``'s actor, its delivery cancelled once the
    provider was called (a broker connection dropped under the handler), then delivered again
    (the broker's redelivery) and settled. Returns the request."""
    deliver = svc.runtime._chain(svc.runtime.actors[0])
    request = Envelope.new(TranslateTextRequested(text="hola", to_language="en",
                                                  from_language="es"),
                           correlationid="c1", subject="translate_in")
    first = asyncio.ensure_future(deliver(request))
    while not fakes.translation.behaviour.calls:
        await asyncio.sleep(0.01)
    first.cancel()  # the channel closed under the handler
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    await deliver(request)  # the broker's redelivery
    await transport.idle(10)
    return request

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


class TestCancelledDelivery:
    async def test_cancelled_delivery_is_answered_once_from_the_inbox(
        self, tmp_path: Path
    ) -> None:
        """The broker drops the connection while the provider works (aiormq cancels the
        delivery): the call goes on and records its result, and the redelivery answers from
        the inbox instead of calling, and paying, again."""
        fakes = FakeProviders()
        fakes.translation.behaviour.latency = 0.3
        transport = InMemoryTransport()
        store = SqliteSagaStore(tmp_path / "s.db")
        answers: list[Envelope] = []

        async def collect(env: Envelope) -> None:
            answers.append(env)

        svc = Service(fake_settings(tmp_path), coordinator=False, actors=["translation"],
                      providers={"translation": fakes.translation}, transport=transport,
                      store=store)
        await transport.subscribe("probe", ["TextTranslated"], collect)
        async with svc:
            request = await cancel_then_redeliver(svc, fakes, transport)
            assert await store.recorded_result(request.id) is not None
        assert len(fakes.translation.behaviour.calls) == 1
        assert len(answers) == 1, "the cancelled delivery published nothing; the redelivery once"
        assert answers[0].causationid == request.id

    async def test_close_waits_for_orphaned_calls_within_grace(self, tmp_path: Path) -> None:
        """A provider call whose delivery was cancelled is given the grace at close to record
        its result; one still running after it is cancelled, and its claim left to run out."""
        fakes = FakeProviders()
        fakes.translation.behaviour.latency = 0.2
        store = SqliteSagaStore(tmp_path / "s.db")
        svc = Service(fake_settings(tmp_path, shutdown_grace=5.0), coordinator=False,
                      actors=["translation"], providers={"translation": fakes.translation},
                      transport=InMemoryTransport(), store=store)
        request = Envelope.new(TranslateTextRequested(text="hola", to_language="en",
                                                      from_language="es"),
                               correlationid="c1", subject="translate_in")
        async with svc:
            deliver = svc.runtime._chain(svc.runtime.actors[0])
            first = asyncio.ensure_future(deliver(request))
            while not fakes.translation.behaviour.calls:
                await asyncio.sleep(0.01)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        # close returned after the call finished and recorded, not before
        reopened = SqliteSagaStore(tmp_path / "s.db")
        await reopened.open()
        try:
            assert await reopened.recorded_result(request.id) is not None
        finally:
            await reopened.close()

        fakes.translation.behaviour.fail_next("hang")
        svc = Service(fake_settings(tmp_path, shutdown_grace=0.2), coordinator=False,
                      actors=["translation"], providers={"translation": fakes.translation},
                      transport=InMemoryTransport(), store=SqliteSagaStore(tmp_path / "t.db"))
        hung = Envelope.new(TranslateTextRequested(text="adiós", to_language="en",
                                                   from_language="es"),
                            correlationid="c2", subject="translate_in")
        async with asyncio.timeout(10), svc:
            deliver = svc.runtime._chain(svc.runtime.actors[0])
            second = asyncio.ensure_future(deliver(hung))
            while not fakes.translation.behaviour.hanging:
                await asyncio.sleep(0.01)
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
        assert fakes.translation.behaviour.hanging == 0, "the hung call was cancelled at close"
        assert not svc.runtime._working


class FlakyClaims(InMemorySagaStore):
    """A store whose claim renewals fail while ``failing`` is set (the database away),
    except for the test's own ``intruder`` worker."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.renewals = 0

    async def claim_request(self, request_id: str, owner: str, lease: float) -> bool:
        if owner != "intruder":
            if self.failing:
                raise StoreError("the store is away")
            self.renewals += 1
        return await super().claim_request(request_id, owner, lease)


async def translating(
    tmp_path: Path, store: FlakyClaims, *, lease: float, latency: float
) -> tuple[Service, InMemoryTransport, FakeProviders, list[Envelope]]:
    fakes = FakeProviders()
    fakes.translation.behaviour.latency = latency
    fakes.translation.behaviour.log_path = tmp_path / "calls.jsonl"
    transport = InMemoryTransport(retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    answers: list[Envelope] = []

    async def collect(env: Envelope) -> None:
        answers.append(env)

    svc = Service(fake_settings(tmp_path, claim_lease=lease), coordinator=False,
                  actors=["translation"], providers={"translation": fakes.translation},
                  transport=transport, store=store)
    await transport.subscribe("probe", ["TextTranslated", StepFailed.event_type], collect)
    return svc, transport, fakes, answers


def translate_request() -> Envelope:
    return Envelope.new(TranslateTextRequested(text="hola", to_language="en", from_language="es"),
                        correlationid="c1", subject="translate_in")


async def call_started(fakes: FakeProviders) -> None:
    async with asyncio.timeout(5):
        while not fakes.translation.behaviour.calls:
            await asyncio.sleep(0.01)


class TestClaimRenewal:
    async def test_a_failed_renewal_is_retried_and_the_claim_kept(self, tmp_path: Path) -> None:
        """Renewals that fail (the store away for a moment) are retried: the claim is kept
        past its lease, so no other worker can take the request over meanwhile."""
        store = FlakyClaims()
        svc, transport, fakes, answers = await translating(tmp_path, store, lease=0.6,
                                                           latency=1.6)
        async with svc:
            request = translate_request()
            await transport.publish(request)
            await call_started(fakes)
            store.failing = True
            await asyncio.sleep(0.35)  # the first renewal (at 0.2 s) and a retry fail
            store.failing = False
            await asyncio.sleep(0.65)  # past the first lease
            assert not await store.claim_request(request.id, "intruder", 1.0)
            await transport.idle(10)
        assert svc.runtime.renewals_failed >= 1
        assert svc.runtime.claims_lost == 0
        assert store.renewals >= 2  # the first claim and a renewal after the outage
        assert len(answers) == 1
        assert len(fakes.translation.behaviour.calls) == 1

    async def test_a_lost_claim_abandons_the_call(self, tmp_path: Path) -> None:
        """The renewals fail for longer than the lease and another worker takes the request
        over: once the store answers again this worker learns it lost the claim, counts and
        logs it, cancels its call before it is billed and publishes nothing; the delivery is
        settled, not retried (the new owner answers)."""
        store = FlakyClaims()
        svc, transport, fakes, answers = await translating(tmp_path, store, lease=0.3,
                                                           latency=1.5)
        async with svc:
            request = translate_request()
            await transport.publish(request)
            await call_started(fakes)
            store.failing = True
            await asyncio.sleep(0.5)  # the lease ran out
            assert await store.claim_request(request.id, "intruder", 60.0)
            store.failing = False
            await transport.idle(5)
            assert svc.runtime.claims_lost == 1
            assert answers == []
            assert await store.recorded_result(request.id) is None
            await asyncio.sleep(1.2)  # when the abandoned call would have finished
        charged = [line for line in (tmp_path / "calls.jsonl").read_text().splitlines()
                   if '"charge"' in line]
        assert charged == [], "the abandoned call went on and was billed"
        assert await transport.dead_letters() == []

    async def test_a_claim_that_ran_out_answers_with_the_result_recorded_first(
        self, tmp_path: Path
    ) -> None:
        """The store unreachable for renewals through the whole call, and another worker took
        the request over and recorded its result first: this worker's record is ignored and it
        answers with the recorded result, so every answer to the request is the same."""
        store = FlakyClaims()
        svc, transport, fakes, answers = await translating(tmp_path, store, lease=0.3,
                                                           latency=1.0)
        async with svc:
            request = translate_request()
            await transport.publish(request)
            await call_started(fakes)
            store.failing = True
            await asyncio.sleep(0.5)
            assert await store.claim_request(request.id, "intruder", 60.0)
            theirs = request.follow(
                TextTranslated(text="hello", from_language="es", to_language="en",
                               provider=ProviderInfo(name="other")),
                source="/ai-apps/actors/translation",
            )
            await store.record_result(request.id, theirs)
            await transport.idle(5)
        assert [a.id for a in answers] == [theirs.id]
        assert svc.runtime.claims_lost == 0
