"""AzureSpeechSynthesizer through azure-cognitiveservices-speech against the websocket fake.

The Speech SDK raises nothing for service errors: each case below shows the adapter reading
``result.reason`` and ``cancellation_details.error_code``."""

from __future__ import annotations

import io
import json
import socket
import wave
from collections.abc import AsyncIterator

import pytest

from actors.capabilities import SpeechSynthesizer
from actors.errors import AuthError, PermanentError, ThrottledError, TransientError, UnsupportedError
from actors.providers.azure.speech import AzureSpeechSynthesizer, build_ssml
from tests.azure.conftest import KEY
from tests.azure_fakes import FakeSpeech

pytestmark = pytest.mark.azure


@pytest.fixture
async def speech(tts: FakeSpeech) -> AsyncIterator[AzureSpeechSynthesizer]:
    s = AzureSpeechSynthesizer(endpoint=tts.endpoint, key=KEY)
    yield s
    await s.aclose()


class TestSuccess:
    async def test_spanish_wav_16khz(self, tts: FakeSpeech, speech: AzureSpeechSynthesizer) -> None:
        text = "Hola María, su pedido está en camino."
        audio = await speech.synthesize(text, "es")
        assert isinstance(speech, SpeechSynthesizer)
        assert (audio.media_type, audio.format, audio.voice) == ("audio/wav", "wav", "es-ES-ElviraNeural")
        with wave.open(io.BytesIO(audio.data)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            seconds = w.getnframes() / w.getframerate()
        assert audio.duration_seconds == pytest.approx(seconds, abs=0.01)
        assert audio.duration_seconds == pytest.approx(0.06 * len(text), abs=0.01)
        assert audio.usage.characters == len(text)
        assert audio.usage.audio_seconds == pytest.approx(seconds, abs=0.01)

        [session] = tts.sessions
        assert session.path == "/cognitiveservices/websocket/v1"
        assert session.protocol == "USP"
        assert session.headers["Ocp-Apim-Subscription-Key"] == KEY
        context = json.loads(session.frame("synthesis.context").body)
        assert context["synthesis"]["audio"]["outputFormat"] == "raw-16khz-16bit-mono-pcm"
        ssml = tts.ssml()
        assert 'xml:lang="es-ES"' in ssml
        assert '<voice name="es-ES-ElviraNeural">Hola María, su pedido está en camino.</voice>' in ssml

    async def test_style_and_escaping(self, tts: FakeSpeech, speech: AzureSpeechSynthesizer) -> None:
        await speech.synthesize("Fish & <chips>", "en", voice="en-US-AriaNeural", style="cheerful")
        ssml = tts.ssml()
        assert '<voice name="en-US-AriaNeural">' in ssml
        assert '<mstts:express-as style="cheerful">Fish &amp; &lt;chips&gt;</mstts:express-as>' in ssml
        assert 'xmlns:mstts="https://www.w3.org/2001/mstts"' in ssml

    def test_voice_map_overrides_defaults(self) -> None:
        s = AzureSpeechSynthesizer(region="westeurope", key=KEY, voices={"es": "es-MX-DaliaNeural"})
        assert s.voice_for("es") == "es-MX-DaliaNeural"
        assert s.voice_for("fr") == "fr-FR-DeniseNeural"
        assert build_ssml("x", "es-MX-DaliaNeural").count('xml:lang="es-MX"') == 1
        with pytest.raises(UnsupportedError, match="AIAPPS_AZURE__SPEECH__VOICES"):
            s.voice_for("tlh")


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "error"),
        [(429, ThrottledError), (401, AuthError), (403, AuthError), (500, TransientError),
         (503, TransientError), (400, PermanentError)],
    )
    async def test_handshake_status(
        self, tts: FakeSpeech, speech: AzureSpeechSynthesizer, status: int, error: type[Exception]
    ) -> None:
        tts.refuse_next(status)
        with pytest.raises(error) as caught:
            await speech.synthesize("Hola", "es")
        assert type(caught.value) is error
        assert len(tts.sessions) == 1  # the SDK does not retry
        if isinstance(caught.value, ThrottledError):
            assert caught.value.retry_after is None  # the SDK exposes no Retry-After

    async def test_close_1007_invalid_ssml_is_permanent(
        self, tts: FakeSpeech, speech: AzureSpeechSynthesizer
    ) -> None:
        tts.close_next(1007, "Voice not found")
        with pytest.raises(PermanentError, match="BadRequest"):
            await speech.synthesize("Hola", "es")

    async def test_dropped_connection_is_transient(
        self, tts: FakeSpeech, speech: AzureSpeechSynthesizer
    ) -> None:
        tts.drop_next()
        with pytest.raises(TransientError, match="ConnectionFailure"):
            await speech.synthesize("Hola", "es")

    async def test_nothing_listening_is_transient(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        s = AzureSpeechSynthesizer(endpoint=f"ws://127.0.0.1:{port}/cognitiveservices/websocket/v1", key=KEY)
        with pytest.raises(TransientError, match="ConnectionFailure"):
            await s.synthesize("Hola", "es")
        await s.aclose()

    async def test_invalid_style_is_refused_before_a_call(
        self, tts: FakeSpeech, speech: AzureSpeechSynthesizer
    ) -> None:
        with pytest.raises(PermanentError):
            await speech.synthesize("Hola", "es", style='x" onload="')
        assert tts.sessions == []
