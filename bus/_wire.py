"""Small helpers every broker backend shares: whether a handler error is worth retrying, and
reading header values that brokers hand back as bytes, strings or numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from events.errors import AiAppsError


def retryable(exc: BaseException) -> bool:
    """Our own errors say whether retrying can help; anything else may be transient."""
    if isinstance(exc, AiAppsError):
        return exc.retryable
    return True


def header_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def header_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def header_time(value: Any) -> datetime | None:
    """A timestamp header as an aware datetime (naive ones are UTC), or None."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(header_text(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
