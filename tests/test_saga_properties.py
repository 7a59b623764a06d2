"""Property: whatever each service does (answer, fail, throttle, hang) and however often the
bus delivers, every saga ends in exactly one terminal event."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from actors.providers.fake import permanent, throttled, transient
from events import BlobRef, InquiryFailed, ResponseReady
from saga import SagaStatus, StepStatus
from service.testing import FakeService, make_inquiry

SERVICES = ("language", "vision", "translation", "responder", "speech")
REQUEST_TYPES = (
    "InquiryReceived", "DetectLanguageRequested", "AnalyzeImageRequested",
    "TranslateTextRequested", "GenerateResponseRequested", "SynthesizeSpeechRequested",
    "LanguageDetected", "ImageAnalyzed", "TextTranslated", "ResponseGenerated",
    "SpeechSynthesized", "StepFailed",
)

outcome = st.sampled_from(["ok", "transient", "permanent", "throttled", "hang"])
scripts = st.fixed_dictionaries({s: st.lists(outcome, max_size=4) for s in SERVICES})


def _error(name: str) -> object:
    return {"ok": None, "transient": transient(), "permanent": permanent(),
            "throttled": throttled(2.0), "hang": "hang"}[name]


async def _run(
    script: dict[str, list[str]], duplicated: set[str], language: str | None, image: bool,
    voice: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeService(Path(tmp), breaker_failure_threshold=1000) as svc:
            svc.fakes.language.language = "es"
            for service, entries in script.items():
                svc.fakes.behaviours()[service].fail_next(*[_error(e) for e in entries])  # type: ignore[arg-type]
            route = svc.memory._route

            def duplicating(body: bytes, key: str) -> None:
                route(body, key)
                if key in duplicated:
                    route(body, key)

            svc.memory._route = duplicating  # type: ignore[method-assign]
            attachments: tuple[BlobRef, ...] = ()
            if image:
                attachments = (await svc.blobs.put(b"img", "image/png"),)
            await svc.submit(make_inquiry(language=language, attachments=attachments,
                                          voice_reply=voice))
            await svc.settle()
            for _ in range(40):
                state = await svc.saga("inq-1")
                if state.status is not SagaStatus.RUNNING:
                    break
                await svc.advance(61)
            state = await svc.saga("inq-1")
            assert state.status is not SagaStatus.RUNNING, state.steps
            await svc.settle()
            terminal = await svc.terminal_events("inq-1")
            assert len(terminal) == 1, [e.type for e in terminal]
            assert isinstance(terminal[0].data, ResponseReady | InquiryFailed)
            if isinstance(terminal[0].data, ResponseReady):
                fallbacks = tuple(
                    k for k, s in state.steps.items() if s.status is StepStatus.FALLBACK
                )
                assert terminal[0].data.degraded == fallbacks
            # nothing left pending for the saga: no dispatched step, no timer
            assert all(s.status.settled or s.status is StepStatus.EXPANDED
                       for s in state.steps.values())


class TestExactlyOneTerminalEvent:
    @given(
        script=scripts,
        duplicated=st.sets(st.sampled_from(REQUEST_TYPES), max_size=4),
        language=st.sampled_from([None, "en", "es"]),
        image=st.booleans(),
        voice=st.booleans(),
    )
    def test_any_mix_of_outcomes_ends_once(
        self, script: dict[str, list[str]], duplicated: set[str], language: str | None,
        image: bool, voice: bool,
    ) -> None:
        """Any outcomes per service, duplicate deliveries of any event types, any inquiry
        shape: the saga ends, in exactly one terminal event, degraded naming its fallbacks."""
        asyncio.run(_run(script, duplicated, language, image, voice))
