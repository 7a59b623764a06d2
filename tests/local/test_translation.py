"""Offline translation with Debian's Apertium: direct pairs, the Spanish pivot, clean errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from actors.capabilities import Translator
from actors.errors import PermanentError, TransientError, UnsupportedError
from actors.providers.local.translation import ApertiumTranslator, iso639_1

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def translator() -> ApertiumTranslator:
    return ApertiumTranslator()


def fake_apertium(tmp_path: Path, body: str) -> str:
    """A stand-in ``apertium`` that lists eng-spa and then does ``body`` when translating."""
    script = tmp_path / "apertium"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-l" ]; then printf "  eng-spa\\n  spa-eng\\n"; exit 0; fi\n{body}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


class TestDirectPairs:
    """English and Spanish translate both ways with real, recognisable words."""

    def test_is_a_translator(self, translator: ApertiumTranslator) -> None:
        assert isinstance(translator, Translator)

    async def test_installed_pairs_are_discovered(self, translator: ApertiumTranslator) -> None:
        pairs = await translator.pairs()
        for pair in [("en", "es"), ("es", "en"), ("es", "fr"), ("fr", "es")]:
            assert pair in pairs
        assert pairs[("en", "es")] == "eng-spa"
        # Dialect variants are not separate pairs.
        assert not any("_" in mode for mode in pairs.values())

    async def test_spanish_to_english(self, translator: ApertiumTranslator) -> None:
        text = "La reunión se ha trasladado al jueves."
        result = await translator.translate(text, "en", "es")
        assert "meeting" in result.text
        assert "Thursday" in result.text
        assert "reunión" not in result.text
        assert (result.from_language, result.to_language) == ("es", "en")
        assert result.provider.name == "local"
        assert result.provider.model == "apertium spa-eng"
        assert result.usage.characters == len(text)
        assert result.detected is False

    async def test_english_to_spanish(self, translator: ApertiumTranslator) -> None:
        result = await translator.translate("The meeting has been moved to Thursday.", "es", "en")
        assert "reunión" in result.text
        assert "jueves" in result.text
        assert "meeting" not in result.text

    async def test_keeps_order_numbers_and_line_breaks(self, translator: ApertiumTranslator) -> None:
        text = "Mi pedido ORD-2024-58317 llegó dañado.\nLa caja estaba aplastada."
        result = await translator.translate(text, "en", "es")
        assert "ORD-2024-58317" in result.text
        assert "damaged" in result.text
        assert len(result.text.splitlines()) == 2
        assert not result.text.endswith("\n")

    async def test_accepts_region_tags_and_three_letter_codes(self, translator: ApertiumTranslator) -> None:
        result = await translator.translate("The meeting", "spa", "en-GB")
        assert (result.from_language, result.to_language) == ("en", "es")
        assert "reunión" in result.text.lower()

    def test_code_mapping(self) -> None:
        assert [iso639_1(c) for c in ("eng", "spa", "fra", "cat", "EN-us", "pt_BR", "ast")] == [
            "en",
            "es",
            "fr",
            "ca",
            "en",
            "pt",
            "ast",
        ]


class TestPivot:
    """Without a direct pair the text goes through Spanish."""

    async def test_english_to_french(self, translator: ApertiumTranslator) -> None:
        text = "The meeting has been moved to Thursday."
        result = await translator.translate(text, "fr", "en")
        assert "réunion" in result.text
        assert "jeudi" in result.text
        assert result.provider.model == "apertium eng-spa+es-fr"
        assert result.usage.characters == len(text)

    async def test_french_to_english(self, translator: ApertiumTranslator) -> None:
        result = await translator.translate("La réunion a été déplacée à jeudi.", "en", "fr")
        assert "meeting" in result.text
        assert "Thursday" in result.text
        assert result.provider.model == "apertium fr-es+spa-eng"


class TestNoWork:
    """The same language in and out costs nothing; an unknown source language is refused."""

    async def test_same_language_is_returned_unchanged(self, translator: ApertiumTranslator) -> None:
        text = "Hello  there,\nunchanged *exactly*"
        result = await translator.translate(text, "en", "en-US")
        assert result.text == text
        assert result.usage.characters == 0

    async def test_source_language_is_required(self, translator: ApertiumTranslator) -> None:
        with pytest.raises(PermanentError, match="source language") as caught:
            await translator.translate("Hola", "en", None)
        assert not isinstance(caught.value, UnsupportedError)


class TestErrors:
    """Missing pairs and a missing command say what to install; failures are classified."""

    async def test_unsupported_pair_lists_the_available_pairs(self, translator: ApertiumTranslator) -> None:
        with pytest.raises(UnsupportedError) as caught:
            await translator.translate("Hello", "de", "en")
        message = str(caught.value)
        assert "en→de" in message
        assert "en→es" in message
        assert "es→fr" in message
        assert caught.value.retryable is False

    async def test_unsupported_pair_names_the_debian_package(self, translator: ApertiumTranslator) -> None:
        with pytest.raises(UnsupportedError, match="apt-get install apertium-es-ro"):
            await translator.translate("Hello", "ro", "en")

    async def test_apertium_not_installed(self) -> None:
        missing = ApertiumTranslator(executable="apertium-not-installed-here")
        with pytest.raises(UnsupportedError, match="apt-get install apertium apertium-eng-spa"):
            await missing.translate("Hello", "es", "en")

    async def test_non_zero_exit_is_transient(self, tmp_path: Path) -> None:
        broken = ApertiumTranslator(
            executable=fake_apertium(tmp_path, 'echo "lt-proc: out of memory" >&2; exit 3')
        )
        with pytest.raises(TransientError, match=r"exit 3.*out of memory") as caught:
            await broken.translate("Hello", "es", "en")
        assert caught.value.retryable is True

    async def test_timeout_is_transient(self, tmp_path: Path) -> None:
        slow = ApertiumTranslator(executable=fake_apertium(tmp_path, "exec sleep 30"), timeout=0.3)
        with pytest.raises(TransientError, match="timed out"):
            await slow.translate("Hello", "es", "en")
