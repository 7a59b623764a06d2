"""What the gateway's HTTP API takes and gives, as pydantic models (and so OpenAPI)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from events.support import Customer

_LANG = r"^[a-z]{2,3}$"
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,200}$"
"""Inquiry ids in paths and filters: 1-200 characters, no control characters."""


class AttachmentLink(BaseModel):
    """An attachment the gateway fetches from a URL (only from allowed hosts)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        min_length=1, max_length=2048, examples=["https://cdn.example.com/p.png"],
        json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+"},
        description="An http(s) URL on one of the allowed hosts (AIAPPS_GATEWAY__ALLOWED_URL_HOSTS).",
    )
    filename: str | None = Field(default=None, max_length=255)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme not in ("http", "https") or "://" not in value:
            raise ValueError("must be an http:// or https:// URL")
        return value


class InquirySubmission(BaseModel):
    """A helpdesk inquiry. The gateway gives it its inquiry id. Attachments are uploaded as
    files (multipart) or given here as URLs."""

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{
            "customer": {"id": "cust-42", "name": "Ana"}, "channel": "email",
            "message": "Mi pedido llegó roto, ¿qué hago?", "language": "es",
            "attachments": [{"url": "https://cdn.example.com/photo.png"}],
            "voice_reply": False,
        }]},
    )

    customer: Customer
    channel: str = Field(default="web", min_length=1, max_length=64,
                         examples=["web", "email", "chat", "phone"])
    language: str | None = Field(
        default=None, pattern=_LANG,
        description="The customer's language (en, es, …) if known; detected otherwise.",
    )
    message: str = Field(min_length=1, max_length=20_000)
    attachments: list[AttachmentLink] = Field(default_factory=list, max_length=100)
    voice_reply: bool = Field(default=False, description="Also answer with synthesized speech.")


class InquiryAccepted(BaseModel):
    """The inquiry was accepted and published; follow it at ``status_url`` or on the
    response stream."""

    inquiry_id: str
    status: str = Field(default="accepted", examples=["accepted"])
    status_url: str
    events_url: str
    stream_url: str
    replayed: bool = Field(
        default=False, description="True when an Idempotency-Key matched an earlier request."
    )


class StepRow(BaseModel):
    step: str
    service: str
    start_ms: float | None
    duration_ms: float | None
    attempts: int
    outcome: str
    provider: str | None
    cost: str | None = Field(
        default=None, description="What the step's call cost (a decimal, in the saga's "
        "currency), once the saga has ended; None for a step that called nothing.",
    )
    fallback: str | None
    degradation: str | None = Field(
        default=None, description="How the step ran degraded (a cheaper model or a cached "
        "answer under a budget).",
    )
    error: str | None


class SagaSummary(BaseModel):
    """The inquiry's saga: state, steps and outcome (as ``ai-apps timeline --json``).
    ``status`` is ``accepted`` until the coordinator has started the saga."""

    id: str
    workflow: str
    tenant: str
    status: str = Field(examples=["accepted", "running", "completed", "failed"])
    started_at: str
    finished_at: str | None
    degraded: list[str]
    failure_reason: str | None
    cost: dict[str, Any] | None = Field(
        default=None, description="The cost on the terminal event (total, currency, by_step, "
        "price_table); None while running.",
    )
    outcome: dict[str, Any] | None
    steps: list[StepRow]


class StoredEvent(BaseModel):
    """A CloudEvent from the event store."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    source: str
    time: str
    specversion: str
    correlationid: str
    causationid: str | None = None
    subject: str | None = None
    tenant: str
    data: dict[str, Any]


class InquiryEvents(BaseModel):
    inquiry_id: str
    events: list[StoredEvent] = Field(description="Causes before their effects.")
