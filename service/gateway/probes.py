"""Probes and reports: ``/health`` (alive), ``/ready`` (can serve), ``/metrics``
(Prometheus), ``/v1/health`` (the health report as JSON), and the contracts
(``/asyncapi.json``, ``/problems/{slug}``)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from bus.base import Transport
from saga.breaker import CircuitState
from service.gateway.asyncapi import asyncapi_document
from service.gateway.problems import PROBLEM_TYPES, ProblemError, problem_responses, problem_type
from service.gateway.state import GatewayState, gateway_state

router = APIRouter()

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def bus_connected(transport: Transport) -> bool:
    """Whether the bus is up, from what the transport shows (a ``connected`` attribute when
    it has one)."""
    connected = getattr(transport, "connected", None)
    if isinstance(connected, bool):
        return connected
    if hasattr(transport, "_closing"):  # the in-memory bus
        return bool(getattr(transport, "_started", False)) and not transport._closing
    if hasattr(transport, "_conn"):  # RabbitMQ: a robust connection that reconnects
        conn = transport._conn
        return conn is not None and not bool(getattr(conn, "is_closed", True))
    return True


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def readiness(gw: GatewayState) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {"bus": "connected" if bus_connected(gw.service.transport)
                              else "disconnected"}
    try:
        await asyncio.wait_for(gw.store.last_event_seq(), 3.0)
        checks["store"] = "reachable"
    except Exception as exc:
        checks["store"] = f"unreachable: {type(exc).__name__}: {exc}"
    states = _breaker_states(gw)
    if states is not None:
        checks["circuits"] = {name: state.value for name, state in states.items()}
    every_open = bool(states) and all(s is CircuitState.OPEN for s in (states or {}).values())
    ready = (
        checks["bus"] == "connected" and checks["store"] == "reachable" and not every_open
        and not gw.hub.closing
    )
    if every_open:
        checks["providers"] = "every provider's circuit is open"
    if gw.hub.closing:
        checks["gateway"] = "shutting down"
    return ready, checks


def _breaker_states(gw: GatewayState) -> dict[str, CircuitState] | None:
    coordinator = gw.service.coordinator
    if coordinator is None:
        return None
    return coordinator.breakers.states()


@router.get("/health", summary="Liveness: the process answers", tags=["probes"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: bus connected, store reachable, not every provider's circuit open",
    responses={503: {"description": "Not ready; the body says which check failed."}},
    tags=["probes"],
)
async def ready(request: Request) -> JSONResponse:
    ok, checks = await readiness(gateway_state(request))
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                        status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
               **problem_responses(404)},
    tags=["probes"],
)
async def metrics(request: Request) -> Response:
    gw = gateway_state(request)
    telemetry = getattr(gw.service, "telemetry", None)
    if telemetry is not None and hasattr(telemetry, "metrics_text"):
        text = await _maybe_await(telemetry.metrics_text())
        body = text.encode() if isinstance(text, str) else bytes(text)
        media_type = getattr(telemetry, "metrics_content_type", None)
        return Response(body, media_type=media_type if isinstance(media_type, str)
                        else PROMETHEUS_TEXT)
    try:
        prometheus: Any = importlib.import_module("prometheus_client")
    except ImportError:
        raise ProblemError(
            404, "metrics-unavailable",
            "no metrics in this installation: install the 'otel' extra "
            "(pip install 'ai-apps[otel]') to get Prometheus metrics",
        ) from None
    return Response(prometheus.generate_latest(), media_type=PROMETHEUS_TEXT)


@router.get(
    "/v1/health",
    summary="The health report as JSON: the same as 'ai-apps health --json'",
    description=(
        "Per AI service and operation: calls, average and p95 duration, success rate, recent "
        "errors, circuit state and status, and the overall status. On the embedded bus it is "
        "this process's live report; on a broker the gateway runs no actors or coordinator, "
        "so it is built from the shared store (the newest sagas' step attempts and the "
        "circuit states the coordinators keep there), as 'ai-apps health' does."
    ),
    tags=["probes"],
)
async def health_report(request: Request) -> JSONResponse:
    gw = gateway_state(request)
    if getattr(gw.service, "telemetry", None) is not None:
        report = await _maybe_await(gw.service.health())
        if hasattr(report, "model_dump"):
            report = report.model_dump(mode="json")
        return JSONResponse(report)
    ok, checks = await readiness(gw)
    return JSONResponse({
        "status": "ok" if ok else "degraded",
        "checks": checks,
        "streams": gw.hub.streams,
    })


@router.get("/asyncapi.json", summary="The AsyncAPI 3 document of the bus", tags=["contracts"])
async def asyncapi(request: Request) -> JSONResponse:
    gw = gateway_state(request)
    return JSONResponse(asyncapi_document(exchange=gw.settings.bus_exchange))


@router.get(
    "/problems/{slug}", summary="What a problem type means", tags=["contracts"],
    responses=problem_responses(404),
)
async def describe_problem(
    slug: str = Path(pattern=r"^[a-z-]{1,40}$"),
) -> dict[str, str]:
    if slug not in PROBLEM_TYPES:
        raise ProblemError(404, "not-found", f"no problem type {slug!r}")
    title, description = PROBLEM_TYPES[slug]
    return {"type": problem_type(slug), "title": title, "description": description}
