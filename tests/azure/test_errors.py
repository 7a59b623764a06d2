"""actors.providers.azure.errors: Retry-After parsing and the classification of errors that the
fakes cannot easily produce (credential failures, timeouts, foreign exceptions)."""

from __future__ import annotations

import email.utils
import time

import pytest

from actors.errors import AuthError, PermanentError, ThrottledError, TransientError
from actors.providers.azure.errors import classify, mapped_errors, parse_retry_after

pytestmark = pytest.mark.azure


class Headers(dict[str, str]):
    """Case-insensitive enough for the test: keys stored lower case."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3600"}, 60.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "x", "retry-after": "4"}, 4.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(Headers(headers)) == expected


def test_retry_after_http_date() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = parse_retry_after(Headers({"retry-after": later}))
    assert delay is not None
    assert 28 <= delay <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after(Headers({"retry-after": past})) == 0.0
    assert parse_retry_after(Headers({"retry-after": "120"}), cap=10) == 10


def test_entra_credential_failure_is_auth() -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import CredentialUnavailableError

    for exc in (ClientAuthenticationError("token request failed"),
                CredentialUnavailableError("no credential in this environment")):
        error = classify(exc, provider="azure-vision")
        assert isinstance(error, AuthError)


def test_azure_core_timeouts_and_connections_are_transient() -> None:
    from azure.core.exceptions import ServiceRequestError, ServiceResponseTimeoutError

    assert isinstance(classify(ServiceResponseTimeoutError("read timeout"), provider="p"), TransientError)
    assert isinstance(classify(ServiceRequestError("refused"), provider="p"), TransientError)


def test_openai_timeout_is_transient() -> None:
    import importlib.util

    import openai

    # openai 3.x sends with httpx2, openai 1.x with httpx
    http = importlib.import_module("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
    request = http.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert isinstance(classify(openai.APITimeoutError(request), provider="openai"), TransientError)


def test_aiohttp_status_errors() -> None:
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict({"Retry-After": "3"}))
    exc = aiohttp.ClientResponseError(None, (), status=429, message="Too Many Requests",  # type: ignore[arg-type]
                                      headers=headers)
    error = classify(exc, provider="azure-speech")
    assert isinstance(error, ThrottledError)
    assert error.retry_after == 3.0
    refused = aiohttp.ClientResponseError(None, (), status=401, message="Unauthorized")  # type: ignore[arg-type]
    assert isinstance(classify(refused, provider="azure-speech"), AuthError)


def test_other_exceptions() -> None:
    assert isinstance(classify(TimeoutError(), provider="p"), TransientError)
    assert isinstance(classify(ConnectionResetError(), provider="p"), TransientError)
    assert type(classify(ValueError("bug"), provider="p")) is PermanentError
    already = ThrottledError("x", retry_after=1)
    assert classify(already, provider="p") is already


def test_secrets_are_scrubbed_and_cause_is_kept() -> None:
    with pytest.raises(PermanentError) as caught, mapped_errors("p", secrets=["s3cr3t-value"]):
        raise ValueError("service echoed s3cr3t-value back")
    assert "s3cr3t-value" not in str(caught.value)
    assert "***" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)
