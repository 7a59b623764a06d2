"""Log lines: bound to the trace, span, correlation id and tenant; secrets never written, not
even inside an exception; customer text blanked when asked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from actors.errors import AuthError
from actors.providers.fake import permanent
from service.logs import configure_logging
from service.provider_settings import AzureProviderSettings, OpenAISettings
from service.settings import Settings
from service.telemetry import Redactor, Telemetry, TelemetrySettings
from service.telemetry.redaction import REDACTED
from service.testing import FakeService, fake_settings, make_inquiry
from tests.telemetry.conftest import attr, instrument

pytestmark = pytest.mark.otel

KEY = "sk-test-9f8e7d6c5b4a39281706"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestTraceContext:
    async def test_a_handler_log_line_carries_trace_span_and_correlation_ids(
        self, tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The responder's "step failed" line names the trace and the span it was written in
        (the actor's consumer span), the inquiry and the tenant."""
        configure_logging(fake_settings(tmp_path, log_format="json", log_level="INFO"))
        async with instrument(FakeService(tmp_path), telemetry) as svc:
            svc.fakes.responder.behaviour.fail_next(permanent())
            await svc.submit(make_inquiry(language="en"), tenant="acme")
            await svc.wait("inq-1", timeout=5)
        (line,) = [x for x in json_lines(capsys.readouterr().err) if x["event"] == "step failed"]
        (consumer,) = [s for s in spans.get_finished_spans()
                       if s.name == "process GenerateResponseRequested"
                       and attr(s, "messaging.consumer.group.name") == "actor.responder"]
        assert line["trace_id"] == format(consumer.context.trace_id, "032x")
        assert line["span_id"] == format(consumer.context.span_id, "016x")
        assert line["correlation_id"] == "inq-1"
        assert line["tenant"] == "acme"

    def test_no_span_no_trace_fields(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(fake_settings(tmp_path, log_format="json", log_level="INFO"))
        structlog.get_logger("t").info("outside")
        (line,) = json_lines(capsys.readouterr().err)
        assert "trace_id" not in line


def keyed_settings(tmp_path: Path, log_format: str) -> Settings:
    return fake_settings(
        tmp_path, log_format=log_format, log_level="DEBUG",
        azure=AzureProviderSettings(
            translator={"key": SecretStr(KEY)},  # type: ignore[arg-type]
            openai=OpenAISettings(api_key=SecretStr("another-secret-value")),
        ),
    )


class TestSecrets:
    @pytest.mark.parametrize("log_format", ["json", "console"])
    def test_a_configured_key_never_appears_in_any_log_output(
        self, tmp_path: Path, log_format: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Not as a field, a header, a URL, an exception message (logged with its traceback),
        an exception object, nor through a standard-library logger."""
        configure_logging(keyed_settings(tmp_path, log_format))
        log = structlog.get_logger("test")
        log.info("calling", api_key=KEY, headers={"Ocp-Apim-Subscription-Key": KEY},
                 url=f"https://example.test/translate?subscription-key={KEY}")
        log.warning("connecting", target=f"amqp://user:{KEY}@broker/", text=f"the key is {KEY}")
        try:
            raise AuthError(f"401 Unauthorized: key {KEY} was rejected")
        except AuthError as exc:
            log.exception("provider failed")
            log.error("provider failed again", error=exc)
            logging.getLogger("azure.core").exception("SDK request failed for %s", KEY)
        logging.getLogger("aiohttp.client").warning("headers %r", {"api-key": KEY})
        out, err = capsys.readouterr()
        written = out + err
        assert "provider failed" in written
        assert "SDK request failed" in written
        assert KEY not in written
        assert "another-secret-value" not in written
        assert REDACTED in written

    def test_customer_text_is_blanked_when_asked(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        class WithTelemetry(Settings):
            telemetry: TelemetrySettings = TelemetrySettings(redact_customer_text=True)

        configure_logging(WithTelemetry(log_format="json", log_level="INFO"))
        structlog.get_logger("t").info("inquiry", message="my order 123 is late", ocr_text="ACME")
        (line,) = json_lines(capsys.readouterr().err)
        assert line["message"] == "[20 chars]"
        assert line["ocr_text"] == "[4 chars]"

    def test_customer_text_is_kept_by_default(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging(fake_settings(tmp_path, log_format="json", log_level="INFO"))
        structlog.get_logger("t").info("inquiry", message="my order is late")
        (line,) = json_lines(capsys.readouterr().err)
        assert line["message"] == "my order is late"


class TestRedactor:
    @pytest.mark.parametrize(("text", "expected"), [
        ("amqp://guest:hunter22@host:5672/", f"amqp://guest:{REDACTED}@host:5672/"),
        ("postgresql://app:s3cr3t@db/x", f"postgresql://app:{REDACTED}@db/x"),
        ("Endpoint=sb://x/;SharedAccessKey=abc123=;", f"Endpoint=sb://x/;SharedAccessKey={REDACTED};"),
        ("Authorization: Bearer eyJhbGciOi.x.y", f"Authorization: {REDACTED}"),
        ("{'Ocp-Apim-Subscription-Key': 'k-1234'}", f"{{'Ocp-Apim-Subscription-Key': '{REDACTED}'}}"),
        ('{"api-key": "k-1234"}', f'{{"api-key": "{REDACTED}"}}'),
        ("input_tokens=12 routing", "input_tokens=12 routing"),
    ])
    def test_scrubs_credentials_in_text(self, text: str, expected: str) -> None:
        assert Redactor().scrub(text) == expected

    def test_secret_named_fields_with_text_values_are_redacted_counts_are_not(self) -> None:
        event = Redactor()(None, "info", {
            "event": "x", "password": "pw", "client_secret": "cs", "input_tokens": 5,
            "routing_key": "InquiryReceived", "nested": {"token": "t", "ok": "fine"},
        })
        assert event == {
            "event": "x", "password": REDACTED, "client_secret": REDACTED, "input_tokens": 5,
            "routing_key": "InquiryReceived", "nested": {"token": REDACTED, "ok": "fine"},
        }


class TestGatewayLogs:
    async def test_uvicorn_lines_are_json_and_a_key_in_a_handlers_exception_never_appears(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``ai-apps serve``'s uvicorn: the "Exception in ASGI application" traceback of a
        handler that raised with the key in its message, and every other line (startup, the
        access log), are JSON lines of our chain, redacted."""
        import asyncio
        import socket

        import httpx
        import uvicorn

        from service.gateway import GatewaySettings, create_app
        from service.gateway_cli import uvicorn_config

        settings = keyed_settings(tmp_path, "json")
        configure_logging(settings)
        svc = FakeService(tmp_path)
        app = create_app(svc, svc.settings)

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError(f"upstream refused the key {KEY}")

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(app, settings, GatewaySettings(port=port)))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not task.done(), task.result()
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/boom")).status_code == 500
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 20)
            sock.close()
        out, err = capsys.readouterr()
        assert KEY not in out + err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines
        assert all(line.startswith("{") for line in lines), [
            line for line in lines if not line.startswith("{")
        ]
        records = json_lines(err)
        (crash,) = [r for r in records
                    if r["event"].startswith("Exception in ASGI application")]
        assert crash["logger"] == "uvicorn.error"
        assert f"upstream refused the key {REDACTED}" in crash["exception"]
        assert any(r.get("logger") == "uvicorn.access" and "/boom" in r["event"] for r in records)


class TestSagaLogContext:
    async def test_every_coordinator_line_names_the_saga_and_tenant_timers_included(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With telemetry off, the coordinator's lines (from handlers and from the timer that
        fires a step's deadline, which runs in no handler) carry the correlation id and the
        tenant."""
        configure_logging(fake_settings(tmp_path, log_format="json", log_level="INFO"))
        svc = FakeService(tmp_path, step_timeouts={"respond": 5.0}, step_max_attempts=2)
        assert not svc.telemetry.enabled
        async with svc:
            svc.fakes.responder.behaviour.fail_next("hang")
            await svc.submit(make_inquiry(language="en"), tenant="acme")
            await svc.settle()
            await svc.advance(6)  # the deadline fires: a retry is scheduled
            await svc.advance(60)  # the retry timer: dispatched again, answered
            await svc.wait("inq-1", timeout=5)
        lines = [x for x in json_lines(capsys.readouterr().err)
                 if x.get("logger") is None and "saga" in x]
        events = {x["event"] for x in lines}
        assert {"saga started", "step retry scheduled", "saga completed"} <= events
        for line in lines:
            assert (line.get("correlation_id"), line.get("tenant")) == ("inq-1", "acme"), line
