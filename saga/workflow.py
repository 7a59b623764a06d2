"""Workflows as data: steps with needs, conditions, fan-out, timeouts, retries and fallbacks.

A workflow is a short declarative definition; the coordinator runs any of them. Sequential
pipelines are steps that each need the one before; parallel analysis is steps with the same
needs; ``for_each`` fans a step out into one branch per item (per language, per image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from events.base import Event
from saga.state import SagaState, StepStatus

E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class StepRetry:
    """How often the coordinator re-dispatches a step that failed with a retryable error or
    timed out. ``max_attempts`` counts the first dispatch. A server's ``retry_after`` is honoured
    when longer than the backoff, capped at ``max_delay``."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_delay))
        return backoff


NO_RETRY = StepRetry(max_attempts=1)


@dataclass(frozen=True, slots=True)
class Cheaper:
    """A budget degradation: run the step on a cheaper model instead of refusing it.

    When the budget check refuses a step's call at its usual estimate, the coordinator
    estimates the same request on ``model`` and, if that fits, dispatches it with the model
    override (the request event's ``model`` field, which the service's actor passes to its
    provider); the step records the decision (``StepState.degradation``) and the saga counts
    as degraded. If even the cheaper call does not fit, the step is refused as before (its
    fallback, or the saga fails). ``provider`` is the provider family the cheaper call is
    priced as (``azure-openai``); by default the one its service is estimated with
    (``AIAPPS_COST__ESTIMATE_WITH``)."""

    model: str
    provider: str | None = None

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise ValueError("a cheaper model needs a name")

    @classmethod
    def parse(cls, ref: str) -> Cheaper:
        """``"azure-openai/gpt-4o-mini"`` (provider and model, as in ``estimate_with``) or just
        ``"gpt-4o-mini"``."""
        provider, slash, model = ref.strip().partition("/")
        return cls(model=model, provider=provider or None) if slash else cls(model=provider)

    def applies_to(self, request: Event) -> bool:
        """Whether ``request`` can carry a model override (it has a ``model`` field)."""
        return "model" in type(request).model_fields

    def apply(self, request: Event) -> Event:
        """``request`` with the cheaper model set."""
        if not self.applies_to(request):
            raise TypeError(f"{type(request).__name__} has no model field to override")
        return request.model_copy(update={"model": self.model})


@dataclass(frozen=True, slots=True)
class CachedOnly:
    """A budget degradation: answer from the result cache or not at all.

    When the budget refuses a step's call, the coordinator dispatches the request with
    ``cache_only=True`` (a field of the requests of cacheable services): the actor answers
    from its result cache (no provider call, nothing paid) or fails at once with a permanent
    ``not_cached`` error, and the step takes its fallback. Either way the step records the
    decision (``StepState.degradation``) and the saga counts as degraded. Nothing is
    reserved against the budget for it: a cached answer costs nothing."""

    def applies_to(self, request: Event) -> bool:
        """Whether ``request`` can ask for a cached answer only (it has ``cache_only``)."""
        return "cache_only" in type(request).model_fields

    def apply(self, request: Event) -> Event:
        """``request`` asking for a cached answer only."""
        if not self.applies_to(request):
            raise TypeError(f"{type(request).__name__} has no cache_only field")
        return request.model_copy(update={"cache_only": True})


CACHED_ONLY = CachedOnly()

BudgetDegradation = Cheaper | CachedOnly
"""What a step may do instead of being refused by a budget."""


class SagaView:
    """Read-only access to a saga for step builders, conditions and fallbacks."""

    __slots__ = ("_state", "item")

    def __init__(self, state: SagaState, item: str | None = None) -> None:
        self._state = state
        self.item = item

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def tenant(self) -> str:
        return self._state.tenant

    @property
    def state(self) -> SagaState:
        return self._state

    def start(self, model: type[E]) -> E:
        """The event that started the saga, as ``model``."""
        event = self._state.start.load()
        if not isinstance(event, model):
            raise TypeError(f"saga {self.id} started with {type(event).__name__}, not {model}")
        return event

    def result(self, key: str, model: type[E]) -> E | None:
        """The result of step ``key`` (its service's or its fallback's), if it has one."""
        step = self._state.steps.get(key)
        if step is None or step.result is None:
            return None
        event = step.result.load()
        return event if isinstance(event, model) else None

    def results(self, name: str, model: type[E]) -> dict[str, E]:
        """The results of every branch of ``for_each`` step ``name``, by item."""
        root = self._state.steps.get(name)
        out: dict[str, E] = {}
        for key in root.branches if root else ():
            branch = self._state.steps[key]
            value = self.result(key, model)
            if value is not None and branch.item is not None:
                out[branch.item] = value
        return out

    def status(self, key: str) -> StepStatus | None:
        step = self._state.steps.get(key)
        return step.status if step else None

    def used_fallback(self, key: str) -> bool:
        return self.status(key) is StepStatus.FALLBACK


RequestBuilder = Callable[[SagaView], Event]
Condition = Callable[[SagaView], bool]
Fallback = Callable[[SagaView, str], Event | None]
"""Builds the substitute result of a failed step from the saga and the failure reason.
Returning ``None`` means the step simply has no result."""


@dataclass(frozen=True, slots=True)
class Step:
    """One unit of work done by one service.

    ``request`` builds the request event the service's actor consumes; its result event (or a
    ``StepFailed``) comes back linked by ``causationid``. ``needs`` are the steps that must be
    settled first; ``when`` false skips the step; ``for_each`` returns the items to fan out
    over (one branch per item, ``SagaView.item`` set for the request builder). ``fallback``
    gives a substitute result when the step fails for good, times out, or its circuit is open;
    without one, a ``required`` step's failure fails the saga. ``compensate`` builds the
    request that undoes a succeeded step when the saga fails or is cancelled later.
    ``max_parallel`` bounds a ``for_each`` step: at most that many of its branches are in
    flight (dispatched or waiting for a retry) at once; the rest wait their turn.
    ``on_budget`` is what the step does when a cost budget refuses its call, before it is
    refused: :class:`Cheaper` runs it on a cheaper model if that fits, :class:`CachedOnly`
    asks for a cached answer only; several are tried in order (without one, or when none
    applies, the step takes its fallback with a ``budget: …`` reason).
    """

    name: str
    service: str
    request: RequestBuilder
    needs: tuple[str, ...] = ()
    when: Condition | None = None
    for_each: Callable[[SagaView], Sequence[str]] | None = None
    timeout: float = 30.0
    retry: StepRetry = field(default_factory=StepRetry)
    fallback: Fallback | None = None
    required: bool = True
    compensate: RequestBuilder | None = None
    max_parallel: int | None = None
    on_budget: BudgetDegradation | tuple[BudgetDegradation, ...] | None = None

    @property
    def budget_degradations(self) -> tuple[BudgetDegradation, ...]:
        """``on_budget`` as a tuple, in the order they are tried."""
        if self.on_budget is None:
            return ()
        return self.on_budget if isinstance(self.on_budget, tuple) else (self.on_budget,)

    def __post_init__(self) -> None:
        if not self.name or "[" in self.name:
            raise ValueError(f"invalid step name {self.name!r}")
        if self.timeout <= 0:
            raise ValueError(f"step {self.name}: timeout must be positive")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"step {self.name}: max_parallel must be at least 1")


Finisher = Callable[[SagaView], Event]
Failer = Callable[[SagaView, str, str | None], Event]


@dataclass(frozen=True, slots=True)
class Workflow:
    """A named set of steps started by one event type, ending in one terminal event.

    ``cancelled`` builds the terminal event of a saga cancelled while running (given the
    cancellation reason); without it, ``fail`` is used."""

    name: str
    starts_on: type[Event]
    steps: tuple[Step, ...]
    complete: Finisher
    fail: Failer
    cancelled: Failer | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"workflow {self.name}: duplicate step names")
        seen: set[str] = set()
        for step in self.steps:
            missing = [n for n in step.needs if n not in seen]
            if missing:
                raise ValueError(
                    f"workflow {self.name}: step {step.name} needs {missing}, which must be "
                    "defined before it"
                )
            seen.add(step.name)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)
