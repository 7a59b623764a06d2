"""The health report: per service and operation, calls, average and p95 duration, success rate,
recent errors, circuit state and a status; plus the overall status.

Two sources give the same shape: a running process (:class:`HealthRecorder`, fed by the actor
middleware as provider calls finish) and the saga store (:func:`store_health`, for
``ai-apps health`` and the gateway on a broker, processes that have no traffic of their own:
the calls are the stored sagas' step attempts, the circuits those the coordinators keep in the
store). Nothing here needs OpenTelemetry. The thresholds are
:class:`~service.telemetry.settings.HealthThresholds`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from saga.state import SagaState, StepState, StepStatus
from saga.store import CircuitRecord, SagaStore
from service.telemetry.redaction import Redactor
from service.telemetry.settings import HealthThresholds

Status = Literal["healthy", "degraded", "unhealthy"]
_RANK: dict[Status, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_OUTCOMES = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.FALLBACK)
CIRCUIT_OPEN = "circuit_open"
"""The prefix of a step's ``fallback_reason`` when its circuit refused the call."""


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of ``statuses`` (healthy when there are none)."""
    return max(statuses, key=_RANK.__getitem__, default="healthy")


@dataclass(frozen=True, slots=True)
class RecentError:
    time: datetime
    error_class: str
    message: str
    correlation_id: str | None


class _Operation:
    __slots__ = ("calls", "durations", "errors", "failures", "outcomes")

    def __init__(self, thresholds: HealthThresholds) -> None:
        self.calls = 0
        self.failures = 0
        self.outcomes: deque[bool] = deque(maxlen=thresholds.window)
        self.durations: deque[float] = deque(maxlen=thresholds.durations_kept)
        self.errors: deque[RecentError] = deque(maxlen=thresholds.recent_errors)


class HealthRecorder:
    """Call outcomes by service and operation, in bounded memory.

    ``record`` is called once per call (a provider call in a worker, a step attempt read from
    the store); ``report`` judges each operation on its last ``thresholds.window`` calls."""

    def __init__(self, thresholds: HealthThresholds | None = None, *, source: str = "process") -> None:
        self.thresholds = thresholds or HealthThresholds()
        self.source = source
        self._ops: dict[tuple[str, str], _Operation] = {}

    def record(
        self,
        service: str,
        operation: str,
        *,
        ok: bool,
        duration_ms: float | None = None,
        error_class: str | None = None,
        message: str = "",
        correlation_id: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """One call of ``operation`` of ``service``; its duration when known."""
        op = self._ops.get((service, operation))
        if op is None:
            op = self._ops[(service, operation)] = _Operation(self.thresholds)
        op.calls += 1
        op.outcomes.append(ok)
        if duration_ms is not None:
            op.durations.append(duration_ms)
        if not ok:
            op.failures += 1
            op.errors.append(RecentError(
                at or datetime.now(UTC), error_class or "error", message[:300], correlation_id
            ))

    def report(
        self, circuits: Mapping[str, str] | None = None, *, now: datetime | None = None
    ) -> dict[str, Any]:
        """The report as JSON-ready data; ``circuits`` maps a service to its circuit state
        (``closed``, ``half_open``, ``open``), for the services whose breakers are known here."""
        circuits = circuits or {}
        by_service: dict[str, dict[str, _Operation]] = {}
        for (service, operation), op in sorted(self._ops.items()):
            by_service.setdefault(service, {})[operation] = op
        for service in circuits:
            by_service.setdefault(service, {})
        services: dict[str, Any] = {}
        for service in sorted(by_service):
            services[service] = self._service(service, by_service[service], circuits.get(service))
        return {
            "status": worst(s["status"] for s in services.values()),
            "source": self.source,
            "generated_at": (now or datetime.now(UTC)).isoformat(),
            "thresholds": self.thresholds.model_dump(),
            "services": services,
        }

    def _service(self, name: str, ops: dict[str, _Operation], circuit: str | None) -> dict[str, Any]:
        operations = {op_name: self._operation(op) for op_name, op in ops.items()}
        reasons = [f"{o}: {r}" for o, data in operations.items() for r in data["reasons"]]
        statuses: list[Status] = [data["status"] for data in operations.values()]
        if circuit == "open":
            statuses.append("unhealthy")
            reasons.insert(0, "circuit open")
        elif circuit == "half_open":
            statuses.append("degraded")
            reasons.insert(0, "circuit half-open")
        calls = sum(o.calls for o in ops.values())
        window = [ok for o in ops.values() for ok in o.outcomes]
        return {
            "status": worst(statuses),
            "circuit": circuit,
            "calls": calls,
            "failures": sum(o.failures for o in ops.values()),
            "success_rate": _rate(window),
            "reasons": reasons,
            "operations": operations,
        }

    def _operation(self, op: _Operation) -> dict[str, Any]:
        t = self.thresholds
        rate = _rate(op.outcomes)
        durations = sorted(op.durations)
        p95 = _percentile(durations, 0.95)
        status: Status = "healthy"
        reasons: list[str] = []
        if rate is not None and rate < t.unhealthy_below:
            status = "unhealthy"
            reasons.append(f"success rate {rate:.2f} < {t.unhealthy_below:g}")
        elif rate is not None and rate < t.degraded_below:
            status = "degraded"
            reasons.append(f"success rate {rate:.2f} < {t.degraded_below:g}")
        if t.slow_p95_ms is not None and p95 is not None and p95 > t.slow_p95_ms:
            status = worst([status, "degraded"])
            reasons.append(f"p95 {p95:.0f} ms > {t.slow_p95_ms:g} ms")
        return {
            "status": status,
            "calls": op.calls,
            "failures": op.failures,
            "window": len(op.outcomes),
            "success_rate": rate,
            "avg_ms": round(sum(durations) / len(durations), 3) if durations else None,
            "p95_ms": round(p95, 3) if p95 is not None else None,
            "reasons": reasons,
            "recent_errors": [
                {"time": e.time.isoformat(), "error_class": e.error_class, "message": e.message,
                 "correlation_id": e.correlation_id}
                for e in reversed(op.errors)
            ],
        }


def _rate(outcomes: Iterable[bool]) -> float | None:
    values = list(outcomes)
    return round(sum(values) / len(values), 4) if values else None


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def operation_of(step_key: str) -> str:
    """A step key without its fan-out item: ``analyze_image[a.png]`` → ``analyze_image``."""
    return step_key.split("[", 1)[0]


def store_health(
    sagas: Iterable[SagaState], thresholds: HealthThresholds | None = None,
    *, circuits: Iterable[CircuitRecord] = (), redactor: Redactor | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The health report over stored sagas: every attempt of every finished step counts as a
    call of its service (operation: the step). A step's duration (first dispatch to outcome,
    retries included) is its last attempt's; earlier attempts have none. The circuit of a
    service is the one ``circuits`` keeps (what the coordinators wrote to the store) unless a
    step of the service finished after it was written; otherwise, and for a service with none
    kept, it is inferred: ``open`` when its latest step was refused by an open circuit, else
    ``closed``. Error messages pass through ``redactor``."""
    recorder = HealthRecorder(thresholds, source="store")
    scrub = redactor or Redactor()
    steps: list[tuple[datetime, SagaState, StepState]] = []
    for state in sagas:
        for step in state.steps.values():
            if (step.status in _OUTCOMES and step.finished_at is not None
                    and step.started_at is not None):
                steps.append((step.finished_at, state, step))
    steps.sort(key=lambda item: item[0])
    inferred: dict[str, str] = {}
    latest: dict[str, datetime] = {}
    for finished, state, step in steps:
        refused = (step.fallback_reason or "").startswith(CIRCUIT_OPEN)
        inferred[step.service] = "open" if refused else "closed"
        latest[step.service] = finished
        if step.attempts == 0:
            continue  # refused by the circuit: no call was made
        _record_step(recorder, state, step, finished, scrub)
    # a kept state holds until a later step says otherwise: a coordinator that opened a
    # circuit and went away (scaled down) leaves "open" in the store while the others go on
    # calling the service; their later steps are the newer word
    kept = {c.service: c.state for c in circuits
            if c.service not in latest or c.changed_at >= latest[c.service]}
    return recorder.report({**inferred, **kept}, now=now)


async def stored_health(
    store: SagaStore, thresholds: HealthThresholds | None = None, *, limit: int = 500,
    redactor: Redactor | None = None, now: datetime | None = None,
) -> dict[str, Any]:
    """:func:`store_health` over the newest ``limit`` sagas and the circuits in ``store``
    (``ai-apps health``, and the gateway's ``/v1/health`` on a broker); ``sagas`` says how
    many were read."""
    sagas = await store.list_sagas(limit=limit)
    circuits = await store.circuits()
    report = store_health(sagas, thresholds, circuits=circuits, redactor=redactor, now=now)
    report["sagas"] = len(sagas)
    return report


def _record_step(
    recorder: HealthRecorder, state: SagaState, step: StepState, finished: datetime,
    redactor: Redactor,
) -> None:
    assert step.started_at is not None
    duration = (finished - step.started_at).total_seconds() * 1000
    error_class = step.error.error_class if step.error else "error"
    message = redactor.scrub(step.error.message if step.error else (step.fallback_reason or ""))
    ok = step.status is StepStatus.SUCCEEDED
    earlier = step.attempts - 1
    for _ in range(earlier):
        recorder.record(step.service, operation_of(step.key), ok=False, error_class=error_class,
                        message=message, correlation_id=state.id, at=finished)
    recorder.record(
        step.service, operation_of(step.key), ok=ok, duration_ms=duration,
        error_class=None if ok else error_class, message="" if ok else message,
        correlation_id=state.id, at=finished,
    )
