"""Telemetry settings: ``Settings.telemetry`` (``AIAPPS_TELEMETRY__…``). Where traces and metrics
go is configured by the standard ``OTEL_*`` variables, not here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

CUSTOMER_TEXT_FIELDS = (
    "message", "text", "ocr_text", "ocr_lines", "caption", "customer_name", "email", "phone",
    "query",
)
"""Log fields that may hold what a customer wrote or what was read from their images."""


class HealthThresholds(BaseModel):
    """How the health report judges an operation, over its last ``window`` calls:

    * success rate below ``unhealthy_below`` (default 0.5): **unhealthy**;
    * success rate below ``degraded_below`` (default 0.95), or p95 duration above
      ``slow_p95_ms`` (when set): **degraded**;
    * otherwise **healthy**.

    A service is the worst of its operations, made **unhealthy** by an open circuit and at
    least **degraded** by a half-open one; the overall status is the worst service.
    """

    model_config = ConfigDict(frozen=True)

    window: int = Field(default=20, ge=1, description="Recent calls the success rate is taken over.")
    degraded_below: float = Field(default=0.95, ge=0, le=1)
    unhealthy_below: float = Field(default=0.5, ge=0, le=1)
    slow_p95_ms: float | None = Field(default=None, gt=0, description="p95 above this: degraded.")
    recent_errors: int = Field(default=10, ge=0, description="Errors kept per operation.")
    durations_kept: int = Field(
        default=1000, ge=1, description="Durations per operation that average and p95 are taken over."
    )

    @model_validator(mode="after")
    def _ordered(self) -> HealthThresholds:
        if self.unhealthy_below > self.degraded_below:
            raise ValueError("unhealthy_below must not be above degraded_below")
        return self


class TelemetrySettings(BaseModel):
    """Tracing, metrics and log redaction.

    With ``enabled`` false (the default) nothing of OpenTelemetry is imported: the health report
    still works (it is fed by the actor middleware), traces and metrics are off. With it true
    the ``otel`` extra is needed (``pip install 'ai-apps[otel]'``); traces and metrics are
    exported as the ``OTEL_*`` variables say (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_TRACES_EXPORTER``, ``OTEL_SERVICE_NAME``…). With no span exporter configured no spans
    are made: the bus carries the trace context it is given and logs keep its ids.
    """

    model_config = ConfigDict(frozen=True)

    enabled: bool = False
    service_name: str = Field(
        default="ai-apps", min_length=1,
        description="OpenTelemetry service.name, unless OTEL_SERVICE_NAME is set.",
    )
    prometheus_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Serve /metrics on this port (long-running workers and coordinators).",
    )
    prometheus_addr: str = Field(default="0.0.0.0", description="Address the /metrics server binds.")
    redact_customer_text: bool = Field(
        default=False, description="Also blank customer text fields in logs (message, text, …).",
    )
    customer_text_fields: tuple[str, ...] = CUSTOMER_TEXT_FIELDS
    health: HealthThresholds = HealthThresholds()
