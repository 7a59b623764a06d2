"""Inquiries in (``POST /v1/inquiries``), their status and events out, and the response
stream (``GET /v1/responses/stream``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from bus.base import TransportError
from events.common import BlobRef
from events.envelope import Envelope
from events.support import InquiryReceived
from saga.recorder import causal_order
from service.gateway.auth import Caller, verify_api_key
from service.gateway.fetch import AttachmentRejected, judge_media_type
from service.gateway.models import (
    ID_PATTERN,
    InquiryAccepted,
    InquiryEvents,
    InquirySubmission,
    SagaSummary,
    StoredEvent,
)
from service.gateway.problems import (
    FieldError,
    ProblemError,
    problem_responses,
    validation_problem,
)
from service.gateway.state import GatewayState, gateway_state
from service.gateway.stream import EventStreamResponse, event_stream
from service.telemetry.propagation import incoming
from service.timeline import saga_summary

router = APIRouter()
log = structlog.get_logger("gateway")

_bearer = HTTPBearer(auto_error=False, description="An API key: `Bearer aiapps_…`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
_MAX_SEQ = 2**63 - 1


async def authenticated(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Caller:
    """The caller's tenant, from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    token = bearer.credentials if bearer is not None else api_key
    challenge = 'Bearer realm="ai-apps"'
    if not token:
        raise ProblemError(401, "unauthorized", "an API key is required: send "
                           "'Authorization: Bearer <key>' (create one with "
                           "'ai-apps keys create --tenant T')",
                           headers={"WWW-Authenticate": challenge})
    caller = await verify_api_key(gateway_state(request).store, token)
    if caller is None:
        raise ProblemError(401, "unauthorized", "the API key is not valid (unknown, wrong or "
                           "revoked)",
                           headers={"WWW-Authenticate": f'{challenge}, error="invalid_token"'})
    return caller


CallerDep = Annotated[Caller, Depends(authenticated)]
InquiryId = Annotated[str, Path(pattern=ID_PATTERN, description="The inquiry id.")]


# -- POST /v1/inquiries ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upload:
    field: str
    filename: str | None
    declared: str | None
    data: bytes


_MULTIPART_DESCRIPTION = (
    "multipart/form-data: a part `inquiry` holding the inquiry as JSON, and the attachments "
    "as file parts `attachments` (repeat it for several files)."
)


def _request_body_schema() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InquirySubmission"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["inquiry"],
                    "properties": {
                        "inquiry": {"type": "string",
                                    "description": "The inquiry as JSON (InquirySubmission)."},
                        "attachments": {"type": "array", "items": {
                            "type": "string", "format": "binary",
                            "contentMediaType": "application/octet-stream"}},
                    },
                },
                "encoding": {"inquiry": {"contentType": "application/json"}},
            },
        },
        "description": "The inquiry as JSON, or " + _MULTIPART_DESCRIPTION,
    }


@router.post(
    "/v1/inquiries",
    status_code=202,
    response_model=InquiryAccepted,
    summary="Submit an inquiry",
    responses={
        202: {"description": "Accepted and published; `Location` is the status URL."},
        **problem_responses(400, 401, 409, 413, 415, 422),
    },
    openapi_extra={"requestBody": _request_body_schema()},
    tags=["inquiries"],
)
async def submit_inquiry(
    request: Request,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=255,
        description="Makes a retried request start one inquiry: the same key with the same "
        "body answers with the first inquiry's id; with another body it is refused (422).",
    )] = None,
) -> JSONResponse:
    """Validate the inquiry, store its attachments, publish `InquiryReceived`, and answer
    `202` with the inquiry id and where to follow it. A W3C `traceparent` (and `tracestate`)
    header continues the caller's trace: every span of the inquiry joins it."""
    gw = gateway_state(request)
    submission, uploads, request_hash = await _parse(request, gw)
    limit = gw.gateway.max_attachments
    if len(uploads) + len(submission.attachments) > limit:
        raise ProblemError(
            413, "payload-too-large",
            f"{len(uploads) + len(submission.attachments)} attachments; at most {limit} "
            "per inquiry (AIAPPS_GATEWAY__MAX_ATTACHMENTS)",
        )
    checked = [_check_upload(u, gw) for u in uploads]
    for i, link in enumerate(submission.attachments):
        try:
            gw.fetcher.check_url(link.url)
        except AttachmentRejected as exc:
            raise _rejected(i, str(exc)) from None

    inquiry_id = f"inq-{uuid.uuid4().hex[:24]}"
    key = (caller.tenant, idempotency_key) if idempotency_key else None
    if key is not None:
        if key in gw.in_flight:
            raise ProblemError(409, "idempotency-key-in-use",
                               "a request with this Idempotency-Key is still being processed; "
                               "retry in a moment")
        existing = await gw.store.remember_idempotency(*key, request_hash, inquiry_id)
        if existing is not None:
            if existing.request_hash != request_hash:
                raise ProblemError(
                    422, "idempotency-key-reused",
                    "this Idempotency-Key was already used with a different request body; "
                    "send a new key for a new request",
                )
            return _accepted(request, gw, existing.inquiry_id, replayed=True)
        gw.in_flight.add(key)
    published = False
    try:
        refs = [await gw.service.blobs.put(data, media, filename=name)
                for name, media, data in checked]
        refs.extend(await _fetch_all(gw, submission))
        try:
            inquiry = InquiryReceived(
                inquiry_id=inquiry_id, customer=submission.customer,
                channel=submission.channel, language=submission.language,
                message=submission.message, attachments=tuple(refs),
                voice_reply=submission.voice_reply,
            )
        except ValidationError as exc:
            raise validation_problem(exc) from None
        try:
            traceparent, tracestate, baggage = incoming(
                request.headers, otel=bool(getattr(gw.service.telemetry, "enabled", False))
            )
            envelope = await gw.service.submit(
                inquiry, tenant=caller.tenant, traceparent=traceparent, tracestate=tracestate,
                baggage=baggage,
            )
        except TransportError as exc:
            raise ProblemError(503, "unavailable",
                               f"the message bus did not take the inquiry ({exc}); retry") from None
        published = True
    except BaseException:
        if key is not None and not published:
            await gw.store.forget_idempotency(*key)  # a retry may try again
        raise
    finally:
        if key is not None:
            gw.in_flight.discard(key)
    try:
        # recorded now (the recorder does it too, idempotently), so the status URL answers
        # at once
        await gw.store.append_events([envelope])
    except Exception as exc:
        log.warning("could not record the inquiry yet; the recorder will", error=repr(exc),
                    inquiry_id=inquiry_id)
    return _accepted(request, gw, inquiry_id, replayed=False)


def _accepted(request: Request, gw: GatewayState, inquiry_id: str, *, replayed: bool) -> JSONResponse:
    base = (gw.gateway.public_url or str(request.base_url)).rstrip("/")
    status_url = f"{base}/v1/inquiries/{inquiry_id}"
    body = InquiryAccepted(
        inquiry_id=inquiry_id, status_url=status_url, events_url=f"{status_url}/events",
        stream_url=f"{base}/v1/responses/stream?inquiry_id={inquiry_id}", replayed=replayed,
    )
    headers = {"Location": status_url}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)


async def _parse(request: Request, gw: GatewayState) -> tuple[InquirySubmission, list[Upload], str]:
    """The submission, its uploads, and a hash of the request for the idempotency check."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        limit = gw.gateway.max_json_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProblemError(413, "payload-too-large", "the JSON body is larger than "
                                   f"{limit} bytes (AIAPPS_GATEWAY__MAX_JSON_BYTES)")
            chunks.append(chunk)
        raw = _load_json(b"".join(chunks), "the body")
        submission = _validate(raw, "the body")
        return submission, [], _hash(raw, [])
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _parse_multipart(request, gw)
    shown = kind or "no Content-Type"
    raise ProblemError(415, "unsupported-media-type",
                       f"{shown}: send application/json, or {_MULTIPART_DESCRIPTION}")


async def _parse_multipart(
    request: Request, gw: GatewayState
) -> tuple[InquirySubmission, list[Upload], str]:
    form = await request.form(
        max_files=gw.gateway.max_attachments, max_fields=8,
        max_part_size=gw.gateway.max_json_bytes,
    )
    try:
        raw_inquiry: Any = None
        uploads: list[Upload] = []
        for name, value in form.multi_items():
            if name == "inquiry":
                if raw_inquiry is not None:
                    raise ProblemError(400, "bad-request", "more than one 'inquiry' part")
                if isinstance(value, UploadFile):
                    if (value.size or 0) > gw.gateway.max_json_bytes:
                        raise ProblemError(413, "payload-too-large", "the 'inquiry' part is "
                                           f"larger than {gw.gateway.max_json_bytes} bytes")
                    raw_inquiry = await value.read()
                else:
                    raw_inquiry = value.encode()
            elif isinstance(value, UploadFile):
                if (value.size or 0) > gw.gateway.max_upload_bytes:
                    raise ProblemError(
                        413, "payload-too-large",
                        f"attachment {value.filename!r} is {value.size} bytes; at most "
                        f"{gw.gateway.max_upload_bytes} (AIAPPS_GATEWAY__MAX_UPLOAD_BYTES)",
                    )
                uploads.append(Upload(name, value.filename, value.content_type,
                                      await value.read()))
            else:
                raise ProblemError(
                    422, "invalid-request",
                    f"unexpected form field {name!r}: send the inquiry as the JSON part "
                    "'inquiry' and files as 'attachments'",
                    errors=[FieldError(field=name, detail="unknown form field: remove it")],
                )
    finally:
        await form.close()
    if raw_inquiry is None:
        raise ProblemError(
            422, "invalid-request", "the multipart body has no 'inquiry' part (the inquiry "
            "as JSON)",
            errors=[FieldError(field="inquiry", detail="required: add the JSON part")],
        )
    raw = _load_json(raw_inquiry, "the 'inquiry' part")
    submission = _validate(raw, "the 'inquiry' part")
    return submission, uploads, _hash(raw, uploads)


def _load_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise ProblemError(400, "invalid-json", f"{what} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ProblemError(
            400, "invalid-json",
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise ProblemError(400, "invalid-json", f"{what} is nested too deeply") from None


def _validate(raw: Any, what: str) -> InquirySubmission:
    if not isinstance(raw, dict):
        raise ProblemError(
            422, "invalid-request",
            f"{what} must be a JSON object with the inquiry's fields (customer, message, …)",
            errors=[FieldError(field="(body)", pointer="", detail="must be a JSON object")],
        )
    try:
        return InquirySubmission.model_validate(raw)
    except ValidationError as exc:
        raise validation_problem(exc, what) from None


def _hash(raw: Any, uploads: list[Upload]) -> str:
    digest = hashlib.sha256(
        json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    for upload in uploads:
        digest.update(b"\x00" + (upload.filename or "").encode() + b"\x00")
        digest.update(hashlib.sha256(upload.data).digest())
    return digest.hexdigest()


def _check_upload(upload: Upload, gw: GatewayState) -> tuple[str | None, str, bytes]:
    """(filename, media type, bytes) of an acceptable upload; else a 413 or 415."""
    name = upload.filename or upload.field
    if len(upload.data) > gw.gateway.max_upload_bytes:
        raise ProblemError(413, "payload-too-large",
                           f"attachment {name!r} is {len(upload.data)} bytes; at most "
                           f"{gw.gateway.max_upload_bytes} (AIAPPS_GATEWAY__MAX_UPLOAD_BYTES)")
    media = judge_media_type(upload.data, upload.declared)
    allowed = gw.gateway.allowed_media_types
    if media not in allowed:
        raise ProblemError(
            415, "unsupported-media-type",
            f"attachment {name!r} is {media} (judged by its content); accepted: "
            f"{', '.join(allowed)}",
            errors=[FieldError(field=upload.field, location="body",
                               detail=f"{media} is not accepted; send one of {', '.join(allowed)}")],
        )
    return upload.filename, media, upload.data


def _rejected(index: int, reason: str) -> ProblemError:
    return ProblemError(
        422, "attachment-rejected", f"attachment {index}: {reason}",
        errors=[FieldError(field=f"attachments.{index}.url", pointer=f"/attachments/{index}/url",
                           detail=reason)],
    )


async def _fetch_all(gw: GatewayState, submission: InquirySubmission) -> list[BlobRef]:
    async def one(index: int, url: str, filename: str | None) -> BlobRef:
        try:
            fetched = await gw.fetcher.fetch(url)
        except AttachmentRejected as exc:
            raise _rejected(index, str(exc)) from None
        allowed = gw.gateway.allowed_media_types
        if fetched.media_type not in allowed:
            raise _rejected(index, f"{url} is {fetched.media_type} (judged by its content); "
                                   f"accepted: {', '.join(allowed)}")
        return await gw.service.blobs.put(
            fetched.data, fetched.media_type, filename=filename or fetched.filename
        )

    links = submission.attachments
    if not links:
        return []
    tasks = [asyncio.create_task(one(i, a.url, a.filename)) for i, a in enumerate(links)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- status and events -----------------------------------------------------------------------


async def _start_of(gw: GatewayState, inquiry_id: str, tenant: str) -> Envelope | None:
    """The stored ``InquiryReceived`` of an inquiry of ``tenant`` not yet started."""
    for envelope in await gw.store.events(inquiry_id):
        if envelope.type == InquiryReceived.event_type and envelope.tenant == tenant:
            return envelope
    return None


def _not_found(inquiry_id: str) -> ProblemError:
    return ProblemError(404, "not-found", f"no inquiry {inquiry_id!r} for this API key's tenant")


@router.get(
    "/v1/inquiries/{inquiry_id}",
    response_model=SagaSummary,
    summary="An inquiry's state, steps and outcome",
    responses=problem_responses(401, 404, 422),
    tags=["inquiries"],
)
async def get_inquiry(request: Request, caller: CallerDep, inquiry_id: InquiryId) -> SagaSummary:
    gw = gateway_state(request)
    state = await gw.store.load(inquiry_id)
    if state is not None:
        if state.tenant != caller.tenant:
            raise _not_found(inquiry_id)
        return SagaSummary.model_validate(saga_summary(state))
    start = await _start_of(gw, inquiry_id, caller.tenant)
    if start is None:
        raise _not_found(inquiry_id)
    return SagaSummary(
        id=inquiry_id, workflow="support", tenant=caller.tenant, status="accepted",
        started_at=start.time.isoformat(), finished_at=None, degraded=[], failure_reason=None,
        outcome=None, steps=[],
    )


@router.get(
    "/v1/inquiries/{inquiry_id}/events",
    response_model=InquiryEvents,
    summary="An inquiry's stored events, causes before effects",
    responses=problem_responses(401, 404, 422),
    tags=["inquiries"],
)
async def get_inquiry_events(
    request: Request, caller: CallerDep, inquiry_id: InquiryId
) -> InquiryEvents:
    gw = gateway_state(request)
    stored = await gw.store.events(inquiry_id)
    mine = [e for e in stored if e.tenant == caller.tenant]
    state = await gw.store.load(inquiry_id)
    if not mine or (state is not None and state.tenant != caller.tenant):
        raise _not_found(inquiry_id)
    return InquiryEvents(inquiry_id=inquiry_id, events=[
        StoredEvent.model_validate(e.model_dump(mode="json", exclude_none=True))
        for e in causal_order(mine)
    ])


# -- the response stream ---------------------------------------------------------------------


@router.get(
    "/v1/responses/stream",
    summary="Server-Sent Events of the tenant's responses",
    response_class=EventStreamResponse,
    status_code=200,
    responses={
        200: {
            "description": "`text/event-stream`: one event per `ResponseReady` or "
            "`InquiryFailed` of the caller's tenant. `id` is the event store's sequence "
            "number, `event` the type, `data` the CloudEvent as JSON. Reconnect with "
            "`Last-Event-ID` to get what was missed, once.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 422),
    },
    tags=["responses"],
)
async def stream_responses(
    request: Request,
    caller: CallerDep,
    channel: Annotated[str | None, Query(
        min_length=1, max_length=64, description="Only inquiries from this channel.")] = None,
    inquiry_id: Annotated[str | None, Query(
        pattern=ID_PATTERN, description="Only this inquiry (its past event too).")] = None,
    after: Annotated[int | None, Query(
        ge=0, le=_MAX_SEQ, description="Start after this sequence number (as Last-Event-ID); "
        "0 replays everything kept.")] = None,
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", max_length=32,
        description="The `id` of the last event received; the stream resumes after it.")] = None,
) -> EventStreamResponse:
    gw = gateway_state(request)
    start: int
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit() or int(text) > _MAX_SEQ:
            raise ProblemError(
                400, "bad-request",
                f"Last-Event-ID {text!r} is not an id this stream sent (a sequence number)",
                errors=[FieldError(field="Last-Event-ID", location="header",
                                   detail="must be a non-negative integer from an event's id")],
            )
        start = int(text)
    elif after is not None:
        start = after
    elif inquiry_id is not None:
        start = 0  # one inquiry: its event even if it came before the stream was opened
    else:
        start = await gw.store.last_event_seq()

    async def still_allowed() -> bool:
        key = await gw.store.find_api_key(caller.key_id)
        return key is not None and key.active

    settings = gw.gateway
    return EventStreamResponse(event_stream(
        gw.hub, gw.store, caller.tenant, start, inquiry_id=inquiry_id, channel=channel,
        batch=settings.stream_batch, poll_interval=settings.stream_poll_interval,
        keepalive=settings.stream_keepalive, still_allowed=still_allowed,
    ))

