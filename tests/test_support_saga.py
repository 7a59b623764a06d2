"""The support workflow under the coordinator, on fake providers and a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.providers.fake import permanent, throttled, transient
from events import BlobRef, InquiryFailed, ResponseReady, StepFailed
from saga import CircuitState, SqliteSagaStore, StepStatus, causal_order
from service.testing import FakeService, make_inquiry


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[FakeService]:
    async with FakeService(tmp_path) as s:
        yield s


async def photo(svc: FakeService) -> BlobRef:
    ref: BlobRef = await svc.blobs.put(b"\x89PNG fake image bytes", "image/png", "label.png")
    return ref


class TestHappyPath:
    async def test_english_text_only(self, svc: FakeService) -> None:
        """English with no image: only respond runs (no detection, translation or voice)."""
        await svc.submit(make_inquiry(language="en"))
        done = await svc.wait("inq-1", timeout=10)
        assert isinstance(done.data, ResponseReady)
        assert done.data.text == "Re: How do I reset my password?"
        assert done.data.degraded == ()
        assert not done.data.escalation_required
        state = await svc.saga("inq-1")
        assert {k: s.status for k, s in state.steps.items()} == {
            "analyze_image": StepStatus.SKIPPED, "detect_language": StepStatus.SKIPPED,
            "translate_in": StepStatus.SKIPPED, "respond": StepStatus.SUCCEEDED,
            "translate_out": StepStatus.SKIPPED, "synthesize_voice": StepStatus.SKIPPED,
        }

    async def test_spanish_with_photo_and_voice_runs_every_step(self, svc: FakeService) -> None:
        """Spanish + photo + voice: analyse → detect → translate in → respond → translate out
        → voice; the OCR text reaches the responder and the reply is in Spanish."""
        svc.fakes.language.language = "es"
        svc.fakes.vision.ocr_text = "PEDIDO ORD-2024-58317"
        inquiry = make_inquiry(
            message="Mi cafetera llegó rota", attachments=(await photo(svc),), voice_reply=True
        )
        await svc.submit(inquiry)
        done = await svc.wait("inq-1", timeout=10)
        assert isinstance(done.data, ResponseReady)
        assert done.data.language == "es"
        assert done.data.text == (
            "[en>es] Re: [es>en] Mi cafetera llegó rota [image: PEDIDO ORD-2024-58317]"
        )
        assert done.data.voice is not None
        assert done.data.degraded == ()
        state = await svc.saga("inq-1")
        assert all(
            s.status in (StepStatus.SUCCEEDED, StepStatus.EXPANDED) for s in state.steps.values()
        )
        order = [c.capability for c in svc.fakes.calls()]
        assert sorted(order) == sorted(
            ["analyze", "detect", "translate", "respond", "translate", "synthesize"]
        )
        assert len(await svc.terminal_events("inq-1")) == 1

    async def test_events_are_stored_in_causal_order(self, svc: FakeService) -> None:
        """The event store holds the inquiry, each request and result, and the terminal event."""
        await svc.submit(make_inquiry(language="en"))
        await svc.wait("inq-1", timeout=10)
        await svc.settle()
        types = [e.type for e in causal_order(await svc.store.events("inq-1"))]
        assert types == [
            "InquiryReceived", "GenerateResponseRequested", "ResponseGenerated", "ResponseReady"
        ]

    async def test_duplicate_inquiry_starts_one_saga(self, svc: FakeService) -> None:
        """The same inquiry published twice still ends in exactly one terminal event."""
        await svc.submit(make_inquiry(language="en"))
        await svc.submit(make_inquiry(language="en"))
        await svc.wait("inq-1", timeout=10)
        await svc.settle()
        assert len(await svc.terminal_events("inq-1")) == 1
        assert len(svc.fakes.responder.behaviour.calls) == 1


class TestFailures:
    async def test_failing_translator_degrades_but_answers(self, svc: FakeService) -> None:
        """With the translator down for good, the saga completes, degraded names the
        translation steps, and the customer still gets an answer (in English, with a notice)."""
        svc.fakes.translation.behaviour.fail_always(permanent("fake 400: unsupported pair"))
        await svc.submit(make_inquiry(message="Necesito ayuda", language="es"))
        done = await svc.wait("inq-1", timeout=10)
        assert isinstance(done.data, ResponseReady)
        assert done.data.degraded == ("translate_in", "translate_out")
        assert done.data.text == "Re: Necesito ayuda"
        assert done.data.language == "en"
        assert any("translation was unavailable" in n for n in done.data.notices)

    async def test_transient_error_is_retried_by_the_saga(self, svc: FakeService) -> None:
        """A 503 then success: the step is re-dispatched after its backoff and succeeds."""
        svc.fakes.responder.behaviour.fail_next(transient())
        await svc.submit(make_inquiry(language="en"))
        await svc.settle()
        state = await svc.saga("inq-1")
        assert state.steps["respond"].status is StepStatus.WAITING_RETRY
        await svc.advance(1.0)
        done = await svc.wait("inq-1", timeout=5)
        assert isinstance(done.data, ResponseReady)
        assert done.data.degraded == ()
        assert (await svc.saga("inq-1")).steps["respond"].attempts == 2

    async def test_throttled_retry_honours_retry_after(self, svc: FakeService) -> None:
        """A 429 with Retry-After 10 s is not retried before 10 s have passed."""
        svc.fakes.responder.behaviour.fail_next(throttled(retry_after=10))
        await svc.submit(make_inquiry(language="en"))
        await svc.settle()
        assert await svc.advance(5) == 0
        assert (await svc.saga("inq-1")).steps["respond"].status is StepStatus.WAITING_RETRY
        assert await svc.advance(5) == 1
        assert isinstance((await svc.wait("inq-1", timeout=5)).data, ResponseReady)

    async def test_permanent_error_takes_fallback_without_retry(self, svc: FakeService) -> None:
        """A content-filter 400 is not retried: the responder's template reply is used and the
        inquiry is escalated."""
        svc.fakes.responder.behaviour.fail_next(permanent())
        await svc.submit(make_inquiry(language="en"))
        done = await svc.wait("inq-1", timeout=10)
        assert isinstance(done.data, ResponseReady)
        assert done.data.degraded == ("respond",)
        assert done.data.escalation_required
        assert len(svc.fakes.responder.behaviour.calls) == 1

    async def test_step_that_never_answers_times_out_and_falls_back(
        self, svc: FakeService
    ) -> None:
        """A hung provider: at the step's deadline (injected clock, no sleeping) the step is
        retried, and after its last attempt times out the fallback is taken."""
        svc.fakes.responder.behaviour.fail_always("hang")
        await svc.submit(make_inquiry(language="en"))
        await svc.settle()
        state = await svc.saga("inq-1")
        assert state.steps["respond"].status is StepStatus.DISPATCHED
        await svc.advance(59)
        assert (await svc.saga("inq-1")).steps["respond"].attempts == 1
        await svc.advance(1)  # deadline: attempt 1 timed out → retry after 1 s
        await svc.advance(1)  # retry dispatched (attempt 2)
        await svc.advance(60)  # attempt 2 times out → retry after 2 s
        await svc.advance(2)  # attempt 3
        await svc.advance(60)  # attempt 3 times out → fallback
        done = await svc.wait("inq-1", timeout=5)
        assert isinstance(done.data, ResponseReady)
        assert done.data.degraded == ("respond",)
        step = (await svc.saga("inq-1")).steps["respond"]
        assert step.attempts == 3
        assert step.error is not None
        assert step.error.error_class == "timeout"
        assert len(await svc.terminal_events("inq-1")) == 1

    async def test_result_after_timeout_is_ignored(self, svc: FakeService) -> None:
        """A late answer to a timed-out attempt changes nothing."""
        state_before = None
        svc.fakes.responder.behaviour.fail_always("hang")
        await svc.submit(make_inquiry(language="en"))
        await svc.settle()
        state_before = await svc.saga("inq-1")
        old_request = state_before.steps["respond"].request_id
        await svc.advance(60)
        late = state_before.start_envelope().follow(
            StepFailed(step="respond", service="responder", error_class="transient",
                       message="late", retryable=True)
        ).model_copy(update={"causationid": old_request})
        await svc.memory.publish(late)
        await svc.settle()
        step = (await svc.saga("inq-1")).steps["respond"]
        assert step.status is StepStatus.WAITING_RETRY
        assert step.error is not None
        assert step.error.error_class == "timeout"


class TestCircuitBreaker:
    async def test_opens_after_failures_skips_service_and_recovers(
        self, tmp_path: Path
    ) -> None:
        """After repeated failures the responder's circuit opens and later sagas take the
        fallback at once without calling it; after the cool-down a trial call closes it."""
        async with FakeService(
            tmp_path, breaker_failure_threshold=3, breaker_cooldown=30, step_max_attempts=1
        ) as svc:
            svc.fakes.responder.behaviour.fail_always(transient())
            for i in range(3):
                await svc.submit(make_inquiry(f"a{i}", language="en"))
                await svc.wait(f"a{i}", timeout=5)
            assert svc.coordinator is not None
            assert svc.coordinator.breakers.get("responder").state is CircuitState.OPEN
            calls = len(svc.fakes.responder.behaviour.calls)
            assert calls == 3

            await svc.submit(make_inquiry("b", language="en"))
            done = await svc.wait("b", timeout=5)
            assert isinstance(done.data, ResponseReady)
            assert done.data.degraded == ("respond",)
            assert len(svc.fakes.responder.behaviour.calls) == calls  # not called
            fallback = (await svc.saga("b")).steps["respond"].fallback_reason
            assert fallback is not None
            assert fallback.startswith("circuit_open")

            svc.fakes.responder.behaviour.heal()
            svc.clock.advance(31)
            await svc.submit(make_inquiry("c", language="en"))
            done = await svc.wait("c", timeout=5)
            assert isinstance(done.data, ResponseReady)
            assert done.data.degraded == ()
            assert svc.coordinator.breakers.get("responder").state is CircuitState.CLOSED


class TestRestart:
    async def test_coordinator_restart_reloads_state_and_deadline_fires(
        self, tmp_path: Path
    ) -> None:
        """A coordinator stopped mid-saga and started again on the same SQLite file reloads
        the saga; the pending deadline still fires; one terminal event in all."""
        db = tmp_path / "saga.db"
        async with FakeService(tmp_path, store=SqliteSagaStore(db)) as first:
            first.fakes.responder.behaviour.fail_always("hang")
            await first.submit(make_inquiry(language="en"))
            await first.settle()
            assert (await first.saga("inq-1")).steps["respond"].status is StepStatus.DISPATCHED
            clock = first.clock

        async with FakeService(
            tmp_path, store=SqliteSagaStore(db), clock=clock, step_max_attempts=1
        ) as second:
            state = await second.saga("inq-1")
            assert state.steps["respond"].status is StepStatus.DISPATCHED
            assert await second.advance(61) == 1
            events = await second.store.events("inq-1")
            terminal = [e for e in events if e.type in ("ResponseReady", "InquiryFailed")]
            assert len(terminal) == 1
            assert isinstance(terminal[0].data, ResponseReady)
            assert terminal[0].data.degraded == ("respond",)

    async def test_outbox_left_by_a_crash_is_relayed_on_start(self, tmp_path: Path) -> None:
        """Events saved in the outbox but never published (a crash between commit and
        publish) are published when the coordinator starts again."""
        db = tmp_path / "saga.db"
        store = SqliteSagaStore(db)
        async with FakeService(tmp_path, store=store) as first:
            assert first.coordinator is not None
            real_publish = first.memory.publish
            crashed: list[str] = []

            async def crash_on_request(env: object) -> None:
                if getattr(env, "type", "") == "GenerateResponseRequested":
                    crashed.append("x")
                    raise ConnectionError("broker gone")
                await real_publish(env)  # type: ignore[arg-type]

            first.memory.publish = crash_on_request  # type: ignore[method-assign]
            await first.submit(make_inquiry(language="en"))
            await first.settle()
            assert crashed
            clock = first.clock
        async with FakeService(tmp_path, store=SqliteSagaStore(db), clock=clock) as second:
            done = await second.wait("inq-1", timeout=10)
            assert isinstance(done.data, ResponseReady)


class TestInvalidMessages:
    async def test_invalid_inquiry_is_dead_lettered_and_service_goes_on(
        self, svc: FakeService
    ) -> None:
        """A malformed inquiry lands in the dead letters with its reason; the next inquiry is
        answered."""
        svc.memory.publish_raw(b'{"specversion": "1.0"', "InquiryReceived")
        await svc.submit(make_inquiry("ok", language="en"))
        assert isinstance((await svc.wait("ok", timeout=5)).data, ResponseReady)
        letters = await svc.memory.dead_letters()
        assert letters
        assert all("not JSON" in d.reason for d in letters)


class TestRequiredStepFailure:
    async def test_inquiry_failed_when_required_step_has_no_fallback(
        self, tmp_path: Path
    ) -> None:
        """A required step without a fallback that fails for good ends the saga in
        InquiryFailed naming the step."""
        from saga import SagaCoordinator, Step, Workflow
        from saga.workflows.support import support_workflow

        base = support_workflow()
        strict = Workflow(
            base.name, base.starts_on,
            tuple(Step(s.name, s.service, s.request, needs=s.needs, when=s.when,
                       for_each=s.for_each, timeout=s.timeout, retry=s.retry,
                       fallback=None if s.name == "respond" else s.fallback)
                  for s in base.steps),
            base.complete, base.fail,
        )
        async with FakeService(tmp_path) as svc:
            assert svc.coordinator is not None
            svc.coordinator.workflows = {"support": strict}
            svc.coordinator._starts = {"InquiryReceived": strict}
            svc.fakes.responder.behaviour.fail_always(permanent())
            await svc.submit(make_inquiry(language="en"))
            done = await svc.wait("inq-1", timeout=5)
            assert isinstance(done.data, InquiryFailed)
            assert done.data.failed_step == "respond"
            assert "permanent" in done.data.reason
            assert isinstance(svc.coordinator, SagaCoordinator)


class TestTimerBatch:
    async def test_one_failing_timer_does_not_hold_back_its_batch(self) -> None:
        """A timer whose saga cannot be applied (its store read fails) stays leased to fire
        again later; the other timers of the same batch still fire now."""
        from datetime import timedelta

        from bus import InMemoryTransport
        from saga import InMemorySagaStore, ManualClock, SagaCoordinator, SagaState
        from saga.store import Timer
        from saga.workflows.support import support_workflow
        from tests.conformance.store import new_state

        class BrokenLoad(InMemorySagaStore):
            async def load(self, saga_id: str) -> SagaState | None:
                if saga_id == "broken":
                    raise RuntimeError("cannot read this one")
                return await super().load(saga_id)

        clock = ManualClock()
        store = BrokenLoad()
        for saga_id in ("broken", "fine"):
            due = clock.now() - timedelta(seconds=1)
            await store.save(new_state(saga_id), expected_version=0, timers=[Timer(
                id=f"t-{saga_id}", saga_id=saga_id, step="respond", kind="deadline",
                due_at=due, attempt=1)])
        coordinator = SagaCoordinator(InMemoryTransport(), store, [support_workflow()],
                                      clock=clock)
        assert await coordinator.fire_due_timers() == 1
        assert [t.id for t in store.timers()] == ["t-broken"]  # "fine" fired and is gone
        assert await store.due_timers(clock.now()) == []  # "broken" is leased, not lost


class TestBreakerOutcomesOncePerSave:
    async def test_a_failure_reapplied_after_a_concurrent_save_counts_once(
        self, tmp_path: Path
    ) -> None:
        """A result whose save meets a concurrent change is applied again; its failure is
        told to the service's circuit breaker once, after the save that took it."""
        from saga import InMemorySagaStore
        from saga.store import ConcurrencyError

        class ConflictOnce(InMemorySagaStore):
            conflicts = 0

            async def save(self, state, **kwargs):  # type: ignore[no-untyped-def]
                failed = any(s.error is not None for s in state.steps.values())
                if failed and not self.conflicts:
                    self.conflicts += 1
                    raise ConcurrencyError("another coordinator saved first")
                return await super().save(state, **kwargs)

        store = ConflictOnce()
        async with FakeService(
            tmp_path, store=store, breaker_failure_threshold=10, step_max_attempts=1
        ) as svc:
            svc.fakes.responder.behaviour.fail_next(permanent())
            await svc.submit(make_inquiry(language="en"))
            done = await svc.wait("inq-1", timeout=5)
            assert isinstance(done.data, ResponseReady)
            assert store.conflicts == 1
            assert svc.coordinator is not None
            assert svc.coordinator.breakers.get("responder").failures == 1
