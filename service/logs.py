"""structlog set-up: JSON lines for machines, console rendering on a terminal.

Every line carries the context bound by the middleware (correlation id, tenant, event), the
trace and span ids of the current OpenTelemetry span (when there is one), and passes through
one :class:`~service.telemetry.redaction.Redactor`, which removes secrets (and customer text
when ``telemetry.redact_customer_text`` is set). Lines of the standard library's loggers (the
SDKs') go through the same chain.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from service.settings import Settings
from service.telemetry.redaction import Redactor
from service.telemetry.settings import TelemetrySettings


def add_trace_context(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: ``trace_id`` and ``span_id`` of the current span, W3C hex, if there is one.

    OpenTelemetry is not imported for it: with telemetry off nothing has imported it, and
    then there is no span to name (a context can only be current if some code of
    OpenTelemetry made it so)."""
    otel_trace = sys.modules.get("opentelemetry.trace")
    if otel_trace is not None:
        context = otel_trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
            event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def redactor_for(settings: Settings) -> Redactor:
    """The redactor of ``settings``: its secrets, and its customer text fields if asked."""
    telemetry: TelemetrySettings = getattr(settings, "telemetry", None) or TelemetrySettings()
    fields = telemetry.customer_text_fields if telemetry.redact_customer_text else ()
    return Redactor.from_settings(settings, customer_fields=fields)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (tests and daemons replace it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.WARNING)
    json_lines = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    redact = redactor_for(settings)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            add_trace_context,
            # exceptions become text first, so that the redactor sees their messages
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # look sys.stderr up at each write: it may be replaced (tests, daemons) after set-up
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.set_name("ai-apps")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
            add_trace_context,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ai-apps"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
