"""Errors as RFC 9457 problem details (``application/problem+json``): every 4xx says what is
wrong and what to fix, with ``errors`` listing each invalid field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("gateway")

PROBLEM_MEDIA_TYPE = "application/problem+json"

PROBLEM_TYPES: dict[str, tuple[str, str]] = {
    # slug: (title, what it means and what to do)
    "invalid-json": ("Malformed JSON", "The body (or the JSON part) is not valid JSON."),
    "invalid-request": (
        "Invalid request",
        "A field is missing or has the wrong type or value; `errors` lists each one.",
    ),
    "unauthorized": (
        "Authentication required",
        "Send a valid API key: `Authorization: Bearer aiapps_…` or `X-API-Key: aiapps_…`.",
    ),
    "not-found": ("Not found", "There is nothing here for this API key."),
    "method-not-allowed": ("Method not allowed", "The `Allow` header lists the methods."),
    "payload-too-large": ("Payload too large", "The body or an attachment exceeds a limit."),
    "unsupported-media-type": (
        "Unsupported media type",
        "The body's Content-Type, or an attachment's content, is not accepted.",
    ),
    "attachment-rejected": (
        "Attachment rejected",
        "An attachment URL is not allowed or could not be fetched.",
    ),
    "idempotency-key-reused": (
        "Idempotency key reused",
        "This Idempotency-Key was used with a different request; use a new key.",
    ),
    "idempotency-key-in-use": (
        "Request in progress",
        "A request with this Idempotency-Key is still being processed; retry later.",
    ),
    "bad-request": ("Bad request", "The request cannot be understood as sent."),
    "unavailable": ("Service unavailable", "A dependency is down; retry later."),
    "internal-error": ("Internal error", "Something failed on our side; it has been logged."),
    "metrics-unavailable": (
        "Metrics unavailable",
        "Install the 'otel' extra (pip install 'ai-apps[otel]') for Prometheus metrics.",
    ),
}

_BY_STATUS = {
    400: "bad-request", 401: "unauthorized", 404: "not-found", 405: "method-not-allowed",
    409: "idempotency-key-in-use", 413: "payload-too-large", 415: "unsupported-media-type",
    422: "invalid-request", 503: "unavailable",
}


def problem_type(slug: str) -> str:
    """The problem type URI (relative; ``GET /problems/{slug}`` describes it)."""
    return f"/problems/{slug}"


class FieldError(BaseModel):
    """One invalid input and what to fix."""

    field: str = Field(description="Dotted path of the input: customer.id, attachments.0.url.")
    location: Literal["body", "query", "path", "header"] = "body"
    pointer: str | None = Field(
        default=None, description="JSON Pointer (RFC 6901) into the JSON body, for body fields."
    )
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = Field(default_factory=list)


class ProblemError(Exception):
    """Raised anywhere in a request; answered as problem details."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


def problem_response(
    request: Request | None,
    status: int,
    slug: str,
    detail: str,
    errors: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    title = PROBLEM_TYPES.get(slug, ("Error", ""))[0]
    body = Problem(
        type=problem_type(slug), title=title, status=status, detail=detail,
        instance=request.url.path if request is not None else None, errors=list(errors),
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _pointer(loc: Sequence[str | int]) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
    return "/" + "/".join(parts) if parts else ""


def _what_to_fix(err: ErrorDetails) -> str:
    """pydantic's message, with the expected values where it gives them."""
    message = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "missing":
        return "required: add this field"
    if err["type"] == "extra_forbidden":
        return "unknown field: remove it (see the schema for the accepted fields)"
    if "pattern" in ctx:
        return f"{message} (e.g. a lowercase language code: en, es, fr)"
    return message


def field_errors(
    errors: Iterable[ErrorDetails], location: Literal["body", "query", "path", "header"] = "body",
    prefix: Sequence[str | int] = (),
) -> list[FieldError]:
    """pydantic errors as :class:`FieldError` items."""
    out: list[FieldError] = []
    for err in errors:
        loc = [*prefix, *err["loc"]]
        out.append(FieldError(
            field=".".join(str(p) for p in loc) or "(body)",
            location=location,
            pointer=_pointer(loc) if location == "body" else None,
            detail=_what_to_fix(err),
        ))
    return out


def validation_problem(
    exc: ValidationError, what: str = "the inquiry", prefix: Sequence[str | int] = ()
) -> ProblemError:
    errors = field_errors(exc.errors(include_url=False, include_input=False), prefix=prefix)
    summary = "; ".join(f"{e.field}: {e.detail}" for e in errors[:5])
    return ProblemError(422, "invalid-request", f"{what} is invalid: {summary}", errors=errors)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as problem details, including FastAPI's own validation errors."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(request, exc.status, exc.slug, exc.detail, exc.errors, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors: list[FieldError] = []
        locations: dict[Any, Literal["body", "query", "path", "header"]] = {
            "body": "body", "query": "query", "path": "path", "header": "header",
        }
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            where = locations.get(loc[0], "body") if loc else "body"
            rest = loc[1:] if loc and loc[0] in locations else loc
            details: Any = {**err, "loc": tuple(rest)}
            errors.extend(field_errors([details], where))
        summary = "; ".join(f"{e.location} {e.field}: {e.detail}" for e in errors[:5])
        return problem_response(
            request, 422, "invalid-request", f"invalid request: {summary}", errors
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug = _BY_STATUS.get(exc.status_code, "bad-request" if exc.status_code < 500 else
                              "internal-error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.method} {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(request, exc.status_code, slug, detail,
                                headers=dict(exc.headers or {}))

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("gateway request failed", path=request.url.path, error=repr(exc),
                  exc_info=exc)
        return problem_response(request, 500, "internal-error",
                                "the gateway failed to handle this request; it has been logged")

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these problem statuses."""
    return {
        status: {
            "description": PROBLEM_TYPES[_BY_STATUS.get(status, "bad-request")][0],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
