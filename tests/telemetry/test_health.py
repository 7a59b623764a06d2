"""The health report: a service turns unhealthy after failures, shows its open circuit, and
recovers; the same report is built from the saga store for ``ai-apps health``."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from actors.providers.fake import transient
from bus import InMemoryTransport
from events import Envelope
from saga import SqliteSagaStore
from service.telemetry import (
    HealthRecorder,
    HealthThresholds,
    Redactor,
    Telemetry,
    TelemetrySettings,
    store_health,
    stored_health,
)
from service.telemetry.cli import register
from service.testing import FakeService, make_inquiry
from tests.telemetry.conftest import instrument

pytestmark = pytest.mark.otel

THRESHOLDS = HealthThresholds(window=4)


async def ask(svc: FakeService, inquiry_id: str) -> None:
    await svc.submit(make_inquiry(inquiry_id, language="en"))
    await svc.wait(inquiry_id, timeout=5)


async def break_and_heal(svc: FakeService, telemetry: Telemetry | None = None) -> list[dict[str, Any]]:
    """Three failures open the responder's circuit; a fourth inquiry is refused by it; after
    the cool-down four succeed. Returns the process report after the failures (if any)."""
    reports: list[dict[str, Any]] = []
    svc.fakes.responder.behaviour.fail_always(transient("fake 503: responder down"))
    for i in range(3):
        await ask(svc, f"a{i}")
    await ask(svc, "refused")
    if telemetry is not None:
        reports.append(telemetry.health())
    svc.fakes.responder.behaviour.heal()
    svc.clock.advance(31)
    for i in range(4):
        await ask(svc, f"c{i}")
    if telemetry is not None:
        reports.append(telemetry.health())
    return reports


def fake(tmp_path: Path, **kwargs: Any) -> FakeService:
    return FakeService(tmp_path, breaker_failure_threshold=3, breaker_cooldown=30,
                       step_max_attempts=1, **kwargs)


class TestProcessReport:
    async def test_failures_make_a_service_unhealthy_with_its_circuit_open_then_it_recovers(
        self, tmp_path: Path
    ) -> None:
        telemetry = Telemetry(TelemetrySettings(health=THRESHOLDS))
        async with instrument(fake(tmp_path), telemetry) as svc:
            broken, healed = await break_and_heal(svc, telemetry)

        responder = broken["services"]["responder"]
        assert broken["status"] == "unhealthy"
        assert responder["status"] == "unhealthy"
        assert responder["circuit"] == "open"
        assert responder["reasons"][0] == "circuit open"
        respond = responder["operations"]["respond"]
        assert (respond["calls"], respond["failures"], respond["success_rate"]) == (3, 3, 0.0)
        assert respond["recent_errors"][0]["error_class"] == "transient"
        assert respond["recent_errors"][0]["message"] == "fake 503: responder down"
        assert respond["recent_errors"][0]["correlation_id"] == "a2"
        assert respond["avg_ms"] is not None
        assert respond["p95_ms"] is not None

        responder = healed["services"]["responder"]
        assert healed["status"] == "healthy"
        assert responder["status"] == "healthy"
        assert responder["circuit"] == "closed"
        assert responder["operations"]["respond"]["success_rate"] == 1.0
        assert responder["operations"]["respond"]["calls"] == 7
        json.dumps(healed)  # JSON-ready as it is

    def test_thresholds_decide_the_status(self) -> None:
        """< 0.5 unhealthy, < 0.95 degraded; a half-open circuit degrades; p95 when set."""
        recorder = HealthRecorder(HealthThresholds(window=10, slow_p95_ms=500))
        for i in range(10):
            recorder.record("translation", "translate_in", ok=i != 0, duration_ms=10)
            recorder.record("language", "detect_language", ok=i < 4, duration_ms=10)
            recorder.record("responder", "respond", ok=True, duration_ms=100 if i < 9 else 900)
            recorder.record("speech", "synthesize_voice", ok=True, duration_ms=10)
        report = recorder.report({"speech": "half_open", "vision": "closed"})
        status = {name: s["status"] for name, s in report["services"].items()}
        assert status == {"language": "unhealthy", "responder": "degraded", "speech": "degraded",
                          "translation": "degraded", "vision": "healthy"}
        assert report["status"] == "unhealthy"
        assert report["services"]["responder"]["operations"]["respond"]["p95_ms"] == 900

    def test_recent_errors_are_bounded_and_newest_first(self) -> None:
        recorder = HealthRecorder(HealthThresholds(recent_errors=2))
        for i in range(5):
            recorder.record("vision", "analyze_image", ok=False, error_class=f"e{i}",
                            at=datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC))
        errors = recorder.report()["services"]["vision"]["operations"]["analyze_image"]["recent_errors"]
        assert [e["error_class"] for e in errors] == ["e4", "e3"]


    async def test_error_messages_in_the_report_are_redacted(self, tmp_path: Path) -> None:
        key = "sk-health-0123456789"
        telemetry = Telemetry(TelemetrySettings(), redactor=Redactor([key]))
        async with instrument(fake(tmp_path), telemetry) as svc:
            svc.fakes.responder.behaviour.fail_always(transient(f"503 for key {key}"))
            await ask(svc, "a0")
        report = json.dumps(telemetry.health())
        assert key not in report
        assert "503 for key [REDACTED]" in report


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as reply:
        body: bytes = reply.read()
    return body


class TestPrometheusEndpoint:
    async def test_metrics_are_served_on_the_configured_port(self) -> None:
        """``prometheus_port`` (0: any free port) serves what ``metrics_text`` returns."""
        telemetry = Telemetry(TelemetrySettings(enabled=True, prometheus_port=0,
                                                prometheus_addr="127.0.0.1"))
        bus = telemetry.instrument_transport(InMemoryTransport())
        try:
            port = telemetry.start()
            await bus.publish(Envelope.new(make_inquiry(), correlationid="inq-1"))
            url = f"http://127.0.0.1:{port}/metrics"
            body = await asyncio.to_thread(fetch, url)
            assert b'messaging_client_sent_messages_total{' in body
            assert b'ai_apps_event_type="InquiryReceived"' in body
            assert b'messaging_operation_name="publish"' in body
        finally:
            telemetry.shutdown()


class TestStoreReport:
    async def test_the_store_gives_the_same_verdicts(self, tmp_path: Path) -> None:
        """Unhealthy with the circuit (inferred) open after the failures; healthy after."""
        async with fake(tmp_path) as svc:
            svc.fakes.responder.behaviour.fail_always(transient())
            for i in range(3):
                await ask(svc, f"a{i}")
            await ask(svc, "refused")
            broken = store_health(await svc.store.list_sagas(limit=50), THRESHOLDS)
            svc.fakes.responder.behaviour.heal()
            svc.clock.advance(31)
            for i in range(4):
                await ask(svc, f"c{i}")
            healed = store_health(await svc.store.list_sagas(limit=50), THRESHOLDS)
        assert broken["source"] == "store"
        responder = broken["services"]["responder"]
        assert (responder["status"], responder["circuit"]) == ("unhealthy", "open")
        assert responder["operations"]["respond"]["calls"] == 3
        assert responder["operations"]["respond"]["recent_errors"][0]["error_class"] == "transient"
        responder = healed["services"]["responder"]
        assert (responder["status"], responder["circuit"]) == ("healthy", "closed")
        assert healed["status"] == "healthy"


class TestHealthCommand:
    @pytest.fixture
    def app(self) -> typer.Typer:
        app = typer.Typer()
        app.command("noop")(lambda: None)  # a group, as in ai-apps, so `health` is a subcommand
        register(app)
        return app

    def test_health_json_over_the_store(
        self, tmp_path: Path, app: typer.Typer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``ai-apps health --json`` prints the report and exits 1 while a service is
        unhealthy; the table form names the service and the overall status."""
        db = tmp_path / "aiapps.db"

        async def failures() -> None:
            async with fake(tmp_path, store=SqliteSagaStore(db)) as svc:
                svc.fakes.responder.behaviour.fail_always(transient())
                for i in range(3):
                    await ask(svc, f"a{i}")

        asyncio.run(failures())
        monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{db}")
        monkeypatch.setenv("COLUMNS", "200")
        runner = CliRunner()
        result = runner.invoke(app, ["health", "--json"])
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert report["sagas"] == 3
        assert report["services"]["responder"]["status"] == "unhealthy"
        result = runner.invoke(app, ["health"])
        assert "responder" in result.stdout
        assert "overall: unhealthy" in result.stdout

    def test_an_empty_store_is_healthy(
        self, tmp_path: Path, app: typer.Typer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/empty.db")
        result = CliRunner().invoke(app, ["health", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["status"] == "healthy"


class TestStoredCircuits:
    async def test_the_coordinator_keeps_its_circuits_in_the_store(self, tmp_path: Path) -> None:
        """Open after the failures, closed again after the cool-down's trial succeeds: each
        change is written to the store, where processes without breakers read it."""
        store = SqliteSagaStore(tmp_path / "s.db")
        async with fake(tmp_path, store=store) as svc:
            svc.fakes.responder.behaviour.fail_always(transient())
            for i in range(3):
                await ask(svc, f"a{i}")
            assert svc.circuits is not None
            await svc.circuits.flush()
            (opened,) = await store.circuits()
            assert (opened.service, opened.state, opened.failures) == ("responder", "open", 3)
            assert opened.opened_at == svc.clock.now()
            svc.fakes.responder.behaviour.heal()
            svc.clock.advance(31)
            await ask(svc, "c0")
            await svc.circuits.flush()
            (closed,) = await store.circuits()
            assert (closed.state, closed.failures) == ("closed", 0)

    async def test_a_restarted_coordinator_takes_up_the_stored_circuit(self, tmp_path: Path) -> None:
        """A coordinator started on the store keeps the circuit open (the next inquiry takes the
        fallback at once) instead of reporting it closed."""
        db = tmp_path / "s.db"
        async with fake(tmp_path, store=SqliteSagaStore(db)) as svc:
            svc.fakes.responder.behaviour.fail_always(transient())
            for i in range(3):
                await ask(svc, f"a{i}")
        async with fake(tmp_path, store=SqliteSagaStore(db)) as again:
            assert again.coordinator is not None
            assert again.coordinator.breakers.states()["responder"].value == "open"
            await ask(again, "refused")
            step = (await again.saga("refused")).steps["respond"]
            assert (step.fallback_reason or "").startswith("circuit_open")
            assert again.fakes.responder.behaviour.calls == []


    async def test_a_later_step_outranks_a_stale_stored_circuit(self, tmp_path: Path) -> None:
        """A coordinator that opened a circuit and went away leaves "open" in the store; the
        steps other coordinators finished since are the newer word."""
        from datetime import timedelta

        from saga.store import CircuitRecord
        from service.telemetry.health import store_health

        async with fake(tmp_path) as svc:
            await ask(svc, "ok")
            sagas = [await svc.saga("ok")]
            now = svc.clock.now()

        def opened(at: datetime) -> CircuitRecord:
            return CircuitRecord(service="responder", state="open", failures=5, changed_at=at,
                                 opened_at=at)

        stale = store_health(sagas, circuits=[opened(now - timedelta(hours=1))], now=now)
        assert stale["services"]["responder"]["circuit"] == "closed"
        fresh = store_health(sagas, circuits=[opened(now + timedelta(seconds=1))], now=now)
        assert fresh["services"]["responder"]["circuit"] == "open"


class TestGatewayReport:
    async def test_on_a_broker_the_gateway_serves_the_stores_report(self, tmp_path: Path) -> None:
        """A gateway without coordinator or actors (its deployment's figures are elsewhere)
        reports from the shared store: the unhealthy service, its calls and its open circuit,
        as ``ai-apps health`` does."""
        from service.testing import fake_settings
        from service.wiring import Service
        from tests.gateway.conftest import gateway_for

        db = tmp_path / "s.db"
        async with fake(tmp_path, store=SqliteSagaStore(db)) as svc:
            svc.fakes.responder.behaviour.fail_always(transient("503 from the model"))
            for i in range(3):
                await ask(svc, f"a{i}")
        client_only = Service(fake_settings(tmp_path, store=f"sqlite:///{db}"),
                              coordinator=False, actors=[])
        async with gateway_for(tmp_path, service=client_only) as gw:
            reply = await gw.client.get("/v1/health")
        assert reply.status_code == 200
        report = reply.json()
        assert (report["status"], report["source"], report["sagas"]) == ("unhealthy", "store", 3)
        responder = report["services"]["responder"]
        assert (responder["status"], responder["circuit"]) == ("unhealthy", "open")
        assert responder["reasons"][0] == "circuit open"
        respond = responder["operations"]["respond"]
        assert (respond["calls"], respond["failures"]) == (3, 3)
        assert respond["recent_errors"][0]["message"] == "503 from the model"

    async def test_stored_error_messages_are_redacted(self, tmp_path: Path) -> None:
        """A key in a stored step error never reaches the store's report."""
        key = "sk-stored-0123456789"
        async with fake(tmp_path) as svc:
            svc.fakes.responder.behaviour.fail_always(transient(f"503 for key {key}"))
            await ask(svc, "a0")
            report = json.dumps(await stored_health(svc.store, redactor=Redactor([key])))
        assert key not in report
        assert "503 for key [REDACTED]" in report

    async def test_the_stores_report_is_built_once_per_interval(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Probes and dashboards asking at once share one report from the store, rebuilt
        after HEALTH_REPORT_TTL seconds (it reads hundreds of sagas)."""
        import asyncio

        from service import wiring
        from service.testing import fake_settings
        from service.wiring import Service

        db = tmp_path / "s.db"
        async with fake(tmp_path, store=SqliteSagaStore(db)) as svc:
            await ask(svc, "a0")
        reads = 0
        client_only = Service(fake_settings(tmp_path, store=f"sqlite:///{db}"),
                              coordinator=False, actors=[])
        await client_only.store.open()
        list_sagas = client_only.store.list_sagas

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal reads
            reads += 1
            return await list_sagas(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(client_only.store, "list_sagas", counted)
        try:
            reports = await asyncio.gather(*(client_only.health() for _ in range(10)))
            assert reads == 1
            assert all(r is reports[0] for r in reports)
            monkeypatch.setattr(wiring, "HEALTH_REPORT_TTL", 0.0)
            await client_only.health()
            assert reads == 2
        finally:
            await client_only.store.close()
