"""Cache keys name everything that changes a provider's output (endpoint, resource, API
version, voice map, language, confidence floor, knowledge base, prompt options), never a
secret; throttle buckets name the deployment called."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import SecretStr

from actors.cache import (
    CachedSpeechSynthesizer,
    ResultCache,
    StoreCacheBackend,
    deployment_identity,
    provider_identity,
)
from actors.capabilities import Audio
from actors.providers.azure.speech import AzureSpeechSynthesizer
from actors.providers.azure.translation import AzureTranslator
from actors.providers.azure.vision import AzureImageAnalyzer
from actors.providers.local.responder import LocalResponder
from actors.providers.openai_compat import OpenAIConnection, OpenAIResponder
from actors.throttle import LocalRateLimiter, Quota, ThrottledProvider
from events.common import ProviderInfo, Usage
from saga.memory_store import InMemorySagaStore

KEY = "secret-key-0123456789"


def speech(**voices: str) -> AzureSpeechSynthesizer:
    return AzureSpeechSynthesizer(region="westeurope", key=KEY, voices=voices or None)


class TestAzureIdentities:
    def test_the_voice_map_is_part_of_the_speech_key(self) -> None:
        """Another voice for Spanish is another key; the same settings, the same key."""
        elvira = speech(es="es-ES-ElviraNeural")
        alvaro = speech(es="es-ES-AlvaroNeural")
        assert provider_identity(elvira) == provider_identity(speech(es="es-ES-ElviraNeural"))
        assert provider_identity(elvira) != provider_identity(alvaro)
        # the deployment called is the same: one throttle bucket
        assert deployment_identity(elvira) == deployment_identity(alvaro)
        other_region = AzureSpeechSynthesizer(region="eastus", key=KEY)
        assert deployment_identity(other_region) != deployment_identity(speech())

    def test_the_translator_endpoint_and_resource_are_part_of_the_key(self) -> None:
        one = AzureTranslator(key=KEY, region="westeurope")
        custom = AzureTranslator("https://mine.cognitiveservices.azure.com", key=KEY,
                                 region="westeurope")
        other_resource = AzureTranslator(key=KEY, region="westeurope", resource_id="/sub/x/rg/y")
        keys = {provider_identity(p) for p in (one, custom, other_resource)}
        assert len(keys) == 3
        assert provider_identity(one) == provider_identity(AzureTranslator(key="other-key",
                                                                           region="westeurope"))

    def test_vision_settings_are_part_of_the_key(self) -> None:
        def vision(**kwargs: object) -> AzureImageAnalyzer:
            return AzureImageAnalyzer("https://v.cognitiveservices.azure.com", key=KEY,
                                      **kwargs)  # type: ignore[arg-type]

        base = provider_identity(vision())
        assert base == provider_identity(vision())
        assert base != provider_identity(vision(language="es"))
        assert base != provider_identity(vision(min_confidence=0.7))
        assert base != provider_identity(vision(gender_neutral_caption=False))
        assert base != provider_identity(AzureImageAnalyzer(
            "https://w.cognitiveservices.azure.com", key=KEY))

    def test_no_secret_is_described(self) -> None:
        """The parts hashed into keys and bucket names hold no key."""
        for provider in (speech(), AzureTranslator(key=KEY, region="x"),
                         AzureImageAnalyzer("https://v.example", key=KEY)):
            parts = json.dumps([provider.deployment_parts(), provider.output_parts()])
            assert KEY not in parts

    def test_a_throttle_changes_neither_identity(self) -> None:
        provider = speech(es="es-ES-ElviraNeural")
        throttled = ThrottledProvider(provider, LocalRateLimiter(Quota()), deployment="d")
        assert provider_identity(throttled) == provider_identity(provider)
        assert deployment_identity(throttled) == deployment_identity(provider)


def knowledge_base(folder: Path, answer: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "reset.md").write_text(
        f"---\nid: KB-1\ntitle: Reset\ntags: [password]\n---\n## Answer\n{answer}\n"
    )
    return folder


class TestResponderIdentities:
    def test_the_knowledge_base_content_is_part_of_the_key(self, tmp_path: Path) -> None:
        """Editing an article changes the responder's identity (no stale cached answers)."""
        folder = knowledge_base(tmp_path / "kb", "Use the reset link.")
        before = provider_identity(LocalResponder(folder))
        assert before == provider_identity(LocalResponder(folder))
        knowledge_base(folder, "Call support.")
        assert provider_identity(LocalResponder(folder)) != before
        assert provider_identity(LocalResponder(folder, top_k=5)) != provider_identity(
            LocalResponder(folder))

    def test_prompt_options_are_part_of_the_key(self, tmp_path: Path) -> None:
        folder = knowledge_base(tmp_path / "kb", "Use the reset link.")
        connection = OpenAIConnection("azure", "https://r.openai.azure.com", SecretStr(KEY),
                                      "2024-10-21")

        def responder(**kwargs: object) -> OpenAIResponder:
            return OpenAIResponder(connection, "gpt-4o", folder, **kwargs)  # type: ignore[arg-type]

        base = provider_identity(responder())
        assert base == provider_identity(responder())
        assert base != provider_identity(responder(system_prompt="Be terse."))
        assert base != provider_identity(responder(temperature=0.9))
        assert base != provider_identity(OpenAIResponder(connection, "gpt-4o-mini", folder))
        assert deployment_identity(responder()) == deployment_identity(
            responder(system_prompt="Be terse."))
        assert KEY not in json.dumps(responder().deployment_parts())


class VoiceFake(AzureSpeechSynthesizer):
    """The Azure adapter's identity, with a synthesis that needs no network."""

    calls = 0

    async def synthesize(self, text: str, language: str, voice: str | None = None,
                         style: str | None = None) -> Audio:
        type(self).calls += 1
        chosen = self.voice_for(language)
        return Audio(b"RIFF", "audio/wav", "wav", 0.1, chosen,
                     ProviderInfo(name="azure", model="neural-tts"), Usage(characters=len(text)))


class TestSharedCache:
    async def test_a_changed_voice_map_is_not_served_the_old_voice(self) -> None:
        """Two deployments share one cache: after the voice map changed, the same text is
        synthesised again, in the new voice."""
        cache = ResultCache(StoreCacheBackend(InMemorySagaStore()))
        old = CachedSpeechSynthesizer(VoiceFake(region="westeurope", key=KEY,
                                                voices={"es": "es-ES-ElviraNeural"}), cache, 60)
        new = CachedSpeechSynthesizer(VoiceFake(region="westeurope", key=KEY,
                                                voices={"es": "es-ES-AlvaroNeural"}), cache, 60)
        first = await old.synthesize("hola", "es")
        again = await old.synthesize("hola", "es")
        changed = await new.synthesize("hola", "es")
        assert again.provider.cached
        assert (first.voice, changed.voice) == ("es-ES-ElviraNeural", "es-ES-AlvaroNeural")
        assert not changed.provider.cached
        assert VoiceFake.calls == 2
