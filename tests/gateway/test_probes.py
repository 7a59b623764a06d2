"""Probes, metrics and the contracts: /health, /ready, /metrics, /v1/health, the OpenAPI
document (valid) and the AsyncAPI 3 document of the bus (valid, complete, and matching real
envelopes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from actors.services import SERVICES
from events import Envelope, ResponseReady, encode, registry
from saga.breaker import CircuitState
from saga.sqlite_store import SqliteSagaStore
from service.gateway import asyncapi_document
from service.testing import FakeService
from tests.gateway.conftest import Gateway, gateway_for


class TestProbes:
    async def test_health_and_ready(self, gateway: Gateway) -> None:
        assert (await gateway.client.get("/health")).json() == {"status": "ok"}
        ready = await gateway.client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["bus"] == "connected"
        assert ready.json()["checks"]["store"] == "reachable"

    async def test_not_ready_when_every_circuit_is_open(self, gateway: Gateway) -> None:
        breakers = gateway.service.coordinator.breakers
        for service in SERVICES:
            breakers.get(service).state = CircuitState.OPEN
        ready = await gateway.client.get("/ready")
        assert ready.status_code == 503
        assert "every provider's circuit is open" in ready.text
        breakers.get("speech").state = CircuitState.CLOSED
        assert (await gateway.client.get("/ready")).status_code == 200

    async def test_not_ready_when_the_store_or_bus_is_down(self, tmp_path: Path) -> None:
        store = SqliteSagaStore(tmp_path / "s.db")
        async with gateway_for(tmp_path, service=FakeService(tmp_path, store=store)) as gw:
            await store.close()
            ready = await gw.client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["store"].startswith("unreachable")
            await store.open()
            gw.service.memory._closing = True
            try:
                ready = await gw.client.get("/ready")
                assert ready.json()["checks"]["bus"] == "disconnected"
                assert ready.status_code == 503
            finally:
                gw.service.memory._closing = False

    async def test_metrics_and_report_from_telemetry(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        class Telemetry:  # the shape of service.telemetry.Telemetry
            metrics_content_type = "text/plain; version=0.0.4; charset=utf-8"

            def metrics_text(self) -> bytes:
                return b"aiapps_inquiries_total 3\n"

            def health(self) -> dict[str, Any]:
                return {"status": "ok", "providers": {"responder": "closed"}}

        monkeypatch.setattr(gateway.service, "telemetry", Telemetry(), raising=False)
        metrics = await gateway.client.get("/metrics")
        assert metrics.text == "aiapps_inquiries_total 3\n"
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        report = await gateway.client.get("/v1/health")
        assert report.json() == {"status": "ok", "providers": {"responder": "closed"}}

    async def test_metrics_without_telemetry_from_prometheus_client(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pytest.importorskip("prometheus_client")
        monkeypatch.setattr(gateway.service, "telemetry", None, raising=False)
        default = await gateway.client.get("/metrics")
        assert default.status_code == 200
        assert default.headers["content-type"].startswith("text/plain")
        assert "# TYPE" in default.text

    async def test_metrics_without_prometheus_name_the_extra(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(gateway.service, "telemetry", None, raising=False)
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        response = await gateway.client.get("/metrics")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "'otel' extra" in response.json()["detail"]

    async def test_health_report_without_telemetry(
        self, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(gateway.service, "telemetry", None, raising=False)
        report = (await gateway.client.get("/v1/health")).json()
        assert report["status"] == "ok"
        assert report["checks"]["store"] == "reachable"
        assert report["streams"] == 0

    async def test_unknown_routes_and_methods_are_problems(self, gateway: Gateway) -> None:
        missing = await gateway.client.get("/v2/nothing")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        wrong = await gateway.client.delete("/v1/inquiries")
        assert wrong.status_code == 405
        assert wrong.json()["type"] == "/problems/method-not-allowed"
        assert "POST" in wrong.headers["allow"]
        described = await gateway.client.get(wrong.json()["type"])
        assert described.json()["title"] == "Method not allowed"

    async def test_query_validation_is_a_problem(self, gateway: Gateway) -> None:
        response = await gateway.client.get("/v1/responses/stream", params={"after": -1},
                                            headers=gateway.auth())
        body = response.json()
        assert response.status_code == 422
        assert body["errors"][0]["field"] == "after"
        assert body["errors"][0]["location"] == "query"


class TestContracts:
    async def test_openapi_document_is_valid(self, gateway: Gateway) -> None:
        validator = pytest.importorskip("openapi_spec_validator")
        document = (await gateway.client.get("/openapi.json")).json()
        validator.validate(document)
        post = document["paths"]["/v1/inquiries"]["post"]
        content = post["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        assert "InquirySubmission" in document["components"]["schemas"]
        assert post["responses"]["422"]["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

    def test_asyncapi_has_a_channel_per_event_type_and_the_roles(self) -> None:
        document = asyncapi_document(exchange="ai-apps")
        assert document["asyncapi"] == "3.0.0"
        channels = {c["address"] for c in document["channels"].values()}
        assert channels == set(registry.types())
        operations = {(o["tags"][0]["name"], o["action"], o["channel"]["$ref"].split("/")[-1])
                      for o in document["operations"].values()}
        assert ("helpdesk", "send", "InquiryReceived") in operations
        assert ("chatbot", "receive", "ResponseReady") in operations
        assert ("coordinator", "send", "ResponseReady") in operations
        assert ("coordinator", "receive", "InquiryReceived") in operations
        assert ("actor.responder", "receive", "GenerateResponseRequested") in operations
        assert ("actor.responder", "send", "ResponseGenerated") in operations
        assert ("event-store", "receive", "StepFailed") in operations
        for name in document["components"]["schemas"]:
            jsonschema.Draft7Validator.check_schema(document["components"]["schemas"][name])
        for ref in _refs(document):
            assert _resolve(document, ref) is not None, ref

    def test_asyncapi_payload_schema_matches_a_real_envelope(self) -> None:
        document = asyncapi_document()
        resource = Resource.from_contents(document, default_specification=DRAFT7)
        registry_ = Registry().with_resource("urn:asyncapi", resource)
        schema = {"$ref": "urn:asyncapi#/components/messages/ResponseReady/payload"}
        validator = jsonschema.Draft7Validator(schema, registry=registry_)
        envelope = Envelope.new(
            ResponseReady(inquiry_id="i", text="hola", language="es", confidence=0.8,
                          escalation_required=False, processing_time_ms=12.5),
            correlationid="i", tenant="acme",
        )
        validator.validate(json.loads(encode(envelope)))
        wrong = json.loads(encode(envelope))
        del wrong["data"]["text"]
        assert not validator.is_valid(wrong)

    async def test_asyncapi_is_served(self, gateway: Gateway) -> None:
        response = await gateway.client.get("/asyncapi.json")
        assert response.json()["asyncapi"] == "3.0.0"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node
