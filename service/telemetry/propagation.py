"""W3C Trace Context from an HTTP request, without OpenTelemetry: the gateway takes a
helpdesk's ``traceparent`` (and ``tracestate``) so that the inquiry's trace continues the
helpdesk's, whether or not telemetry is on in the gateway (the envelope carries the context on).

A header that is not valid W3C Trace Context is ignored, as the recommendation says (the
request starts a trace of its own); it is never an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_MAX_TRACESTATE = 512
"""The recommendation's limit a propagator must at least accept."""


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
