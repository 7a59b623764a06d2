"""Fixtures: telemetry with an in-memory span exporter, and the wiring applied to a
FakeService the way ``service.wiring.Service`` applies it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from actors.runtime import bind_log_context
from service.telemetry import Telemetry, TelemetrySettings
from service.testing import FakeService


def pytest_configure(config: pytest.Config) -> None:
    # until pyproject.toml lists it (a second registration of the same marker is harmless)
    config.addinivalue_line("markers", "otel: needs the otel extra (OpenTelemetry, prometheus-client)")


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's OTEL_* variables must not send test spans anywhere; the root logger's
    handlers and level are put back after a test that configured logging."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    t = Telemetry(TelemetrySettings(enabled=True), span_exporter=spans)
    yield t
    t.shutdown()


def instrument(svc: FakeService, telemetry: Telemetry) -> FakeService:
    """What the wiring patch does in ``Service.__init__``, applied after the fact (before
    ``start``): every component publishes and subscribes through the instrumented transport."""
    transport = telemetry.instrument_transport(svc.memory)
    assert svc.coordinator is not None
    assert svc.recorder is not None
    svc.transport = transport
    svc.coordinator.transport = transport
    svc.recorder.transport = transport
    svc.runtime.transport = transport
    svc.runtime.middleware = (*telemetry.actor_middleware(), bind_log_context)
    telemetry.observe_coordinator(svc.coordinator)
    svc.telemetry = telemetry  # type: ignore[attr-defined]
    return svc


@pytest.fixture
async def traced(tmp_path: Path, telemetry: Telemetry) -> AsyncIterator[FakeService]:
    async with instrument(FakeService(tmp_path), telemetry) as svc:
        yield svc


def by_kind(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(name)
