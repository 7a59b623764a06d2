"""What AI calls cost: a versioned price table, and the cost of each step and saga.

Prices are per provider and model (or ``*`` for any model of that provider), in the units the
services bill: 1k input and output tokens, a million characters translated or synthesised, an
image (by size and quality: ``per_image_by``), 1k image-analysis transactions, an audio second.
The local and fake providers cost nothing unless a table says otherwise (tests give the fakes
prices to check the arithmetic).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from events.common import ProviderInfo, Usage
from events.support import Cost
from saga.state import SagaState, StepStatus


class Price(BaseModel):
    """The unit prices of one provider and model, in the table's currency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str = Field(
        default="*",
        description="A model or deployment name; shell wildcards allowed (``translator*``).",
    )
    per_1k_input_tokens: Decimal = Decimal(0)
    per_1k_output_tokens: Decimal = Decimal(0)
    per_million_characters: Decimal = Decimal(0)
    per_image: Decimal = Decimal(0)
    """An image of a size and quality ``per_image_by`` does not list."""
    per_image_by: dict[str, Decimal] = Field(
        default_factory=dict,
        description='Per image by size and quality: "1024x1024/standard", "1792x1024/hd"; '
        'also "SIZE" (any quality) and "*/QUALITY" (any size). The most specific wins; '
        "per_image is the price of the rest.",
    )
    per_1k_transactions: Decimal = Decimal(0)
    per_audio_second: Decimal = Decimal(0)

    def image_price(self, size: str | None, quality: str | None) -> Decimal:
        """The price of one image of ``size`` at ``quality`` (either may be unknown)."""
        keys = []
        if size and quality:
            keys.append(f"{size}/{quality}")
        if size:
            keys.append(size)
        if quality:
            keys.append(f"*/{quality}")
        for key in keys:
            if key in self.per_image_by:
                return self.per_image_by[key]
        return self.per_image

    def cost(self, usage: Usage) -> Decimal:
        images = (self.image_price(usage.image_size, usage.image_quality) * usage.images
                  if usage.images else Decimal(0))
        return (
            self.per_1k_input_tokens * usage.input_tokens / 1000
            + self.per_1k_output_tokens * usage.output_tokens / 1000
            + self.per_million_characters * usage.characters / 1_000_000
            + images
            + self.per_1k_transactions * usage.transactions / 1000
            + self.per_audio_second * Decimal(str(usage.audio_seconds))
        )


DEFAULT_PRICES = (
    # list prices (USD) of the Azure SKUs the adapters use; check them against your agreement
    # (an Azure OpenAI deployment is named by you: add an entry for each of your deployments)
    Price(provider="azure", model="translator*", per_million_characters=Decimal(10)),
    Price(provider="azure", model="image-analysis*", per_1k_transactions=Decimal(1)),
    Price(provider="azure", model="neural-tts*", per_million_characters=Decimal(16)),
    Price(provider="azure-openai", model="gpt-4o-mini*", per_1k_input_tokens=Decimal("0.00015"),
          per_1k_output_tokens=Decimal("0.0006")),
    Price(provider="azure-openai", model="gpt-4o", per_1k_input_tokens=Decimal("0.0025"),
          per_1k_output_tokens=Decimal("0.01")),
    # DALL-E 3 by size and quality (the square standard image is the default)
    Price(provider="azure-openai", model="dall-e-3*", per_image=Decimal("0.04"), per_image_by={
        "1024x1024/standard": Decimal("0.04"), "1024x1792/standard": Decimal("0.08"),
        "1792x1024/standard": Decimal("0.08"), "1024x1024/hd": Decimal("0.08"),
        "1024x1792/hd": Decimal("0.12"), "1792x1024/hd": Decimal("0.12"),
    }),
)


class PriceTable(BaseModel):
    """A versioned price table (``AIAPPS_PRICING``). The version travels with every cost, so a
    figure can be traced to the prices it was computed with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = "2024-12-azure-list"
    currency: str = "USD"
    prices: tuple[Price, ...] = DEFAULT_PRICES

    def price(self, provider: ProviderInfo) -> Price | None:
        """The most specific entry for the provider and model: an exact name first, then the
        longest matching wildcard pattern."""
        model = provider.model or ""
        best: Price | None = None
        for entry in self.prices:
            if entry.provider != provider.name:
                continue
            if entry.model == model:
                return entry
            if fnmatch.fnmatchcase(model, entry.model) and (
                best is None or len(entry.model) > len(best.model)
            ):
                best = entry
        return best

    def cost(self, provider: ProviderInfo, usage: Usage) -> Decimal:
        """What one call cost; zero for a provider the table does not list (local, fake)."""
        entry = self.price(provider)
        return entry.cost(usage) if entry is not None else Decimal(0)


def step_costs(state: SagaState, table: PriceTable) -> dict[str, Decimal]:
    """The cost of each step that has a provider's result (a fallback costs nothing), plus
    what its calls whose answers came too late were billed (before the saga's end)."""
    costs: dict[str, Decimal] = {}
    for late in state.late_costs.values():
        if not late.after_end:
            costs[late.step] = costs.get(late.step, Decimal(0)) + late.cost
    for key, step in state.steps.items():
        if step.status is not StepStatus.SUCCEEDED or step.result is None:
            continue
        data = step.result.data
        if "provider" not in data:
            continue
        costs[key] = costs.get(key, Decimal(0)) + table.cost(
            ProviderInfo.model_validate(data["provider"]), Usage.model_validate(data.get("usage", {}))
        )
    return costs


def total(costs: Iterable[Decimal]) -> Decimal:
    return sum(costs, Decimal(0))


def cost_summary(state: SagaState, table: PriceTable) -> Cost:
    """The saga's cost by step, as its terminal event carries it."""
    by_step = step_costs(state, table)
    return Cost(total=total(by_step.values()), currency=table.currency, by_step=by_step,
                price_table=table.version)
