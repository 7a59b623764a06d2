"""One trace across processes: a helpdesk client here, the coordinator and a worker as real
processes (``ai-apps coordinator`` / ``ai-apps worker``) on RabbitMQ and PostgreSQL, exporting
their spans over OTLP/HTTP to a small collector this test runs."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import Service
from service.telemetry import Telemetry
from service.testing import make_inquiry
from tests.distributed.cluster import Cluster

pytestmark = [pytest.mark.otel, pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

CONSUMER, PRODUCER, CLIENT = 5, 4, 3  # OTLP span kinds


@dataclass(frozen=True)
class Exported:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    group: str
    pid: int


class Collector:
    """Accepts OTLP/HTTP protobuf trace exports on ``/v1/traces`` and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    collector._add(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            pid = int(resource["service.instance.id"].rsplit(":", 1)[1])
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    with self._lock:
                        self.spans.append(Exported(
                            span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex() or None,
                            span.name, span.kind, attributes.get("messaging.consumer.group.name", ""),
                            pid,
                        ))

    def find(self, predicate: Callable[[Exported], bool]) -> list[Exported]:
        with self._lock:
            return [s for s in self.spans if predicate(s)]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


@pytest.fixture
async def cluster(tmp_path: Path, collector: Collector) -> AsyncIterator[Cluster]:
    c = Cluster(
        tmp_path,
        AIAPPS_TELEMETRY__ENABLED="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    try:
        yield c
    finally:
        await c.close()


def instrument_client(client: Service, telemetry: Telemetry) -> Service:
    """The helpdesk's spans go to this test's in-memory exporter."""
    inner = getattr(client.transport, "inner", client.transport)
    client.transport = client.runtime.transport = telemetry.instrument_transport(inner)
    return client


async def eventually(collector: Collector, predicate: Callable[[Exported], bool]) -> Exported:
    async with asyncio.timeout(30):
        while not (found := collector.find(predicate)):
            await asyncio.sleep(0.05)
    return found[0]


class TestAcrossProcesses:
    async def test_the_workers_spans_carry_the_publishers_trace(
        self, cluster: Cluster, collector: Collector, telemetry: Telemetry,
        spans: InMemorySpanExporter,
    ) -> None:
        """The helpdesk's publish → the coordinator's handling and its request → the worker's
        handling and provider call: one trace id, each hop parented on the previous one."""
        coordinator = cluster.spawn("coordinator", "coordinator")
        worker = cluster.spawn("worker", "worker", "--actors", "responder")
        await cluster.wait_consumers("saga-coordinator")
        await cluster.wait_consumers("actor.responder")
        async with instrument_client(cluster.client(), telemetry) as client:
            await client.submit(make_inquiry("x-1", language="en"))
            await client.wait("x-1", timeout=60)
        (root,) = [s for s in spans.get_finished_spans() if s.name == "publish InquiryReceived"]
        trace_id = format(root.context.trace_id, "032x")

        in_coordinator = await eventually(collector, lambda s: (
            s.name == "process InquiryReceived" and s.group == "saga-coordinator"))
        request = await eventually(collector, lambda s: s.name == "publish GenerateResponseRequested")
        in_worker = await eventually(collector, lambda s: (
            s.name == "process GenerateResponseRequested" and s.group == "actor.responder"))
        call = await eventually(collector, lambda s: s.kind == CLIENT)
        saga = await eventually(collector, lambda s: s.name == "saga support")

        assert in_worker.pid == call.pid == worker.pid
        assert in_coordinator.pid == request.pid == saga.pid == coordinator.pid
        assert {s.trace_id for s in (in_coordinator, request, in_worker, call, saga)} == {trace_id}
        assert in_coordinator.parent_id == format(root.context.span_id, "016x")
        assert request.parent_id == in_coordinator.span_id
        assert in_worker.parent_id == request.span_id
        assert call.parent_id == in_worker.span_id
        assert saga.parent_id == format(root.context.span_id, "016x")
