"""Cost control in the coordinator: the ledger entry of each provider result it accepts, and
the budget check before each dispatch (per tenant and day or month, and per request).

The check is made with the spend recorded so far plus an estimate of the step's cost from its
request (characters times price for translation and speech, tokens ≈ characters / 4 for the
responder, one transaction or image for vision and image generation), priced as the
provider named for the service in ``estimate_with`` (no entry: estimated at zero, so only
the spend so far counts). Over budget, the step is refused: it takes its fallback with the
reason ``budget: …`` (or fails the saga if it has none), and a refused call costs nothing.

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

    def estimate(self, service: str, request: Event) -> Decimal:
        provider = self.estimate_with.get(service)
        if provider is None:
            return Decimal(0)
        usage = estimate_usage(service, request, self.responder_output_tokens)
        return self.pricing.cost(provider, usage)

    def refusal(
        self,
        state: SagaState,
        step: StepState,
        request: Event,
        spending: Spending | None,
        unrecorded: Decimal = Decimal(0),
    ) -> str | None:
        """Why ``step`` may not be dispatched now, or None. ``unrecorded``: what calls
        accepted in this same change cost (not yet in the ledger)."""
        estimate = self.estimate(step.service, request)
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
