"""service.provider_settings: environment variables, factories, clear configuration errors and
``check_providers`` against the fakes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.errors import UnsupportedError
from actors.providers.azure.speech import AzureSpeechSynthesizer
from actors.providers.azure.translation import AzureTranslator
from actors.providers.azure.vision import AzureImageAnalyzer
from actors.providers.local.knowledge import KnowledgeBase
from actors.providers.openai_compat import OpenAIResponder
from service.provider_settings import (
    AzureProviderSettings,
    AzureSpeechSettings,
    AzureTranslatorSettings,
    AzureVisionSettings,
    OpenAISettings,
    build_azure_provider,
    build_image_generator,
    build_openai_responder,
    check_providers,
)
from tests.azure.conftest import KEY, azure_settings
from tests.azure_fakes import FakeAzure, FakeSpeech

pytestmark = pytest.mark.azure


class MainSettings(BaseSettings):
    """How service.settings.Settings will hold the section (field ``azure``)."""

    model_config = SettingsConfigDict(env_prefix="AIAPPS_", env_nested_delimiter="__", extra="ignore")
    azure: AzureProviderSettings = AzureProviderSettings()


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "AIAPPS_AZURE__TRANSLATOR__KEY": "tk",
        "AIAPPS_AZURE__TRANSLATOR__REGION": "westeurope",
        "AIAPPS_AZURE__VISION__ENDPOINT": "https://v.cognitiveservices.azure.com",
        "AIAPPS_AZURE__VISION__KEY": "",  # empty: not set
        "AIAPPS_AZURE__VISION__USE_ENTRA_ID": "true",
        "AIAPPS_AZURE__SPEECH__REGION": "westeurope",
        "AIAPPS_AZURE__SPEECH__KEY": "sk",
        "AIAPPS_AZURE__SPEECH__VOICES": '{"es": "es-MX-DaliaNeural"}',
        "AIAPPS_AZURE__OPENAI__ENDPOINT": "https://o.openai.azure.com",
        "AIAPPS_AZURE__OPENAI__API_KEY": "openai-secret-value",
        "AIAPPS_AZURE__OPENAI__DEPLOYMENT": "gpt-4o-mini",
        "AIAPPS_AZURE__IMAGES__DEPLOYMENT": "dall-e-3",
        "AIAPPS_AZURE__MAX_RETRY_AFTER": "15",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = MainSettings().azure
    assert cfg.translator.key is not None
    assert cfg.translator.key.get_secret_value() == "tk"
    assert cfg.translator.region == "westeurope"
    assert cfg.vision.key is None
    assert cfg.vision.use_entra_id
    assert cfg.speech.voices == {"es": "es-MX-DaliaNeural"}
    assert cfg.openai.deployment == "gpt-4o-mini"
    assert cfg.images.deployment == "dall-e-3"
    assert cfg.max_retry_after == 15
    assert "openai-secret-value" not in repr(cfg)


async def test_builds_every_capability(fake: FakeAzure, tts: FakeSpeech, kb: KnowledgeBase) -> None:
    cfg = azure_settings(fake, tts)
    built = {s: build_azure_provider(s, cfg, kb) for s in ("language", "translation", "vision",
                                                             "speech", "responder")}
    try:
        assert isinstance(built["language"], AzureTranslator)
        assert isinstance(built["translation"], AzureTranslator)
        assert isinstance(built["vision"], AzureImageAnalyzer)
        assert isinstance(built["speech"], AzureSpeechSynthesizer)
        assert isinstance(built["responder"], OpenAIResponder)
        assert built["responder"].provider.name == "azure-openai"
        generator = build_image_generator(cfg)  # endpoint and key from the OPENAI section
        assert generator.connection.url == fake.url
        assert generator.model == "dall-e-3"
        with pytest.raises(UnsupportedError, match="no provider for 'images'"):
            build_azure_provider("images", cfg, kb)
    finally:
        for provider in built.values():
            await provider.aclose()  # type: ignore[attr-defined]


def test_openai_family_uses_base_url(kb: KnowledgeBase) -> None:
    cfg = AzureProviderSettings(openai=OpenAISettings(
        kind="openai", base_url="http://localhost:11434/v1", model="llama3.1:8b"
    ))
    responder = build_openai_responder(cfg, kb)
    assert responder.provider.name == "openai"
    assert responder.connection.url == "http://localhost:11434/v1"


@pytest.mark.parametrize(
    ("service", "cfg", "variable"),
    [
        ("translation", AzureProviderSettings(), "AIAPPS_AZURE__TRANSLATOR__KEY"),
        ("translation", AzureProviderSettings(translator=AzureTranslatorSettings(use_entra_id=True)),
         "AIAPPS_AZURE__TRANSLATOR__RESOURCE_ID"),
        ("vision", AzureProviderSettings(), "AIAPPS_AZURE__VISION__ENDPOINT"),
        ("vision", AzureProviderSettings(vision=AzureVisionSettings(endpoint="https://v")),
         "AIAPPS_AZURE__VISION__KEY"),
        ("speech", AzureProviderSettings(), "AIAPPS_AZURE__SPEECH__REGION"),
        ("speech", AzureProviderSettings(speech=AzureSpeechSettings(region="westeurope", use_entra_id=True)),
         "AIAPPS_AZURE__SPEECH__ENDPOINT"),
        ("responder", AzureProviderSettings(), "AIAPPS_AZURE__OPENAI__DEPLOYMENT"),
        ("responder", AzureProviderSettings(openai=OpenAISettings(deployment="d")),
         "AIAPPS_AZURE__OPENAI__ENDPOINT"),
        ("responder", AzureProviderSettings(openai=OpenAISettings(deployment="d", endpoint="https://o")),
         "AIAPPS_AZURE__OPENAI__API_KEY"),
    ],
)
def test_missing_setting_names_the_variable(
    service: str, cfg: AzureProviderSettings, variable: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedError, match=variable):
        build_azure_provider(service, cfg, tmp_path)


async def test_entra_id_builds_default_azure_credential(fake: FakeAzure) -> None:
    """No network is touched until a token is asked for; the credential is closed with the
    provider."""
    from azure.identity.aio import DefaultAzureCredential

    cfg = AzureProviderSettings(vision=AzureVisionSettings(endpoint=fake.url, use_entra_id=True))
    analyzer = build_azure_provider("vision", cfg, Path("."))
    assert isinstance(analyzer, AzureImageAnalyzer)
    assert isinstance(analyzer._credential, DefaultAzureCredential)
    assert "entra-id" in repr(analyzer)
    await analyzer.aclose()


async def test_entra_id_for_azure_openai_uses_a_token_provider(kb: KnowledgeBase) -> None:
    from azure.identity.aio import DefaultAzureCredential

    cfg = AzureProviderSettings(openai=OpenAISettings(
        endpoint="https://o.openai.azure.com", deployment="gpt-4o-mini", use_entra_id=True
    ))
    responder = build_openai_responder(cfg, kb)
    assert responder.connection.api_key is None
    assert callable(responder.connection.token_provider)
    assert isinstance(responder.connection.credential, DefaultAzureCredential)
    assert "entra-id" in repr(responder)
    await responder.aclose()


class TestCheckProviders:
    async def test_all_answer_and_authenticate(self, fake: FakeAzure, tts: FakeSpeech) -> None:
        cfg = azure_settings(fake, tts)
        cfg.speech.voices_list_url = tts.voices_list_url
        reports = {r["capability"]: r for r in await check_providers(cfg)}
        assert set(reports) == {"translation", "vision", "speech", "responder", "images"}
        for report in reports.values():
            assert report["reachable"], report
            assert report["authenticated"] is True, report
        # nothing billable was done: no translation, no analysis, no completion, no image
        assert {r.route for r in fake.requests} == {"languages", "translate", "analyze", "models"}
        probe = fake.received("translate")[0].json()
        assert probe["inputs"][0]["targets"] == [{"language": "xx-invalid"}]
        assert "rejected with 400" in reports["translation"]["detail"]
        assert "too small" in reports["vision"]["detail"]
        assert tts.voice_list_requests[0]["Ocp-Apim-Subscription-Key"] == KEY
        assert tts.sessions == []

    async def test_wrong_key_is_reported_not_raised(self, fake: FakeAzure, tts: FakeSpeech) -> None:
        fake.key = "another-key"
        tts.key = "another-key"
        cfg = azure_settings(fake, tts)
        cfg.speech.voices_list_url = tts.voices_list_url
        for report in await check_providers(cfg):
            assert report["reachable"], report
            assert report["authenticated"] is False, report
            assert KEY not in report["detail"]

    async def test_unreachable(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        cfg = AzureProviderSettings(
            translator=AzureTranslatorSettings(endpoint=url, key=KEY),
            openai=OpenAISettings(endpoint=url, api_key=KEY, deployment="d"),
        )
        reports = await check_providers(cfg)
        assert [r["capability"] for r in reports] == ["translation", "responder"]
        for report in reports:
            assert not report["reachable"]
            assert report["authenticated"] is None
            assert "connection" in report["detail"]

    async def test_nothing_configured(self) -> None:
        assert await check_providers(AzureProviderSettings()) == []
