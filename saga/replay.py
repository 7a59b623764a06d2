"""Replay and resume: re-run a saga from its stored events without calling any provider or
touching the live bus, compare the decisions, and continue a failed or stuck saga.

Deterministic replay feeds the coordinator the recorded start event, then for every request it
dispatches the recorded answer to the same step and attempt (a result, a failure, or nothing,
in which case the deadline fires), moving an injected clock to the recorded times. A workflow
definition changed since the request ran is checked this way against real past requests: the
report names each step whose decision differs. A step the original run never dispatched has no
recorded answer; replay reports it as ``unrecorded`` and lets the step fail over to its
fallback, so the rest can still be compared.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from bus.base import DeadLetter, Handler
from events.base import Event
from events.envelope import Envelope
from events.support import ProviderResult, StepFailed
from saga.breaker import BreakerPolicy, BreakerRegistry
from saga.budget import BudgetDecision, CostControl, Spending
from saga.clock import ManualClock
from saga.coordinator import SOURCE as COORDINATOR_SOURCE
from saga.coordinator import SagaCoordinator, _Changes
from saga.memory_store import InMemorySagaStore
from saga.state import SagaState, SagaStatus, StepState, StepStatus
from saga.store import SagaError
from saga.workflow import BudgetDegradation, Workflow

REPLAY_SOURCE = "/ai-apps/replay"
TERMINAL_FIELDS_IGNORED = {"processing_time_ms"}


class ReplayError(SagaError):
    """The stored events cannot be replayed (no start event, unknown workflow, …)."""


class RecordingTransport:
    """A transport that delivers nothing: it only keeps what was published, in order."""

    def __init__(self) -> None:
        self.published: list[Envelope] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, envelope: Envelope) -> None:
        self.published.append(envelope)

    async def subscribe(
        self, group: str, event_types: Collection[str], handler: Handler, *,
        concurrency: int | None = None, ephemeral: bool = False,
    ) -> None:
        return None

    async def declare(self, group: str, event_types: Collection[str]) -> None:
        return None

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        return []

    async def peek_dead_letters(
        self, group: str | None = None, limit: int | None = None
    ) -> list[DeadLetter]:
        return []

    async def redrive(self, ids: Collection[str] | None = None, group: str | None = None) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class StepDecision:
    """What the coordinator decided for one step: the outcome, the attempts, the fallback."""

    step: str
    outcome: str
    attempts: int
    fallback: bool
    result_type: str | None

    @classmethod
    def of(cls, step: StepState) -> StepDecision:
        return cls(
            step=step.key, outcome=step.status.value, attempts=step.attempts,
            fallback=step.status is StepStatus.FALLBACK,
            result_type=step.result.type if step.result else None,
        )


@dataclass(frozen=True, slots=True)
class StepDifference:
    step: str
    original: StepDecision | None
    replayed: StepDecision | None


@dataclass
class ReplayReport:
    """The outcome of a replay: the replayed state, the decisions that differ, and the
    terminal events' fields that differ (timings aside)."""

    saga_id: str
    state: SagaState
    differences: list[StepDifference]
    terminal_differences: dict[str, tuple[Any, Any]]
    unrecorded: list[str] = field(default_factory=list)
    published: list[Envelope] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences and not self.terminal_differences

    def as_json(self) -> dict[str, Any]:
        return {
            "saga_id": self.saga_id,
            "identical": self.identical,
            "status": self.state.status.value,
            "unrecorded_steps": self.unrecorded,
            "differences": [
                {"step": d.step,
                 "original": _decision_json(d.original), "replayed": _decision_json(d.replayed)}
                for d in self.differences
            ],
            "terminal_differences": {
                k: {"original": a, "replayed": b} for k, (a, b) in self.terminal_differences.items()
            },
        }


def _decision_json(d: StepDecision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"outcome": d.outcome, "attempts": d.attempts, "fallback": d.fallback,
            "result_type": d.result_type}


AnswerOverride = Callable[[str, Envelope], Awaitable[Event | None]]
"""Called with (step key, replayed request); returns a new answer for that request (a result
or a ``StepFailed``) instead of the recorded one, or None to use the recording."""


class _Recording:
    """The recorded run: requests per step in dispatch order, and answers by request id."""

    def __init__(self, events: Sequence[Envelope], start_type: str) -> None:
        self.start = next((e for e in events if e.type == start_type), None)
        self.requests: dict[str, list[Envelope]] = defaultdict(list)
        self.answers: dict[str, Envelope] = {}
        for env in events:
            if (
                env.source == COORDINATOR_SOURCE and env.subject
                and not env.subject.startswith("compensate:")
                and not isinstance(env.data, ProviderResult | StepFailed)
            ):
                self.requests[env.subject].append(env)
            if isinstance(env.data, ProviderResult | StepFailed) and env.causationid:
                self.answers.setdefault(env.causationid, env)
        for reqs in self.requests.values():
            reqs.sort(key=lambda e: e.time)


BUDGET = "budget: "
"""The prefix of a step's ``degradation`` and ``fallback_reason`` that the budget decided."""


class RecordedDecisions(CostControl):
    """The original run's budget decisions, taken again. A replay has no tenant spend to
    decide on (it is not the spend of then), so each dispatch is decided as it was: refused
    where the original step fell back on the budget before that attempt, sent as the recorded
    request where the budget degraded it (a cheaper model, a cached answer only), else as
    asked. Nothing is reserved or billed: a replay spends nothing."""

    def __init__(self, original: SagaState, recording: _Recording) -> None:
        super().__init__()
        self.original = original
        self.recording = recording

    def decide(
        self,
        state: SagaState,
        step: StepState,
        request: Event,
        spending: Spending | None,
        unrecorded: Decimal = Decimal(0),
        on_budget: BudgetDegradation | tuple[BudgetDegradation, ...] | None = None,
    ) -> BudgetDecision:
        before = self.original.steps.get(step.key)
        if before is None:
            return BudgetDecision(request)
        attempt = step.attempts + 1  # the dispatch being decided
        sent = self.recording.requests.get(step.key, [])
        if attempt <= len(sent):
            recorded = sent[attempt - 1].data
            degraded = (before.degradation or "").startswith(BUDGET)
            if degraded and recorded != request:
                return BudgetDecision(recorded, (before.degradation or "")[len(BUDGET):])
            return BudgetDecision(request)
        refused = (before.fallback_reason or "").startswith(BUDGET)
        if refused and attempt == len(sent) + 1:
            return BudgetDecision(None, (before.fallback_reason or "")[len(BUDGET):])
        return BudgetDecision(request)


async def replay(
    events: Sequence[Envelope],
    workflows: Iterable[Workflow],
    *,
    original: SagaState | None = None,
    override: AnswerOverride | None = None,
    max_rounds: int = 1000,
) -> ReplayReport:
    """Replay a saga from its events (see the module docstring). ``original`` is the stored
    state to compare with (without it, the comparison is against a replay of the recording
    with the workflow as it is, which is only useful with ``override``)."""
    by_type = {w.starts_on.event_type: w for w in workflows}
    start = next((e for e in events if e.type in by_type), None)
    if start is None:
        raise ReplayError("no start event among the stored events: nothing to replay")
    workflow = by_type[start.type]
    recording = _Recording(events, start.type)
    clock = ManualClock(start.time)
    store = InMemorySagaStore()
    transport = RecordingTransport()
    # breakers must not change decisions between the original run and the replay: they are
    # process state, not request state; an open circuit shows up as recorded fallbacks
    coordinator = SagaCoordinator(
        transport, store, [workflow], clock=clock,
        breakers=BreakerRegistry(BreakerPolicy(failure_threshold=1_000_000)),
        # the budget, like the breakers, is the state of then: its decisions are recorded
        costs=RecordedDecisions(original, recording) if original is not None else None,
    )
    await coordinator.handle(start)
    seen = 0
    attempts: dict[str, int] = defaultdict(int)
    unrecorded: list[str] = []
    for _ in range(max_rounds):
        state = await store.load(start.correlationid)
        assert state is not None
        if state.status is not SagaStatus.RUNNING:
            break
        if seen < len(transport.published):
            request = transport.published[seen]
            seen += 1
            if request.subject is None or request.subject.startswith("compensate:"):
                continue
            step_key = request.subject
            attempts[step_key] += 1
            answer = await _answer(recording, step_key, attempts[step_key], request, override)
            if answer is None:
                if not recording.requests.get(step_key):
                    unrecorded.append(step_key)
                    failure = StepFailed(
                        step=step_key, service=state.steps[step_key].service,
                        error_class="unrecorded",
                        message="the original run never dispatched this step: no recorded answer",
                        retryable=False,
                    )
                    await coordinator.handle(request.follow(failure, source=REPLAY_SOURCE))
                continue  # recorded as unanswered: its deadline will fire
            _move(clock, answer.time)
            await coordinator.handle(answer.model_copy(update={"causationid": request.id}))
            continue
        due = sorted(store.timers(), key=lambda t: t.due_at)
        if not due:
            raise ReplayError(f"saga {start.correlationid}: replay stalled with nothing to fire")
        _move(clock, due[0].due_at)
        await coordinator.fire_due_timers()
    state = await store.load(start.correlationid)
    assert state is not None
    differences, terminal = ([], {}) if original is None else compare(original, state)
    return ReplayReport(start.correlationid, state, differences, terminal, unrecorded,
                        list(transport.published))


async def _answer(
    recording: _Recording, step: str, attempt: int, request: Envelope,
    override: AnswerOverride | None,
) -> Envelope | None:
    if override is not None:
        replaced = await override(step, request)
        if replaced is not None:
            return request.follow(replaced, source=REPLAY_SOURCE)
    originals = recording.requests.get(step, [])
    if attempt > len(originals):
        return None
    return recording.answers.get(originals[attempt - 1].id)


def _move(clock: ManualClock, to: datetime) -> None:
    delta = (to - clock.now()).total_seconds()
    if delta > 0:
        clock.advance(delta)


def compare(
    original: SagaState, replayed: SagaState
) -> tuple[list[StepDifference], dict[str, tuple[Any, Any]]]:
    """The steps whose decisions differ, and the terminal fields that differ."""
    keys = list(dict.fromkeys([*original.steps, *replayed.steps]))
    differences = []
    for key in keys:
        a = original.steps.get(key)
        b = replayed.steps.get(key)
        da = StepDecision.of(a) if a else None
        db = StepDecision.of(b) if b else None
        if da != db:
            differences.append(StepDifference(key, da, db))
    terminal: dict[str, tuple[Any, Any]] = {}
    ta = original.terminal
    tb = replayed.terminal
    if (ta is None) != (tb is None) or (ta and tb and ta.type != tb.type):
        terminal["type"] = (ta.type if ta else None, tb.type if tb else None)
    elif ta is not None and tb is not None:
        for name in sorted(set(ta.data) | set(tb.data)):
            if name in TERMINAL_FIELDS_IGNORED:
                continue
            if ta.data.get(name) != tb.data.get(name):
                terminal[name] = (ta.data.get(name), tb.data.get(name))
    return differences, terminal


# -- resume on the live bus ------------------------------------------------------------------


async def resume(coordinator: SagaCoordinator, saga_id: str) -> list[str]:
    """Continue a failed or stuck saga from the steps that did not finish, on the live bus,
    reusing every result already paid for. Returns the steps re-dispatched.

    Failed, cancelled and (for a saga that is still running) overdue steps go back to pending
    with a fresh attempt count; the saga runs again and ends in a new terminal event. Every
    event it emits carries ``replayof`` (the original request of that step, or the original
    terminal event) and is caused by it, so consumers and traces can tell them apart."""
    resumed: list[str] = []
    now = coordinator.clock.now()

    def change(existing: SagaState | None) -> tuple[SagaState, _Changes] | None:
        if existing is None:
            raise ReplayError(f"no saga {saga_id!r} in the store")
        state = existing.model_copy(deep=True)
        workflow = coordinator.workflows.get(state.workflow)
        if workflow is None:
            raise ReplayError(f"saga {saga_id}: this coordinator does not run {state.workflow!r}")
        originals: dict[str, str | None] = {}
        for step in state.steps.values():
            overdue = step.status is StepStatus.DISPATCHED and (
                step.deadline is None or step.deadline <= now
            )
            if step.status in (StepStatus.FAILED, StepStatus.CANCELLED) or overdue or (
                step.status is StepStatus.WAITING_RETRY
            ):
                originals[step.key] = step.request_id
                step.status = StepStatus.PENDING
                step.attempts = 0
                step.error = None
                step.finished_at = None
                step.deadline = None
                resumed.append(step.key)
        if not resumed:
            return None
        state.status = SagaStatus.RUNNING
        state.resumed_from = state.start_envelope_id
        state.terminal = None
        state.failure_reason = None
        state.finished_at = None
        changes = _Changes()
        coordinator._advance(workflow, state, changes)
        # the marker: each re-dispatched request points at the request it replaces; the other
        # events (a new terminal one) at the request that started the saga
        changes.outbox = [
            env.model_copy(update={
                "replayof": originals.get(env.subject or "") or state.start_envelope_id,
                "causationid": originals.get(env.subject or "") or env.causationid,
            })
            for env in changes.outbox
        ]
        return state, changes

    await coordinator._apply(saga_id, change)
    return resumed


def recorded_answer(events: Sequence[Envelope], step: str) -> Envelope | None:
    """The answer the original run got for the last dispatch of ``step``."""
    recording = _Recording(events, "")
    requests = recording.requests.get(step, [])
    return recording.answers.get(requests[-1].id) if requests else None


# -- export and import -------------------------------------------------------------------------

CUSTOMER_TEXT_FIELDS = {"message", "text", "ocr_text", "caption", "name", "email"}
SNAPSHOT_TYPE = "ai-apps.SagaSnapshot"
"""The first line of an export: the saga's state when it was exported (not a bus event)."""


def export_lines(
    events: Iterable[Envelope], *, state: SagaState | None = None, redact: bool = False
) -> Iterable[str]:
    """JSON lines: a snapshot of the saga's state (if given), then one CloudEvent per line.
    With ``redact``, customer text fields are replaced."""
    if state is not None:
        snapshot = {"specversion": "1.0", "type": SNAPSHOT_TYPE, "id": f"snapshot-{state.id}",
                    "source": REPLAY_SOURCE, "data": json.loads(state.model_dump_json())}
        if redact:
            snapshot["data"] = _redact(snapshot["data"])
        yield json.dumps(snapshot, ensure_ascii=False)
    for env in events:
        body = json.loads(env.model_dump_json(exclude_none=True))
        if redact:
            body["data"] = _redact(body.get("data"))
        yield json.dumps(body, ensure_ascii=False)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("[redacted]" if k in CUSTOMER_TEXT_FIELDS and isinstance(v, str) and v
                    else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def import_lines(lines: Iterable[str]) -> tuple[SagaState | None, list[Envelope]]:
    """Read an export: the snapshot (if any) and the events."""
    from events.envelope import decode

    state: SagaState | None = None
    events: list[Envelope] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"line {number}: not JSON ({exc})") from None
        if isinstance(raw, dict) and raw.get("type") == SNAPSHOT_TYPE:
            state = SagaState.model_validate(raw["data"])
            continue
        events.append(decode(line))
    return state, events
