"""Traces across the bus: producer and consumer spans linked through the envelope's
traceparent, provider client spans, one saga span, over the in-memory bus."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actors.capabilities import Translation
from actors.providers.fake import FakeProviders, FakeTranslator, transient
from bus import InMemoryTransport, RetryPolicy
from events import BlobRef, Envelope, ResponseReady
from events.common import ProviderInfo, Usage
from saga.cost import Price, PriceTable
from service.telemetry import ProviderCall, Telemetry, TelemetrySettings
from service.testing import FakeService, make_inquiry
from tests.telemetry.conftest import attr, by_kind, instrument

pytestmark = pytest.mark.otel

REQUESTS = ("AnalyzeImageRequested", "DetectLanguageRequested", "TranslateTextRequested",
            "GenerateResponseRequested", "SynthesizeSpeechRequested")
RESULTS = ("ImageAnalyzed", "LanguageDetected", "TextTranslated", "ResponseGenerated",
           "SpeechSynthesized")


async def every_step(svc: FakeService) -> Envelope:
    """A Spanish inquiry with a photo and a voice reply: every support step runs."""
    svc.fakes.language.language = "es"
    photo: BlobRef = await svc.blobs.put(b"\x89PNG fake", "image/png", "label.png")
    await svc.submit(make_inquiry(message="Mi cafetera llegó rota", attachments=(photo,),
                                  voice_reply=True))
    done = await svc.wait("inq-1", timeout=10)
    await svc.settle()
    return done


def parent_of(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> ReadableSpan | None:
    return spans.get(span.parent.span_id) if span.parent is not None else None


class TestOneTrace:
    async def test_an_inquiry_is_one_trace_covering_every_step(
        self, traced: FakeService, spans: InMemorySpanExporter
    ) -> None:
        """Every span of the inquiry is in one trace with one root: the inquiry's publish."""
        done = await every_step(traced)
        assert isinstance(done.data, ResponseReady)
        finished = spans.get_finished_spans()
        assert len({s.context.trace_id for s in finished}) == 1
        roots = [s for s in finished if s.parent is None]
        assert [r.name for r in roots] == ["publish InquiryReceived"]
        names = {s.name for s in finished}
        for event_type in (*REQUESTS, *RESULTS, "InquiryReceived", "ResponseReady"):
            assert f"publish {event_type}" in names
            assert f"process {event_type}" in names
        assert "saga support" in names
        clients = by_kind(finished, SpanKind.CLIENT)
        assert len(clients) == len(traced.fakes.calls()) == 6

    async def test_spans_are_parented_along_the_path_of_the_request(
        self, traced: FakeService, spans: InMemorySpanExporter
    ) -> None:
        """Consumer → its message's producer; a follow-up's producer → the consumer that
        published it; a provider call → the actor's consumer; the saga → the inquiry."""
        await every_step(traced)
        finished = spans.get_finished_spans()
        index = {s.context.span_id: s for s in finished}
        for consumer in by_kind(finished, SpanKind.CONSUMER):
            producer = parent_of(consumer, index)
            assert producer is not None, consumer.name
            assert producer.kind is SpanKind.PRODUCER, consumer.name
            assert attr(producer, "messaging.message.id") == attr(consumer, "messaging.message.id")
        for producer in by_kind(finished, SpanKind.PRODUCER):
            if producer.name == "publish InquiryReceived":
                continue
            handler = parent_of(producer, index)
            assert handler is not None, producer.name
            assert handler.kind is SpanKind.CONSUMER, producer.name
            group = attr(handler, "messaging.consumer.group.name")
            if producer.name.removeprefix("publish ") in (*REQUESTS, "ResponseReady"):
                assert group == "saga-coordinator"
            else:
                assert group.startswith("actor."), producer.name
        for client in by_kind(finished, SpanKind.CLIENT):
            handler = parent_of(client, index)
            assert handler is not None
            assert attr(handler, "messaging.consumer.group.name") == (
                f"actor.{attr(client, 'ai_apps.service')}"
            )
        (saga,) = [s for s in finished if s.name == "saga support"]
        root = parent_of(saga, index)
        assert root is not None
        assert root.name == "publish InquiryReceived"

    async def test_spans_carry_the_semantic_convention_attributes(
        self, traced: FakeService, spans: InMemorySpanExporter
    ) -> None:
        """messaging.* on bus spans; gen_ai.* and our usage and cost on provider spans."""
        await every_step(traced)
        finished = spans.get_finished_spans()
        (publish,) = [s for s in finished if s.name == "publish GenerateResponseRequested"]
        assert attr(publish, "messaging.system") == "ai_apps.memory"
        assert attr(publish, "messaging.operation.type") == "send"
        assert attr(publish, "messaging.destination.name") == "memory"
        assert attr(publish, "ai_apps.event_type") == "GenerateResponseRequested"
        assert attr(publish, "messaging.rabbitmq.destination.routing_key") is None
        assert attr(publish, "messaging.message.conversation_id") == "inq-1"
        (chat,) = [s for s in by_kind(finished, SpanKind.CLIENT)
                   if attr(s, "ai_apps.service") == "responder"]
        assert chat.name == "chat fake-1"
        assert attr(chat, "gen_ai.system") == attr(chat, "gen_ai.provider.name") == "fake"
        assert attr(chat, "gen_ai.request.model") == "fake-1"
        assert attr(chat, "gen_ai.usage.input_tokens") > 0
        assert attr(chat, "gen_ai.usage.output_tokens") > 0
        assert attr(chat, "ai_apps.cost") == 0.0  # no price table given
        (translate,) = [s for s in by_kind(finished, SpanKind.CLIENT)
                        if attr(s, "ai_apps.step") == "translate_in"]
        assert attr(translate, "ai_apps.usage.characters") > 0
        (saga,) = [s for s in finished if s.name == "saga support"]
        assert attr(saga, "ai_apps.saga.outcome") == "completed"
        assert attr(saga, "ai_apps.saga.id") == "inq-1"

    async def test_a_failed_provider_call_is_an_error_span_with_its_class(
        self, traced: FakeService, spans: InMemorySpanExporter
    ) -> None:
        """The retried call's first span is an error with ``error.type``; the trace goes on."""
        traced.fakes.responder.behaviour.fail_next(transient())
        await traced.submit(make_inquiry(language="en"))
        await traced.settle()
        await traced.advance(1.0)  # the step's retry timer
        await traced.wait("inq-1", timeout=5)
        finished = spans.get_finished_spans()
        calls = [s for s in by_kind(finished, SpanKind.CLIENT) if attr(s, "ai_apps.service") == "responder"]
        assert [c.status.status_code for c in calls] == [StatusCode.ERROR, StatusCode.UNSET]
        assert attr(calls[0], "error.type") == "transient"
        # the failed call named no model (the fake has no configured one): none is made up
        assert calls[0].name == "chat"
        assert attr(calls[0], "gen_ai.request.model") is None
        assert attr(calls[0], "gen_ai.response.model") is None
        assert calls[1].name == "chat fake-1"
        assert attr(calls[1], "gen_ai.response.model") == "fake-1"
        assert len({s.context.trace_id for s in finished}) == 1


class TestCost:
    async def test_calls_and_sagas_are_priced_by_the_price_table(
        self, tmp_path: Path, spans: InMemorySpanExporter
    ) -> None:
        """A call's ``ai_apps.cost`` is its usage at the table's prices; the saga span carries
        the terminal event's total."""
        pricing = PriceTable(version="test", prices=(
            Price(provider="fake", per_1k_input_tokens=Decimal(1000), per_1k_output_tokens=Decimal(1000)),
        ))
        telemetry = Telemetry(TelemetrySettings(enabled=True), span_exporter=spans, pricing=pricing)
        async with instrument(FakeService(tmp_path, pricing=pricing), telemetry) as svc:
            await svc.submit(make_inquiry(language="en"))
            done = await svc.wait("inq-1", timeout=5)
            await svc.settle()
            text = telemetry.metrics_text().decode()
        assert isinstance(done.data, ResponseReady)
        finished = spans.get_finished_spans()
        (chat,) = by_kind(finished, SpanKind.CLIENT)
        tokens = attr(chat, "gen_ai.usage.input_tokens") + attr(chat, "gen_ai.usage.output_tokens")
        assert attr(chat, "ai_apps.cost") == float(tokens)
        (saga,) = [s for s in finished if s.name == "saga support"]
        assert done.data.cost is not None
        assert attr(saga, "ai_apps.cost") == float(done.data.cost.total) == float(tokens)
        assert "ai_apps_saga_cost_total" in text


    async def test_cache_hits_are_marked_and_kept_out_of_provider_health(
        self, tmp_path: Path, spans: InMemorySpanExporter
    ) -> None:
        """A result the result cache answered (``provider.cached``) is marked on its span and
        counted as a cache hit, not as a call of the provider."""

        class CachingTranslator(FakeTranslator):
            """Answers a text it has seen as the result cache does: marked cached, no usage."""

            def __init__(self) -> None:
                super().__init__()
                self.seen: set[tuple[str, str]] = set()

            async def translate(
                self, text: str, to_language: str, from_language: str | None = None
            ) -> Translation:
                done = await super().translate(text, to_language, from_language)
                if (text, to_language) in self.seen:
                    cached = ProviderInfo(name="fake", model="fake-1", cached=True)
                    return dataclasses.replace(done, provider=cached, usage=Usage())
                self.seen.add((text, to_language))
                return done

        telemetry = Telemetry(TelemetrySettings(enabled=True), span_exporter=spans)
        fakes = FakeProviders(translation=CachingTranslator())
        async with instrument(FakeService(tmp_path, providers=fakes), telemetry) as svc:
            for inquiry_id in ("inq-1", "inq-2"):
                await svc.submit(make_inquiry(inquiry_id, message="Hola", language="es"))
                await svc.wait(inquiry_id, timeout=5)
            await svc.settle()
            text = telemetry.metrics_text().decode()
        translations = [s for s in by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
                        if attr(s, "ai_apps.service") == "translation"]
        assert [bool(attr(s, "ai_apps.cache_hit")) for s in translations] == [
            False, False, True, True
        ]
        assert 'ai_apps_cache_hits_total{ai_apps_service="translation"' in text
        operations = telemetry.health()["services"]["translation"]["operations"]
        assert sum(op["calls"] for op in operations.values()) == 2


class TestContextSurvivesRedelivery:
    async def test_retries_and_redrive_are_handled_in_the_publishers_trace(
        self, telemetry: Telemetry, spans: InMemorySpanExporter
    ) -> None:
        """Two failed deliveries, a dead letter, a re-drive: all three handlings are children
        of the one publish span, because the context travels in the message."""
        inner = InMemoryTransport(
            retry=RetryPolicy(max_attempts=2, initial_delay=0.001, jitter=0), drain_timeout=0
        )
        bus = telemetry.instrument_transport(inner)
        healthy = False

        async def handler(envelope: Envelope) -> None:
            if not healthy:
                raise RuntimeError("down")

        await bus.subscribe("g", ["InquiryReceived"], handler)
        await bus.start()
        try:
            await bus.publish(Envelope.new(make_inquiry(), correlationid="inq-1"))
            await inner.idle(5)
            assert len(await bus.dead_letters("g")) == 1
            healthy = True
            assert await bus.redrive() == 1
            await inner.idle(5)
        finally:
            await bus.close()
        finished = spans.get_finished_spans()
        (producer,) = [s for s in finished if s.name == "publish InquiryReceived"]
        handled = [s for s in finished if s.name == "process InquiryReceived"]
        assert [s.status.status_code for s in handled] == [
            StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET
        ]
        for span in handled:
            assert span.parent is not None
            assert span.parent.span_id == producer.context.span_id
            assert span.context.trace_id == producer.context.trace_id
        assert attr(handled[0], "error.type") == "RuntimeError"


class TestPublishContext:
    async def test_without_a_current_span_the_envelopes_context_is_the_parent(
        self, telemetry: Telemetry, spans: InMemorySpanExporter
    ) -> None:
        """An event re-published with no span current (a timer, the outbox relay) stays in its
        trace: the producer span's parent is the context the envelope carries."""
        inner = InMemoryTransport(drain_timeout=0)
        bus = telemetry.instrument_transport(inner)
        got: list[Envelope] = []

        async def handler(envelope: Envelope) -> None:
            got.append(envelope)

        await bus.subscribe("g", ["InquiryReceived"], handler)
        await bus.start()
        carried = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        try:
            await bus.publish(Envelope.new(make_inquiry(), correlationid="inq-1", traceparent=carried))
            await inner.idle(5)
        finally:
            await bus.close()
        (producer,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
        assert format(producer.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
        assert producer.parent is not None
        assert format(producer.parent.span_id, "016x") == "b7ad6b7169203331"
        (envelope,) = got
        assert envelope.traceparent == (
            f"00-0af7651916cd43dd8448eb211c80319c-{producer.context.span_id:016x}-01"
        )


class TestMetrics:
    async def test_prometheus_text_has_bus_provider_saga_and_circuit_metrics(
        self, traced: FakeService, telemetry: Telemetry
    ) -> None:
        await every_step(traced)
        text = telemetry.metrics_text().decode()
        for name in ("messaging_client_sent_messages_total", "messaging_client_consumed_messages_total",
                     "messaging_process_duration_seconds_bucket", "gen_ai_client_operation_duration_seconds",
                     "ai_apps_provider_calls_total", "gen_ai_client_token_usage",
                     "ai_apps_usage_characters_total", "ai_apps_cost_total",
                     "ai_apps_saga_outcomes_total", "ai_apps_saga_duration_seconds",
                     "ai_apps_circuit_state"):
            assert name in text, name
        assert 'ai_apps_workflow="support"' in text
        assert 'ai_apps_service="responder"' in text


class TestDisabled:
    def test_off_by_default_changes_nothing(self, tmp_path: Path) -> None:
        """Disabled: the transport is returned as it is and metrics say how to turn them on;
        the health middleware is still there."""
        telemetry = Telemetry()
        inner = InMemoryTransport()
        assert telemetry.instrument_transport(inner) is inner
        assert not telemetry.enabled
        assert b"AIAPPS_TELEMETRY__ENABLED" in telemetry.metrics_text()
        assert len(telemetry.actor_middleware()) == 1

    async def test_health_is_reported_without_opentelemetry(self, tmp_path: Path) -> None:
        telemetry = Telemetry(TelemetrySettings(enabled=False))
        async with instrument(FakeService(tmp_path), telemetry) as svc:
            await svc.submit(make_inquiry(language="en"))
            await svc.wait("inq-1", timeout=5)
        report = telemetry.health()
        assert report["services"]["responder"]["operations"]["respond"]["calls"] == 1

    async def test_enabled_without_an_exporter_only_carries_the_context_through(self) -> None:
        """No exporter: no spans are made, but a handler runs in the trace its event carries,
        and what it publishes carries that trace on (metrics are still kept)."""
        telemetry = Telemetry(TelemetrySettings(enabled=True))
        inner = InMemoryTransport(drain_timeout=0)
        bus = telemetry.instrument_transport(inner)
        seen: list[str] = []

        async def hop(envelope: Envelope) -> None:
            seen.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
            await bus.publish(Envelope.new(make_inquiry("inq-2"), correlationid="inq-2"))

        async def sink(envelope: Envelope) -> None:
            seen.append(envelope.traceparent or "")

        await bus.subscribe("hop", ["ResponseReady"], hop)
        await bus.subscribe("sink", ["InquiryReceived"], sink)
        await bus.start()
        carried = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        done = ResponseReady(inquiry_id="inq-1", text="hi", language="en", confidence=1,
                             escalation_required=False, processing_time_ms=1)
        try:
            await bus.publish(Envelope.new(done, correlationid="inq-1", traceparent=carried))
            await inner.idle(5)
            assert b"messaging_client_sent_messages_total" in telemetry.metrics_text()
        finally:
            await bus.close()
            telemetry.shutdown()
        assert seen == ["0af7651916cd43dd8448eb211c80319c", carried]

    def test_an_unknown_exporter_is_a_configuration_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from service import ConfigurationError

        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
        with pytest.raises(ConfigurationError, match="zipkin"):
            Telemetry(TelemetrySettings(enabled=True))


class TestRedactedSpans:
    KEY = "sk-span-0123456789abcdef"

    async def test_an_exception_on_a_span_is_recorded_redacted(
        self, spans: InMemorySpanExporter
    ) -> None:
        """A handler's and a publish's exceptions are exception events and error statuses on
        their spans, with the message and stack trace redacted: a key in them is never
        exported."""
        from service.telemetry import Redactor
        from service.telemetry.redaction import REDACTED

        key = self.KEY

        class Refusing(InMemoryTransport):
            async def publish(self, envelope: Envelope) -> None:
                if envelope.correlationid == "refused":
                    raise ConnectionError(f"amqp://app:{key}@broker/ refused")
                await super().publish(envelope)

        telemetry = Telemetry(TelemetrySettings(enabled=True), span_exporter=spans,
                              redactor=Redactor([key]))
        inner = Refusing(retry=RetryPolicy(max_attempts=1, initial_delay=0.001), drain_timeout=0)
        bus = telemetry.instrument_transport(inner)

        async def handler(envelope: Envelope) -> None:
            raise RuntimeError(f"provider said: invalid key {key}")

        await bus.subscribe("g", ["InquiryReceived"], handler)
        await bus.start()
        try:
            await bus.publish(Envelope.new(make_inquiry(), correlationid="inq-1"))
            await inner.idle(5)
            with pytest.raises(ConnectionError):
                await bus.publish(Envelope.new(make_inquiry("refused"), correlationid="refused"))
        finally:
            await bus.close()
            telemetry.shutdown()
        finished = spans.get_finished_spans()
        for span in finished:
            assert key not in span.to_json(), span.name
        (handled,) = [s for s in finished if s.kind is SpanKind.CONSUMER]
        (refused,) = [s for s in finished if s.kind is SpanKind.PRODUCER
                      and attr(s, "messaging.message.conversation_id") == "refused"]
        for span, kind, text in ((handled, "RuntimeError", f"invalid key {REDACTED}"),
                                 (refused, "ConnectionError", f"amqp://app:{REDACTED}@broker/")):
            assert span.status.status_code is StatusCode.ERROR
            assert span.status.description is not None
            assert text in span.status.description
            assert attr(span, "error.type") == kind
            (event,) = span.events
            assert event.name == "exception"
            assert event.attributes is not None
            assert text in str(event.attributes["exception.message"])
            assert text in str(event.attributes["exception.stacktrace"])
            assert event.attributes["exception.type"] == kind


class TestGatewayTraceContext:
    HELPDESK_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
    HELPDESK_SPAN = "00f067aa0ba902b7"

    async def test_the_inquiry_continues_the_helpdesks_trace(
        self, tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter
    ) -> None:
        """``POST /v1/inquiries`` with a W3C ``traceparent``: every span of the inquiry is in
        the helpdesk's trace, its first publish a child of the helpdesk's span, and the
        ``tracestate`` is carried to the reply."""
        from tests.gateway.conftest import gateway_for, inquiry_body

        headers = {"traceparent": f"00-{self.HELPDESK_TRACE}-{self.HELPDESK_SPAN}-01",
                   "tracestate": "helpdesk=t61rcWkgMzE"}
        svc = instrument(FakeService(tmp_path), telemetry)
        async with gateway_for(tmp_path, service=svc) as gw:
            accepted = await gw.post(inquiry_body(), headers=headers)
            assert accepted.status_code == 202, accepted.text
            inquiry_id = accepted.json()["inquiry_id"]
            done = await svc.wait(inquiry_id, timeout=10)
            await svc.settle()
        assert done.traceparent is not None
        assert done.traceparent.split("-")[1] == self.HELPDESK_TRACE
        assert done.tracestate == "helpdesk=t61rcWkgMzE"
        finished = [s for s in spans.get_finished_spans()
                    if attr(s, "messaging.message.conversation_id") in (None, inquiry_id)]
        assert {format(s.context.trace_id, "032x") for s in finished} == {self.HELPDESK_TRACE}
        (first,) = [s for s in finished if s.name == "publish InquiryReceived"]
        assert first.parent is not None
        assert format(first.parent.span_id, "016x") == self.HELPDESK_SPAN

    @pytest.mark.parametrize("header", [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "not a traceparent",
    ])
    def test_an_invalid_traceparent_is_ignored(self, header: str) -> None:
        from service.telemetry.propagation import trace_context

        assert trace_context({"traceparent": header, "tracestate": "a=b"}) == (None, None)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus sample ``name`` with (at least) ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return None


class TestStepMetrics:
    async def test_step_timeouts_retries_and_fallbacks_are_counted(
        self, tmp_path: Path, telemetry: Telemetry
    ) -> None:
        """The responder hangs (its deadline passes: a timeout, a retry for it), then fails
        (out of attempts: the fallback): each is counted once with its workflow, step, service
        and reason, apart from the transport's redeliveries."""
        svc = FakeService(tmp_path, step_timeouts={"respond": 5.0}, step_max_attempts=2)
        async with instrument(svc, telemetry):
            svc.fakes.responder.behaviour.fail_next("hang", transient())
            await svc.submit(make_inquiry(language="en"))
            await svc.settle()
            await svc.advance(6)
            await svc.advance(60)
            done = await svc.wait("inq-1", timeout=5)
            text = telemetry.metrics_text().decode()
        assert isinstance(done.data, ResponseReady)
        assert done.data.degraded == ("respond",)
        step = {"ai_apps_workflow": "support", "ai_apps_step": "respond",
                "ai_apps_service": "responder"}
        assert sample(text, "ai_apps_saga_step_timeouts_total", **step,
                      ai_apps_reason="timeout") == 1
        assert sample(text, "ai_apps_saga_step_retries_total", **step,
                      ai_apps_reason="timeout") == 1
        assert sample(text, "ai_apps_saga_step_retries_total", **step,
                      ai_apps_reason="transient") is None
        assert sample(text, "ai_apps_saga_step_fallbacks_total", **step,
                      ai_apps_reason="transient") == 1

    async def test_an_open_circuits_fallback_is_counted_as_such(
        self, tmp_path: Path, telemetry: Telemetry
    ) -> None:
        svc = FakeService(tmp_path, breaker_failure_threshold=1, step_max_attempts=1)
        async with instrument(svc, telemetry):
            svc.fakes.responder.behaviour.fail_always(transient())
            for inquiry_id in ("a", "b"):
                await svc.submit(make_inquiry(inquiry_id, language="en"))
                await svc.wait(inquiry_id, timeout=5)
            text = telemetry.metrics_text().decode()
        assert sample(text, "ai_apps_saga_step_fallbacks_total", ai_apps_step="respond",
                      ai_apps_reason="circuit_open") == 1
        assert sample(text, "ai_apps_saga_step_fallbacks_total", ai_apps_step="respond",
                      ai_apps_reason="transient") == 1


class TestCancelledDelivery:
    async def test_a_call_that_outlives_its_cancelled_delivery_is_still_recorded(
        self, tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter
    ) -> None:
        """The broker drops the connection while the provider works: the call finishes after
        its delivery is gone (the redelivery answers from the inbox) and still gets its
        client span, its metrics and its place in the health report, once."""
        from actors.runtime import bind_log_context
        from saga import SqliteSagaStore
        from service.testing import fake_settings
        from service.wiring import Service
        from tests.test_inbox import cancel_then_redeliver

        fakes = FakeProviders()
        fakes.translation.behaviour.latency = 0.2
        transport = InMemoryTransport()
        svc = Service(fake_settings(tmp_path), coordinator=False, actors=["translation"],
                      providers={"translation": fakes.translation}, transport=transport,
                      store=SqliteSagaStore(tmp_path / "s.db"))
        svc.runtime.middleware = (*telemetry.actor_middleware(), bind_log_context)
        async with svc:
            await cancel_then_redeliver(svc, fakes, transport)  # answered from the inbox
            text = telemetry.metrics_text().decode()
        assert len(fakes.translation.behaviour.calls) == 1
        (client,) = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
        assert attr(client, "ai_apps.step") == "translate_in"
        assert attr(client, "ai_apps.usage.characters") == 4
        operations = telemetry.health()["services"]["translation"]["operations"]
        assert operations["translate_in"]["calls"] == 1
        assert sample(text, "ai_apps_provider_calls_total", ai_apps_service="translation") == 1
        assert sample(text, "ai_apps_actor_inbox_replays_total",
                      ai_apps_service="translation") == 1


class TestGenAiConventions:
    def call(self, **fields: object) -> ProviderCall:
        values: dict[str, object] = {
            "service": "responder", "operation": "respond", "request_type": "GenerateResponseRequested",
            "started_ns": 1_000_000_000, "ended_ns": 1_500_000_000, "ok": True, "error_class": None,
            "message": "", "provider": "azure-openai", "model": "gpt-4o-mini",
            "usage": Usage(input_tokens=10, output_tokens=5), "correlation_id": "c", "tenant": "t",
        }
        values.update(fields)
        return ProviderCall(**values)  # type: ignore[arg-type]

    def test_provider_names_and_models_follow_the_conventions(
        self, telemetry: Telemetry, spans: InMemorySpanExporter
    ) -> None:
        """Well-known provider names where the conventions have one (ours kept beside it),
        the requested and the reported model, and the advisory duration buckets."""
        assert telemetry._otel is not None
        telemetry._otel.provider_call(self.call(
            request_model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18"))
        telemetry._otel.provider_call(self.call(provider="openai", request_model="llama3"))
        telemetry._otel.provider_call(self.call(provider="azure", service="translation",
                                                operation="translate_in"))
        azure, compatible, translator = spans.get_finished_spans()
        assert azure.name == "chat gpt-4o-mini"
        assert attr(azure, "gen_ai.provider.name") == "azure.ai.openai"
        assert attr(azure, "ai_apps.provider") == "azure-openai"
        assert attr(azure, "gen_ai.request.model") == "gpt-4o-mini"
        assert attr(azure, "gen_ai.response.model") == "gpt-4o-mini-2024-07-18"
        assert attr(compatible, "gen_ai.provider.name") == "openai"
        assert attr(compatible, "gen_ai.response.model") is None
        assert translator.name == "translate"
        assert attr(translator, "gen_ai.provider.name") == "azure"
        assert attr(translator, "gen_ai.request.model") is None
        text = telemetry.metrics_text().decode()
        assert 'gen_ai_client_operation_duration_seconds_bucket{' in text
        assert 'le="81.92"' in text
        assert 'gen_ai_request_model="unknown"' not in text
        assert sample(text, "gen_ai_client_operation_duration_seconds_count",
                      gen_ai_provider_name="azure", ai_apps_service="translation") == 1


class TestPropagators:
    async def hop(self, telemetry: Telemetry) -> tuple[Envelope, str | None]:
        """A handler with baggage in its context publishes a follow-up; returns it and the
        baggage the next handler sees."""
        from opentelemetry import baggage, context

        inner = InMemoryTransport(drain_timeout=0)
        bus = telemetry.instrument_transport(inner)
        seen: list[tuple[Envelope, str | None]] = []

        async def first(envelope: Envelope) -> None:
            token = context.attach(baggage.set_baggage("ai_apps.tenant_tier", "gold"))
            try:
                await bus.publish(Envelope.new(make_inquiry("inq-2"), correlationid="inq-2"))
            finally:
                context.detach(token)

        async def second(envelope: Envelope) -> None:
            value = baggage.get_baggage("ai_apps.tenant_tier")
            seen.append((envelope, str(value) if value is not None else None))

        await bus.subscribe("first", ["ResponseReady"], first)
        await bus.subscribe("second", ["InquiryReceived"], second)
        await bus.start()
        done = ResponseReady(inquiry_id="inq-1", text="hi", language="en", confidence=1,
                             escalation_required=False, processing_time_ms=1)
        try:
            await bus.publish(Envelope.new(done, correlationid="inq-1"))
            await inner.idle(5)
        finally:
            await bus.close()
        (got,) = seen
        return got

    async def test_baggage_travels_with_the_trace_by_default(self, telemetry: Telemetry) -> None:
        """The default propagators (``OTEL_PROPAGATORS`` unset: tracecontext,baggage) carry
        baggage in the envelope to the next handler."""
        envelope, tier = await self.hop(telemetry)
        assert envelope.baggage == "ai_apps.tenant_tier=gold"
        assert envelope.traceparent is not None
        assert tier == "gold"

    async def test_the_configured_propagators_are_honoured(
        self, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the propagators ``OTEL_PROPAGATORS=tracecontext`` makes, no baggage is
        carried; the trace still is."""
        from opentelemetry import propagate
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT",
                            CompositePropagator([TraceContextTextMapPropagator()]))
        envelope, tier = await self.hop(telemetry)
        assert envelope.baggage is None
        assert tier is None
        assert envelope.traceparent is not None

    async def test_without_a_w3c_propagator_the_envelope_still_carries_the_trace(
        self, telemetry: Telemetry, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``OTEL_PROPAGATORS=none`` (or a format the envelope has no field for): the
        envelope's W3C ``traceparent`` keeps one trace across the bus."""
        from opentelemetry import propagate
        from opentelemetry.propagators.composite import CompositePropagator

        monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([]))
        await self.hop(telemetry)
        assert len({s.context.trace_id for s in spans.get_finished_spans()}) == 1

    def test_the_gateway_reads_the_configured_propagators(self) -> None:
        """With telemetry on, the incoming headers are read by the propagators: baggage too."""
        from service.telemetry.propagation import incoming

        headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                   "baggage": "helpdesk.queue=billing"}
        traceparent, _, carried = incoming(headers, otel=True)
        assert traceparent == headers["traceparent"]
        assert carried == "helpdesk.queue=billing"
        assert incoming(headers, otel=False) == (headers["traceparent"], None, None)


class TestLostClaimIsNotReported:
    async def test_a_call_abandoned_for_a_lost_claim_is_not_a_provider_call(self) -> None:
        """A call cut short because another worker took its claim over says nothing of the
        provider: it is not reported (the worker that took over reports its own call)."""
        from actors.providers.fake import FakeTranslator
        from actors.runtime import ActorRuntime
        from actors.services import TranslationActor
        from bus.memory import InMemoryTransport
        from events import Envelope
        from events.support import TranslateTextRequested
        from saga.memory_store import InMemorySagaStore
        from service.telemetry.middleware import provider_calls

        class StolenClaim(InMemorySagaStore):
            asked = 0

            async def claim_request(self, request_id: str, owner: str, lease: float) -> bool:
                self.asked += 1
                return self.asked == 1  # held at first; the renewal finds it taken over

        calls: list[ProviderCall] = []
        fake = FakeTranslator()
        fake.behaviour.latency = 1.0
        transport = InMemoryTransport()
        runtime = ActorRuntime(transport, [TranslationActor(fake)], inbox=StolenClaim(),
                               claim_lease=0.3, middleware=(provider_calls([calls.append]),))
        async with transport:
            await runtime.start()
            await transport.publish(Envelope.new(
                TranslateTextRequested(text="hola", to_language="en", from_language="es"),
                correlationid="c1",
            ))
            await transport.idle(5)
        assert runtime.claims_lost == 1
        assert calls == []


class TestRequestOutcomeMetrics:
    def test_expired_requests_and_lost_claims_are_counted(self) -> None:
        """The actor runtime's exceptional outcomes are a Prometheus counter by outcome."""
        from actors.runtime import ActorRuntime

        telemetry = Telemetry(TelemetrySettings(enabled=True))
        runtime = ActorRuntime(InMemoryTransport(), [])
        telemetry.observe_runtime(runtime)
        runtime.expired, runtime.claims_lost, runtime.renewals_failed = 3, 1, 2
        try:
            text = telemetry.metrics_text().decode()
        finally:
            telemetry.shutdown()
        for outcome, count in (("expired", 3), ("claim_lost", 1), ("renewal_failed", 2)):
            assert f'ai_apps_actor_requests_total{{ai_apps_outcome="{outcome}"' in text
            line = next(x for x in text.splitlines()
                        if x.startswith("ai_apps_actor_requests_total") and f'"{outcome}"' in x)
            assert line.endswith(f" {count:.1f}")
