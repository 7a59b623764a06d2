"""The envelope, the payload models and the codec."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from events import (
    Customer,
    DecodeError,
    Envelope,
    InquiryReceived,
    InvalidPayload,
    ResponseReady,
    UnknownEventType,
    decode,
    encode,
    registry,
)


def inquiry() -> InquiryReceived:
    return InquiryReceived(inquiry_id="i1", customer=Customer(id="c1"), message="hello")


class TestEnvelope:
    def test_round_trip(self) -> None:
        """encode then decode gives back an equal envelope with a typed payload."""
        env = Envelope.new(inquiry(), correlationid="i1", tenant="acme", traceparent="00-ab-cd-01")
        back = decode(encode(env))
        assert back == env
        assert isinstance(back.data, InquiryReceived)

    def test_structured_cloudevent_on_the_wire(self) -> None:
        """The wire form is a CloudEvents 1.0 JSON object; unset attributes are omitted."""
        body = json.loads(encode(Envelope.new(inquiry(), correlationid="i1")))
        assert body["specversion"] == "1.0"
        assert body["type"] == "InquiryReceived"
        assert body["datacontenttype"] == "application/json"
        assert body["time"].endswith("Z") or "+00:00" in body["time"]
        assert "causationid" not in body
        assert body["data"]["customer"] == {"id": "c1"}

    def test_follow_carries_correlation_tenant_and_trace(self) -> None:
        """A follow-up event is caused by its parent and shares its correlation and trace."""
        parent = Envelope.new(inquiry(), correlationid="i1", tenant="acme", subject="respond",
                              traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        child = parent.follow(inquiry())
        assert child.causationid == parent.id
        assert (child.correlationid, child.tenant, child.traceparent, child.subject) == (
            "i1", "acme", parent.traceparent, "respond")
        assert child.id != parent.id


class TestModels:
    def test_frozen(self) -> None:
        """Payloads cannot be changed after creation."""
        event = inquiry()
        with pytest.raises(ValidationError):
            event.message = "changed"  # type: ignore[misc]

    def test_unknown_fields_forbidden(self) -> None:
        """An unknown field is an error, not silently dropped."""
        with pytest.raises(ValidationError, match="extra"):
            InquiryReceived.model_validate(
                {"inquiry_id": "i", "customer": {"id": "c"}, "message": "m", "surprise": 1}
            )

    def test_registry_knows_the_support_events(self) -> None:
        """Every support event type resolves to its model."""
        assert registry.resolve("ResponseReady") is ResponseReady
        assert {"InquiryReceived", "StepFailed", "InquiryFailed", "ImageAnalyzed",
                "TextTranslated", "SpeechSynthesized", "LanguageDetected"} <= set(registry.types())


class TestDecodeErrors:
    @pytest.mark.parametrize(
        ("body", "error", "message"),
        [
            (b"\xff\xfe", DecodeError, "not JSON"),
            (b"[1, 2]", DecodeError, "JSON object"),
            (b'{"type": "InquiryReceived"}', DecodeError, "invalid CloudEvent attributes"),
        ],
    )
    def test_bad_envelopes(self, body: bytes, error: type[Exception], message: str) -> None:
        """Bytes that are not a CloudEvent raise a DecodeError that says why."""
        with pytest.raises(error, match=message):
            decode(body)

    def test_unknown_type(self) -> None:
        """An unknown type is an UnknownEventType naming it."""
        body = json.loads(encode(Envelope.new(inquiry(), correlationid="i1")))
        body["type"] = "Nope"
        with pytest.raises(UnknownEventType, match="Nope"):
            decode(json.dumps(body))

    def test_invalid_payload_names_the_field(self) -> None:
        """A payload missing a field is an InvalidPayload naming the field."""
        body = json.loads(encode(Envelope.new(inquiry(), correlationid="i1")))
        del body["data"]["message"]
        with pytest.raises(InvalidPayload, match="message"):
            decode(json.dumps(body))

    def test_decode_errors_are_not_retryable(self) -> None:
        """Redelivering the same bytes cannot help."""
        assert DecodeError.retryable is False
