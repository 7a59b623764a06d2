"""The OpenTelemetry pipeline: tracer and meter providers built from the ``OTEL_*`` variables,
our instruments, provider-call client spans, the circuit-state gauge and the Prometheus
exposition. Imported only when telemetry is enabled (it needs the ``otel`` extra).

Exporters. ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` (comma-separated ``otlp``,
``console``, ``none``) choose them; unset, OTLP is used when an OTLP endpoint variable is set
and nothing otherwise (unlike the SDK, whose default is OTLP to localhost). OTLP goes over
HTTP/protobuf (the extra), or gRPC with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` if
``opentelemetry-exporter-otlp-proto-grpc`` is installed. With no span exporter no spans are
made at all: the bus only carries the trace context it is given (logs keep its ids), which
costs next to nothing. Metrics are always readable as Prometheus text
(:meth:`OtelPipeline.metrics_text`), and served on ``prometheus_port`` when it is set.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server

from actors.runtime import ActorRuntime
from events.envelope import Envelope
from saga.breaker import BreakerRegistry, CircuitState
from service.telemetry.middleware import ProviderCall
from service.telemetry.redaction import Redactor
from service.telemetry.settings import TelemetrySettings

SCOPE = "ai_apps"
VERSION = "0.1.0"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60)
"""Seconds: the messaging conventions' buckets (handler durations), extended for slow models."""
GEN_AI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
)
"""Seconds: the advisory buckets of ``gen_ai.client.operation.duration``."""
SAGA_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864
)
"""The advisory buckets of ``gen_ai.client.token.usage``."""
_PROVIDER_NAMES = {"azure-openai": "azure.ai.openai", "openai": "openai"}
"""``gen_ai.provider.name``: the conventions' well-known values where they name our provider
(Azure OpenAI, OpenAI and OpenAI-compatible endpoints); our own names (azure for the Azure AI
services they do not list, local, fake) elsewhere."""
CIRCUIT_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

_OPERATIONS = {
    "responder": "chat", "language": "detect_language", "vision": "analyze_image",
    "translation": "translate", "speech": "synthesize_speech", "imagegen": "generate_content",
}
"""``gen_ai.operation.name`` by actor service: ``chat`` where the conventions name it, our own
low-cardinality names for the capabilities they do not cover."""


_W3C = TraceContextTextMapPropagator()
_CARRIED = ("traceparent", "tracestate", "baggage")
"""The envelope's trace fields: W3C Trace Context and Baggage (CloudEvents' distributed
tracing extension, plus baggage)."""


def extract(envelope: Envelope) -> Context:
    """The trace context (and baggage) an envelope carries; an empty context when none.

    Read with the propagators ``OTEL_PROPAGATORS`` names (``opentelemetry.propagate``; by
    default W3C Trace Context and Baggage). The envelope's fields are W3C ones whatever that
    variable says, so its ``traceparent`` is read as W3C when they did not find a span in it
    (``OTEL_PROPAGATORS=b3``, say, still keeps one trace across the bus)."""
    if not envelope.traceparent and not envelope.baggage:
        return Context()
    carrier = {name: value for name in _CARRIED if (value := getattr(envelope, name))}
    context = propagate.extract(carrier, context=Context())
    if envelope.traceparent and not trace.get_current_span(context).get_span_context().is_valid:
        context = _W3C.extract(carrier, context=context)
    return context


def with_current_context(envelope: Envelope) -> Envelope:
    """``envelope`` carrying the current trace context and baggage, if there is a trace;
    written by the ``OTEL_PROPAGATORS`` propagators, the W3C ``traceparent`` always."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if "traceparent" not in carrier:
        _W3C.inject(carrier)
    if "traceparent" not in carrier:
        return envelope
    return envelope.model_copy(update={name: carrier.get(name) for name in _CARRIED})


def carried_from(headers: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """``(traceparent, tracestate, baggage)`` for an envelope, from an HTTP request's headers
    read by the ``OTEL_PROPAGATORS`` propagators (B3 or Jaeger headers too, when configured
    and installed)."""
    context = propagate.extract(headers, context=Context())
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    if "traceparent" not in carrier:
        _W3C.inject(carrier, context=context)
    return carrier.get("traceparent"), carrier.get("tracestate"), carrier.get("baggage")


def record_error(span: Span, exc: BaseException, redactor: Redactor) -> None:
    """``exc`` on ``span`` as the SDK records one (an ``exception`` event, an error status,
    and ``error.type``), but with its message and stack trace through ``redactor``: spans are
    exported, and an exception's text may hold a key or a connection string. Every span that
    can end in an exception is opened with ``record_exception=False,
    set_status_on_exception=False`` and records it here instead."""
    message = redactor.scrub(str(exc))
    span.set_attribute("error.type", type(exc).__name__)
    span.record_exception(exc, attributes={
        "exception.message": message,
        "exception.stacktrace": redactor.scrub("".join(traceback.format_exception(exc))),
    }, escaped=True)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable names something this build cannot do."""


class Counter:
    """A monotonic counter summed in a dict and handed to OpenTelemetry when metrics are
    collected (an observable counter): on the bus's hot path an ``add`` is a dict update, not
    an SDK call (several microseconds each). Callers build ``attributes`` with their keys in a
    fixed order."""

    def __init__(self, meter: Meter, name: str, unit: str, description: str) -> None:
        self._values: dict[tuple[tuple[str, Any], ...], float] = {}
        meter.create_observable_counter(name, [self._observe], unit, description)

    def add(self, amount: float, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        self._values[key] = self._values.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> list[Observation]:
        # list() copies under the GIL: the exporter's thread never sees the dict change size
        return [Observation(value, dict(key)) for key, value in list(self._values.items())]


@dataclass(frozen=True, slots=True)
class Instruments:
    """Every instrument ai-apps records (names follow the semantic conventions where they
    exist; ours are under ``ai_apps.``)."""

    sent: Counter
    consumed: Counter
    process_duration: Histogram
    handler_errors: Counter
    retried: Counter
    dead_lettered: Counter
    dropped: Counter
    redriven: Counter
    provider_calls: Counter
    provider_errors: Counter
    provider_duration: Histogram
    tokens: Histogram
    characters: Counter
    cost: Counter
    saga_cost: Counter
    inbox_replays: Counter
    cache_hits: Counter
    cache_saved: Counter
    saga_outcomes: Counter
    saga_duration: Histogram
    step_retries: Counter
    step_timeouts: Counter
    step_fallbacks: Counter

    @classmethod
    def create(cls, meter: Meter) -> Instruments:
        def counter(name: str, unit: str, description: str) -> Counter:
            return Counter(meter, name, unit, description)

        def histogram(name: str, unit: str, description: str, buckets: Sequence[float]) -> Histogram:
            return meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=buckets
            )

        return cls(
            sent=counter("messaging.client.sent.messages", "{message}", "Events published, by type."),
            consumed=counter(
                "messaging.client.consumed.messages", "{message}",
                "Events handled, by type and subscriber group (retries count again)."),
            process_duration=histogram(
                "messaging.process.duration", "s", "Handler duration, by type and group.",
                DURATION_BUCKETS),
            handler_errors=counter(
                "ai_apps.messaging.handler.errors", "{error}",
                "Handlers that raised; the transport retries the event or dead-letters it."),
            retried=counter(
                "ai_apps.messaging.retried", "{message}",
                "Retries the transport scheduled after a failed delivery, by type, group and "
                "error class."),
            dead_lettered=counter(
                "ai_apps.messaging.dead_lettered", "{message}",
                "Messages dead-lettered (retries exhausted, an error not worth retrying, or not "
                "decodable), by type, group and error class."),
            dropped=counter(
                "ai_apps.messaging.dropped", "{message}",
                "Failed messages of ephemeral groups, which neither retry nor dead-letter."),
            redriven=counter(
                "ai_apps.messaging.dead_letters.redriven", "{message}", "Dead letters re-driven."),
            provider_calls=counter(
                "ai_apps.provider.calls", "{call}", "Provider calls, by service and outcome."),
            provider_errors=counter(
                "ai_apps.provider.errors", "{error}", "Failed provider calls, by error class."),
            provider_duration=histogram(
                "gen_ai.client.operation.duration", "s", "Provider call duration.",
                GEN_AI_DURATION_BUCKETS),
            tokens=histogram(
                "gen_ai.client.token.usage", "{token}", "Tokens per call, input and output.",
                TOKEN_BUCKETS),
            characters=counter(
                "ai_apps.usage.characters", "{character}", "Characters billed by providers."),
            cost=counter(
                "ai_apps.cost", "{currency}", "Provider cost, priced by the price table (AIAPPS_PRICING)."),
            saga_cost=counter(
                "ai_apps.saga.cost", "{currency}", "Cost of finished sagas, by workflow."),
            inbox_replays=counter(
                "ai_apps.actor.inbox_replays", "{request}",
                "Redelivered requests answered from the inbox without calling the provider."),
            cache_hits=counter(
                "ai_apps.cache.hits", "{call}",
                "Results served by the result cache instead of a provider call."),
            cache_saved=counter(
                "ai_apps.cache.saved", "{currency}",
                "What the result cache's hits saved: the list price of the calls not made."),
            saga_outcomes=counter(
                "ai_apps.saga.outcomes", "{saga}", "Finished sagas, by workflow and outcome."),
            saga_duration=histogram(
                "ai_apps.saga.duration", "s", "Saga duration, start to terminal event.",
                SAGA_BUCKETS),
            step_retries=counter(
                "ai_apps.saga.step.retries", "{retry}",
                "Step retries the coordinator scheduled, by workflow, step, service and reason "
                "(the error class). Transport redeliveries are ai_apps.messaging.retried."),
            step_timeouts=counter(
                "ai_apps.saga.step.timeouts", "{timeout}",
                "Steps whose deadline passed without an answer, by workflow, step and service."),
            step_fallbacks=counter(
                "ai_apps.saga.step.fallbacks", "{fallback}",
                "Steps that took their fallback, by workflow, step, service and reason (an "
                "error class, circuit_open, budget)."),
        )


class OtelPipeline:
    """Tracer and meter providers of one process (not installed as the global ones, so that
    several can live in one test process), our instruments and the Prometheus registry."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.settings = settings
        self.resource = _resource(settings, env)
        self.tracer_provider = TracerProvider(resource=self.resource)
        processors: list[SpanProcessor] = [] if span_exporter is None else [
            SimpleSpanProcessor(span_exporter)
        ]
        processors.extend(_span_processors(env))
        for processor in processors:
            self.tracer_provider.add_span_processor(processor)
        self.recording = bool(processors)
        """Are spans made? Not with nowhere to send them: the bus then only carries an
        incoming trace context through (so logs keep its ids), at next to no cost."""
        self.tracer: Tracer = (
            self.tracer_provider.get_tracer(SCOPE, VERSION) if self.recording else NoOpTracer()
        )
        self.registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [
            PrometheusMetricReader(registry=self.registry), *_metric_readers(env), *metric_readers
        ]
        self.meter_provider = MeterProvider(
            resource=self.resource, metric_readers=readers,
            exemplar_filter=AlwaysOffExemplarFilter(),  # Prometheus text shows none; they cost
        )
        self.meter = self.meter_provider.get_meter(SCOPE, VERSION)
        self.instruments = Instruments.create(self.meter)
        self._breakers: Callable[[], BreakerRegistry | None] = lambda: None
        self.meter.create_observable_gauge(
            "ai_apps.circuit.state", [self._circuit_states], "1",
            "Circuit breaker state by service: 0 closed, 1 half-open, 2 open.",
        )
        self._server: Any = None
        self._lock = threading.Lock()
        self._closed = False

    # -- provider calls --------------------------------------------------------------------

    def provider_call(self, call: ProviderCall) -> None:
        """A CLIENT span for the call (made after it, with its real start and end, as a child
        of the current consumer span) and the provider metrics."""
        operation = _OPERATIONS.get(call.service, call.service)
        provider = _PROVIDER_NAMES.get(call.provider, call.provider)
        models: dict[str, str] = {}
        if call.request_model:  # omitted when not known
            models["gen_ai.request.model"] = call.request_model
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,  # deprecated name of gen_ai.provider.name, still read
            **models,
            "ai_apps.provider": call.provider,
            "ai_apps.service": call.service,
            "ai_apps.step": call.operation,
            "ai_apps.cost": call.cost,
            "ai_apps.currency": call.currency,
        }
        usage = call.usage
        if usage is not None:
            attributes |= {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "ai_apps.usage.characters": usage.characters,
            }
            if usage.images:
                attributes["ai_apps.usage.images"] = usage.images
            if usage.audio_seconds:
                attributes["ai_apps.usage.audio_seconds"] = usage.audio_seconds
        if call.response_model:
            attributes["gen_ai.response.model"] = call.response_model
        if call.error_class is not None:
            attributes["error.type"] = call.error_class
        if call.cached:
            attributes["ai_apps.cache_hit"] = True
        if self.recording:
            name = f"{operation} {call.request_model}" if call.request_model else operation
            span = self.tracer.start_span(
                name, kind=SpanKind.CLIENT, attributes=attributes,
                start_time=call.started_ns,
            )
            if not call.ok:
                span.set_status(Status(StatusCode.ERROR, call.error_class))
            span.end(end_time=call.ended_ns)

        metric = {"ai_apps.service": call.service, "gen_ai.operation.name": operation,
                  "gen_ai.provider.name": provider, **models}
        i = self.instruments
        if call.cached:  # nothing was called: a hit, not a provider call
            i.cache_hits.add(1, {"ai_apps.service": call.service})
            i.cache_saved.add(call.saved, {"ai_apps.service": call.service,
                                           "ai_apps.currency": call.currency})
            return
        failed = {"error.type": call.error_class} if call.error_class is not None else {}
        i.provider_calls.add(1, {**metric, "ai_apps.outcome": "ok" if call.ok else "error"})
        i.provider_duration.record(call.duration_s, {**metric, **failed})
        if not call.ok:
            i.provider_errors.add(1, {**metric, **failed})
        if usage is not None:
            if usage.input_tokens:
                i.tokens.record(usage.input_tokens, {**metric, "gen_ai.token.type": "input"})
            if usage.output_tokens:
                i.tokens.record(usage.output_tokens, {**metric, "gen_ai.token.type": "output"})
            if usage.characters:
                i.characters.add(usage.characters, metric)
        i.cost.add(call.cost, {**metric, "ai_apps.currency": call.currency})

    def inbox_replay(self, service: str) -> None:
        self.instruments.inbox_replays.add(1, {"ai_apps.service": service})

    # -- circuit breakers ------------------------------------------------------------------

    def observe_breakers(self, breakers: Callable[[], BreakerRegistry | None]) -> None:
        self._breakers = breakers

    def observe_runtime(self, runtime: ActorRuntime) -> None:
        """Count the runtime's exceptional request outcomes as it counts them (read when the
        metrics are collected: nothing on the request's path)."""
        def outcomes(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(runtime.expired, {"ai_apps.outcome": "expired"}),
                Observation(runtime.claims_lost, {"ai_apps.outcome": "claim_lost"}),
                Observation(runtime.renewals_failed, {"ai_apps.outcome": "renewal_failed"}),
            ]

        self.meter.create_observable_counter(
            "ai_apps.actor.requests", [outcomes], "{request}",
            "Requests that ended without the provider's answer: expired before they were "
            "worked on, their claim lost to another worker; and claim renewals that failed.",
        )

    def _circuit_states(self, options: CallbackOptions) -> list[Observation]:
        registry = self._breakers()
        if registry is None:
            return []
        return [Observation(CIRCUIT_VALUES[state], {"ai_apps.service": service})
                for service, state in registry.states().items()]

    # -- Prometheus ------------------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    def serve_metrics(self) -> int | None:
        """Serve ``/metrics`` on ``prometheus_port`` (0: any free port); returns the port."""
        port = self.settings.prometheus_port
        if port is None:
            return None
        with self._lock:
            if self._server is None:
                self._server, _thread = start_http_server(
                    port, addr=self.settings.prometheus_addr, registry=self.registry
                )
            return int(self._server.server_port)

    # -- lifecycle -------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 5000) -> None:
        self.tracer_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop exporters and the /metrics server. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _resource(settings: TelemetrySettings, env: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = {"service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
                                  "service.version": VERSION}
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attributes["service.name"] = settings.service_name
    return Resource.create(attributes)


def _chosen(env: Mapping[str, str], variable: str, signal: str) -> list[str]:
    raw = env.get(variable)
    if raw is None:
        endpoint = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = sorted(set(names) - {"otlp", "console", "none", "prometheus"})
    if unknown:
        raise TelemetryConfigError(
            f"{variable}={raw}: unknown exporter {', '.join(unknown)} (otlp, console or none)"
        )
    return [n for n in names if n not in ("none", "prometheus")]


def _otlp(env: Mapping[str, str], signal: str, kind: str) -> Any:
    """The OTLP exporter class for ``signal``: HTTP/protobuf (the ``otel`` extra), or gRPC when
    ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and its package is installed."""
    protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    transport = {"http/protobuf": "http", "grpc": "grpc"}.get(protocol)
    if transport is None:
        raise TelemetryConfigError(f"OTLP protocol {protocol!r}: use http/protobuf or grpc")
    module = f"opentelemetry.exporter.otlp.proto.{transport}.{kind}_exporter"
    name = "OTLPSpanExporter" if kind == "trace" else "OTLPMetricExporter"
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise TelemetryConfigError(
            f"OTLP over {protocol} needs pip install opentelemetry-exporter-otlp-proto-{transport}"
        ) from exc


def _span_processors(env: Mapping[str, str]) -> list[SpanProcessor]:
    processors: list[SpanProcessor] = []
    for name in _chosen(env, "OTEL_TRACES_EXPORTER", "TRACES"):
        if name == "otlp":
            processors.append(BatchSpanProcessor(_otlp(env, "TRACES", "trace")()))
        else:
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
    return processors


def _metric_readers(env: Mapping[str, str]) -> list[MetricReader]:
    readers: list[MetricReader] = []
    for name in _chosen(env, "OTEL_METRICS_EXPORTER", "METRICS"):
        if name == "otlp":
            readers.append(PeriodicExportingMetricReader(_otlp(env, "METRICS", "metric")()))
        else:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    return readers
