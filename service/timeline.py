"""A saga's timeline: each step's service, timing, attempts, outcome, cost, fallback,
degradation (a cheaper model or a cached answer under a budget) and error; the saga's cost
as its terminal event carries it."""

from __future__ import annotations

from typing import Any

from saga.state import SagaState, StepState, StepStatus


def saga_cost(state: SagaState) -> dict[str, Any] | None:
    """The cost on the saga's terminal event (JSON: money as strings), or None (running, or
    a workflow that does not price its calls)."""
    if state.terminal is None:
        return None
    cost = state.terminal.data.get("cost")
    return cost if isinstance(cost, dict) else None


def format_cost(cost: dict[str, Any] | None) -> str:
    """``0.0123 USD``, or empty."""
    return f"{cost['total']} {cost.get('currency', '')}".strip() if cost else ""


def timeline_rows(state: SagaState) -> list[dict[str, Any]]:
    """One row per step (branches of a fan-out step each get one), in definition order."""
    rows: list[dict[str, Any]] = []
    by_step = (saga_cost(state) or {}).get("by_step") or {}
    ordered: list[StepState] = []
    for step in state.steps.values():
        if step.item is not None:
            continue  # a branch: listed under its fan-out step
        if step.status is StepStatus.EXPANDED:
            ordered.extend(state.steps[k] for k in step.branches)
        else:
            ordered.append(step)
    for step in ordered:
        key = step.key
        start_ms = (
            (step.started_at - state.started_at).total_seconds() * 1000
            if step.started_at else None
        )
        duration_ms = (
            (step.finished_at - step.started_at).total_seconds() * 1000
            if step.finished_at and step.started_at else None
        )
        provider = None
        if step.result is not None:
            provider = (step.result.data.get("provider") or {}).get("name")
        rows.append({
            "step": key,
            "service": step.service,
            "start_ms": round(start_ms, 1) if start_ms is not None else None,
            "duration_ms": round(duration_ms, 1) if duration_ms is not None else None,
            "attempts": step.attempts,
            "outcome": step.status.value,
            "provider": provider,
            "cost": by_step.get(key),
            "fallback": step.fallback_reason,
            "degradation": step.degradation,
            "error": f"{step.error.error_class}: {step.error.message}" if step.error else None,
        })
    return rows


def saga_summary(state: SagaState) -> dict[str, Any]:
    """The saga's state as JSON: what the CLI prints with --json and the gateway returns."""
    return {
        "id": state.id,
        "workflow": state.workflow,
        "tenant": state.tenant,
        "status": state.status.value,
        "started_at": state.started_at.isoformat(),
        "finished_at": state.finished_at.isoformat() if state.finished_at else None,
        "degraded": list(state.degraded),
        "failure_reason": state.failure_reason,
        "cost": saga_cost(state),
        "outcome": state.terminal.model_dump(mode="json") if state.terminal else None,
        "steps": timeline_rows(state),
    }
