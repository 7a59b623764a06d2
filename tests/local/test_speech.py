"""Offline speech with eSpeak NG (espeakng-loader + ctypes): real WAV audio per language."""

from __future__ import annotations

import asyncio
import io
import sys
import wave
from array import array

import pytest

from actors.capabilities import Audio, SpeechSynthesizer
from actors.errors import PermanentError, UnsupportedError
from actors.providers.local import speech
from actors.providers.local.speech import EspeakSynthesizer

pytestmark = pytest.mark.local

ENGLISH = "Your order has been shipped and will arrive on Thursday."
SPANISH = "Su pedido ha sido enviado y llegará el jueves."


@pytest.fixture(scope="module")
def synthesizer() -> EspeakSynthesizer:
    built = EspeakSynthesizer()
    built.load()
    return built


def decode(audio: Audio) -> tuple[wave._wave_params, array[int]]:
    """The WAV's header parameters and its samples, checking it is a well-formed file."""
    with wave.open(io.BytesIO(audio.data), "rb") as wav:
        params = wav.getparams()
        frames = wav.readframes(params.nframes)
    samples = array("h", frames)
    if sys.byteorder == "big":
        samples.byteswap()
    return params, samples


def assert_speech(audio: Audio, words: int) -> None:
    params, samples = decode(audio)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 22050)
    assert audio.duration_seconds == pytest.approx(params.nframes / 22050, abs=0.001)
    # People speak about 2-3 words a second; eSpeak at 175 wpm is in that range.
    assert 0.15 * words < audio.duration_seconds < 1.0 * words
    # Not silence: a real share of the samples carry sound.
    loud = sum(1 for s in samples if abs(s) > 1000)
    assert loud > 0.1 * len(samples)
    assert audio.media_type == "audio/wav"
    assert audio.format == "wav"
    assert audio.provider.name == "local"
    assert audio.provider.model == "espeak-ng"


class TestSynthesis:
    """English and Spanish text become valid WAVs of plausible length."""

    def test_is_a_speech_synthesizer(self, synthesizer: EspeakSynthesizer) -> None:
        assert isinstance(synthesizer, SpeechSynthesizer)

    async def test_english(self, synthesizer: EspeakSynthesizer) -> None:
        audio = await synthesizer.synthesize(ENGLISH, "en")
        assert_speech(audio, words=len(ENGLISH.split()))
        assert audio.voice == "en-us"
        assert audio.usage.characters == len(ENGLISH)

    async def test_spanish(self, synthesizer: EspeakSynthesizer) -> None:
        audio = await synthesizer.synthesize(SPANISH, "es")
        assert_speech(audio, words=len(SPANISH.split()))
        assert audio.voice == "es"

    async def test_longer_text_gives_longer_audio(self, synthesizer: EspeakSynthesizer) -> None:
        short = await synthesizer.synthesize("Thank you.", "en")
        long = await synthesizer.synthesize(ENGLISH + " " + ENGLISH, "en")
        assert long.duration_seconds > 3 * short.duration_seconds

    async def test_concurrent_calls_do_not_mix(self, synthesizer: EspeakSynthesizer) -> None:
        # eSpeak's state is process-global: the lock must keep each call's voice and audio.
        texts = [(ENGLISH, "en"), (SPANISH, "es"), ("Merci beaucoup.", "fr")] * 2
        results = await asyncio.gather(*(synthesizer.synthesize(t, lang) for t, lang in texts))
        assert [a.voice for a in results] == ["en-us", "es", "fr"] * 2
        # eSpeak's output varies by a few ms from run to run, so compare lengths, not bytes:
        # audio leaking between calls would add whole words.
        for first, second in zip(results[:3], results[3:], strict=True):
            assert first.duration_seconds == pytest.approx(second.duration_seconds, abs=0.1)
        assert results[2].duration_seconds < results[0].duration_seconds / 2
        for audio, (text, _) in zip(results, texts, strict=True):
            assert_speech(audio, words=len(text.split()))


class TestVoices:
    """Each language gets a voice; an explicit voice wins; unknown ones are unsupported."""

    @pytest.mark.parametrize(
        ("language", "voice"),
        [("en", "en-us"), ("es", "es"), ("fr", "fr"), ("de", "de"), ("pt-BR", "pt-br"),
         ("ca", "ca"), ("nl", "nl"), ("it", "it")],
    )  # fmt: skip
    def test_voice_per_language(self, synthesizer: EspeakSynthesizer, language: str, voice: str) -> None:
        assert synthesizer.voice_for(language) == voice

    async def test_explicit_voice_overrides_the_language(self, synthesizer: EspeakSynthesizer) -> None:
        audio = await synthesizer.synthesize(SPANISH, "es", voice="es-419")
        assert audio.voice == "es-419"

    async def test_unknown_language_is_unsupported(self, synthesizer: EspeakSynthesizer) -> None:
        with pytest.raises(UnsupportedError, match=r"no voice for language 'xx'.*\ben\b"):
            await synthesizer.synthesize("Hello", "xx")

    async def test_unknown_voice_is_unsupported(self, synthesizer: EspeakSynthesizer) -> None:
        with pytest.raises(UnsupportedError, match="no voice 'robot-9000'"):
            await synthesizer.synthesize("Hello", "en", voice="robot-9000")


class TestErrors:
    """Empty text is a permanent error; a missing package names the install command."""

    @pytest.mark.parametrize("text", ["", "   \n"])
    async def test_empty_text(self, synthesizer: EspeakSynthesizer, text: str) -> None:
        with pytest.raises(PermanentError, match="no text"):
            await synthesizer.synthesize(text, "en")

    def test_missing_package_names_the_install_command(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Pretend eSpeak was never loaded in this process and the package is absent.
        monkeypatch.setattr(speech, "_ENGINE", None)
        monkeypatch.setitem(sys.modules, "espeakng_loader", None)
        with pytest.raises(UnsupportedError, match=r"pip install 'ai-apps\[local\]'"):
            EspeakSynthesizer().load()

    def test_rate_is_validated(self) -> None:
        with pytest.raises(ValueError, match="rate"):
            EspeakSynthesizer(rate=10)
