"""Redaction of secrets (and, when asked, customer text) from log events and error messages.

One :class:`Redactor` is the single place this happens: ``configure_logging`` installs it as a
structlog processor (for our lines and the standard library's), and the health report passes
error messages through it. It removes

* every value of a :class:`pydantic.SecretStr` setting, wherever it appears in a string
  (an exception message, a URL, a repr);
* the value of any field whose name looks secret (``*key*``, ``*secret*``, ``*password*``,
  ``*token*``, ``authorization``, ``credential``…) when it is a string;
* passwords in connection strings (``amqp://user:PASSWORD@host``, ``Password=…;``,
  ``AccountKey=…``) and credential headers in text (``Ocp-Apim-Subscription-Key``,
  ``api-key``, ``Authorization``), in whatever quoting a repr or JSON gives them;
* with ``customer_fields`` set, the text of those fields (``message``, ``text``,
  ``ocr_text``…), replaced by its length.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping, MutableMapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 4
"""Shorter secret values are not searched for in text (they would blank ordinary words)."""

_SECRET_NAME = re.compile(
    r"key|secret|passw|pwd|token|authorization|credential|signature|cookie", re.IGNORECASE
)
_NOT_SECRET_NAMES = frozenset({
    "routing_key", "idempotency_key", "cache_key", "sort_key", "partition_key", "max_tokens",
    "token_type", "keys",
})
_URL_PASSWORD = re.compile(r"(?P<pre>\b[a-z][a-z0-9+.\-]*://[^:/@\s'\"]*:)[^@\s/'\"]+(?=@)", re.I)
_SECRET_PAIR = re.compile(
    r"(?P<pre>\b(?:password|pwd|accountkey|sharedaccesskey|sharedaccesssignature|sig"
    r"|ocp-apim-subscription-key|subscription-key|api[-_]?key|x-api-key|authorization"
    r"|access[-_]?token|refresh[-_]?token|client[-_]?secret)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>(?:bearer\s+|basic\s+)?[^'\"\s;,&}\]]+)",
    re.IGNORECASE,
)
_MAX_DEPTH = 8
_SECRET_SETTINGS = frozenset({
    "key", "api_key", "password", "secret", "client_secret", "token", "access_token",
    "sas_token", "connection_string", "account_key",
})
"""Plain string settings taken as secrets by name (secrets should be ``SecretStr``)."""


class Redactor:
    """A structlog processor (``redactor(logger, method, event_dict)``) and a text scrubber."""

    def __init__(
        self, secrets: Iterable[str] = (), *, customer_fields: Collection[str] = ()
    ) -> None:
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, values))) if values else None
        self.customer_fields = frozenset(customer_fields)

    @classmethod
    def from_settings(
        cls, settings: BaseModel, *, customer_fields: Collection[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> Redactor:
        """Every secret of ``settings`` (walked recursively) and of the OTLP header variables."""
        env = os.environ if environ is None else environ
        secrets = list(secret_values(settings))
        for name, value in env.items():
            if name.startswith("OTEL_EXPORTER_OTLP") and name.endswith("HEADERS"):
                secrets.extend(v.partition("=")[2].strip() for v in value.split(","))
        return cls(secrets, customer_fields=customer_fields)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(key, value, 0)
        return event_dict

    def scrub(self, text: str) -> str:
        """``text`` without secret values, connection-string passwords or credential headers."""
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<pre>{REDACTED}", text)
        return _SECRET_PAIR.sub(rf"\g<pre>{REDACTED}", text)

    def _clean(self, key: str | None, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if key is not None and key in self.customer_fields and isinstance(value, str | list | tuple):
            return f"[{len(value)} chars]" if isinstance(value, str) else f"[{len(value)} items]"
        if isinstance(value, SecretStr | SecretBytes):
            return REDACTED
        if isinstance(value, str):
            if value and key is not None and _secret_name(key):
                return REDACTED
            return self.scrub(value)
        if depth >= _MAX_DEPTH:
            return self.scrub(repr(value))
        if isinstance(value, Mapping):
            return {k: self._clean(str(k), v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(key, v, depth + 1) for v in value]
        if isinstance(value, bytes):
            return self._clean(key, value.decode("utf-8", "replace"), depth + 1)
        # what a renderer would print for it (both use repr), without the secrets in it
        return self._clean(key, repr(value), depth + 1)


def _secret_name(key: str) -> bool:
    return key.lower() not in _NOT_SECRET_NAMES and _SECRET_NAME.search(key) is not None


def secret_values(model: BaseModel) -> Iterable[str]:
    """Every ``SecretStr``/``SecretBytes`` value in ``model``, and every non-empty string field
    named like a secret (``key``, ``api_key``, ``password``…), walking nested models, lists
    and dicts."""
    yield from _walk(model, None, 0)


def _walk(value: Any, name: str | None, depth: int) -> Iterable[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, SecretBytes):
        yield value.get_secret_value().decode("utf-8", "replace")
    elif isinstance(value, str):
        if name is not None and name.lower() in _SECRET_SETTINGS and value:
            yield value
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _walk(getattr(value, field, None), field, depth + 1)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, str(k), depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _walk(v, name, depth + 1)
