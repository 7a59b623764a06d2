"""Cost control in the coordinator: the ledger entry of each provider result it accepts, and
the budget check before each dispatch (per tenant and day or month, and per request).

The check is made with the spend recorded so far plus an estimate of the step's cost from its
request (characters times price for translation and speech, tokens ≈ characters / 4 for the
responder, one transaction or image for vision and image generation), priced as the
provider named for the service in ``estimate_with`` (no entry: estimated at zero, so only
the spend so far counts). Over budget, the step degrades as its workflow says: with
``on_budget=Cheaper(model=…)`` the same request is estimated on the cheaper model and, if that
fits, sent with that model (the step records ``budget: used … instead of …``, and its result
is priced at the model that answered); otherwise the step is refused: it takes its fallback
with the reason ``budget: …`` (or fails the saga if it has none), and a refused call costs
nothing.

Budgets are soft against concurrency: sagas of one tenant running at the same moment each
see the spend recorded before them, so they can overshoot by the calls in flight.
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
from saga.state import SagaState, StepState
from saga.store import CostEntry, SagaStore
from saga.workflow import Cheaper


class TenantBudget(BaseModel):
    """What a tenant may spend per UTC day and per calendar month (None: no limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    day: Decimal | None = Field(default=None, ge=0)
    month: Decimal | None = Field(default=None, ge=0)


@dataclass(frozen=True, slots=True)
class Spending:
    """A tenant's spend in the current periods (only those it has a budget for)."""

    day: Decimal = Decimal(0)
    month: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """What the budget check decided for one dispatch: the request to send (None: refused)
    and why it was refused, or how it was degraded (None: sent as asked)."""

    request: Event | None
    reason: str | None = None

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
        return Usage(transactions=1)
    if service == "imagegen":
        return Usage(images=1)
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
        return Spending(day=day, month=month)

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
        on_budget: Cheaper | None = None,
    ) -> BudgetDecision:
        """Whether ``step`` may send ``request`` now: as it is; on the cheaper model of
        ``on_budget`` when only that fits (with the reason, for the step); or not at all
        (with the reason). ``unrecorded`` as for :meth:`refusal`."""
        refusal = self.refusal(state, step, request, spending, unrecorded)
        if refusal is None:
            return BudgetDecision(request)
        if on_budget is None:
            return BudgetDecision(None, refusal)
        if not on_budget.applies_to(request):
            return BudgetDecision(
                None, f"{refusal} ({type(request).__name__} cannot ask for a cheaper model)"
            )
        cheaper = self.cheaper_provider(step.service, on_budget)
        cheap = self.estimate(step.service, request, cheaper) if cheaper else Decimal(0)
        if self.refusal(state, step, request, spending, unrecorded, provider=cheaper) is not None:
            return BudgetDecision(
                None, f"{refusal}, and about {_money(cheap)} on the cheaper {on_budget.model}"
            )
        usual = self.estimate_with.get(step.service)
        usual_name = (usual.model or usual.name) if usual is not None else "its usual model"
        return BudgetDecision(
            on_budget.apply(request),
            f"used {on_budget.model} instead of {usual_name} (about {_money(cheap)} instead of "
            f"{_money(self.estimate(step.service, request))} {self.pricing.currency}): "
            f"{refusal}",
        )

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
        """Why ``step`` may not be dispatched now, or None. ``unrecorded``: what calls
        accepted in this same change cost (not yet in the ledger). ``provider``: estimate the
        call on it instead of the service's usual one."""
        estimate = self.estimate(step.service, request, provider)
        currency = self.pricing.currency
        budget = self.budget_of(state.tenant)
        if budget is not None and spending is not None:
            for period, limit, spent in (("daily", budget.day, spending.day),
                                         ("monthly", budget.month, spending.month)):
                if limit is None:
                    continue
                spent += unrecorded
                if spent >= limit or spent + estimate > limit:
                    return (f"tenant {state.tenant} has spent {_money(spent)} of its {period} "
                            f"budget of {_money(limit)} {currency}; {step.key} would cost about "
                            f"{_money(estimate)}")
        if self.request_budget is not None:
            spent = total(step_costs(state, self.pricing).values())
            if spent >= self.request_budget or spent + estimate > self.request_budget:
                return (f"this request has cost {_money(spent)} of its budget of "
                        f"{_money(self.request_budget)} {currency}; {step.key} would cost about "
                        f"{_money(estimate)}")
        return None

    def entry(
        self, state: SagaState, step: StepState, envelope: Envelope, now: datetime
    ) -> CostEntry | None:
        """The ledger entry of an accepted provider result (None for an event that is not
        one: it names no provider)."""
        provider = getattr(envelope.data, "provider", None)
        if not isinstance(provider, ProviderInfo):
            return None
        usage = getattr(envelope.data, "usage", None)
        usage = usage if isinstance(usage, Usage) else Usage()
        return CostEntry(
            id=step.request_id or envelope.id, tenant=state.tenant, workflow=state.workflow,
            correlation_id=state.id, step=step.key, service=step.service, provider=provider.name,
            model=provider.model, usage=usage, cost=self.pricing.cost(provider, usage),
            currency=self.pricing.currency, price_table=self.pricing.version, at=now,
            cached=provider.cached,
        )


def _money(value: Decimal) -> str:
    if value == value.to_integral():
        return f"{value.normalize():f}"
    return f"{value:.6f}".rstrip("0").rstrip(".")
