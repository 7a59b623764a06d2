"""Sagas: workflow definitions as data, the coordinator, stores, breakers and clocks."""

from saga.breaker import BreakerPolicy, BreakerRegistry, CircuitBreaker, CircuitState
from saga.clock import Clock, ManualClock, SystemClock
from saga.coordinator import COORDINATOR_GROUP, SagaCoordinator
from saga.memory_store import InMemorySagaStore
from saga.recorder import RECORDER_GROUP, EventRecorder, causal_order
from saga.sqlite_store import SqliteSagaStore
from saga.state import SagaState, SagaStatus, StepState, StepStatus
from saga.store import ConcurrencyError, SagaError, SagaStore, StoreError, Timer
from saga.workflow import (
    CACHED_ONLY,
    NO_RETRY,
    CachedOnly,
    Cheaper,
    SagaView,
    Step,
    StepRetry,
    Workflow,
)

__all__ = [
    "CACHED_ONLY",
    "COORDINATOR_GROUP",
    "NO_RETRY",
    "RECORDER_GROUP",
    "BreakerPolicy",
    "BreakerRegistry",
    "CachedOnly",
    "Cheaper",
    "CircuitBreaker",
    "CircuitState",
    "Clock",
    "ConcurrencyError",
    "EventRecorder",
    "InMemorySagaStore",
    "ManualClock",
    "SagaCoordinator",
    "SagaError",
    "SagaState",
    "SagaStatus",
    "SagaStore",
    "SagaView",
    "SqliteSagaStore",
    "Step",
    "StepRetry",
    "StepState",
    "StepStatus",
    "StoreError",
    "SystemClock",
    "Timer",
    "Workflow",
    "causal_order",
]
