"""Without the ``otel`` extra: nothing of OpenTelemetry is imported, logging and the health
report work, and turning telemetry on says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import service.telemetry
from service.settings import REPO_ROOT

pytestmark = pytest.mark.otel

SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class NoOtel(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                raise ImportError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoOtel())
    import structlog
    from bus import InMemoryTransport
    from service import ConfigurationError
    from service.logs import configure_logging
    from service.settings import Settings
    from service.telemetry import Telemetry, TelemetrySettings

    configure_logging(Settings(log_format="json", log_level="INFO"))
    structlog.get_logger("t").info("no otel here")
    telemetry = Telemetry.from_settings(Settings())
    inner = InMemoryTransport()
    assert telemetry.instrument_transport(inner) is inner
    assert len(telemetry.actor_middleware()) == 1
    assert telemetry.health()["status"] == "healthy"
    assert b"pip install" in telemetry.metrics_text()
    try:
        Telemetry(TelemetrySettings(enabled=True))
    except ConfigurationError as exc:
        print("ERROR:", exc)
    assert not [m for m in sys.modules if m.startswith("opentelemetry")]
""")


class TestBaseInstall:
    def test_works_without_opentelemetry_and_names_the_extra_when_asked_for_it(self) -> None:
        done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert '"event": "no otel here"' in done.stderr
        assert "pip install 'ai-apps[otel]'" in done.stdout


OFF_SCRIPT = textwrap.dedent("""
    import asyncio, sys, tempfile
    from pathlib import Path

    import structlog
    from service.logs import configure_logging
    from service.testing import FakeService, make_inquiry

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            svc = FakeService(Path(tmp), log_format="json", log_level="INFO")
            configure_logging(svc.settings)
            async with svc:
                await svc.submit(make_inquiry(language="en"))
                await svc.wait("inq-1", timeout=10)
            structlog.get_logger("t").info("done", health=svc.telemetry.health()["status"])

    asyncio.run(main())
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
""")


class TestTelemetryOff:
    def test_with_the_extra_installed_telemetry_off_imports_nothing_of_opentelemetry(self) -> None:
        """Logging (trace ids included), a whole inquiry and the health report, with the
        ``otel`` extra installed and telemetry off: no OpenTelemetry module is loaded."""
        done = subprocess.run([sys.executable, "-c", OFF_SCRIPT], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert '"event": "done"' in done.stderr
        assert done.stdout.strip() == "[]"


class TestPublicNames:
    def test_pinned(self) -> None:
        assert service.telemetry.__all__ == [
            "HealthRecorder", "HealthThresholds", "ProviderCall", "Redactor", "StoredCircuits",
            "Telemetry", "TelemetrySettings", "store_health", "stored_health",
        ]
