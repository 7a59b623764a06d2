"""A sequential pipeline: read a label photo aloud in another language.

    .venv/bin/python examples/patterns/read_label_aloud.py examples/images/product_label_es.png \
        --from es --to en            # the offline providers (OCR, Apertium, eSpeak)
    .venv/bin/python examples/patterns/read_label_aloud.py PHOTO --fake   # fakes, no installs

Three stages, each fed the previous one's output: ``read`` (vision: OCR) → ``translate``
(translation) → ``speak`` (speech). The outcome is one ``PipelineCompleted`` with the last
stage's output (the audio) and each stage's timing, or one ``PipelineFailed`` naming the stage
that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from pydantic import Field

from events.base import Event, event
from events.common import BlobRef
from events.support import (
    AnalyzeImageRequested,
    ImageAnalyzed,
    SynthesizeSpeechRequested,
    TextTranslated,
    TranslateTextRequested,
)
from saga.patterns import Stage, sequential_pipeline
from saga.workflow import Workflow


@event
class ReadLabelAloud(Event):
    """Starts the pipeline: a photo, the language its text is in, the language to speak."""

    request_id: str = Field(min_length=1)
    image: BlobRef
    from_language: str = Field(pattern=r"^[a-z]{2,3}$")
    to_language: str = Field(pattern=r"^[a-z]{2,3}$")


def _read(start: Event, previous: Event | None) -> Event:
    assert isinstance(start, ReadLabelAloud)
    return AnalyzeImageRequested(image=start.image, features=("read",))


def _translate(start: Event, previous: Event | None) -> Event:
    assert isinstance(start, ReadLabelAloud)
    assert isinstance(previous, ImageAnalyzed)
    text = previous.ocr_text or "(no text could be read)"
    return TranslateTextRequested(text=text, to_language=start.to_language,
                                  from_language=start.from_language)


def _speak(start: Event, previous: Event | None) -> Event:
    assert isinstance(start, ReadLabelAloud)
    assert isinstance(previous, TextTranslated)
    return SynthesizeSpeechRequested(text=previous.text or "(nothing to read)", language=start.to_language)


def workflow() -> Workflow:
    return sequential_pipeline(
        "read-label-aloud", ReadLabelAloud,
        Stage("read", "vision", _read, timeout=60),
        Stage("translate", "translation", _translate),
        Stage("speak", "speech", _speak, timeout=60),
    )


async def run(photo: Path, from_language: str, to_language: str, fake: bool) -> dict[str, object]:
    from service.settings import ProviderSettings
    from service.workflow_cli import WorkflowService, WorkflowSettings

    settings = WorkflowSettings(store="memory://")
    if fake:
        settings = WorkflowSettings(store="memory://", imagegen="fake", providers=ProviderSettings(
            language="fake", vision="fake", translation="fake", responder="fake", speech="fake"))
    svc = WorkflowService(settings, extra_workflows=[workflow()],
                          actors=["vision", "translation", "speech"])
    async with svc:
        image = await svc.attach(photo)
        start = ReadLabelAloud(request_id="label-1", image=image, from_language=from_language,
                               to_language=to_language)
        await svc.submit_event(start, start.request_id)
        done = await svc.wait(start.request_id, timeout=300)
        return {"type": done.type, **done.data.model_dump(mode="json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--from", dest="source", default="es")
    parser.add_argument("--to", dest="target", default="en")
    parser.add_argument("--fake", action="store_true", help="use the fake providers")
    args = parser.parse_args()
    result = asyncio.run(run(args.photo, args.source, args.target, args.fake))
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
