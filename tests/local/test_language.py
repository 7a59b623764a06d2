"""Offline language detection with lingua, restricted to the service's languages."""

from __future__ import annotations

import sys

import pytest

from actors.capabilities import LanguageDetector
from actors.errors import PermanentError, UnsupportedError
from actors.providers.local.language import DEFAULT_LANGUAGES, LinguaLanguageDetector

pytestmark = pytest.mark.local

SENTENCES = [
    ("Where is my order? It should have arrived yesterday.", "en"),
    ("¿Dónde está mi pedido? Debería haber llegado ayer.", "es"),
    ("Où est ma commande ? Elle aurait dû arriver hier.", "fr"),
    ("Wo ist meine Bestellung? Sie hätte gestern ankommen sollen.", "de"),
    ("My screen is broken", "en"),
    ("Mi pantalla está rota", "es"),
    ("Mon écran est cassé", "fr"),
    ("Mein Bildschirm ist kaputt", "de"),
]


@pytest.fixture(scope="module")
def detector() -> LinguaLanguageDetector:
    built = LinguaLanguageDetector()
    built.load()
    return built


class TestLinguaLanguageDetector:
    """Short customer messages get the right ISO 639-1 code and a confidence in (0, 1]."""

    def test_is_a_language_detector(self, detector: LinguaLanguageDetector) -> None:
        assert isinstance(detector, LanguageDetector)
        assert detector.languages == DEFAULT_LANGUAGES

    @pytest.mark.parametrize(("text", "language"), SENTENCES)
    async def test_detects_short_sentences(
        self, detector: LinguaLanguageDetector, text: str, language: str
    ) -> None:
        detection = await detector.detect(text)
        assert detection.language == language
        assert 0.0 < detection.confidence <= 1.0
        assert detection.provider.name == "local"
        assert detection.usage.characters == len(text)

    async def test_empty_text_is_a_permanent_error(self, detector: LinguaLanguageDetector) -> None:
        with pytest.raises(PermanentError):
            await detector.detect("  ")

    async def test_text_without_letters_is_a_permanent_error(
        self, detector: LinguaLanguageDetector
    ) -> None:
        with pytest.raises(PermanentError, match="could not detect"):
            await detector.detect("12345 !!! 678")


class TestConfiguration:
    """Bad configuration and a missing package fail with a classified, actionable error."""

    def test_unknown_language_code_is_unsupported(self) -> None:
        with pytest.raises(UnsupportedError, match="xx"):
            LinguaLanguageDetector(["en", "xx"]).load()

    def test_needs_two_languages(self) -> None:
        with pytest.raises(ValueError, match="two"):
            LinguaLanguageDetector(["en"])

    def test_missing_package_names_the_install_command(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # None in sys.modules makes `import lingua` raise ImportError.
        monkeypatch.setitem(sys.modules, "lingua", None)
        with pytest.raises(UnsupportedError, match=r"pip install 'ai-apps\[local\]'"):
            LinguaLanguageDetector().load()
