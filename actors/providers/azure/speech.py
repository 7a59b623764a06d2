"""Azure AI Speech text-to-speech through ``azure-cognitiveservices-speech`` (the native SDK).

The SDK speaks a websocket protocol (USP) and its calls block on native futures, so each
synthesis runs in ``asyncio.to_thread``. It never raises for service errors: the result's
``reason`` is ``Canceled`` and ``cancellation_details.error_code`` says why, which is mapped to
our errors here (``TooManyRequests`` → throttled, ``AuthenticationFailure``/``Forbidden`` →
auth, ``BadRequest`` → permanent, connection/timeouts/service errors → transient). The SDK
gives no Retry-After, so a throttled error carries ``retry_after=None`` and the saga's backoff
applies. The SDK's own retry of a synthesis that failed before any audio (on by default: a 429,
5xx or dropped connection costs a second connection) is turned off with the
``SpeechSynthesis_MaxRetryTimes=0`` property.

SSML: one ``<voice>`` per call, the voice chosen per language (:data:`DEFAULT_VOICES`, or the
``voices`` map) unless the request names one, with an optional ``mstts:express-as`` style.
Output: 16 kHz 16-bit mono PCM in a RIFF/WAV container; ``audio_config=None`` so nothing plays.
Usage: characters of text (what TTS is priced by) and audio seconds.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydantic import SecretStr

from actors.capabilities import Audio
from actors.errors import (
    AuthError,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientError,
    UnsupportedError,
)
from actors.providers.azure._auth import COGNITIVE_SERVICES_SCOPE, as_secret, auth_kind, secret_values
from actors.providers.azure.errors import mapped_errors, scrub
from events.common import ProviderInfo, Usage

PROVIDER_NAME = "azure-speech"
PROVIDER = ProviderInfo(name="azure", model="neural-tts")

DEFAULT_VOICES: dict[str, str] = {
    "en": "en-US-JennyNeural",
    "es": "es-ES-ElviraNeural",
    "fr": "fr-FR-DeniseNeural",
    "de": "de-DE-KatjaNeural",
    "it": "it-IT-ElsaNeural",
    "pt": "pt-PT-RaquelNeural",
    "nl": "nl-NL-ColetteNeural",
    "ca": "ca-ES-JoanaNeural",
}
"""Neural voices by language; ``AIAPPS_AZURE__SPEECH__VOICES`` overrides entries."""

MAX_TEXT_CHARS = 5000
_STYLE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_LOCALE = re.compile(r"^([a-z]{2,3}-[A-Z][A-Za-z]{1,3})-")


def _speechsdk() -> Any:
    try:
        # imported by name: the SDK ships no type information (no py.typed), so it is Any
        return importlib.import_module("azure.cognitiveservices.speech")
    except ImportError as exc:
        raise UnsupportedError(
            "Azure Speech needs the 'azure' extra: pip install 'ai-apps[azure]'", provider=PROVIDER_NAME
        ) from exc


def build_ssml(text: str, voice: str, style: str | None = None) -> str:
    """SSML speaking ``text`` (escaped) with ``voice``, optionally in an express-as ``style``."""
    match = _LOCALE.match(voice)
    lang = match.group(1) if match else "en-US"
    body = escape(text)
    if style:
        body = f"<mstts:express-as style={quoteattr(style)}>{body}</mstts:express-as>"
    return (
        '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" '
        f'xmlns:mstts="https://www.w3.org/2001/mstts" xml:lang={quoteattr(lang)}>'
        f"<voice name={quoteattr(voice)}>{body}</voice></speak>"
    )


class AzureSpeechSynthesizer:
    """``SpeechSynthesizer`` on Azure AI Speech.

    Connect by ``region`` (``wss://{region}.tts.speech.microsoft.com/…``) or ``endpoint`` (a
    ``wss://`` or, for loopback fakes, ``ws://`` URL); authenticate with ``key`` or an Entra ID
    ``credential`` (a *sync* ``azure.core.credentials.TokenCredential``; the SDK calls it from its
    own threads, and it needs a custom-domain ``endpoint``).
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint: str | None = None,
        key: SecretStr | str | None = None,
        credential: Any = None,
        voices: Mapping[str, str] | None = None,
        close_credential: bool = False,
    ) -> None:
        self._key = as_secret(key)
        if (self._key is None) == (credential is None):
            raise ValueError("pass exactly one of key= or credential=")
        if (region is None) == (endpoint is None):
            raise ValueError("pass exactly one of region= or endpoint=")
        if credential is not None and endpoint is None:
            raise ValueError("Entra ID authentication for Speech needs a custom-domain endpoint=")
        self.region = region
        self.endpoint = endpoint
        self._credential = credential
        self._close_credential = close_credential
        self.voices = {**DEFAULT_VOICES, **(voices or {})}
        self._config: Any = None

    def deployment_parts(self) -> dict[str, object]:
        """Where calls go (the throttle's bucket; part of the cache key); no secret."""
        return {"region": self.region, "endpoint": self.endpoint}

    def output_parts(self) -> dict[str, object]:
        """What changes the audio besides its text (part of the cache key): the voice map
        (a language's voice changed, its cached audio is not served) and the format."""
        return {"voices": dict(sorted(self.voices.items())), "format": "riff-16khz-16bit-mono"}

    def __repr__(self) -> str:
        where = f"region={self.region!r}" if self.region else f"endpoint={self.endpoint!r}"
        return f"AzureSpeechSynthesizer({where}, auth={auth_kind(self._key, self._credential)!r})"

    def voice_for(self, language: str) -> str:
        voice = self.voices.get(language) or self.voices.get(language.split("-", 1)[0].lower())
        if voice is None:
            raise UnsupportedError(
                f"no Azure voice configured for language {language!r}; set "
                f"AIAPPS_AZURE__SPEECH__VOICES (known: {sorted(self.voices)})",
                provider=PROVIDER_NAME,
            )
        return voice

    def _speech_config(self) -> Any:
        if self._config is None:
            sdk = _speechsdk()
            kwargs: dict[str, Any] = {}
            if self.endpoint is not None:
                kwargs["endpoint"] = self.endpoint
            else:
                kwargs["region"] = self.region
            if self._key is not None:
                kwargs["subscription"] = self._key.get_secret_value()
            else:
                kwargs["token_credential"] = self._credential
            config = sdk.SpeechConfig(**kwargs)
            config.set_speech_synthesis_output_format(
                sdk.SpeechSynthesisOutputFormat.Riff16Khz16BitMonoPcm
            )
            # The SDK retries a synthesis that failed before any audio arrived (429, 5xx,
            # dropped connection: measured, 2 connections per call); the saga owns retries.
            config.set_property_by_name("SpeechSynthesis_MaxRetryTimes", "0")
            self._config = config
        return self._config

    async def synthesize(
        self, text: str, language: str, voice: str | None = None, style: str | None = None
    ) -> Audio:
        if not text.strip():
            raise PermanentError("the text to speak is empty", provider=PROVIDER_NAME)
        if len(text) > MAX_TEXT_CHARS:
            raise PermanentError(
                f"the text is {len(text)} characters; one synthesis takes at most {MAX_TEXT_CHARS}",
                provider=PROVIDER_NAME,
            )
        if style is not None and not _STYLE.match(style):
            raise PermanentError(f"invalid speaking style {style!r}", provider=PROVIDER_NAME)
        chosen = voice or self.voice_for(language)
        ssml = build_ssml(text, chosen, style)
        config = self._speech_config()
        data, seconds = await asyncio.to_thread(self._speak, config, ssml)
        return Audio(
            data=data, media_type="audio/wav", format="wav", duration_seconds=seconds, voice=chosen,
            provider=PROVIDER, usage=Usage(characters=len(text), audio_seconds=round(seconds, 3)),
        )

    def _speak(self, config: Any, ssml: str) -> tuple[bytes, float]:
        sdk = _speechsdk()
        synthesizer = sdk.SpeechSynthesizer(speech_config=config, audio_config=None)
        result = synthesizer.speak_ssml_async(ssml).get()
        if result.reason == sdk.ResultReason.SynthesizingAudioCompleted:
            return bytes(result.audio_data), result.audio_duration.total_seconds()
        if result.reason == sdk.ResultReason.Canceled:
            details = result.cancellation_details
            raise self._error(details.error_code.name, details.error_details or "")
        raise TransientError(f"Azure Speech ended with {result.reason}", provider=PROVIDER_NAME)

    def _error(self, code: str, details: str) -> ProviderError:
        message = f"Azure Speech canceled the synthesis ({code}): {scrub(details, secret_values(self._key))}"
        if code == "TooManyRequests":
            return ThrottledError(message, retry_after=None, provider=PROVIDER_NAME)
        if code in ("AuthenticationFailure", "Forbidden"):
            return AuthError(message, provider=PROVIDER_NAME)
        if code == "BadRequest":
            return PermanentError(message, provider=PROVIDER_NAME)
        # ConnectionFailure, ServiceTimeout, ServiceError, ServiceUnavailable, RuntimeError, ...
        return TransientError(message, provider=PROVIDER_NAME)

    def voices_list_url(self) -> str:
        """The REST voices list of this resource (``providers check`` calls it: free)."""
        if self.region is not None:
            return f"https://{self.region}.tts.speech.microsoft.com/cognitiveservices/voices/list"
        assert self.endpoint is not None
        from urllib.parse import urlsplit

        parts = urlsplit(self.endpoint)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        return f"{scheme}://{parts.netloc}/cognitiveservices/voices/list"

    async def check(self, url: str | None = None) -> str:
        """Reachability and key check for ``ai-apps providers check``: the REST voices list
        (free). Raises :class:`AuthError` when the key is refused."""
        import aiohttp

        headers: dict[str, str] = {}
        if self._key is not None:
            headers["Ocp-Apim-Subscription-Key"] = self._key.get_secret_value()
        else:
            token = await asyncio.to_thread(self._credential.get_token, COGNITIVE_SERVICES_SCOPE)
            headers["Authorization"] = f"Bearer {token.token}"
        with mapped_errors(PROVIDER_NAME, secrets=secret_values(self._key)):
            async with aiohttp.ClientSession() as session, session.get(
                url or self.voices_list_url(), headers=headers, raise_for_status=True
            ) as response:
                voices = await response.json()
        names = {v.get("ShortName") for v in voices if isinstance(v, dict)}
        missing = sorted(set(self.voices.values()) - names)
        detail = f"{len(names)} voices; credentials accepted (voices list: free)"
        if missing:
            detail += f"; configured voices not offered: {', '.join(missing)}"
        return detail

    async def aclose(self) -> None:
        self._config = None
        if self._close_credential and self._credential is not None:
            close = getattr(self._credential, "close", None)
            if close is not None:
                await asyncio.to_thread(close)
