"""One classification of SDK errors into :mod:`actors.errors`, shared by every Azure and
OpenAI-compatible adapter.

:func:`classify` maps what the SDKs raise:

* azure-core (Translator, Image Analysis): ``HttpResponseError`` and its subclasses by status
  code, ``ServiceRequestError`` / ``ServiceResponseError`` (connect failures, dropped
  connections, timeouts), ``ClientAuthenticationError`` without a response (an Entra ID
  credential that could not get a token);
* openai (Azure OpenAI, OpenAI, vLLM/Ollama/LiteLLM): ``APIStatusError`` by status code,
  ``APIConnectionError`` / ``APITimeoutError``;
* aiohttp and timeouts (the provider checks' own REST calls).

The table:

============================================  ==========================================
429                                           :class:`ThrottledError` with ``retry_after``
                                              from ``retry-after-ms`` / ``x-ms-retry-after-ms``
                                              / ``Retry-After`` (seconds or HTTP date),
                                              capped at ``max_retry_after`` (60 s default),
                                              and ``rate_limit``: every rate-limit header
                                              (:mod:`actors.ratelimit`)
408, 5xx, timeouts, connection errors         :class:`TransientError`
401, 403, credential failures                 :class:`AuthError`
400 with a language code error                :class:`UnsupportedError`
400 (incl. Azure OpenAI ``content_filter``),  :class:`PermanentError`
other 4xx
============================================  ==========================================

Messages never carry credentials: the SDKs do not put keys in their messages, and
``secrets`` are scrubbed from every message anyway in case a service echoes one back.

The SDKs' own retries must be off (``retry_total=0`` for azure-core clients, ``max_retries=0``
for openai): the saga owns retries, honours ``retry_after`` and counts attempts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from actors.errors import (
    AuthError,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientError,
    UnsupportedError,
)
from actors.ratelimit import (
    DEFAULT_MAX_RETRY_AFTER,
    parse_rate_limit_headers,
    parse_retry_after,
)

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "classify",
    "mapped_errors",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "scrub",
]

_MAX_MESSAGE = 300

# Translator error codes (v3 and 2026-06-06) for an invalid or unsupported language, and
# Image Analysis inner codes for an unsupported language or feature.
_UNSUPPORTED_CODES = frozenset({
    "400019", "400023", "400035", "400036",
    "NotSupportedLanguage", "NotSupportedFeature", "NotSupportedVisualFeature",
})


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "\u2026"


def _error_body(body: object) -> tuple[str | None, str | None, str | None]:
    """(code, inner code, message) from an ``{"error": {...}}`` body or its inner dict."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return None, None, None
    if not isinstance(body, Mapping):
        return None, None, None
    error = body.get("error", body)
    if not isinstance(error, Mapping):
        return None, None, str(error)
    code = error.get("code")
    inner = error.get("innererror") or error.get("inner_error")
    inner_code = inner.get("code") if isinstance(inner, Mapping) else None
    message = error.get("message")
    return (
        str(code) if code is not None else None,
        str(inner_code) if inner_code is not None else None,
        str(message) if message is not None else None,
    )


def _by_status(
    status: int,
    *,
    headers: Any,
    codes: tuple[str | None, str | None],
    detail: str,
    provider: str,
    cap: float,
) -> ProviderError:
    code, inner = codes
    if status == 429:
        return ThrottledError(
            f"{provider} throttled (429): {detail}", retry_after=parse_retry_after(headers, cap=cap),
            provider=provider, rate_limit=parse_rate_limit_headers(headers, cap=cap),
        )
    if status == 408 or status >= 500:
        return TransientError(f"{provider} unavailable ({status}): {detail}", provider=provider)
    if status in (401, 403):
        return AuthError(
            f"{provider} refused the credentials ({status}): {detail}", provider=provider
        )
    if "content_filter" in (code, inner):
        return PermanentError(
            f"{provider} content filter rejected the request (400 content_filter): {detail}",
            provider=provider,
        )
    if code in _UNSUPPORTED_CODES or inner in _UNSUPPORTED_CODES:
        return UnsupportedError(f"{provider} does not support this ({status}): {detail}", provider=provider)
    return PermanentError(f"{provider} rejected the request ({status}): {detail}", provider=provider)


def classify(
    exc: BaseException,
    *,
    provider: str,
    secrets: Iterable[str] = (),
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> ProviderError:
    """Our error for an SDK exception. Raise it ``from exc``.

    ``provider`` names the service in the message (``azure-translator``); ``secrets`` are
    removed from the message; ``max_retry_after`` caps a throttled error's delay.
    """
    if isinstance(exc, ProviderError):
        return exc
    secrets = tuple(secrets)

    def text(message: object) -> str:
        return scrub(str(message), secrets)

    openai = sys.modules.get("openai")
    if openai is not None and isinstance(exc, openai.OpenAIError):
        if isinstance(exc, openai.APIStatusError):
            code, inner, message = _error_body(exc.body)
            return _by_status(
                exc.status_code, headers=exc.response.headers, codes=(code or exc.code, inner),
                detail=text(message or exc.message), provider=provider, cap=max_retry_after,
            )
        if isinstance(exc, openai.APITimeoutError):
            return TransientError(f"{provider} timed out: {text(exc)}", provider=provider)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            extra = f" ({text(cause)})" if cause is not None and str(cause) else ""
            return TransientError(f"{provider} connection failed: {text(exc)}{extra}", provider=provider)
        if isinstance(exc, openai.APIResponseValidationError):
            return TransientError(f"{provider} sent an unexpected response: {text(exc)}", provider=provider)
        return PermanentError(f"{provider} client error: {text(exc)}", provider=provider)

    core = sys.modules.get("azure.core.exceptions")
    if core is not None and isinstance(exc, core.AzureError):
        if isinstance(exc, core.HttpResponseError) and exc.status_code is not None and not isinstance(
            exc, core.DecodeError
        ):
            error = exc.error
            code = str(error.code) if error is not None and error.code is not None else None
            inner_error = getattr(error, "innererror", None) if error is not None else None
            inner = inner_error.get("code") if isinstance(inner_error, Mapping) else None
            message = error.message if error is not None and error.message else exc.reason
            headers = exc.response.headers if exc.response is not None else None
            return _by_status(
                exc.status_code, headers=headers, codes=(code, str(inner) if inner else None),
                detail=text(message or exc.message), provider=provider, cap=max_retry_after,
            )
        if isinstance(exc, core.ClientAuthenticationError):
            # a credential (Entra ID) that could not get a token: no HTTP response at all
            return AuthError(f"{provider} could not authenticate: {text(exc.message)}", provider=provider)
        if isinstance(exc, (core.ServiceRequestTimeoutError, core.ServiceResponseTimeoutError)):
            return TransientError(f"{provider} timed out: {text(exc.message)}", provider=provider)
        if isinstance(exc, core.ServiceRequestError):
            return TransientError(f"{provider} connection failed: {text(exc.message)}", provider=provider)
        if isinstance(exc, core.ServiceResponseError):
            return TransientError(f"{provider} connection broken: {text(exc.message)}", provider=provider)
        return TransientError(f"{provider} failed: {text(exc.message)}", provider=provider)

    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientResponseError):
        return _by_status(
            exc.status, headers=exc.headers, codes=(None, None), detail=text(exc.message),
            provider=provider, cap=max_retry_after,
        )
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return TransientError(f"{provider} connection failed: {text(exc)}", provider=provider)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return TransientError(f"{provider} timed out", provider=provider)
    if isinstance(exc, (ConnectionError, OSError)):
        return TransientError(f"{provider} connection failed: {text(exc)}", provider=provider)
    return PermanentError(
        f"{provider} failed unexpectedly: {type(exc).__name__}: {text(exc)}", provider=provider
    )


@contextmanager
def mapped_errors(
    provider: str, *, secrets: Iterable[str] = (), max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
) -> Iterator[None]:
    """``with mapped_errors("azure-vision", secrets=...): await client.call(...)``: any SDK
    exception leaves as :func:`classify` says, raised ``from`` the original."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise classify(exc, provider=provider, secrets=secrets, max_retry_after=max_retry_after) from exc
