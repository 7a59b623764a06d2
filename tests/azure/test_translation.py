"""AzureTranslator through azure-ai-translation-text 2.x against the loopback fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.capabilities import LanguageDetector, Translator
from actors.errors import AuthError, PermanentError, ThrottledError, TransientError, UnsupportedError
from actors.providers.azure.translation import AzureTranslator
from tests.azure.conftest import KEY
from tests.azure_fakes import FakeAzure, drop, server_error, throttle

pytestmark = pytest.mark.azure


@pytest.fixture
async def translator(fake: FakeAzure) -> AsyncIterator[AzureTranslator]:
    t = AzureTranslator(fake.url, key=KEY, region="westeurope")
    yield t
    await t.aclose()


class TestSuccess:
    async def test_translate_with_known_source(self, fake: FakeAzure, translator: AzureTranslator) -> None:
        """The reply is parsed into a Translation; the request has the 2026-06-06 shape."""
        fake.translations[("Hola", "en")] = "Hello"
        done = await translator.translate("Hola", "en", "es")
        assert isinstance(translator, Translator)
        assert (done.text, done.from_language, done.to_language) == ("Hello", "es", "en")
        assert not done.detected
        assert done.provider.name == "azure"
        assert done.usage.characters == 4
        [req] = fake.received("translate")
        assert (req.method, req.path) == ("POST", "/translate")
        assert req.query == {"api-version": "2026-06-06"}
        assert req.headers["Ocp-Apim-Subscription-Key"] == KEY
        assert req.headers["Ocp-Apim-Subscription-Region"] == "westeurope"
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"].startswith("azsdk-python-ai-translation-text/2.")
        assert req.json() == {"inputs": [{"text": "Hola", "targets": [{"language": "en"}], "language": "es"}]}

    async def test_unknown_source_is_detected_in_the_same_call(
        self, fake: FakeAzure, translator: AzureTranslator
    ) -> None:
        done = await translator.translate("Hola, ¿qué tal?", "en")
        assert done.detected
        assert done.from_language == "es"
        [req] = fake.received("translate")
        assert "language" not in req.json()["inputs"][0]

    async def test_same_language_makes_no_call(self, fake: FakeAzure, translator: AzureTranslator) -> None:
        done = await translator.translate("Hello", "en", "en")
        assert done.text == "Hello"
        assert fake.requests == []

    async def test_detect_translates_a_sample(self, fake: FakeAzure) -> None:
        """LanguageDetector: the first characters, no source language, detectedLanguage read."""
        t = AzureTranslator(fake.url, key=KEY, detect_sample_chars=10)
        try:
            assert isinstance(t, LanguageDetector)
            found = await t.detect("hola, la cafetera llegó rota")
        finally:
            await t.aclose()
        assert (found.language, found.confidence) == ("es", 0.97)
        assert found.usage.characters == 10
        [req] = fake.received("translate")
        assert req.json() == {"inputs": [{"text": "hola, la c", "targets": [{"language": "en"}]}]}

    async def test_entra_id_token_over_loopback_http(self, fake: FakeAzure) -> None:
        """A token credential sends ``Authorization: Bearer``; azure-core's https-only rule is
        lifted for loopback endpoints only."""
        from azure.core.credentials import AccessToken

        class Credential:
            closed = False

            async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
                assert scopes == ("https://cognitiveservices.azure.com/.default",)
                return AccessToken("entra-token", 2_000_000_000)

            async def close(self) -> None:
                self.closed = True

        fake.tokens = ("entra-token",)
        cred = Credential()
        t = AzureTranslator(fake.url, credential=cred, close_credential=True)  # type: ignore[arg-type]
        try:
            done = await t.translate("Hola", "en", "es")
        finally:
            await t.aclose()
        assert done.text == "[es>en] Hola"
        [req] = fake.received("translate")
        assert req.headers["Authorization"] == "Bearer entra-token"
        assert "Ocp-Apim-Subscription-Key" not in req.headers
        assert cred.closed
        assert "entra-id" in repr(t)


class TestErrors:
    async def test_429_is_throttled_with_retry_after_and_one_request(
        self, fake: FakeAzure, translator: AzureTranslator
    ) -> None:
        fake.fail_next("translate", throttle("7"))
        with pytest.raises(ThrottledError) as caught:
            await translator.translate("Hola", "en", "es")
        assert caught.value.retry_after == 7.0
        assert isinstance(caught.value.__cause__, Exception)
        assert len(fake.received("translate")) == 1  # retry_total=0: the saga retries

    async def test_retry_after_is_capped(self, fake: FakeAzure) -> None:
        t = AzureTranslator(fake.url, key=KEY, max_retry_after=20)
        fake.fail_next("translate", throttle("3600"))
        try:
            with pytest.raises(ThrottledError) as caught:
                await t.translate("Hola", "en", "es")
        finally:
            await t.aclose()
        assert caught.value.retry_after == 20

    async def test_500_is_transient(self, fake: FakeAzure, translator: AzureTranslator) -> None:
        fake.fail_next("translate", server_error(500))
        with pytest.raises(TransientError):
            await translator.translate("Hola", "en", "es")
        assert len(fake.received("translate")) == 1

    async def test_unsupported_language_is_unsupported(
        self, fake: FakeAzure, translator: AzureTranslator
    ) -> None:
        with pytest.raises(UnsupportedError, match="target language is not valid"):
            await translator.translate("Hola", "tlh", "es")

    async def test_dropped_connection_is_transient(
        self, fake: FakeAzure, translator: AzureTranslator
    ) -> None:
        fake.fail_next("translate", drop())
        with pytest.raises(TransientError):
            await translator.translate("Hola", "en", "es")

    async def test_wrong_key_is_auth(self, fake: FakeAzure) -> None:
        t = AzureTranslator(fake.url, key="not-the-key")
        try:
            with pytest.raises(AuthError, match="401"):
                await t.translate("Hola", "en", "es")
        finally:
            await t.aclose()

    async def test_empty_text_is_permanent_without_a_call(
        self, fake: FakeAzure, translator: AzureTranslator
    ) -> None:
        with pytest.raises(PermanentError):
            await translator.translate("  ", "en")
        assert fake.requests == []
