"""The circuit breaker on its own: open, half-open trials, and trials that never report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga.breaker import BreakerPolicy, CircuitBreaker, CircuitState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def opened(policy: BreakerPolicy) -> CircuitBreaker:
    breaker = CircuitBreaker("responder", policy)
    for _ in range(policy.failure_threshold):
        breaker.record_failure(T0)
    assert breaker.state is CircuitState.OPEN
    return breaker


class TestHalfOpenTrials:
    def test_one_trial_at_a_time(self) -> None:
        """After the cool-down one call is let through; the next waits for its outcome."""
        breaker = opened(BreakerPolicy(failure_threshold=2, cooldown=30))
        later = T0 + timedelta(seconds=31)
        assert breaker.allow(later)
        assert breaker.state is CircuitState.HALF_OPEN
        assert not breaker.allow(later)
        breaker.record_success()
        assert breaker.state is CircuitState.CLOSED
        assert breaker.allow(later)

    def test_a_released_trial_lets_the_next_call_through(self) -> None:
        """A trial that said nothing of the service (cache only, abandoned) is handed back."""
        breaker = opened(BreakerPolicy(failure_threshold=1, cooldown=30))
        later = T0 + timedelta(seconds=31)
        assert breaker.allow(later)
        breaker.release_trial()
        assert breaker.state is CircuitState.HALF_OPEN
        assert breaker.allow(later)

    def test_a_trial_that_never_reports_expires(self) -> None:
        """A trial whose outcome never comes stops holding the circuit after trial_timeout."""
        breaker = opened(BreakerPolicy(failure_threshold=1, cooldown=30, trial_timeout=60))
        trial = T0 + timedelta(seconds=31)
        assert breaker.allow(trial)
        assert not breaker.allow(trial + timedelta(seconds=59))
        assert breaker.allow(trial + timedelta(seconds=60))

    def test_policy_validation(self) -> None:
        """A trial timeout must be positive."""
        with pytest.raises(ValueError, match="trial_timeout"):
            BreakerPolicy(trial_timeout=0)


class TestTrialAcrossAReappliedChange:
    async def test_a_change_saved_after_a_conflict_keeps_its_trial(self) -> None:
        """The change that lets a half-open circuit's trial through loses its save to a
        concurrent one and is applied again: the trial is handed back and taken again, so
        the call is dispatched instead of falling back with circuit_open."""
        from events import (
            InquiryFailed,
            InquiryReceived,
            ResponseReady,
            SynthesizeSpeechRequested,
            TextTranslated,
            TranslateTextRequested,
        )
        from events.common import ProviderInfo
        from events.envelope import Envelope
        from saga import InMemorySagaStore, ManualClock, SagaCoordinator
        from saga.replay import RecordingTransport
        from saga.state import SagaState
        from saga.store import ConcurrencyError
        from saga.workflow import SagaView, Step, Workflow
        from service.testing import make_inquiry

        def done(v: SagaView) -> ResponseReady:
            return ResponseReady(inquiry_id=v.state.id, text="x", language="en", confidence=1,
                                 escalation_required=False, processing_time_ms=0)

        def fail(v: SagaView, reason: str, step: str | None) -> InquiryFailed:
            return InquiryFailed(inquiry_id=v.state.id, reason=reason, failed_step=step)

        workflow = Workflow("w", InquiryReceived, (
            Step("a", "translation", lambda v: TranslateTextRequested(text="hi", to_language="de")),
            Step("b", "speech", lambda v: SynthesizeSpeechRequested(text="hi", language="de"),
                 needs=("a",), fallback=lambda v, r: None),
        ), done, fail)

        class OneConflict(InMemorySagaStore):
            armed = False

            async def save(self, state: SagaState, **kwargs: object) -> None:  # type: ignore[override]
                if self.armed:
                    self.armed = False
                    raise ConcurrencyError("another coordinator saved first")
                await super().save(state, **kwargs)  # type: ignore[arg-type]

        clock = ManualClock()
        store = OneConflict()
        transport = RecordingTransport()
        coordinator = SagaCoordinator(transport, store, [workflow], clock=clock)
        speech = coordinator.breakers.get("speech")
        speech.restore(CircuitState.OPEN, 5, clock.now() - timedelta(hours=1))
        await coordinator.handle(Envelope.new(make_inquiry("s1"), correlationid="s1"))
        answer = transport.published[-1].follow(TextTranslated(
            text="hallo", from_language="en", to_language="de",
            provider=ProviderInfo(name="fake", model="f"),
        ))
        store.armed = True  # the save of the change that dispatches b loses once
        await coordinator.handle(answer)
        state = await store.load("s1")
        assert state is not None
        assert state.steps["b"].status.value == "dispatched"
        assert speech.state is CircuitState.HALF_OPEN
