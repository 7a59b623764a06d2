"""The CloudEvents 1.0 envelope every event travels in, and its JSON codec (structured mode)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from events.base import Event, EventRegistry, registry
from events.errors import DecodeError, InvalidPayload

CONTENT_TYPE = "application/cloudevents+json"
"""The media type of an event on the wire (CloudEvents structured JSON mode)."""

DEFAULT_SOURCE = "/ai-apps"


def new_id() -> str:
    """A new event id (a UUID4 in its canonical text form)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Attributes(BaseModel):
    """The envelope without its data: what is validated before the payload type is known."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    specversion: Literal["1.0"] = "1.0"
    time: datetime
    subject: str | None = None
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    correlationid: str = Field(min_length=1)
    causationid: str | None = None
    tenant: str = "default"
    traceparent: str | None = None
    tracestate: str | None = None
    baggage: str | None = None
    """W3C Baggage (the ``baggage`` header's value) travelling with the trace context."""
    replayof: str | None = None
    """Set on events re-emitted by a replay or resume: the id of the original event."""
    deadline: datetime | None = None
    """On a request the coordinator dispatched: when the step stops waiting for its answer
    (its timeout). A worker that takes the request later does not call its provider, and a
    call in progress (its throttle wait included) is bounded by it. A CloudEvents extension
    attribute (an RFC 3339 timestamp); absent on every other event."""


class Envelope(_Attributes):
    """A CloudEvent carrying one :class:`~events.base.Event` as its ``data``.

    ``correlationid`` is the request (saga) id, ``causationid`` the id of the event that caused
    this one, ``subject`` the saga step a request or its result belongs to.
    """

    data: SerializeAsAny[Event]

    @classmethod
    def new(
        cls,
        data: Event,
        *,
        correlationid: str,
        tenant: str = "default",
        source: str = DEFAULT_SOURCE,
        subject: str | None = None,
        causationid: str | None = None,
        traceparent: str | None = None,
        time: datetime | None = None,
    ) -> Envelope:
        """Wrap ``data`` in a new envelope with a fresh id."""
        return cls(
            id=new_id(),
            source=source,
            type=type(data).event_type,
            time=time or utcnow(),
            subject=subject,
            correlationid=correlationid,
            causationid=causationid,
            tenant=tenant,
            traceparent=traceparent,
            data=data,
        )

    def follow(
        self,
        data: Event,
        *,
        source: str | None = None,
        subject: str | None = None,
        time: datetime | None = None,
    ) -> Envelope:
        """A new envelope caused by this one: same correlation, tenant and trace."""
        return Envelope(
            id=new_id(),
            source=source or self.source,
            type=type(data).event_type,
            time=time or utcnow(),
            subject=self.subject if subject is None else subject,
            correlationid=self.correlationid,
            causationid=self.id,
            tenant=self.tenant,
            traceparent=self.traceparent,
            tracestate=self.tracestate,
            baggage=self.baggage,
            data=data,
        )


def encode(envelope: Envelope) -> bytes:
    """The envelope as a CloudEvent in structured JSON mode (UTF-8 bytes)."""
    return envelope.model_dump_json(exclude_none=True).encode()


def decode(body: bytes | str, types: EventRegistry = registry) -> Envelope:
    """Parse and validate a structured-mode CloudEvent.

    Raises :class:`~events.errors.DecodeError` (or a subclass) with a message that says what is
    wrong: not JSON, a missing or bad attribute, an unknown type, an invalid payload.
    """
    try:
        raw: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DecodeError("a CloudEvent must be a JSON object")
    data = raw.pop("data", None)
    try:
        attrs = _Attributes.model_validate(raw)
    except ValidationError as exc:
        raise DecodeError(f"invalid CloudEvent attributes: {_errors(exc)}") from exc
    model = types.resolve(attrs.type)
    try:
        payload = model.model_validate(data)
    except ValidationError as exc:
        raise InvalidPayload(f"invalid {attrs.type} payload: {_errors(exc)}") from exc
    return Envelope.model_construct(**attrs.__dict__, data=payload)


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
