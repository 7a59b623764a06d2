"""What a service says about its rate limits, read from its response headers, and how an
adapter hands that to the throttle (:mod:`actors.throttle`) without knowing about it.

Headers understood (any case):

=====================================  =====================================================
``x-ratelimit-remaining-requests``     requests left before the service answers 429
``x-ratelimit-remaining-tokens``       tokens left (OpenAI, Azure OpenAI)
``x-ratelimit-reset-requests``         time until the request limit is back to its initial
``x-ratelimit-reset-tokens``           state: a Go duration (OpenAI: ``1s``, ``6m0s``,
                                       ``20ms``, ``1h2m3.5s``) or plain seconds (``12``)
``x-ratelimit-limit-requests``         the limit itself, per minute (OpenAI's RPM and TPM)
``x-ratelimit-limit-tokens``
``retry-after-ms``,                    on a 429 (and whenever sent): the delay asked for;
``x-ms-retry-after-ms``,               the milliseconds headers win, being more precise
``Retry-After``                        (seconds or an HTTP date)
=====================================  =====================================================

Negative or unreadable values (Azure has been seen sending ``-1`` for "unknown") are
ignored. Who sends what: OpenAI all six ``x-ratelimit-*`` headers on every response; Azure
OpenAI the two ``remaining`` ones on every response (the ``limit`` and ``reset`` ones only on
some deployments) and ``retry-after-ms`` with ``Retry-After`` on a 429; Azure Translator and
Image Analysis only ``Retry-After`` on a 429; the Speech SDK nothing at all.

An adapter calls :func:`report` with what it read from a successful response; a 429 carries
its :class:`RateLimitInfo` on the :class:`~actors.errors.ThrottledError` instead. The
throttle collects reports with :func:`collecting` around each call: outside one (no throttle
configured) a report is dropped.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_RETRY_AFTER = 60.0
"""Seconds: a server asking for a longer wait is treated as asking for this long."""


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """One response's word on the deployment's rate limits; every field is optional. Times
    are seconds from when the response arrived."""

    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    limit_requests: float | None = None
    """Requests per minute (OpenAI's ``x-ratelimit-limit-requests``)."""
    limit_tokens: float | None = None
    """Tokens per minute."""
    retry_after: float | None = None
    """Stop every call for this long (a 429's ``retry-after-ms`` / ``Retry-After``)."""

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__slots__)


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or a plain
    number of seconds; ``None`` when absent, negative or unreadable."""
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    total, at = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != at:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
    return total if at == len(text) else None


def _count(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None


def parse_retry_after(
    headers: Mapping[str, str] | Any, *, cap: float = DEFAULT_MAX_RETRY_AFTER
) -> float | None:
    """The delay the server asked for, in seconds, capped at ``cap``; ``None`` when absent.

    ``headers`` is any case-insensitive mapping (azure-core, httpx and aiohttp headers are).
    Milliseconds headers win over ``Retry-After`` because they are more precise.
    """
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        value = headers.get(name)
        if value:
            try:
                return _capped(float(value) * scale, cap)
            except ValueError:
                pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return _capped(float(value), cap)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _capped(when.timestamp() - time.time(), cap)


def _capped(seconds: float, cap: float) -> float:
    if seconds != seconds:  # NaN
        return cap
    return round(min(max(seconds, 0.0), cap), 3)


def parse_rate_limit_headers(
    headers: Mapping[str, str] | Any, *, cap: float = DEFAULT_MAX_RETRY_AFTER
) -> RateLimitInfo | None:
    """The rate-limit headers of a response (see the module's table); ``None`` when it has
    none. ``cap`` bounds the reset times and the retry delay, as for :func:`parse_retry_after`."""
    if headers is None:
        return None

    def reset(name: str) -> float | None:
        seconds = parse_duration(headers.get(name))
        return None if seconds is None else min(seconds, cap)

    info = RateLimitInfo(
        remaining_requests=_count(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_count(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests=reset("x-ratelimit-reset-requests"),
        reset_tokens=reset("x-ratelimit-reset-tokens"),
        limit_requests=_count(headers.get("x-ratelimit-limit-requests")) or None,
        limit_tokens=_count(headers.get("x-ratelimit-limit-tokens")) or None,
        retry_after=parse_retry_after(headers, cap=cap),
    )
    return None if info.empty else info


# -- from the adapter to the throttle -----------------------------------------------------------

_sink: ContextVar[list[RateLimitInfo] | None] = ContextVar("aiapps_rate_limits", default=None)


def report(info: RateLimitInfo | None) -> None:
    """Hand what a response said to the throttle around this call, if there is one."""
    seen = _sink.get()
    if info is not None and seen is not None:
        seen.append(info)


@contextmanager
def collecting() -> Iterator[list[RateLimitInfo]]:
    """``with collecting() as seen: await provider.call(...)``: ``seen`` gets what the
    adapter reported during the call (the context is per task, so concurrent calls do not
    mix)."""
    seen: list[RateLimitInfo] = []
    token = _sink.set(seen)
    try:
        yield seen
    finally:
        _sink.reset(token)
