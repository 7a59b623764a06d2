"""Azure AI Translator through ``azure-ai-translation-text`` 2.x (async client).

SDK 2.x speaks the Translator API version 2026-06-06: ``POST /translate?api-version=2026-06-06``
with ``{"inputs": [{"text", "targets": [{"language"}], "language"?}]}``; the answer is
``{"value": [{"detectedLanguage"?, "translations": [{"language", "text", "sourceCharacters"}]}]}``.
Without a source language the service detects it in the same call, so
:meth:`AzureTranslator.translate` with ``from_language=None`` returns ``detected=True``.

The API has no separate detect operation any more (v3's ``/detect`` is gone from the SDK), so
:class:`AzureTranslator` also implements ``LanguageDetector`` by translating the first
``detect_sample_chars`` characters to ``detect_target`` and reading ``detectedLanguage``:
that call is **billed** as translated characters (reported in ``usage.characters``).

The SDK's retries are off (``retry_total=0``): the saga retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from actors.capabilities import Detection, Translation
from actors.errors import PermanentError, UnsupportedError
from actors.providers.azure._auth import (
    as_secret,
    auth_kind,
    close_quietly,
    is_loopback_http,
    secret_values,
)
from actors.providers.azure.errors import DEFAULT_MAX_RETRY_AFTER, mapped_errors
from events.common import ProviderInfo, Usage

if TYPE_CHECKING:
    from azure.ai.translation.text.aio import TextTranslationClient
    from azure.core.credentials_async import AsyncTokenCredential

GLOBAL_ENDPOINT = "https://api.cognitive.microsofttranslator.com"
API_VERSION = "2026-06-06"
PROVIDER_NAME = "azure-translator"
PROVIDER = ProviderInfo(name="azure", model=f"translator-{API_VERSION}")


def primary_language(code: str) -> str:
    """``zh-Hans`` → ``zh``, ``pt-PT`` → ``pt``: our events carry primary subtags."""
    return code.split("-", 1)[0].lower()


class AzureTranslator:
    """``Translator`` and ``LanguageDetector`` on Azure AI Translator.

    Authenticate with ``key`` (plus ``region`` for a regional or multi-service resource) or an
    Entra ID ``credential`` (with ``resource_id`` on the global endpoint). The async client is
    created on first use, in the running event loop; :meth:`aclose` closes it (and the
    credential when ``close_credential``).
    """

    def __init__(
        self,
        endpoint: str = GLOBAL_ENDPOINT,
        *,
        key: SecretStr | str | None = None,
        credential: AsyncTokenCredential | None = None,
        region: str | None = None,
        resource_id: str | None = None,
        timeout: float = 30.0,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        close_credential: bool = False,
        detect_target: str = "en",
        detect_sample_chars: int = 200,
    ) -> None:
        self._key = as_secret(key)
        if (self._key is None) == (credential is None):
            raise ValueError("pass exactly one of key= or credential=")
        self.endpoint = endpoint.rstrip("/")
        self._credential = credential
        self._region = region
        self._resource_id = resource_id
        self._timeout = timeout
        self._max_retry_after = max_retry_after
        self._close_credential = close_credential
        self._detect_target = detect_target
        self._detect_sample_chars = detect_sample_chars
        self._client: TextTranslationClient | None = None

    def deployment_parts(self) -> dict[str, object]:
        """Where calls go (the throttle's bucket; part of the cache key); no secret."""
        return {"endpoint": self.endpoint, "region": self._region, "resource": self._resource_id}

    def output_parts(self) -> dict[str, object]:
        """What changes a translation besides its input (part of the cache key)."""
        return {"api_version": API_VERSION, "detect_target": self._detect_target,
                "detect_sample_chars": self._detect_sample_chars}

    def __repr__(self) -> str:
        return (
            f"AzureTranslator(endpoint={self.endpoint!r}, region={self._region!r}, "
            f"auth={auth_kind(self._key, self._credential)!r})"
        )

    def _get_client(self) -> TextTranslationClient:
        # creating the client is synchronous, so no lock: one coroutine at a time gets here
        if self._client is None:
            self._client = self._create_client()
        return self._client

    def _create_client(self) -> TextTranslationClient:
        try:
            from azure.ai.translation.text.aio import TextTranslationClient
            from azure.core.credentials import AzureKeyCredential
        except ImportError as exc:
            raise UnsupportedError(
                "Azure Translator needs the 'azure' extra: pip install 'ai-apps[azure]'",
                provider=PROVIDER_NAME,
            ) from exc
        credential: Any = (
            AzureKeyCredential(self._key.get_secret_value()) if self._key is not None else self._credential
        )
        return TextTranslationClient(
            endpoint=self.endpoint,
            credential=credential,
            region=self._region,
            resource_id=self._resource_id if self._key is None else None,
            retry_total=0,
            connection_timeout=self._timeout,
            read_timeout=self._timeout,
        )

    def _call_options(self) -> dict[str, Any]:
        # azure-core refuses bearer tokens over http; allowed for loopback fakes only
        if self._credential is not None and is_loopback_http(self.endpoint):
            return {"enforce_https": False}
        return {}

    async def translate(
        self, text: str, to_language: str, from_language: str | None = None
    ) -> Translation:
        if not text.strip():
            raise PermanentError("the text to translate is empty", provider=PROVIDER_NAME)
        if from_language is not None and primary_language(from_language) == primary_language(to_language):
            return Translation(text, from_language, to_language, PROVIDER)
        client = self._get_client()
        with mapped_errors(
            PROVIDER_NAME, secrets=secret_values(self._key), max_retry_after=self._max_retry_after
        ):
            items = await client.translate(
                body=[text], to_language=[to_language], from_language=from_language,
                **self._call_options(),
            )
        if not items or not items[0].translations:
            raise PermanentError("Azure Translator returned no translation", provider=PROVIDER_NAME)
        item = items[0]
        result = item.translations[0]
        source = from_language
        if source is None:
            if item.detected_language is None:
                raise PermanentError(
                    "Azure Translator did not report the detected language", provider=PROVIDER_NAME
                )
            source = primary_language(item.detected_language.language)
        return Translation(
            text=result.text,
            from_language=source,
            to_language=to_language,
            provider=PROVIDER,
            detected=from_language is None,
            usage=Usage(characters=result.source_characters or len(text)),
        )

    async def detect(self, text: str) -> Detection:
        """The language of ``text``, from a translation of its first characters (billed)."""
        sample = text.strip()[: self._detect_sample_chars]
        if not sample:
            raise PermanentError("the text to detect is empty", provider=PROVIDER_NAME)
        client = self._get_client()
        with mapped_errors(
            PROVIDER_NAME, secrets=secret_values(self._key), max_retry_after=self._max_retry_after
        ):
            items = await client.translate(
                body=[sample], to_language=[self._detect_target], **self._call_options()
            )
        detected = items[0].detected_language if items else None
        if detected is None:
            raise PermanentError(
                "Azure Translator did not report the detected language", provider=PROVIDER_NAME
            )
        characters = items[0].translations[0].source_characters if items[0].translations else None
        return Detection(
            language=primary_language(detected.language),
            confidence=min(max(float(detected.score), 0.0), 1.0),
            provider=PROVIDER,
            usage=Usage(characters=characters or len(sample)),
        )

    async def supported_languages(self) -> set[str]:
        """Translation languages the service offers (``GET /languages``: no key needed, free)."""
        client = self._get_client()
        with mapped_errors(PROVIDER_NAME, secrets=secret_values(self._key)):
            result = await client.get_supported_languages(scope="translation")
        return set(result.translation or {})

    async def check(self) -> str:
        """Reachability and key check for ``ai-apps providers check``, without translating:
        list the languages (free, no key), then send a request with an invalid target language,
        which the gateway authenticates and the service rejects with 400 before translating.
        Raises :class:`AuthError` when the key is refused."""
        languages = await self.supported_languages()
        client = self._get_client()
        try:
            with mapped_errors(
                PROVIDER_NAME, secrets=secret_values(self._key), max_retry_after=self._max_retry_after
            ):
                await client.translate(body=["a"], to_language=["xx-invalid"], **self._call_options())
        except PermanentError:  # 400 (the invalid language), after the key was accepted
            return (
                f"{len(languages)} languages; credentials accepted (probe: an invalid target "
                "language, rejected with 400 before any translation)"
            )
        return f"{len(languages)} languages; credentials accepted (the probe was translated: 1 character)"

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self._close_credential and self._credential is not None:
            await close_quietly(self._credential)
