"""The founding document's generic patterns, as ready workflow building blocks.

:func:`sequential_pipeline`
    Stages run one after the other; each stage's request is built from the start event and the
    previous stage's result (its output passed on). The first stage that fails for good (after
    its retries) fails the pipeline, and :class:`PipelineFailed` names it. On success
    :class:`PipelineCompleted` carries the last stage's output and every stage's timing.

:func:`parallel_analysis`
    Every analysis is dispatched at once; one failing does not stop the others. When all have
    settled, :class:`AnalysisCompleted` lists the results ranked by priority (highest first,
    then in definition order), each with its outcome, and the success rate.

Both return a :class:`~saga.workflow.Workflow` that any :class:`~saga.coordinator.SagaCoordinator`
runs next to the built-in ones; ``starts_on`` is your own start event type (each workflow needs
its own). See ``examples/patterns/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from events.base import Event, event
from events.common import Value
from saga.state import StepStatus
from saga.workflow import SagaView, Step, StepRetry, Workflow

# -- terminal events -----------------------------------------------------------------------------


class StageOutcome(Value):
    name: str
    service: str
    status: str
    attempts: int = Field(ge=0)
    duration_ms: float | None = None
    error: str | None = None


@event
class PipelineCompleted(Event):
    pipeline: str
    output_type: str
    output: dict[str, Any]
    stages: tuple[StageOutcome, ...]
    processing_time_ms: float = Field(ge=0)


@event
class PipelineFailed(Event):
    pipeline: str
    failed_stage: str | None
    reason: str
    stages: tuple[StageOutcome, ...] = ()
    processing_time_ms: float = Field(default=0, ge=0)


class AnalysisOutcome(Value):
    rank: int = Field(ge=1)
    name: str
    service: str
    priority: int
    succeeded: bool
    result_type: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@event
class AnalysisCompleted(Event):
    analysis: str
    results: tuple[AnalysisOutcome, ...] = Field(description="Ranked by priority, highest first.")
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    success_rate: float = Field(ge=0, le=1)
    processing_time_ms: float = Field(ge=0)


@event
class AnalysisFailed(Event):
    """Only when the analysis is cancelled: a failing service does not fail the analysis."""

    analysis: str
    reason: str


# -- building blocks -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a pipeline. ``request(start, previous)`` builds the request for ``service``
    from the start event and the previous stage's result (``None`` for the first stage)."""

    name: str
    service: str
    request: Callable[[Event, Event | None], Event]
    timeout: float = 30.0
    retry: StepRetry = field(default_factory=StepRetry)


@dataclass(frozen=True, slots=True)
class Analysis:
    """One analysis of a parallel analysis: ``request(start)`` builds the request for
    ``service``. A higher ``priority`` ranks its result higher."""

    name: str
    service: str
    request: Callable[[Event], Event]
    priority: int = 0
    timeout: float = 30.0
    retry: StepRetry = field(default_factory=StepRetry)


def _elapsed_ms(v: SagaView) -> float:
    end = v.state.finished_at or v.state.started_at
    return max((end - v.state.started_at).total_seconds() * 1000, 0.0)


def _error(v: SagaView, key: str) -> str | None:
    step = v.state.steps[key]
    if step.fallback_reason:
        return step.fallback_reason
    if step.error is not None:
        return f"{step.error.error_class}: {step.error.message}"
    return None


def _outcome(v: SagaView, key: str) -> StageOutcome:
    step = v.state.steps[key]
    duration = None
    if step.started_at and step.finished_at:
        duration = (step.finished_at - step.started_at).total_seconds() * 1000
    return StageOutcome(name=key, service=step.service, status=str(step.status),
                        attempts=step.attempts, duration_ms=duration, error=_error(v, key))


def _start(v: SagaView) -> Event:
    return v.state.start.load()


def _result(v: SagaView, key: str) -> Event | None:
    step = v.state.steps.get(key)
    return step.result.load() if step is not None and step.result is not None else None


def sequential_pipeline(name: str, starts_on: type[Event], *stages: Stage) -> Workflow:
    """A workflow running ``stages`` in order, each fed the previous one's result."""
    if not stages:
        raise ValueError(f"pipeline {name}: no stages")

    def builder(index: int) -> Callable[[SagaView], Event]:
        def build(v: SagaView) -> Event:
            previous = _result(v, stages[index - 1].name) if index else None
            return stages[index].request(_start(v), previous)

        return build

    steps = tuple(
        Step(stage.name, stage.service, builder(i), needs=(stages[i - 1].name,) if i else (),
             timeout=stage.timeout, retry=stage.retry)
        for i, stage in enumerate(stages)
    )

    def complete(v: SagaView) -> PipelineCompleted:
        last = _result(v, stages[-1].name)
        assert last is not None
        return PipelineCompleted(
            pipeline=name, output_type=type(last).event_type, output=last.model_dump(mode="json"),
            stages=tuple(_outcome(v, s.name) for s in stages), processing_time_ms=_elapsed_ms(v),
        )

    def fail(v: SagaView, reason: str, step: str | None) -> PipelineFailed:
        return PipelineFailed(pipeline=name, failed_stage=step, reason=reason,
                              stages=tuple(_outcome(v, s.name) for s in stages),
                              processing_time_ms=_elapsed_ms(v))

    return Workflow(name, starts_on, steps, complete, fail)


def parallel_analysis(name: str, starts_on: type[Event], *analyses: Analysis) -> Workflow:
    """A workflow dispatching every analysis at once and ranking the results by priority."""
    if not analyses:
        raise ValueError(f"analysis {name}: no analyses")

    def builder(analysis: Analysis) -> Callable[[SagaView], Event]:
        def build(v: SagaView) -> Event:
            return analysis.request(_start(v))

        return build

    def nothing(v: SagaView, reason: str) -> None:
        return None

    steps = tuple(
        Step(a.name, a.service, builder(a), timeout=a.timeout, retry=a.retry, fallback=nothing)
        for a in analyses
    )
    ranked = sorted(enumerate(analyses), key=lambda pair: (-pair[1].priority, pair[0]))

    def complete(v: SagaView) -> AnalysisCompleted:
        results = []
        for rank, (_, a) in enumerate(ranked, start=1):
            value = _result(v, a.name)
            ok = v.status(a.name) is StepStatus.SUCCEEDED and value is not None
            results.append(AnalysisOutcome(
                rank=rank, name=a.name, service=a.service, priority=a.priority, succeeded=ok,
                result_type=type(value).event_type if value is not None else None,
                result=value.model_dump(mode="json") if value is not None else None,
                error=None if ok else _error(v, a.name),
            ))
        succeeded = sum(r.succeeded for r in results)
        return AnalysisCompleted(
            analysis=name, results=tuple(results), succeeded=succeeded,
            failed=len(results) - succeeded, success_rate=round(succeeded / len(results), 4),
            processing_time_ms=_elapsed_ms(v),
        )

    def fail(v: SagaView, reason: str, step: str | None) -> AnalysisFailed:
        return AnalysisFailed(analysis=name, reason=reason)

    return Workflow(name, starts_on, steps, complete, fail)


PATTERN_TERMINALS = (PipelineCompleted, PipelineFailed, AnalysisCompleted, AnalysisFailed)
"""The terminal event types of the pattern workflows (what a client waits for)."""
