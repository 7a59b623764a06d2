"""Circuit breakers, one per service, shared by every saga in a coordinator process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog

log = structlog.get_logger("saga.breaker")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a service's circuit opens and how long it stays open.

    After ``failure_threshold`` consecutive failures (errors or timeouts) the circuit opens:
    sagas take the step's fallback at once without calling the service. After ``cooldown``
    seconds one trial call is let through (half-open); its success closes the circuit, its
    failure opens it for another cool-down.
    """

    failure_threshold: int = 5
    cooldown: float = 30.0
    trial_timeout: float = 180.0
    """Seconds a half-open circuit waits for its trial call's outcome. A trial that never
    reports one (its saga ended first, its request was answered from a cache only, its outcome
    was lost) would otherwise hold the circuit half-open for good; after this another trial is
    let through. Longer than any step's timeout, so a trial in progress is never doubled."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.cooldown < 0:
            raise ValueError("cooldown must not be negative")
        if self.trial_timeout <= 0:
            raise ValueError("trial_timeout must be positive")


class CircuitBreaker:
    """The circuit of one service."""

    def __init__(
        self, service: str, policy: BreakerPolicy,
        on_change: Callable[[CircuitBreaker], None] | None = None,
    ) -> None:
        self.service = service
        self.policy = policy
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at: datetime | None = None
        self._trial_at: datetime | None = None
        """When the half-open circuit's trial call was let through (None: none is out)."""
        self._on_change = on_change

    def restore(self, state: CircuitState, failures: int, opened_at: datetime | None) -> None:
        """Take up a state kept from before (a restart): an open circuit stays open until its
        cool-down from ``opened_at`` has passed. Listeners are not told (nothing changed)."""
        self.state = state
        self.failures = failures
        self.opened_at = opened_at if state is not CircuitState.CLOSED else None
        if self.state is CircuitState.OPEN and self.opened_at is None:
            self.state = CircuitState.CLOSED  # nothing to count the cool-down from
        self._trial_at = None

    def allow(self, now: datetime) -> bool:
        """May a call be made now? In half-open state only one trial call is allowed."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            assert self.opened_at is not None
            if now < self.opened_at + timedelta(seconds=self.policy.cooldown):
                return False
            self._transition(CircuitState.HALF_OPEN)
        if self._trial_at is not None and now < self._trial_at + timedelta(
            seconds=self.policy.trial_timeout
        ):
            return False
        self._trial_at = now
        return True

    def release_trial(self) -> None:
        """The call let through said nothing about the service (it was answered from a cache
        only, or abandoned): a half-open circuit may let another trial through now."""
        self._trial_at = None

    def record_success(self) -> None:
        self.failures = 0
        self._trial_at = None
        if self.state is not CircuitState.CLOSED:
            self._transition(CircuitState.CLOSED)
            self.opened_at = None

    def record_failure(self, now: datetime) -> None:
        self.failures += 1
        self._trial_at = None
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self.failures >= self.policy.failure_threshold
        ):
            self.opened_at = now
            self._transition(CircuitState.OPEN)

    def _transition(self, state: CircuitState) -> None:
        log.info("circuit", service=self.service, state=state.value, was=self.state.value)
        self.state = state
        if self._on_change is not None:
            self._on_change(self)


class BreakerRegistry:
    """The breakers of every service, created on first use with the policy for that service.

    Listeners (:meth:`add_listener`) are told of every change of state, synchronously, with
    the breaker that changed: the composition root keeps the states in the store with it, so
    that other processes can report them. A listener that raises is logged and ignored."""

    def __init__(
        self, default: BreakerPolicy | None = None, per_service: dict[str, BreakerPolicy] | None = None
    ) -> None:
        self.default = default or BreakerPolicy()
        self.per_service = per_service or {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[Callable[[CircuitBreaker], None]] = []

    def get(self, service: str) -> CircuitBreaker:
        breaker = self._breakers.get(service)
        if breaker is None:
            policy = self.per_service.get(service, self.default)
            breaker = self._breakers[service] = CircuitBreaker(service, policy, self._changed)
        return breaker

    def add_listener(self, listener: Callable[[CircuitBreaker], None]) -> None:
        self._listeners.append(listener)

    def _changed(self, breaker: CircuitBreaker) -> None:
        for listener in self._listeners:
            try:
                listener(breaker)
            except Exception:  # a listener never breaks a saga's transition
                log.exception("circuit listener failed", service=breaker.service)

    def states(self) -> dict[str, CircuitState]:
        return {name: b.state for name, b in sorted(self._breakers.items())}
