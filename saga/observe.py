"""What a coordinator tells its observers: the step retries, timeouts and fallbacks it
decided, once the saga change that decided them is saved (a change reapplied after a
concurrent save is told once). Telemetry counts them; the coordinator knows nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

StepEventKind = Literal["retry", "timeout", "fallback"]


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One decision about a step: ``retry`` (a new attempt is scheduled after a failure or a
    timeout), ``timeout`` (its deadline passed with no answer), ``fallback`` (it will not get
    its service's answer and took the workflow's substitute).

    ``reason`` is low-cardinality: the error class (``transient``, ``throttled``,
    ``timeout``…), or for a fallback what made the step give up (an error class,
    ``circuit_open``, ``budget``)."""

    kind: StepEventKind
    workflow: str
    step: str
    """The step's name (a fan-out branch's without its item)."""
    service: str
    reason: str
    saga_id: str
    tenant: str
    attempt: int


class CoordinatorObserver(Protocol):
    def step_event(self, event: StepEvent) -> None:
        """Told synchronously after the save; an observer that raises is logged and ignored."""
        ...
