"""``ai-apps ping``: the health check of the image and the readiness probe of workers and
coordinators. Exit 0 when the bus, the store and any --url answer; 1 (saying what failed,
without passwords) otherwise."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from service import health_cli
from tests.distributed.cluster import amqp_url, postgres_url


@pytest.fixture
def app() -> typer.Typer:
    """An application with only ``ping`` (the same function service.cli registers)."""
    application = typer.Typer()
    health_cli.register(application)

    @application.callback()
    def main() -> None:
        """ai-apps"""

    return application


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIAPPS_BUS", "memory://")
    monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path / 'ping.db'}")


class _Probe(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class TestPing:
    def test_embedded_configuration_passes(self, app: typer.Typer, embedded: None) -> None:
        result = CliRunner().invoke(app, ["ping"])
        assert result.exit_code == 0, result.output
        assert "bus    ok" in result.output
        assert "store  ok" in result.output

    def test_unreachable_bus_fails_without_leaking_the_password(
        self, app: typer.Typer, embedded: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIAPPS_BUS", "amqp://user:s3cret@127.0.0.1:1/")
        result = CliRunner().invoke(app, ["ping", "--no-store", "--timeout", "5"])
        assert result.exit_code == 1
        assert "bus    FAIL amqp://user:***@127.0.0.1:1/" in result.output
        assert "s3cret" not in result.output

    def test_url_checks(self, app: typer.Typer, embedded: None, http_server: str) -> None:
        ok = CliRunner().invoke(app, ["ping", "--no-bus", "--no-store", "--url", f"{http_server}/health"])
        assert ok.exit_code == 0, ok.output
        bad = CliRunner().invoke(app, ["ping", "--no-bus", "--no-store", "--url",
                                       f"{http_server}/health", "--url", f"{http_server}/ready"])
        assert bad.exit_code == 1
        assert "HTTP 503" in bad.output

    def test_json(self, app: typer.Typer, embedded: None) -> None:
        result = CliRunner().invoke(app, ["ping", "--json"])
        assert result.exit_code == 0
        checks = json.loads(result.output)
        assert [(c["name"], c["ok"]) for c in checks] == [("bus", True), ("store", True)]

    def test_nothing_to_check_is_a_failure(self, app: typer.Typer, embedded: None) -> None:
        assert CliRunner().invoke(app, ["ping", "--no-bus", "--no-store"]).exit_code == 1

    def test_redact(self) -> None:
        assert health_cli.redact("amqp://u:p@h:5672/v") == "amqp://u:***@h:5672/v"
        assert health_cli.redact("postgresql://u@h/db") == "postgresql://u@h/db"
        assert health_cli.redact("memory://") == "memory://"


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_real_broker_and_database(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the RabbitMQ and PostgreSQL the distributed tests use."""
    monkeypatch.setenv("AIAPPS_BUS", amqp_url())
    monkeypatch.setenv("AIAPPS_STORE", postgres_url())
    result = CliRunner().invoke(app, ["ping"])
    assert result.exit_code == 0, result.output
