"""Credentials shared by the Azure adapters: an API key kept as :class:`pydantic.SecretStr`, or a
Microsoft Entra ID token credential (``azure-identity``).

Keys are unwrapped only where a client is built, and the adapters' ``repr`` shows the kind of
credential, never its value.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
"""The Entra ID scope of Azure AI services (Translator, Vision, Speech, Azure OpenAI)."""

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def as_secret(key: SecretStr | str | None) -> SecretStr | None:
    if key is None or isinstance(key, SecretStr):
        return key
    return SecretStr(key)


def secret_values(*keys: SecretStr | None) -> tuple[str, ...]:
    """The plain values, for scrubbing them out of error messages."""
    return tuple(k.get_secret_value() for k in keys if k is not None and k.get_secret_value())


def is_loopback_http(url: str) -> bool:
    """True for ``http://127.0.0.1:…`` and the like: azure-core refuses to send a bearer token
    over plain http, which the adapters allow for loopback endpoints (local fakes) only."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "ws") and (parts.hostname or "") in _LOOPBACK


def auth_kind(key: SecretStr | None, credential: Any) -> str:
    if key is not None:
        return "key"
    if credential is not None:
        return "entra-id"
    return "none"


async def close_quietly(obj: Any) -> None:
    """``await obj.close()`` for async credentials and clients, if they have it."""
    close = getattr(obj, "close", None)
    if close is not None:
        result = close()
        if hasattr(result, "__await__"):
            await result
