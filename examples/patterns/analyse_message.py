"""A parallel analysis: look at a customer message from several sides at once.

    .venv/bin/python examples/patterns/analyse_message.py "Mi cafetera llegó rota" --language es
    .venv/bin/python examples/patterns/analyse_message.py "..." --fake    # fakes, no installs

Three services are asked at the same time: language detection (priority 3), translation to
English (priority 2) and a voice rendering of the message (priority 1). One failing does not
stop the others: ``AnalysisCompleted`` ranks the results by priority and gives the success
rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from pydantic import Field

from events.base import Event, event
from events.support import DetectLanguageRequested, SynthesizeSpeechRequested, TranslateTextRequested
from saga.patterns import Analysis, parallel_analysis
from saga.workflow import NO_RETRY, Workflow


@event
class AnalyseMessage(Event):
    request_id: str = Field(min_length=1)
    text: str = Field(min_length=1, max_length=5_000)
    language: str = Field(pattern=r"^[a-z]{2,3}$")


def _start(start: Event) -> AnalyseMessage:
    assert isinstance(start, AnalyseMessage)
    return start


def workflow() -> Workflow:
    return parallel_analysis(
        "analyse-message", AnalyseMessage,
        Analysis("detect", "language", lambda s: DetectLanguageRequested(text=_start(s).text),
                 priority=3, retry=NO_RETRY),
        Analysis("to_english", "translation",
                 lambda s: TranslateTextRequested(text=_start(s).text, to_language="en",
                                                  from_language=_start(s).language),
                 priority=2, retry=NO_RETRY),
        Analysis("voice", "speech",
                 lambda s: SynthesizeSpeechRequested(text=_start(s).text, language=_start(s).language),
                 priority=1, retry=NO_RETRY, timeout=60),
    )


async def run(text: str, language: str, fake: bool) -> dict[str, object]:
    from service.settings import ProviderSettings
    from service.workflow_cli import WorkflowService, WorkflowSettings

    settings = WorkflowSettings(store="memory://")
    if fake:
        settings = WorkflowSettings(store="memory://", imagegen="fake", providers=ProviderSettings(
            language="fake", vision="fake", translation="fake", responder="fake", speech="fake"))
    svc = WorkflowService(settings, extra_workflows=[workflow()],
                          actors=["language", "translation", "speech"])
    async with svc:
        start = AnalyseMessage(request_id="msg-1", text=text, language=language)
        await svc.submit_event(start, start.request_id)
        done = await svc.wait(start.request_id, timeout=300)
        return {"type": done.type, **done.data.model_dump(mode="json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("--language", default="es")
    parser.add_argument("--fake", action="store_true", help="use the fake providers")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.text, args.language, args.fake)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
