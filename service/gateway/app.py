"""The gateway's FastAPI application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway import inquiries, probes
from service.gateway.fetch import UrlFetcher
from service.gateway.models import InquirySubmission
from service.gateway.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    install_problem_handlers,
    problem_type,
)
from service.gateway.settings import GatewaySettings, gateway_settings
from service.gateway.state import GatewayState
from service.gateway.stream import ResponseHub
from service.settings import Settings
from service.wiring import Service

log = structlog.get_logger("gateway")

DESCRIPTION = """\
The HTTP side of ai-apps, for helpdesks and chatbots that do not speak AMQP.

* **Inquiries in**: `POST /v1/inquiries` (JSON, or multipart with file uploads) answers `202`
  with the inquiry id and a status URL. Send an `Idempotency-Key` so that a retried webhook
  starts one inquiry.
* **Status**: `GET /v1/inquiries/{id}` (state, steps, outcome) and `/events` (its events).
* **Responses out**: `GET /v1/responses/stream`, Server-Sent Events of `ResponseReady` and
  `InquiryFailed`; reconnect with `Last-Event-ID` to get what was missed.

Every call but the probes needs an API key of a tenant (`ai-apps keys create --tenant T`),
and sees only that tenant's inquiries. Errors are RFC 9457 problem details.
"""


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413 problem, by ``Content-Length``
    up front and by counting what is received (a chunked body has no length)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(send, 400, "bad-request", "Content-Length is not a number")
                return
            if int(declared) > self.limit:
                await self._refuse(send, 413, "payload-too-large",
                                   f"the body is {int(declared)} bytes; at most {self.limit}")
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send, 413, "payload-too-large",
                               f"the body is larger than {self.limit} bytes")

    @staticmethod
    async def _refuse(send: Send, status: int, slug: str, detail: str) -> None:
        body = Problem(type=problem_type(slug), title="Payload too large" if status == 413
                       else "Bad request", status=status, detail=detail).model_dump_json()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass


def create_app(
    service: Service,
    settings: Settings,
    *,
    gateway: GatewaySettings | None = None,
    manage_service: bool = True,
    fetcher: UrlFetcher | None = None,
) -> FastAPI:
    """The gateway for ``service``. With ``manage_service`` (the default) the app's lifespan
    starts and closes the service; otherwise the caller does. ``gateway`` overrides
    ``settings.gateway``; ``fetcher`` replaces the attachment URL fetcher (tests)."""
    gw_settings = gateway or gateway_settings(settings)
    hub = ResponseHub(service.transport, service.store)
    state = GatewayState(
        service=service, settings=settings, gateway=gw_settings, hub=hub,
        fetcher=fetcher or UrlFetcher(gw_settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        if manage_service:
            await service.start()
        try:
            if not await service.store.list_api_keys():
                log.warning("no API keys yet: every call will get 401; create one with "
                            "'ai-apps keys create --tenant T'")
            yield
        finally:
            hub.close()
            try:
                if manage_service:
                    await service.close()
            finally:
                await state.fetcher.aclose()

    app = FastAPI(
        title="ai-apps gateway",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.gateway = state
    install_problem_handlers(app)
    app.include_router(inquiries.router)
    app.include_router(probes.router)
    multipart_limit = (
        gw_settings.max_json_bytes
        + gw_settings.max_attachments * (gw_settings.max_upload_bytes + 4096)
        + 64 * 1024
    )
    app.add_middleware(BodyLimit, limit=multipart_limit)
    if gw_settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=gw_settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key",
                           "Last-Event-ID", "traceparent", "tracestate"],
            expose_headers=["Location", "Idempotent-Replayed"],
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the schemas the hand-parsed inquiry body and the problem
    responses refer to."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes,
    )
    _, defs = models_json_schema(
        [(InquirySubmission, "validation"), (Problem, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    # FastAPI documents its validation errors as application/json HTTPValidationError; the
    # gateway answers them (and every 4xx) as problem details
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["content"] = problem
                response["description"] = "Invalid request (problem details)"
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ai-apps")
    except Exception:
        return "0.0.0"
