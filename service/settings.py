"""Every setting of ai-apps in one object, read from ``AIAPPS_*`` environment variables and an
optional ``.env`` file. The defaults need nothing installed or running."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from saga.cost import PriceTable
from service.cost_settings import CostSettings
from service.gateway.settings import GatewaySettings
from service.provider_settings import AzureProviderSettings
from service.telemetry.settings import TelemetrySettings

REPO_ROOT = Path(__file__).resolve().parents[1]

ProviderFamily = Literal["local", "fake", "azure", "openai"]


class ProviderSettings(BaseModel):
    """Which provider family serves each capability (``AIAPPS_PROVIDERS__TRANSLATION=local``).
    ``openai`` (any OpenAI-compatible endpoint) serves the responder only."""

    language: ProviderFamily = "local"
    vision: ProviderFamily = "local"
    translation: ProviderFamily = "local"
    responder: ProviderFamily = "local"
    speech: ProviderFamily = "local"
    imagegen: ProviderFamily = "local"


class Settings(BaseSettings):
    """ai-apps settings. Nested values use ``__``: ``AIAPPS_PROVIDERS__SPEECH=fake``."""

    model_config = SettingsConfigDict(
        env_prefix="AIAPPS_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    bus: str = Field(
        default="memory://",
        description="The message bus: memory:// (in-process, the default) or amqp://user:pw@host/.",
    )
    bus_exchange: str = Field(default="ai-apps", description="RabbitMQ topic exchange name.")
    bus_queue_type: Literal["classic", "quorum"] = Field(
        default="classic", description="RabbitMQ queue type of the subscriber groups."
    )
    store: str = Field(
        default="sqlite:///.aiapps/aiapps.db",
        description="Saga state, outbox, timers and events: sqlite:///PATH, or memory://.",
    )
    store_schema: str = Field(default="aiapps", description="PostgreSQL schema of the store.")
    blobs: Path = Field(default=Path(".aiapps/blobs"), description="Folder of the blob store.")
    knowledge_base: Path = Field(
        default=REPO_ROOT / "examples" / "knowledge_base",
        description="Folder of Markdown support articles the responder answers from.",
    )
    providers: ProviderSettings = ProviderSettings()
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings,
        description="The HTTP gateway (ai-apps serve): AIAPPS_GATEWAY__PORT, __HOST, …",
    )
    azure: AzureProviderSettings = Field(
        default_factory=AzureProviderSettings,
        description="Azure AI and OpenAI-compatible endpoints (AIAPPS_AZURE__TRANSLATOR__KEY, …).",
    )
    languages: list[str] = Field(
        default=["en", "es", "fr", "de", "it", "pt", "nl", "ca"],
        description="Languages the local language detector chooses between.",
    )

    pricing: PriceTable = Field(
        default_factory=PriceTable,
        description="The versioned price table AI usage is costed with (AIAPPS_PRICING as JSON).",
    )
    cost: CostSettings = Field(
        default_factory=CostSettings,
        description="Cost control: result cache, cost ledger, budgets, throttling (AIAPPS_COST__…).",
    )
    escalation_threshold: float = Field(default=0.5, ge=0, le=1)
    fanout_limit: int = Field(
        default=4, ge=1, description="Branches of one fanned-out step in flight at once."
    )
    budget_service: str | None = Field(
        default=None, description="Service that reserves campaign budgets (none yet: off)."
    )
    step_timeouts: dict[str, float] = Field(
        default_factory=dict, description="Per-step timeout overrides in seconds, by step name."
    )
    step_max_attempts: int = Field(default=3, ge=1)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown: float = Field(default=30.0, ge=0)

    bus_max_attempts: int = Field(default=5, ge=1, description="Deliveries before dead-letter.")
    bus_retry_delay: float = Field(default=0.5, ge=0, description="First redelivery delay (s).")
    concurrency: int = Field(default=8, ge=1, description="Handlers in flight per group.")
    claim_lease: float = Field(
        default=10.0, gt=0,
        description="Seconds a worker's claim on a request lasts unless renewed (it renews "
        "every third of it while working); a dead worker's requests wait this long.",
    )
    shutdown_grace: float = Field(
        default=30.0, gt=0,
        description="Seconds a stopping role lets in-flight handlers finish before returning "
        "their messages; keep Kubernetes' terminationGracePeriodSeconds above it.",
    )
    timer_interval: float = Field(default=0.2, gt=0, description="Seconds between timer scans.")
    outbox_interval: float = Field(
        default=5.0, gt=0, description="Seconds between relays of unpublished outbox events."
    )

    retention_days: float | None = Field(
        default=None, gt=0,
        description="Events, finished sagas, recorded results (the inbox) and idempotency keys "
        "older than this are pruned by the coordinator (hourly) and by `ai-apps prune`; unset "
        "keeps everything.",
    )
    fake_latency: float = Field(
        default=0.0, ge=0, description="Seconds every fake provider call takes (tests, benches)."
    )
    fake_crash_file: Path | None = Field(
        default=None, description="While this file exists, fake providers crash (tests)."
    )
    fake_call_log: Path | None = Field(
        default=None, description="File where fake providers append one JSON line per charge."
    )

    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings,
        description="Tracing, metrics, log redaction and health thresholds "
        "(AIAPPS_TELEMETRY__ENABLED=true, …); exporters come from the OTEL_* variables.",
    )
    log_level: str = "WARNING"
    log_format: Literal["auto", "json", "console"] = "auto"
