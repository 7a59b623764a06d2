"""Observability: traces across the bus, metrics, log redaction and the health report.

:class:`Telemetry` is the one object the composition root holds. It decorates the transport
(:meth:`Telemetry.instrument_transport`), gives the actor runtime its middleware
(:meth:`Telemetry.actor_middleware`), watches the coordinator's breakers and workflows
(:meth:`Telemetry.observe_coordinator`), and answers :meth:`Telemetry.health` and
:meth:`Telemetry.metrics_text`. OpenTelemetry (the ``otel`` extra) is imported only when
``TelemetrySettings.enabled`` is true; the health report works without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actors.runtime import ActorRuntime, Middleware
from bus.base import Transport
from saga.breaker import BreakerRegistry
from saga.cost import PriceTable
from service.telemetry.circuits import StoredCircuits
from service.telemetry.health import HealthRecorder, store_health, stored_health
from service.telemetry.middleware import CallSink, ProviderCall, ReplaySink, provider_calls
from service.telemetry.redaction import Redactor
from service.telemetry.settings import HealthThresholds, TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from saga.coordinator import SagaCoordinator
    from service.settings import Settings
    from service.telemetry.otel import OtelPipeline
    from service.telemetry.saga import SagaObserver

__all__ = [
    "HealthRecorder",
    "HealthThresholds",
    "ProviderCall",
    "Redactor",
    "StoredCircuits",
    "Telemetry",
    "TelemetrySettings",
    "store_health",
    "stored_health",
]

INSTALL_HINT = "pip install 'ai-apps[otel]'"
DISABLED_METRICS = (
    b"# ai-apps metrics are off: set AIAPPS_TELEMETRY__ENABLED=true "
    b"(needs " + INSTALL_HINT.encode() + b")\n"
)


class Telemetry:
    """Tracing, metrics and the health report of one process."""

    def __init__(
        self,
        settings: TelemetrySettings | None = None,
        *,
        redactor: Redactor | None = None,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
        pricing: PriceTable | None = None,
    ) -> None:
        """``span_exporter`` (a test's in-memory exporter) is added to whatever the ``OTEL_*``
        variables configure, with a synchronous processor; ``pricing`` prices provider calls
        (the ``ai_apps.cost`` attribute and metric)."""
        self.settings = settings or TelemetrySettings()
        self.pricing = pricing
        self.redactor = redactor or Redactor()
        self.recorder = HealthRecorder(self.settings.health)
        self._breakers: BreakerRegistry | None = None
        self._otel: OtelPipeline | None = None
        self._sagas: SagaObserver | None = None
        if self.settings.enabled and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
            self._otel, self._sagas = _pipeline(self.settings, span_exporter, metric_readers)

    @classmethod
    def from_settings(cls, settings: Settings | TelemetrySettings) -> Telemetry:
        """From the service settings (``settings.telemetry``, and its secrets for redaction)."""
        if isinstance(settings, TelemetrySettings):
            return cls(settings)
        from service.logs import redactor_for

        telemetry: TelemetrySettings = getattr(settings, "telemetry", None) or TelemetrySettings()
        pricing = getattr(settings, "pricing", None)
        return cls(
            telemetry, redactor=redactor_for(settings),
            pricing=pricing if isinstance(pricing, PriceTable) else None,
        )

    @property
    def enabled(self) -> bool:
        """Are traces and metrics on (the ``otel`` pipeline running)?"""
        return self._otel is not None

    # -- wiring ----------------------------------------------------------------------------

    def instrument_transport(self, transport: Transport) -> Transport:
        """``transport`` with spans around publishes and handlers and the bus metrics; the
        same transport when telemetry is off."""
        if self._otel is None:
            return transport
        from service.telemetry.transport import InstrumentedTransport

        return InstrumentedTransport(
            transport, self._otel.tracer, self._otel.instruments, sagas=self._sagas,
            recording=self._otel.recording, redactor=self.redactor,
        )

    def actor_middleware(self) -> list[Middleware]:
        """For ``ActorRuntime(middleware=…)``: provider calls to the health report, and (when
        on) as client spans and metrics."""
        sinks: list[CallSink] = [self._record_health]
        replays: list[ReplaySink] = []
        if self._otel is not None:
            sinks.append(self._otel.provider_call)
            replays.append(self._otel.inbox_replay)
        return [provider_calls(sinks, replays, pricing=self.pricing)]

    def observe_coordinator(self, coordinator: SagaCoordinator) -> None:
        """Its breakers (the circuit gauge and the report's circuit states), workflows, and
        step retries, timeouts and fallbacks (counted as it tells them)."""
        self.observe_breakers(coordinator.breakers)
        if self._sagas is not None:
            self._sagas.observe_workflows(coordinator.workflows.values())
            coordinator.add_observer(self._sagas)

    def observe_runtime(self, runtime: ActorRuntime) -> None:
        """Its inbox's exceptional outcomes, as a counter (``ai_apps.actor.requests``, by
        ``ai_apps.outcome``): requests expired before they were worked on, claims lost to
        another worker, claim renewals that failed."""
        if self._otel is not None:
            self._otel.observe_runtime(runtime)

    def observe_breakers(self, breakers: BreakerRegistry) -> None:
        self._breakers = breakers
        if self._otel is not None:
            self._otel.observe_breakers(self._current_breakers)

    def _current_breakers(self) -> BreakerRegistry | None:
        return self._breakers

    # -- reading ---------------------------------------------------------------------------

    def health(self, breakers: BreakerRegistry | None = None) -> dict[str, Any]:
        """The health report of this process (JSON-ready): its actors' provider calls, and the
        circuits of ``breakers`` (default: the observed coordinator's)."""
        registry = breakers or self._breakers
        circuits = {s: c.value for s, c in registry.states().items()} if registry else None
        return self.recorder.report(circuits)

    def metrics_text(self) -> bytes:
        """Every metric in the Prometheus text format; a comment saying how to turn them on
        when telemetry is off."""
        return self._otel.metrics_text() if self._otel is not None else DISABLED_METRICS

    @property
    def metrics_content_type(self) -> str:
        return self._otel.content_type if self._otel is not None else "text/plain; charset=utf-8"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> int | None:
        """Serve ``/metrics`` when ``prometheus_port`` is set; returns the port served."""
        return self._otel.serve_metrics() if self._otel is not None else None

    def force_flush(self) -> None:
        if self._otel is not None:
            self._otel.force_flush()

    def shutdown(self) -> None:
        """Flush spans and metrics and stop exporting. Idempotent."""
        if self._otel is not None:
            self._otel.shutdown()

    def _record_health(self, call: ProviderCall) -> None:
        if call.cached:
            return  # the provider was not called: says nothing of its health
        self.recorder.record(
            call.service, call.operation, ok=call.ok, duration_ms=call.duration_s * 1000,
            error_class=call.error_class, message=self.redactor.scrub(call.message),
            correlation_id=call.correlation_id,
            at=datetime.fromtimestamp(call.ended_ns / 1e9, UTC),
        )


def _pipeline(
    settings: TelemetrySettings, span_exporter: SpanExporter | None,
    metric_readers: Sequence[MetricReader],
) -> tuple[OtelPipeline, SagaObserver]:
    from service.wiring import ConfigurationError

    try:
        from service.telemetry.otel import OtelPipeline, TelemetryConfigError
        from service.telemetry.saga import SagaObserver
    except ImportError as exc:
        raise ConfigurationError(
            f"telemetry is enabled but OpenTelemetry is not installed ({exc.name}): "
            f"{INSTALL_HINT}, or set AIAPPS_TELEMETRY__ENABLED=false"
        ) from exc
    try:
        pipeline = OtelPipeline(settings, span_exporter=span_exporter, metric_readers=metric_readers)
    except TelemetryConfigError as exc:
        raise ConfigurationError(str(exc)) from exc
    return pipeline, SagaObserver(pipeline.tracer, pipeline.instruments, recording=pipeline.recording)
