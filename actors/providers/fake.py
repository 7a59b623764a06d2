"""Programmable fake providers: deterministic output, scripted latency, failures, throttling
and hangs, and a call log. For tests and benchmarks; never chosen by default.

Their output is marked as fake (``provider.name == "fake"``) and is derived only from the input,
so a test can predict it exactly.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from actors.capabilities import (
    Audio,
    Detection,
    ImageAnalysis,
    ResponseDraft,
    ResponseQuery,
    Translation,
)
from actors.errors import PermanentError, ProviderError, ThrottledError, TransientError
from actors.ratelimit import RateLimitInfo, report
from events.common import ProviderInfo, Usage
from events.support import Source, TextLine

FAKE = ProviderInfo(name="fake", model="fake-1")


@dataclass
class Call:
    capability: str
    args: tuple[object, ...]


@dataclass
class AllowedRate:
    """A service's own rate limit, as the fakes enforce it: at most ``requests`` calls per
    ``window`` seconds (fixed windows of ``clock``). A call beyond it is answered 429 with a
    ``Retry-After`` to the window's end; every answer says what is left until then
    (``x-ratelimit-remaining-requests`` and ``-reset-requests``, as Azure OpenAI does), through
    :func:`actors.ratelimit.report` as the real adapters do. ``accepted`` counts the calls let
    through per window (its index), ``rejected`` the 429s."""

    requests: int
    window: float
    clock: Callable[[], float] = time.monotonic
    accepted: dict[int, int] = field(default_factory=dict)
    rejected: int = 0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.window <= 0:
            raise ValueError("an allowed rate needs requests >= 1 and a positive window")

    def admit(self) -> None:
        """Let one call through, or raise the service's 429."""
        now = self.clock()
        index = math.floor(now / self.window)
        reset = (index + 1) * self.window - now
        used = self.accepted.get(index, 0)
        if used >= self.requests:
            self.rejected += 1
            raise ThrottledError(
                f"fake 429: more than {self.requests} calls in {self.window:g}s",
                retry_after=reset, provider="fake",
                rate_limit=RateLimitInfo(remaining_requests=0, reset_requests=reset),
            )
        self.accepted[index] = used + 1
        report(RateLimitInfo(remaining_requests=self.requests - used - 1, reset_requests=reset))


@dataclass
class FakeBehaviour:
    """What the next calls do. ``script`` is consumed one entry per call: an exception to raise,
    ``"hang"`` to never answer, or ``None`` to succeed; once empty, ``default`` applies.
    ``latency`` (seconds) is slept before every call."""

    latency: float = 0.0
    script: list[ProviderError | str | None] = field(default_factory=list)
    default: ProviderError | str | None = None
    calls: list[Call] = field(default_factory=list)
    hanging: int = 0
    """Calls currently hanging (so a test harness knows the bus is as idle as it gets)."""
    crash_file: Path | None = None
    """While this file exists every call raises a plain ``RuntimeError`` (not a provider
    error): a bug, as the bus sees it, so the message is retried and then dead-lettered."""
    log_path: Path | None = None
    """If set, each call that succeeds appends a JSON line here: the charges, as a paid
    service would bill them, visible across processes."""
    allowed: AllowedRate | None = None
    """The service's own rate limit (429s beyond it), checked as each call arrives."""

    def fail_next(self, *outcomes: ProviderError | str | None) -> None:
        self.script.extend(outcomes)

    def fail_always(self, error: ProviderError | str | None) -> None:
        self.default = error

    def heal(self) -> None:
        self.script.clear()
        self.default = None

    async def before(self, capability: str, *args: object) -> None:
        self.calls.append(Call(capability, args))
        if self.crash_file is not None and self.crash_file.exists():
            raise RuntimeError(f"fake {capability} crashed ({self.crash_file} exists)")
        if self.allowed is not None:
            self.allowed.admit()
        self._log("start", capability, args)
        if self.latency:
            await asyncio.sleep(self.latency)
        outcome = self.script.pop(0) if self.script else self.default
        if outcome == "hang":
            self.hanging += 1
            try:
                await asyncio.Event().wait()
            finally:
                self.hanging -= 1
        if isinstance(outcome, ProviderError):
            raise outcome
        self._log("charge", capability, args)

    def _log(self, kind: str, capability: str, args: tuple[object, ...]) -> None:
        if self.log_path is None:
            return
        line = json.dumps({"event": kind, "capability": capability,
                           "args": [str(a) for a in args], "pid": os.getpid()})
        with self.log_path.open("a") as f:  # one short O_APPEND write per line
            f.write(line + "\n")


def throttled(retry_after: float = 1.0) -> ThrottledError:
    return ThrottledError("fake 429: too many requests", retry_after=retry_after, provider="fake")


def transient(message: str = "fake 503: service unavailable") -> TransientError:
    return TransientError(message, provider="fake")


def permanent(message: str = "fake 400: content filter triggered") -> PermanentError:
    return PermanentError(message, provider="fake")


class FakeLanguageDetector:
    """Answers ``language`` (or the entry of ``by_text`` for an exact text)."""

    def __init__(self, language: str = "en", by_text: dict[str, str] | None = None) -> None:
        self.language = language
        self.by_text = by_text or {}
        self.behaviour = FakeBehaviour()

    async def detect(self, text: str) -> Detection:
        await self.behaviour.before("detect", text)
        lang = self.by_text.get(text, self.language)
        return Detection(lang, 0.99, FAKE, Usage(characters=len(text)))


class FakeTranslator:
    """Translates ``text`` to ``[from>to] text``."""

    def __init__(self) -> None:
        self.behaviour = FakeBehaviour()

    async def translate(
        self, text: str, to_language: str, from_language: str | None = None
    ) -> Translation:
        await self.behaviour.before("translate", text, to_language, from_language)
        source = from_language or "en"
        return Translation(
            f"[{source}>{to_language}] {text}", source, to_language, FAKE,
            detected=from_language is None, usage=Usage(characters=len(text)),
        )


class FakeImageAnalyzer:
    """Reads ``ocr_text`` from every image."""

    def __init__(self, ocr_text: str = "", caption: str = "a fake image") -> None:
        self.ocr_text = ocr_text
        self.caption = caption
        self.behaviour = FakeBehaviour()

    async def analyze(
        self, image: bytes, media_type: str, features: tuple[str, ...]
    ) -> ImageAnalysis:
        await self.behaviour.before("analyze", len(image), media_type)
        lines = tuple(TextLine(text=t, confidence=1.0) for t in self.ocr_text.splitlines() if t)
        return ImageAnalysis(
            FAKE, caption=self.caption, tags=("fake",), ocr_lines=lines,
            usage=Usage(transactions=1),
        )


class FakeResponder:
    """Answers ``Re: <message>`` plus any OCR text, with a fixed ``confidence``. A query's
    ``model`` is honoured: the call log's arguments are the message and the model used, and
    the result's provider names that model (``fake-1`` when none is asked for)."""

    def __init__(self, confidence: float = 0.9) -> None:
        self.confidence = confidence
        self.behaviour = FakeBehaviour()

    async def respond(self, query: ResponseQuery) -> ResponseDraft:
        model = query.model or FAKE.model
        await self.behaviour.before("respond", query.message, model)
        seen = " ".join(i.ocr_text for i in query.images if i.ocr_text)
        text = f"Re: {query.message}" + (f" [image: {seen}]" if seen else "")
        provider = FAKE if model == FAKE.model else ProviderInfo(name=FAKE.name, model=model)
        return ResponseDraft(
            text, self.confidence, provider,
            sources=(Source(id="FAKE-1", title="Fake", score=1.0),),
            usage=Usage(input_tokens=len(query.message.split()), output_tokens=len(text.split())),
        )


class FakeSpeechSynthesizer:
    """Returns a silent WAV of 50 ms per character."""

    def __init__(self) -> None:
        self.behaviour = FakeBehaviour()

    async def synthesize(
        self, text: str, language: str, voice: str | None = None, style: str | None = None
    ) -> Audio:
        await self.behaviour.before("synthesize", text, language)
        rate, seconds = 8000, 0.05 * len(text)
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(b"\0\0" * int(rate * seconds))
        return Audio(
            buf.getvalue(), "audio/wav", "wav", seconds, voice or f"fake-{language}", FAKE,
            Usage(characters=len(text)),
        )


@dataclass
class FakeProviders:
    """One fake of each capability, with their behaviours at hand."""

    language: FakeLanguageDetector = field(default_factory=FakeLanguageDetector)
    translation: FakeTranslator = field(default_factory=FakeTranslator)
    vision: FakeImageAnalyzer = field(default_factory=FakeImageAnalyzer)
    responder: FakeResponder = field(default_factory=FakeResponder)
    speech: FakeSpeechSynthesizer = field(default_factory=FakeSpeechSynthesizer)

    def behaviours(self) -> dict[str, FakeBehaviour]:
        return {
            "language": self.language.behaviour,
            "translation": self.translation.behaviour,
            "vision": self.vision.behaviour,
            "responder": self.responder.behaviour,
            "speech": self.speech.behaviour,
        }

    def calls(self, services: Iterable[str] | None = None) -> list[Call]:
        chosen = set(services) if services is not None else None
        return [
            c for name, b in self.behaviours().items() if chosen is None or name in chosen
            for c in b.calls
        ]
