"""Small helpers every broker backend shares: whether a handler error is worth retrying,
reading header values that brokers hand back as bytes, strings or numbers, and the observers
a transport reports its retries and dead letters to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from bus.base import UNKNOWN_TYPE, DeliveryObserver
from events.errors import AiAppsError

log = structlog.get_logger("bus")


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


class Observers:
    """The observers (:class:`~bus.base.DeliveryObserver`) of one transport, told safely: one
    that raises is logged and skipped, and never changes the delivery. A backend holds one,
    exposes :meth:`add` and :meth:`remove` as ``add_observer``/``remove_observer``, and calls
    :meth:`retried`, :meth:`dead_lettered` or :meth:`dropped` once the decision took effect."""

    __slots__ = ("_observers",)

    def __init__(self) -> None:
        self._observers: tuple[DeliveryObserver, ...] = ()

    def add(self, observer: DeliveryObserver) -> None:
        if not any(o is observer for o in self._observers):
            self._observers = (*self._observers, observer)

    def remove(self, observer: DeliveryObserver) -> None:
        self._observers = tuple(o for o in self._observers if o is not observer)

    def retried(
        self, group: str, event_type: str | None, *, attempt: int, delay: float, exc: BaseException
    ) -> None:
        self._tell("retried", lambda o: o.retried(
            group, event_type or UNKNOWN_TYPE, attempt=attempt, delay=delay,
            error_class=type(exc).__name__,
        ))

    def dead_lettered(
        self, group: str, event_type: str | None, *, attempts: int, exc: BaseException
    ) -> None:
        self._tell("dead_lettered", lambda o: o.dead_lettered(
            group, event_type or UNKNOWN_TYPE, attempts=attempts,
            error_class=type(exc).__name__, reason=reason(exc),
        ))

    def dropped(
        self, group: str, event_type: str | None, *, attempts: int, exc: BaseException
    ) -> None:
        self._tell("dropped", lambda o: o.dropped(
            group, event_type or UNKNOWN_TYPE, attempts=attempts,
            error_class=type(exc).__name__, reason=reason(exc),
        ))

    def _tell(self, hook: str, call: Callable[[DeliveryObserver], None]) -> None:
        for observer in self._observers:
            try:
                call(observer)
            except Exception:
                log.exception("delivery observer failed", hook=hook, observer=repr(observer))


def reason(exc: BaseException) -> str:
    """What a dead letter says about why: the error's message, else its class."""
    return str(exc) or type(exc).__name__
