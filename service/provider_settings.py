"""Configuration of the Azure and OpenAI-compatible providers, and the factories that build them.

These models become the ``azure`` field of :class:`service.settings.Settings`, so every value
comes from ``AIAPPS_AZURE__<SECTION>__<FIELD>`` environment variables (or ``.env``)::

    AIAPPS_AZURE__TRANSLATOR__KEY=…            AIAPPS_AZURE__TRANSLATOR__REGION=westeurope
    AIAPPS_AZURE__VISION__ENDPOINT=https://<name>.cognitiveservices.azure.com
    AIAPPS_AZURE__VISION__KEY=…
    AIAPPS_AZURE__SPEECH__REGION=westeurope    AIAPPS_AZURE__SPEECH__KEY=…
    AIAPPS_AZURE__SPEECH__VOICES='{"es": "es-MX-DaliaNeural"}'
    AIAPPS_AZURE__OPENAI__ENDPOINT=https://<name>.openai.azure.com
    AIAPPS_AZURE__OPENAI__API_KEY=…            AIAPPS_AZURE__OPENAI__DEPLOYMENT=gpt-4o-mini
    AIAPPS_AZURE__IMAGES__DEPLOYMENT=dall-e-3  (endpoint and key default to the OPENAI section's)

Instead of a key, ``…__USE_ENTRA_ID=true`` signs in with Microsoft Entra ID through
``azure-identity``'s ``DefaultAzureCredential`` (managed identity, workload identity, Azure CLI
login …). Keys are :class:`pydantic.SecretStr`: they print as ``**********``.

:func:`build_azure_provider` builds the provider of one capability for the family ``azure``,
:func:`build_openai_responder` the responder for the family ``openai`` (any OpenAI-compatible
endpoint), and :func:`check_providers` backs ``ai-apps providers check``. A missing setting
raises :class:`actors.errors.UnsupportedError` naming the variable to set.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

from actors.errors import AuthError, ProviderError, UnsupportedError
from actors.providers.azure._auth import COGNITIVE_SERVICES_SCOPE

if TYPE_CHECKING:
    from actors.providers.azure.speech import AzureSpeechSynthesizer
    from actors.providers.azure.translation import AzureTranslator
    from actors.providers.azure.vision import AzureImageAnalyzer
    from actors.providers.local.knowledge import KnowledgeBase
    from actors.providers.openai_compat import (
        OpenAICompatImageGenerator,
        OpenAIConnection,
        OpenAIResponder,
    )

ENV_PREFIX = "AIAPPS_AZURE__"
AZURE_SERVICES = ("language", "vision", "translation", "responder", "speech")
"""The capabilities the ``azure`` family serves (language detection is the Translator's)."""

_TRANSLATOR_GLOBAL = "https://api.cognitive.microsofttranslator.com"
_AZURE_OPENAI_API_VERSION = "2024-10-21"


def _env(section: str, field: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{field.upper()}"


class _Section(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # AIAPPS_AZURE__VISION__KEY= (empty) means "not set", not an empty key
        optional = info.field_name is not None and cls.model_fields[info.field_name].default is None
        return None if optional and isinstance(value, str) and not value.strip() else value


class AzureTranslatorSettings(_Section):
    """Azure AI Translator (``AIAPPS_AZURE__TRANSLATOR__*``); also detects languages."""

    endpoint: str = Field(
        default=_TRANSLATOR_GLOBAL,
        description="The global endpoint, or a resource's custom endpoint for Entra ID / private links.",
    )
    key: SecretStr | None = None
    region: str | None = Field(default=None, description="The resource's region (regional resources).")
    use_entra_id: bool = False
    resource_id: str | None = Field(
        default=None, description="Full resource ID: Entra ID on the global endpoint needs it."
    )
    detect_target: str = Field(
        default="en", description="Language detection translates a sample into this language."
    )

    @property
    def configured(self) -> bool:
        return self.key is not None or self.use_entra_id


class AzureVisionSettings(_Section):
    """Azure AI Vision Image Analysis (``AIAPPS_AZURE__VISION__*``)."""

    endpoint: str | None = Field(default=None, examples=["https://my-vision.cognitiveservices.azure.com"])
    key: SecretStr | None = None
    use_entra_id: bool = False
    language: str = "en"
    min_confidence: float = Field(default=0.5, ge=0, le=1)

    @property
    def configured(self) -> bool:
        return self.endpoint is not None


class AzureSpeechSettings(_Section):
    """Azure AI Speech text to speech (``AIAPPS_AZURE__SPEECH__*``): ``region`` or ``endpoint``."""

    region: str | None = Field(default=None, examples=["westeurope"])
    endpoint: str | None = Field(
        default=None, description="A wss:// endpoint (custom domain, needed for Entra ID)."
    )
    key: SecretStr | None = None
    use_entra_id: bool = False
    voices: dict[str, str] = Field(
        default_factory=dict, description="Voice per language, over the defaults (es → es-ES-ElviraNeural …)."
    )
    voices_list_url: str | None = Field(
        default=None, description="Override of the REST voices list `providers check` calls."
    )

    @property
    def configured(self) -> bool:
        return self.region is not None or self.endpoint is not None


class OpenAISettings(_Section):
    """Text generation (``AIAPPS_AZURE__OPENAI__*``): Azure OpenAI (``kind=azure``: endpoint,
    deployment, api_version) or an OpenAI-compatible server (``kind=openai``: base_url, model)."""

    kind: Literal["azure", "openai"] = "azure"
    endpoint: str | None = Field(default=None, examples=["https://my-aoai.openai.azure.com"])
    base_url: str | None = Field(default=None, examples=["http://localhost:11434/v1"])
    api_key: SecretStr | None = None
    use_entra_id: bool = False
    api_version: str = _AZURE_OPENAI_API_VERSION
    deployment: str | None = None
    model: str | None = None
    system_prompt: str | None = Field(default=None, description="Replaces the default system prompt.")
    temperature: float | None = Field(default=0.2, ge=0, le=2)
    max_output_tokens: int = Field(default=800, ge=1)
    token_limit_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    top_k: int = Field(default=3, ge=1, description="Articles retrieved as grounding.")
    min_score: float = Field(default=0.3, description="Cosine score an article needs to be used.")

    @property
    def configured(self) -> bool:
        return (self.endpoint if self.kind == "azure" else self.base_url) is not None


class ImageGenSettings(_Section):
    """Image generation (``AIAPPS_AZURE__IMAGES__*``). ``endpoint``, ``base_url``, ``api_key``,
    ``use_entra_id`` and ``api_version`` default to the ``OPENAI`` section's."""

    kind: Literal["azure", "openai"] | None = None
    endpoint: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    use_entra_id: bool | None = None
    api_version: str | None = None
    deployment: str | None = Field(default=None, examples=["dall-e-3", "gpt-image-1"])
    model: str | None = None
    size: str = "1024x1024"
    quality: str | None = None
    send_response_format: bool = Field(
        default=True, description="Send response_format=b64_json (DALL-E); false for gpt-image models."
    )

    @property
    def configured(self) -> bool:
        return self.deployment is not None or self.model is not None


class AzureProviderSettings(BaseModel):
    """Every Azure / OpenAI-compatible provider setting (``AIAPPS_AZURE__*``)."""

    translator: AzureTranslatorSettings = AzureTranslatorSettings()
    vision: AzureVisionSettings = AzureVisionSettings()
    speech: AzureSpeechSettings = AzureSpeechSettings()
    openai: OpenAISettings = OpenAISettings()
    images: ImageGenSettings = ImageGenSettings()
    timeout: float = Field(default=30.0, gt=0, description="Seconds per provider call.")
    max_retry_after: float = Field(
        default=60.0, ge=0, description="Cap on a server's Retry-After; longer waits are cut to this."
    )


# -- credentials ---------------------------------------------------------------------------------


def _key_or_entra(
    section: str, what: str, key: SecretStr | None, use_entra_id: bool, key_field: str = "key"
) -> SecretStr | None:
    """The key, or ``None`` when Entra ID is to be used; raises when neither or both."""
    if key is not None and use_entra_id:
        raise UnsupportedError(
            f"{what}: both {_env(section, key_field)} and {_env(section, 'use_entra_id')} are set; "
            "choose one", provider="azure",
        )
    if key is None and not use_entra_id:
        raise UnsupportedError(
            f"{what} needs credentials: set {_env(section, key_field)}, or "
            f"{_env(section, 'use_entra_id')}=true to sign in with Microsoft Entra ID",
            provider="azure",
        )
    return key


def _async_entra_credential() -> Any:
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:
        raise UnsupportedError(
            "Entra ID sign-in needs azure-identity: pip install 'ai-apps[azure]'", provider="azure"
        ) from exc
    return DefaultAzureCredential()


def _sync_entra_credential() -> Any:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise UnsupportedError(
            "Entra ID sign-in needs azure-identity: pip install 'ai-apps[azure]'", provider="azure"
        ) from exc
    return DefaultAzureCredential()


# -- factories -------------------------------------------------------------------------------------


def build_translator(cfg: AzureProviderSettings) -> AzureTranslator:
    from actors.providers.azure.translation import AzureTranslator

    t = cfg.translator
    key = _key_or_entra("translator", "Azure Translator", t.key, t.use_entra_id)
    if key is None and t.endpoint.rstrip("/") == _TRANSLATOR_GLOBAL and t.resource_id is None:
        raise UnsupportedError(
            f"Azure Translator with Entra ID on the global endpoint needs "
            f"{_env('translator', 'resource_id')} (or a custom {_env('translator', 'endpoint')})",
            provider="azure",
        )
    return AzureTranslator(
        t.endpoint, key=key, credential=None if key is not None else _async_entra_credential(),
        region=t.region, resource_id=t.resource_id, timeout=cfg.timeout,
        max_retry_after=cfg.max_retry_after, close_credential=key is None,
        detect_target=t.detect_target,
    )


def build_vision(cfg: AzureProviderSettings) -> AzureImageAnalyzer:
    from actors.providers.azure.vision import AzureImageAnalyzer

    v = cfg.vision
    if v.endpoint is None:
        raise UnsupportedError(
            f"Azure AI Vision needs an endpoint: set {_env('vision', 'endpoint')}", provider="azure"
        )
    key = _key_or_entra("vision", "Azure AI Vision", v.key, v.use_entra_id)
    return AzureImageAnalyzer(
        v.endpoint, key=key, credential=None if key is not None else _async_entra_credential(),
        language=v.language, min_confidence=v.min_confidence, timeout=cfg.timeout,
        max_retry_after=cfg.max_retry_after, close_credential=key is None,
    )


def build_speech(cfg: AzureProviderSettings) -> AzureSpeechSynthesizer:
    from actors.providers.azure.speech import AzureSpeechSynthesizer

    s = cfg.speech
    if s.region is None and s.endpoint is None:
        raise UnsupportedError(
            f"Azure Speech needs {_env('speech', 'region')} or {_env('speech', 'endpoint')}",
            provider="azure",
        )
    if s.region is not None and s.endpoint is not None:
        raise UnsupportedError(
            f"Azure Speech: set {_env('speech', 'region')} or {_env('speech', 'endpoint')}, not both",
            provider="azure",
        )
    key = _key_or_entra("speech", "Azure Speech", s.key, s.use_entra_id)
    if key is None and s.endpoint is None:
        raise UnsupportedError(
            f"Azure Speech with Entra ID needs a custom-domain {_env('speech', 'endpoint')}",
            provider="azure",
        )
    return AzureSpeechSynthesizer(
        region=s.region, endpoint=s.endpoint, key=key,
        credential=None if key is not None else _sync_entra_credential(),
        voices=s.voices, close_credential=key is None,
    )


def _connection(
    section: str,
    kind: Literal["azure", "openai"],
    url: str | None,
    api_key: SecretStr | None,
    use_entra_id: bool,
    api_version: str,
    cfg: AzureProviderSettings,
    timeout: float,
) -> OpenAIConnection:
    from actors.providers.openai_compat import OpenAIConnection

    if kind == "azure":
        if url is None:
            raise UnsupportedError(
                f"Azure OpenAI needs an endpoint: set {_env(section, 'endpoint')}", provider="azure"
            )
        key = _key_or_entra(section, "Azure OpenAI", api_key, use_entra_id, "api_key")
        token_provider = credential = None
        if key is None:
            credential = _async_entra_credential()  # raises a clear error without azure-identity
            from azure.identity.aio import get_bearer_token_provider

            token_provider = get_bearer_token_provider(credential, COGNITIVE_SERVICES_SCOPE)
        return OpenAIConnection(
            "azure", url, key, api_version, token_provider, credential, timeout, cfg.max_retry_after
        )
    if url is None:
        raise UnsupportedError(
            f"an OpenAI-compatible endpoint needs {_env(section, 'base_url')} "
            "(e.g. https://api.openai.com/v1 or http://localhost:11434/v1)",
            provider="openai",
        )
    return OpenAIConnection("openai", url, api_key, timeout=timeout, max_retry_after=cfg.max_retry_after)


def build_openai_responder(
    cfg: AzureProviderSettings,
    knowledge_base: Path | KnowledgeBase,
    *,
    kind: Literal["azure", "openai"] | None = None,
) -> OpenAIResponder:
    """The LLM responder: Azure OpenAI for ``kind="azure"`` (what the ``azure`` family uses),
    an OpenAI-compatible ``base_url`` for ``kind="openai"``; ``None`` takes
    ``AIAPPS_AZURE__OPENAI__KIND``."""
    from actors.providers.openai_compat import DEFAULT_SYSTEM_PROMPT, OpenAIResponder

    o = cfg.openai
    kind = kind or o.kind
    url = o.endpoint if kind == "azure" else o.base_url
    model = o.deployment if kind == "azure" else o.model
    if model is None:
        field = "deployment" if kind == "azure" else "model"
        raise UnsupportedError(
            f"the responder needs {_env('openai', field)}", provider="azure" if kind == "azure" else "openai"
        )
    connection = _connection(
        "openai", kind, url, o.api_key, o.use_entra_id, o.api_version, cfg, max(cfg.timeout, 60.0)
    )
    return OpenAIResponder(
        connection, model, knowledge_base,
        system_prompt=o.system_prompt or DEFAULT_SYSTEM_PROMPT, top_k=o.top_k, min_score=o.min_score,
        temperature=o.temperature, max_output_tokens=o.max_output_tokens,
        token_limit_param=o.token_limit_param,
    )


def build_image_generator(cfg: AzureProviderSettings) -> OpenAICompatImageGenerator:
    """The image generator of ``AIAPPS_AZURE__IMAGES__*`` (falling back to ``…__OPENAI__*``
    for the endpoint, key and API version)."""
    from actors.providers.openai_compat import OpenAICompatImageGenerator

    i, o = cfg.images, cfg.openai
    kind = i.kind or o.kind
    model = i.deployment if kind == "azure" else i.model
    if model is None:
        field = "deployment" if kind == "azure" else "model"
        raise UnsupportedError(f"image generation needs {_env('images', field)}", provider="azure")
    url = (i.endpoint or o.endpoint) if kind == "azure" else (i.base_url or o.base_url)
    use_entra = i.use_entra_id if i.use_entra_id is not None else (o.use_entra_id and i.api_key is None)
    api_key = i.api_key or (o.api_key if not use_entra else None)
    connection = _connection(
        "images", kind, url, api_key, use_entra, i.api_version or o.api_version, cfg,
        max(cfg.timeout, 120.0),
    )
    return OpenAICompatImageGenerator(
        connection, model, size=i.size, quality=i.quality, send_response_format=i.send_response_format
    )


def build_azure_provider(
    service: str, cfg: AzureProviderSettings, knowledge_base: Path | KnowledgeBase
) -> object:
    """The ``azure`` family's provider of one capability: ``language`` and ``translation``
    (Translator), ``vision`` (Image Analysis), ``speech`` (Speech), ``responder`` (Azure
    OpenAI, grounded in ``knowledge_base``). Providers have ``aclose()``; close them at
    shutdown."""
    if service in ("language", "translation"):
        return build_translator(cfg)
    if service == "vision":
        return build_vision(cfg)
    if service == "speech":
        return build_speech(cfg)
    if service == "responder":
        return build_openai_responder(cfg, knowledge_base, kind="azure")
    raise UnsupportedError(
        f"the azure family has no provider for {service!r}; it serves {', '.join(AZURE_SERVICES)}",
        provider="azure",
    )


# -- ai-apps providers check -------------------------------------------------------------------------


async def _probe(capability: str, endpoint: str, build: Any, timeout: float) -> dict[str, Any]:
    """Build the provider, run its ``check()``, close it, and report."""
    report: dict[str, Any] = {
        "capability": capability, "provider": None, "endpoint": endpoint,
        "reachable": False, "authenticated": None, "detail": "",
    }
    started = time.perf_counter()
    provider = None
    try:
        provider = build()
        report["provider"] = _provider_name(provider)
        async with asyncio.timeout(timeout):
            detail = await provider.check()
        report.update(reachable=True, authenticated=True, detail=detail)
    except AuthError as exc:
        report.update(reachable=True, authenticated=False, detail=str(exc))
    except ProviderError as exc:  # not configured, unreachable, or an unexpected answer
        report.update(detail=str(exc))
    except TimeoutError:
        report.update(detail=f"no answer within {timeout:g} s")
    except Exception as exc:  # a bug, not the service: report it rather than lose the others
        report.update(detail=f"check failed: {type(exc).__name__}")
    finally:
        if provider is not None:
            await provider.aclose()
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _provider_name(provider: Any) -> str:
    connection = getattr(provider, "connection", None)
    if connection is not None:
        return str(connection.provider_name)
    return str(getattr(importlib.import_module(type(provider).__module__), "PROVIDER_NAME", "azure"))


async def check_providers(cfg: AzureProviderSettings) -> list[dict[str, Any]]:
    """For each configured capability: does its endpoint answer, are the credentials accepted.

    Each report is ``{"capability", "provider", "endpoint", "reachable", "authenticated",
    "detail", "seconds"}``; ``authenticated`` is ``None`` when the endpoint could not be asked.
    Nothing is billed where the API allows it:

    * Translator: ``GET /languages`` (free, no key), then a translation to an invalid target
      language, which the gateway authenticates and the service rejects with 400;
    * Vision: a 1x1 image, authenticated and then rejected as too small (400);
    * Speech: the REST voices list (free);
    * (Azure) OpenAI, chat and images: the models list (free).

    Azure bills successful calls only, so the two rejected probes cost nothing; they are the
    only way to have those services check a key.
    """
    from actors.providers.openai_compat import OpenAIEndpoint

    checks = []
    if cfg.translator.configured:
        checks.append(_probe("translation", cfg.translator.endpoint, lambda: build_translator(cfg),
                             cfg.timeout))
    if cfg.vision.configured:
        checks.append(_probe("vision", cfg.vision.endpoint or "", lambda: build_vision(cfg), cfg.timeout))
    if cfg.speech.configured:
        speech = cfg.speech

        class _Speech:
            """The synthesizer, checking the voices-list URL of the settings if overridden."""

            def __init__(self) -> None:
                self.inner = build_speech(cfg)

            async def check(self) -> str:
                return await self.inner.check(speech.voices_list_url)

            async def aclose(self) -> None:
                await self.inner.aclose()

        checks.append(_probe("speech", speech.endpoint or speech.region or "", _Speech, cfg.timeout))
    if cfg.openai.configured:
        o = cfg.openai
        url = (o.endpoint if o.kind == "azure" else o.base_url) or ""
        checks.append(_probe(
            "responder", url,
            lambda: OpenAIEndpoint(_connection(
                "openai", o.kind, url, o.api_key, o.use_entra_id, o.api_version, cfg, cfg.timeout
            )),
            cfg.timeout,
        ))
    if cfg.images.configured:
        checks.append(_probe(
            "images", cfg.images.endpoint or cfg.images.base_url or cfg.openai.endpoint or "",
            lambda: OpenAIEndpoint(build_image_generator(cfg).connection), cfg.timeout,
        ))
    return list(await asyncio.gather(*checks))
