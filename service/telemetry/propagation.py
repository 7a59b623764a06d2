"""The trace context of an HTTP request, for the envelope it starts: the gateway takes a
helpdesk's ``traceparent`` (and ``tracestate``, ``baggage``) so that the inquiry's trace
continues the helpdesk's, whether or not telemetry is on in the gateway (the envelope carries
the context on).

With telemetry on, the headers are read by the ``OTEL_PROPAGATORS`` propagators
(:func:`service.telemetry.otel.carried_from`); off, OpenTelemetry is not imported and the W3C
``traceparent``/``tracestate`` are parsed here. A header that is not valid is ignored, as the
W3C recommendation says (the request starts a trace of its own); it is never an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_MAX_TRACESTATE = 512
"""The recommendation's limit a propagator must at least accept."""


def incoming(
    headers: Mapping[str, str], *, otel: bool
) -> tuple[str | None, str | None, str | None]:
    """``(traceparent, tracestate, baggage)`` for the envelope of a request with ``headers``;
    with ``otel`` (telemetry on) read by the configured propagators, else W3C only (no
    baggage)."""
    if otel:
        from service.telemetry.otel import carried_from

        return carried_from(headers)
    return (*trace_context(headers), None)


def trace_context(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` of ``headers`` (an HTTP request's), or ``(None, None)``
    when its ``traceparent`` is missing or invalid."""
    raw = (headers.get("traceparent") or "").strip().lower()
    match = _TRACEPARENT.match(raw)
    if match is None:
        return None, None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None, None
    # a future version's extra fields are dropped: we speak version 00
    traceparent = f"00-{trace_id}-{span_id}-{flags}"
    tracestate = (headers.get("tracestate") or "").strip() or None
    if tracestate is not None and len(tracestate) > _MAX_TRACESTATE:
        tracestate = None
    return traceparent, tracestate
