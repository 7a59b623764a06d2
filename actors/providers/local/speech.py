"""Offline text-to-speech with eSpeak NG, through ``espeakng-loader`` and ctypes.

``espeakng-loader`` (PyPI) bundles ``libespeak-ng`` and its full voice data but no Python API,
so this module calls the C library directly. eSpeak's state (current voice, callback, rate)
is process-global: one lock serialises every call, the library is initialised once per
process, and the audio callback is kept referenced for the life of the process (ctypes would
otherwise free it while C still holds the pointer).

eSpeak is formant synthesis: robotic but intelligible, about 100 languages, tens of
milliseconds per sentence. Output is 16-bit mono PCM at eSpeak's rate (22 050 Hz), in a WAV.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import sys
import threading
import wave
from array import array
from dataclasses import dataclass, field

from actors.capabilities import Audio
from actors.errors import PermanentError, TransientError, UnsupportedError
from events.common import ProviderInfo, Usage

__all__ = ["DEFAULT_VOICES", "EspeakSynthesizer"]

_PROVIDER = ProviderInfo(name="local", model="espeak-ng")
_INSTALL_HINT = "pip install 'ai-apps[local]'"

DEFAULT_VOICES: dict[str, str] = {
    "en": "en-us",
    "es": "es",
    "fr": "fr",
    "de": "de",
    "it": "it",
    "pt": "pt",
    "ca": "ca",
    "nl": "nl",
}
"""The voice used for a bare language code, where eSpeak's own preference is not the one a
support desk wants (eSpeak prefers British English for ``en``). Other languages take eSpeak's
best-ranked voice for the code."""

# espeak_AUDIO_OUTPUT.AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when all audio has been
# handed to the callback; no audio device is opened.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeakINITIALIZE_DONT_EXIT: report errors instead of calling exit() inside our process.
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_ESPEAK_RATE = 1  # espeak_PARAMETER.espeakRATE, words per minute

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):
    """``espeak_VOICE`` from speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)*, then 0
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


@dataclass(slots=True)
class _Espeak:
    """The process's one initialised eSpeak library."""

    lib: ctypes.CDLL
    sample_rate: int
    # language code -> voice names, best first; and every voice name eSpeak accepts.
    by_language: dict[str, list[str]]
    voices: frozenset[str]
    chunks: list[bytes] = field(default_factory=list)
    callback: object = None


_LOCK = threading.Lock()
_ENGINE: _Espeak | None = None


def _engine() -> _Espeak:
    """Load and initialise eSpeak once per process. Call with ``_LOCK`` held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _initialise()
    return _ENGINE


def _initialise() -> _Espeak:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise UnsupportedError(
            f"local speech needs espeakng-loader: {_INSTALL_HINT}", provider=_PROVIDER.name
        ) from exc
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = str(espeakng_loader.get_data_path())
    except (OSError, RuntimeError) as exc:
        raise UnsupportedError(
            f"could not load the eSpeak NG library from espeakng-loader ({exc}); "
            f"reinstall it: {_INSTALL_HINT}",
            provider=_PROVIDER.name,
        ) from exc

    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))

    sample_rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
    )
    if sample_rate <= 0:
        raise UnsupportedError(
            f"eSpeak NG could not initialise with its data at {data_path}; "
            f"reinstall espeakng-loader: {_INSTALL_HINT}",
            provider=_PROVIDER.name,
        )
    by_language, voices = _list_voices(lib)
    engine = _Espeak(lib=lib, sample_rate=sample_rate, by_language=by_language, voices=voices)

    def on_audio(wav: ctypes._Pointer[ctypes.c_short], samples: int, _events: int) -> int:
        # Must not raise: an exception here cannot cross into C. A null pointer marks the end.
        if wav and samples > 0:
            engine.chunks.append(ctypes.string_at(wav, samples * 2))
        return 0  # 0 = carry on synthesising

    engine.callback = _SynthCallback(on_audio)
    lib.espeak_SetSynthCallback(engine.callback)
    return engine


def _list_voices(lib: ctypes.CDLL) -> tuple[dict[str, list[str]], frozenset[str]]:
    """Reads ``espeak_ListVoices``: each voice's file name (what ``espeak_SetVoiceByName``
    accepts, e.g. ``en-us``) and the languages it speaks with eSpeak's priority (lower is a
    better match)."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    names: set[str] = set()
    table = lib.espeak_ListVoices(None)
    index = 0
    while table[index]:
        voice = table[index].contents
        index += 1
        if not voice.identifier or not voice.languages:
            continue
        name = voice.identifier.decode("utf-8", "replace").rsplit("/", 1)[-1].lower()
        names.add(name)
        cursor = voice.languages
        while True:
            priority = ctypes.string_at(cursor, 1)[0]
            if priority == 0:
                break
            code = ctypes.string_at(cursor + 1)
            ranked.setdefault(code.decode("ascii", "replace").lower(), []).append((priority, name))
            cursor += len(code) + 2
    by_language = {code: [name for _, name in sorted(entries)] for code, entries in ranked.items()}
    return by_language, frozenset(names)


class EspeakSynthesizer:
    """:class:`~actors.capabilities.SpeechSynthesizer` using the eSpeak NG library bundled in
    ``espeakng-loader``: offline, any of eSpeak's ~100 languages, WAV output.

    ``rate`` is the speaking rate in words per minute (eSpeak's default is 175). ``style`` is
    accepted for the protocol and ignored: eSpeak has no speaking styles.
    """

    def __init__(self, *, rate: int = 175) -> None:
        if not 80 <= rate <= 450:
            raise ValueError("rate must be between 80 and 450 words per minute")
        self._rate = rate

    async def synthesize(
        self, text: str, language: str, voice: str | None = None, style: str | None = None
    ) -> Audio:
        if not text.strip():
            raise PermanentError("there is no text to speak", provider=_PROVIDER.name)
        # eSpeak runs synchronously for a few ms to a few s: keep it off the event loop.
        return await asyncio.to_thread(self._synthesize_sync, text, language, voice)

    def load(self) -> None:
        """Initialise eSpeak now rather than on the first call (e.g. at start-up)."""
        with _LOCK:
            _engine()

    def voice_for(self, language: str) -> str:
        """The eSpeak voice used for ``language`` (``en`` -> ``en-us``, ``pt-BR`` ->
        ``pt-br``); ``UnsupportedError`` when eSpeak has none."""
        with _LOCK:
            return _pick_voice(_engine(), language)

    def _synthesize_sync(self, text: str, language: str, voice: str | None) -> Audio:
        with _LOCK:
            engine = _engine()
            name = _resolve_voice(engine, voice) if voice else _pick_voice(engine, language)
            if engine.lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
                raise UnsupportedError(
                    f"eSpeak NG has no voice {name!r}; voices include "
                    f"{', '.join(sorted(engine.voices)[:40])}, ...",
                    provider=_PROVIDER.name,
                )
            engine.lib.espeak_SetParameter(_ESPEAK_RATE, self._rate, 0)
            data = text.encode("utf-8")
            buffer = ctypes.create_string_buffer(data)  # NUL-terminated copy
            engine.chunks.clear()
            try:
                status = engine.lib.espeak_Synth(
                    buffer, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                if status == _EE_OK:
                    status = engine.lib.espeak_Synchronize()
                pcm = b"".join(engine.chunks)
            finally:
                engine.chunks.clear()
            sample_rate = engine.sample_rate
        if status != _EE_OK:
            raise TransientError(f"eSpeak NG failed to synthesise (status {status})", provider=_PROVIDER.name)
        if not pcm:
            raise PermanentError(
                "eSpeak NG produced no audio for this text (nothing speakable in it)",
                provider=_PROVIDER.name,
            )
        samples = len(pcm) // 2
        return Audio(
            data=_wav(pcm, sample_rate),
            media_type="audio/wav",
            format="wav",
            duration_seconds=round(samples / sample_rate, 3),
            voice=name,
            provider=_PROVIDER,
            usage=Usage(characters=len(text)),
        )


def _pick_voice(engine: _Espeak, language: str) -> str:
    tag = language.strip().lower().replace("_", "-")
    primary = tag.split("-", 1)[0]
    # A full tag eSpeak knows ("pt-br", "en-gb") wins; then our default for the language;
    # then eSpeak's best-ranked voice for it.
    if tag != primary and engine.by_language.get(tag):
        return engine.by_language[tag][0]
    preferred = DEFAULT_VOICES.get(primary)
    if preferred is not None and preferred in engine.voices:
        return preferred
    ranked = engine.by_language.get(primary)
    if ranked:
        return ranked[0]
    raise UnsupportedError(
        f"eSpeak NG has no voice for language {language!r}; it speaks "
        f"{', '.join(sorted(code for code in engine.by_language if '-' not in code))}",
        provider=_PROVIDER.name,
    )


def _resolve_voice(engine: _Espeak, voice: str) -> str:
    """An explicit voice: a voice file name (``en-us``, ``es-419``), or a language tag eSpeak
    knows (``en-gb`` is spoken by the voice file ``en``). Anything else (a display name such
    as ``"English (America)"``, a variant such as ``en-us+f3``) is passed to eSpeak as is,
    which rejects what it does not know."""
    name = voice.strip().lower()
    if name in engine.voices:
        return name
    ranked = engine.by_language.get(name)
    return ranked[0] if ranked else voice.strip()


def _wav(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit mono PCM -> a WAV file. eSpeak writes native-endian samples; WAV is
    little-endian."""
    if sys.byteorder == "big":
        samples = array("h", pcm)
        samples.byteswap()
        pcm = samples.tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()
