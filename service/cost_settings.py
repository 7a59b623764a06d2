"""Cost-control settings (``AIAPPS_COST__…``): the result cache, the ledger and budgets.
Meant as a ``cost: CostSettings`` field of :class:`service.settings.Settings`."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saga.budget import CostControl, TenantBudget
from saga.cost import PriceTable
from saga.workflow import Cheaper

DEFAULT_TTL: dict[str, float] = {
    # TTL per cost tier (seconds): deterministic, stable results live longest; a generated
    # answer (only cached when made cacheable) goes stale as the knowledge base changes
    "language": 30 * 86400.0,
    "vision": 30 * 86400.0,
    "translation": 7 * 86400.0,
    "speech": 7 * 86400.0,
    "responder": 3600.0,
}


class CacheSettings(BaseModel):
    """The result cache of deterministic provider calls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="Cache deterministic provider results.")
    url: str | None = Field(
        default=None,
        description="redis://host:6379/0 to share the cache through Redis (extra 'redis'); "
        "by default it lives in the saga store. AIAPPS_CACHE_URL is read when this is unset.",
    )
    ttl: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_TTL),
        description="Seconds a result is kept, per service; a service not listed is not cached.",
    )
    responder_cacheable: bool = Field(
        default=False,
        description="Also cache generated answers (same message, language, images).",
    )
    version: str = Field(
        default="1", description="Part of every key: change it to invalidate the whole cache."
    )
    single_flight: float = Field(
        default=10.0, ge=0,
        description="Seconds a request waits for an identical call already in flight (its "
        "result is shared; with Redis, across workers too) before calling the provider "
        "itself; keep it below the step timeouts. 0 turns single-flight off.",
    )

    def ttl_of(self, service: str) -> float | None:
        """The TTL of ``service``'s results, or None if they are not cached."""
        if not self.enabled or (service == "responder" and not self.responder_cacheable):
            return None
        ttl = self.ttl.get(service)
        return ttl if ttl is not None and ttl > 0 else None


class ThrottleSettings(BaseModel):
    """The quota of one service's deployment, and how long a call may wait for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="For a language model: tokens (input and output).")
    characters_per_minute: float | None = Field(
        default=None, gt=0,
        description="For a service limited by characters (Translator, Speech): characters.",
    )
    max_retries: int = Field(default=10, ge=0, description="429s absorbed per call.")
    max_wait: float = Field(default=120.0, ge=0, description="Seconds a call may wait in all.")
    default_retry_after: float = Field(
        default=1.0, ge=0, description="The pause after a 429 that says no Retry-After."
    )

    @model_validator(mode="after")
    def _one_volume_quota(self) -> ThrottleSettings:
        if self.tokens_per_minute is not None and self.characters_per_minute is not None:
            raise ValueError("give tokens_per_minute or characters_per_minute, not both")
        return self

    @property
    def unit(self) -> Literal["tokens", "characters"]:
        """What the volume quota counts."""
        return "characters" if self.characters_per_minute is not None else "tokens"

    @property
    def per_minute(self) -> float | None:
        """The volume quota, in :attr:`unit`."""
        return self.characters_per_minute or self.tokens_per_minute


class CostSettings(BaseModel):
    """Cost control: the result cache, the ledger, budgets and throttling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cache: CacheSettings = CacheSettings()
    ledger: bool = Field(
        default=True, description="Record every accepted provider result in the cost ledger."
    )
    budgets: dict[str, TenantBudget] = Field(
        default_factory=dict,
        description='Per tenant (or "*" for any other): {"acme": {"day": "5.00", '
        '"month": "100.00"}}, in the price table\'s currency.',
    )
    request_budget: Decimal | None = Field(
        default=None, ge=0, description="What one request (saga) may cost at most."
    )
    estimate_with: dict[str, str] = Field(
        default_factory=dict,
        description='The provider/model each service\'s calls are estimated at before the '
        'budget check, e.g. {"translation": "azure/translator-3.0", "responder": '
        '"azure-openai/gpt-4o-mini"}; a service not listed is estimated at zero.',
    )
    responder_output_tokens: int = Field(
        default=400, ge=0, description="Output tokens a generated answer is estimated at."
    )
    cheaper_models: dict[str, str] = Field(
        default_factory=dict,
        description='A budget degradation per service: the cheaper provider/model (or just '
        'model) its steps run on when a budget refuses the usual call but this one fits, e.g. '
        '{"responder": "azure-openai/gpt-4o-mini"} (the support workflow\'s response '
        'step). Priced by the price table; for Azure OpenAI the model is a deployment name.',
    )

    throttle: dict[str, ThrottleSettings] = Field(
        default_factory=dict,
        description='Quota-aware throttling per service ("*": every other one), e.g. '
        '{"translation": {"requests_per_minute": 300, "tokens_per_minute": 100000}}.',
    )
    throttle_external: bool = Field(
        default=True,
        description="Throttle every external provider (an Azure or OpenAI-compatible "
        "deployment) on its rate-limit headers and 429s alone when no quota is configured for "
        "its service, so that a 429 pauses the deployment instead of bouncing the request "
        "through the saga's retries. The local and fake providers are not throttled unless "
        "configured.",
    )
    throttle_url: str | None = Field(
        default=None,
        description="redis://… to share the buckets between workers; else AIAPPS_THROTTLE_URL, "
        "else the cache's Redis, else in-process.",
    )

    @field_validator("cheaper_models")
    @classmethod
    def _valid_models(cls, value: dict[str, str]) -> dict[str, str]:
        for ref in value.values():
            Cheaper.parse(ref)  # raises ValueError (a validation error) for an empty name
        return value

    def cheaper(self, service: str) -> Cheaper | None:
        """The cheaper model ``service``'s steps may run on under a budget, if any."""
        ref = self.cheaper_models.get(service)
        return Cheaper.parse(ref) if ref else None

    def throttle_of(self, service: str, *, external: bool = False) -> ThrottleSettings | None:
        """The throttle of ``service``'s provider: the configured one, else (for an
        ``external`` provider, with ``throttle_external``) one on its headers and 429s alone
        (no quota), else none."""
        configured = self.throttle.get(service) or self.throttle.get("*")
        if configured is None and external and self.throttle_external:
            return ThrottleSettings()
        return configured

    def control(self, pricing: PriceTable) -> CostControl | None:
        """What the coordinator applies (None when there is no ledger and no budget)."""
        if not self.ledger and not self.budgets and self.request_budget is None:
            return None
        return CostControl(
            pricing, budgets=self.budgets, request_budget=self.request_budget,
            estimate_with=self.estimate_with,
            responder_output_tokens=self.responder_output_tokens,
        )
