"""Cost control in the coordinator: the ledger entry of each provider result it accepts, and
the budget check before each dispatch (per tenant and day or month, and per request).

The check is made with the spend recorded so far, plus what the calls in flight are estimated
to cost (their reservations), plus an estimate of the step's cost from its request
(characters times price for translation and speech, tokens ≈ characters / 4 for the
responder, a transaction per visual feature for vision, an image of the size asked for image
generation), priced as the
provider named for the service in ``estimate_with`` (no entry: estimated at zero, so only
the spend so far counts). Over budget, the step degrades as its workflow says
(``Step.on_budget``, tried in order): with ``Cheaper(model=…)`` the same request is estimated
on the cheaper model and, if that fits, sent with that model (the step records ``budget: used
… instead of …``, and its result is priced at the model that answered); with ``CACHED_ONLY``
it is sent asking for a cached answer only (no provider call; a miss fails the step at once
and it takes its fallback); otherwise the step is refused: it takes its fallback with the
reason ``budget: …`` (or fails the saga if it has none), and a refused call costs nothing.

Calls in flight count: each dispatch holds its estimate (``StepState.reserved``; for a tenant
with a budget also a :class:`~saga.store.Reservation` in the store, written in the same save
as the dispatch) until its result replaces it with the real cost, or it fails, times out or
is cancelled. So the steps of one saga dispatched together, and the calls of the tenant's
other sagas still running, are counted before they come back. One coordinator process
serialises the budget checks of one tenant (a lock per tenant around read, decide and
save); coordinators in *different* processes read the tenant's spend concurrently, so two
of them can each admit a call the other's reservation, not yet committed, would have
refused: the overshoot is bounded by the calls dispatched in those overlapping changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from events.base import Event
from events.common import ProviderInfo, Usage
from events.envelope import Envelope
from saga.cost import PriceTable, step_costs, total
from saga.state import SagaState, StepState, StepStatus
from saga.store import CostEntry, Reservation, SagaStore
from saga.workflow import BudgetDegradation, CachedOnly, Cheaper


class TenantBudget(BaseModel):
    """What a tenant may spend per UTC day and per calendar month (None: no limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    day: Decimal | None = Field(default=None, ge=0)
    month: Decimal | None = Field(default=None, ge=0)


@dataclass(frozen=True, slots=True)
class Spending:
    """A tenant's spend in the current periods (only those it has a budget for), and what
    its calls in flight are estimated to cost (they count in every period)."""

    day: Decimal = Decimal(0)
    month: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """What the budget check decided for one dispatch: the request to send (None: refused)
    and why it was refused, or how it was degraded (None: sent as asked); ``estimate`` is
    what the request sent is expected to cost (reserved while it is in flight)."""

    request: Event | None
    reason: str | None = None
    estimate: Decimal = Decimal(0)

    @property
    def refused(self) -> bool:
        return self.request is None


def period_starts(now: datetime) -> tuple[datetime, datetime]:
    """The start of ``now``'s day and month (in ``now``'s time zone, UTC for the clocks)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


def parse_provider(ref: str) -> ProviderInfo:
    """``"azure/translator-3.0"`` (or just ``"azure"``) as a :class:`ProviderInfo`."""
    name, _, model = ref.partition("/")
    return ProviderInfo(name=name, model=model or None)


def estimate_usage(service: str, request: Event, output_tokens: int = 400) -> Usage:
    """What a request will consume, from what it asks."""
    if service in ("translation", "speech", "language"):
        return Usage(characters=len(str(getattr(request, "text", "") or "")))
    if service == "responder":
        message = str(getattr(request, "message", "") or "")
        return Usage(input_tokens=math.ceil(len(message) / 4), output_tokens=output_tokens)
    if service in ("vision", "compliance", "inspection"):
        # a transaction per visual feature asked for (Azure bills them so; see
        # actors.providers.azure.vision); "quality" is measured locally
        features = getattr(request, "features", None)
        billed = [f for f in features if f != "quality"] if isinstance(features, tuple) else []
        return Usage(transactions=max(len(billed), 1))
    if service == "imagegen":
        # of the size asked for, at the standard quality (the generator's own setting is
        # not known here; an HD deployment is underestimated)
        size = getattr(request, "size", None)
        return Usage(images=1, image_size=size if isinstance(size, str) else None,
                     image_quality="standard")
    return Usage()


class CostControl:
    """The pricing, budgets and estimates the coordinator applies."""

    def __init__(
        self,
        pricing: PriceTable | None = None,
        *,
        budgets: Mapping[str, TenantBudget] | None = None,
        request_budget: Decimal | None = None,
        estimate_with: Mapping[str, str] | None = None,
        responder_output_tokens: int = 400,
    ) -> None:
        self.pricing = pricing or PriceTable()
        self.budgets = dict(budgets or {})
        self.request_budget = request_budget
        self.estimate_with = {s: parse_provider(r) for s, r in (estimate_with or {}).items()}
        self.responder_output_tokens = responder_output_tokens

    def budget_of(self, tenant: str) -> TenantBudget | None:
        """The tenant's budget, else the default one (``"*"``), else none."""
        return self.budgets.get(tenant) or self.budgets.get("*")

    async def spending(self, store: SagaStore, tenant: str, now: datetime) -> Spending | None:
        """The tenant's spend this day and month; None (nothing read) without a budget."""
        budget = self.budget_of(tenant)
        if budget is None or (budget.day is None and budget.month is None):
            return None
        day_start, month_start = period_starts(now)
        day = await store.spent(tenant, day_start) if budget.day is not None else Decimal(0)
        month = (
            await store.spent(tenant, month_start) if budget.month is not None else Decimal(0)
        )
        return Spending(day=day, month=month, reserved=await store.reserved(tenant, now))

    def reserves_for(self, tenant: str) -> bool:
        """Whether ``tenant``'s calls in flight are reserved in the store (it has a budget per
        day or month; the per-request budget needs only the saga's own state)."""
        budget = self.budget_of(tenant)
        return budget is not None and (budget.day is not None or budget.month is not None)

    def reservation(
        self, state: SagaState, step: StepState, now: datetime
    ) -> Reservation | None:
        """The store reservation of ``step``'s dispatch just made (None: nothing to hold)."""
        if not step.reserved or step.request_id is None or not self.reserves_for(state.tenant):
            return None
        return Reservation(
            id=step.request_id, tenant=state.tenant, correlation_id=state.id, step=step.key,
            amount=step.reserved, at=now, expires_at=step.deadline or now,
        )

    def estimate(
        self, service: str, request: Event, provider: ProviderInfo | None = None
    ) -> Decimal:
        """What ``request`` will cost on ``provider`` (default: the one the service is
        estimated with; none: zero)."""
        provider = provider or self.estimate_with.get(service)
        if provider is None:
            return Decimal(0)
        usage = estimate_usage(service, request, self.responder_output_tokens)
        return self.pricing.cost(provider, usage)

    def cheaper_provider(self, service: str, cheaper: Cheaper) -> ProviderInfo | None:
        """The provider and model a :class:`Cheaper` call of ``service`` is priced as: its
        own provider, else the family ``service`` is estimated with (None: neither is known,
        so it is estimated at zero)."""
        name = cheaper.provider or (
            usual.name if (usual := self.estimate_with.get(service)) is not None else None
        )
        return ProviderInfo(name=name, model=cheaper.model) if name else None

    def decide(
        self,
        state: SagaState,
        step: StepState,
        request: Event,
        spending: Spending | None,
        unrecorded: Decimal = Decimal(0),
        on_budget: BudgetDegradation | tuple[BudgetDegradation, ...] | None = None,
    ) -> BudgetDecision:
        """Whether ``step`` may send ``request`` now: as it is; degraded by the first of
        ``on_budget`` that applies and fits (with the reason, for the step); or not at all
        (with the reason). ``unrecorded`` as for :meth:`refusal`."""
        refusal = self.refusal(state, step, request, spending, unrecorded)
        if refusal is None:
            return BudgetDecision(request, estimate=self.estimate(step.service, request))
        options = on_budget if isinstance(on_budget, tuple) else (
            (on_budget,) if on_budget is not None else ())
        notes: list[str] = []
        for option in options:
            if isinstance(option, CachedOnly):
                if not option.applies_to(request):
                    notes.append(f"{type(request).__name__} cannot ask for a cached answer")
                    continue
                return BudgetDecision(
                    option.apply(request),
                    f"asked for a cached answer only (nothing paid): {refusal}",
                )
            if not option.applies_to(request):
                notes.append(f"{type(request).__name__} cannot ask for a cheaper model")
                continue
            cheaper = self.cheaper_provider(step.service, option)
            cheap = self.estimate(step.service, request, cheaper) if cheaper else Decimal(0)
            if self.refusal(state, step, request, spending, unrecorded,
                            provider=cheaper) is not None:
                refusal = f"{refusal}, and about {_money(cheap)} on the cheaper {option.model}"
                continue
            usual = self.estimate_with.get(step.service)
            usual_name = (usual.model or usual.name) if usual is not None else "its usual model"
            return BudgetDecision(
                option.apply(request),
                f"used {option.model} instead of {usual_name} (about {_money(cheap)} instead "
                f"of {_money(self.estimate(step.service, request))} {self.pricing.currency}): "
                f"{refusal}",
                cheap,
            )
        return BudgetDecision(None, f"{refusal} ({'; '.join(notes)})" if notes else refusal)

    def refusal(
        self,
        state: SagaState,
        step: StepState,
        request: Event,
        spending: Spending | None,
        unrecorded: Decimal = Decimal(0),
        *,
        provider: ProviderInfo | None = None,
    ) -> str | None:
        """Why ``step`` may not be dispatched now, or None. ``unrecorded``: what this same
        change adds to the tenant's spend and reservations read before it (the results it
        accepted, the calls it dispatched, less the reservations it released). ``provider``:
        estimate the call on it instead of the service's usual one."""
        estimate = self.estimate(step.service, request, provider)
        currency = self.pricing.currency
        budget = self.budget_of(state.tenant)
        if budget is not None and spending is not None:
            for period, limit, spent in (("daily", budget.day, spending.day),
                                         ("monthly", budget.month, spending.month)):
                if limit is None:
                    continue
                held = spending.reserved + unrecorded
                if spent + held >= limit or spent + held + estimate > limit:
                    return (f"tenant {state.tenant} has spent {_money(spent + held)}"
                            f"{_in_flight(spending.reserved)} of its {period} budget of "
                            f"{_money(limit)} {currency}; {step.key} would cost about "
                            f"{_money(estimate)}")
        if self.request_budget is not None:
            spent = total(step_costs(state, self.pricing).values())
            held = in_flight(state)
            if (spent + held >= self.request_budget
                    or spent + held + estimate > self.request_budget):
                return (f"this request has cost {_money(spent + held)}{_in_flight(held)} of "
                        f"its budget of {_money(self.request_budget)} {currency}; {step.key} "
                        f"would cost about {_money(estimate)}")
        return None

    def entry(
        self, state: SagaState, step: StepState, envelope: Envelope, now: datetime,
        request_id: str | None = None,
    ) -> CostEntry | None:
        """The ledger entry of a provider result (None for an event that is not one: it
        names no provider); ``request_id``: of the call that produced it (default: the
        step's current one)."""
        provider = getattr(envelope.data, "provider", None)
        if not isinstance(provider, ProviderInfo):
            return None
        usage = getattr(envelope.data, "usage", None)
        usage = usage if isinstance(usage, Usage) else Usage()
        return CostEntry(
            id=request_id or step.request_id or envelope.id, tenant=state.tenant,
            workflow=state.workflow, correlation_id=state.id, step=step.key,
            service=step.service, provider=provider.name,
            model=provider.model, usage=usage, cost=self.pricing.cost(provider, usage),
            currency=self.pricing.currency, price_table=self.pricing.version, at=now,
            cached=provider.cached,
            saved=self.pricing.cost(provider, provider.saved) if provider.saved else Decimal(0),
        )


def in_flight(state: SagaState) -> Decimal:
    """What the saga's calls dispatched and not answered yet are estimated to cost."""
    return sum(
        (s.reserved for s in state.steps.values()
         if s.status is StepStatus.DISPATCHED and s.reserved),
        Decimal(0),
    )


def _in_flight(held: Decimal) -> str:
    return f" (about {_money(held)} of it in calls in flight)" if held > 0 else ""


def _money(value: Decimal) -> str:
    if value == value.to_integral():
        return f"{value.normalize():f}"
    return f"{value:.6f}".rstrip("0").rstrip(".")
