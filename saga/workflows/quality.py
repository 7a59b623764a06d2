"""Product quality control, as in the founding document.

inspect each product image in parallel (against the reference photo and the expected label
text) · build the report: overall score, pass or fail, a summary and one recommendation per
defect · then per documentation language: translate the report's lines · render a
corrective-action card for each defect (the photo with the defect marked, and the instruction)
· synthesise the instructions as voice for the workers.

Every step falls back to "no result", so an inspection always ends in one
:class:`~events.quality.InspectionReported`: an image that could not be inspected counts as
failed (score 0) and says why; a language whose translation failed keeps the lines in the
report language and lists what is missing in ``failures``.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.campaign import DeleteAssetRequested, GenerateImageRequested, ImageGenerated
from events.quality import (
    CorrectiveImage,
    Defect,
    ImageInspected,
    ImageReport,
    InspectImageRequested,
    InspectionFailed,
    InspectionReported,
    InspectionRequested,
    LanguageDocumentation,
)
from events.support import SpeechSynthesized, TextTranslated, TranslateTextRequested
from events.support import SynthesizeSpeechRequested as SpeechRequest
from saga.cost import PriceTable, cost_summary
from saga.workflow import CACHED_ONLY, RequestBuilder, SagaView, Step, StepRetry, Workflow
from saga.workflows.campaign import asset_of, why

INSTRUCTION_COLOURS = ("#C62828", "#FFB300")
"""Corrective-action cards are red and amber: they are warnings, not brand material."""


def _request(v: SagaView) -> InspectionRequested:
    return v.start(InspectionRequested)


def _name(request: InspectionRequested, index: int) -> str:
    """How the lines to translate name an image: by number (a translator would mangle a file
    name; the report's image list and the card titles carry the file names)."""
    return f"image {index + 1}"


def _title(request: InspectionRequested, index: int) -> str:
    image = request.images[index]
    return f"Image {index + 1}" + (f" ({image.filename})" if image.filename else "")


@dataclass(frozen=True, slots=True)
class Report:
    """The report in the report language, derived only from the inspection results."""

    images: tuple[ImageReport, ...]
    overall_score: float
    passed: bool
    summary: str
    recommendations: tuple[str, ...]
    defect_lines: dict[tuple[int, int], int]
    """(image index, defect index) → index in ``lines`` of that defect's instruction."""

    @property
    def lines(self) -> tuple[str, ...]:
        """What is translated: the summary, then each recommendation."""
        return (self.summary, *self.recommendations)


def _instruction(defect: Defect) -> str:
    if defect.kind == "label":
        return ("Stop the labelling station, check the print template and the label roll, "
                "and relabel the unit.")
    if defect.severity == "major":
        return ("Take the unit off the line, check the marked area, and inspect the handling "
                "step before this station.")
    return "Minor: no action on this unit; report it if it recurs."


def build_report(v: SagaView) -> Report:
    request = _request(v)
    found = v.results("inspect", ImageInspected)
    images: list[ImageReport] = []
    recommendations: list[str] = []
    defect_lines: dict[tuple[int, int], int] = {}
    for i, ref in enumerate(request.images):
        result = found.get(str(i))
        if result is None:
            reason = why(v, f"inspect[{i}]")
            images.append(ImageReport(index=i, image=ref, passed=False, quality_score=0.0,
                                      failure=reason))
            recommendations.append(f"{_name(request, i).capitalize()} could not be inspected "
                                   f"({reason}): photograph the unit again and re-run the inspection.")
            continue
        images.append(ImageReport(
            index=i, image=ref, passed=result.passed, quality_score=result.quality_score,
            defects=result.defects, checks=result.checks, notes=result.notes,
        ))
        for d, defect in enumerate(result.defects):
            defect_lines[(i, d)] = 1 + len(recommendations)
            recommendations.append(f"{_name(request, i).capitalize()}: {defect.description}. "
                                   f"{_instruction(defect)}")
        for note in result.notes:
            recommendations.append(f"{_name(request, i).capitalize()}: {note}; take the photo again.")
    passed = all(image.passed for image in images)
    overall = round(sum(image.quality_score for image in images) / len(images), 4)
    failed = [image for image in images if not image.passed]
    defects = sum(len(image.defects) for image in images)
    summary = (f"Inspection {request.inspection_id}: {len(images)} image(s) inspected, "
               f"{len(images) - len(failed)} passed, {len(failed)} failed; {defects} defect(s) "
               f"found; overall quality score {overall:.2f}: {'PASS' if passed else 'FAIL'}.")
    if not recommendations:
        recommendations.append("No corrective action is needed.")
    return Report(tuple(images), overall, passed, summary, tuple(recommendations), defect_lines)


def _languages(v: SagaView) -> list[str]:
    return list(dict.fromkeys(_request(v).documentation_languages))


def _translations(v: SagaView) -> list[str]:
    request = _request(v)
    count = len(build_report(v).lines)
    return [f"{lang}|{n}" for lang in _languages(v) if lang != request.report_language
            for n in range(count)]


def line_in(v: SagaView, language: str, n: int) -> str | None:
    report = build_report(v)
    if language == _request(v).report_language:
        return report.lines[n]
    done = v.result(f"translate[{language}|{n}]", TextTranslated)
    return done.text if done else None


def _cards(v: SagaView) -> list[str]:
    report = build_report(v)
    return [f"{lang}|{i}|{d}" for lang in _languages(v) for (i, d) in sorted(report.defect_lines)]


def _voices(v: SagaView) -> list[str]:
    """Languages whose summary is available: the voice reads what is."""
    if not _request(v).voice_instructions:
        return []
    return [lang for lang in _languages(v) if line_in(v, lang, 0) is not None]


# -- requests ----------------------------------------------------------------------------------


def _inspect(v: SagaView) -> InspectImageRequested:
    request = _request(v)
    return InspectImageRequested(image=request.images[int(v.item or 0)], criteria=request.criteria,
                                 reference_image=request.reference_image)


def _translate(v: SagaView) -> TranslateTextRequested:
    assert v.item is not None
    lang, n = v.item.split("|")
    return TranslateTextRequested(text=build_report(v).lines[int(n)], to_language=lang,
                                  from_language=_request(v).report_language)


def _card(v: SagaView) -> GenerateImageRequested:
    assert v.item is not None
    lang, image, number = v.item.split("|")
    i, d = int(image), int(number)
    request = _request(v)
    report = build_report(v)
    inspected = v.result(f"inspect[{i}]", ImageInspected)
    assert inspected is not None
    defect = inspected.defects[d]
    line = report.defect_lines[(i, d)]
    text = line_in(v, lang, line) or report.lines[line]
    return GenerateImageRequested(
        prompt=f"Instruction card for factory workers: {report.lines[line]}", size="1024x1024",
        kind="instruction", title=f"{_title(request, i)} \N{EM DASH} defect {d + 1}",
        text=text, colours=INSTRUCTION_COLOURS, language=lang, variant=d,
        reference=f"{request.inspection_id} \N{MIDDLE DOT} image {i + 1} \N{MIDDLE DOT} defect {d + 1}",
        base_image=request.images[i], highlight=defect.box,
    )


def _voice(v: SagaView) -> SpeechRequest:
    assert v.item is not None
    count = len(build_report(v).lines)
    spoken = [line for n in range(count) if (line := line_in(v, v.item, n)) is not None]
    return SpeechRequest(text=" ".join(spoken), language=v.item)


def _delete(name: str) -> RequestBuilder:
    def build(v: SagaView) -> DeleteAssetRequested:
        key = f"{name}[{v.item}]"
        ref = asset_of(v, key)
        assert ref is not None, f"{key} succeeded without an asset"
        return DeleteAssetRequested(assets=(ref,), reason=f"inspection {_request(v).inspection_id} ended")

    return build


def _no_result(v: SagaView, reason: str) -> None:
    return None


# -- the outcome -------------------------------------------------------------------------------


def _elapsed_ms(v: SagaView) -> float:
    end = v.state.finished_at or v.state.started_at
    return max((end - v.state.started_at).total_seconds() * 1000, 0.0)


def documentation(v: SagaView, language: str, report: Report) -> LanguageDocumentation:
    failures: list[str] = []
    lines: list[str] = []
    for n, original in enumerate(report.lines):
        line = line_in(v, language, n)
        if line is None:
            failures.append(f"line {n + 1} not translated ({why(v, f'translate[{language}|{n}]')}); "
                            "kept in the report language")
            line = original
        lines.append(line)
    cards = []
    for i, d in sorted(report.defect_lines):
        key = f"card[{language}|{i}|{d}]"
        made = v.result(key, ImageGenerated)
        if made is None:
            failures.append(f"no corrective-action card for image {i + 1} defect {d + 1}: {why(v, key)}")
        else:
            cards.append(CorrectiveImage(image_index=i, defect_index=d, image=made.image))
    voice = v.result(f"voice[{language}]", SpeechSynthesized)
    if voice is None and _request(v).voice_instructions:
        failures.append(f"no voice instructions: {why(v, f'voice[{language}]')}")
    translated = language == _request(v).report_language or any(
        line_in(v, language, n) is not None for n in range(len(report.lines)))
    return LanguageDocumentation(
        language=language, report="\n".join(lines) if translated else None,
        corrective_images=tuple(cards), voice_instructions=voice.audio if voice else None,
        failures=tuple(failures),
    )


def quality_workflow(
    *,
    fanout_limit: int | None = 4,
    timeouts: dict[str, float] | None = None,
    retry: StepRetry | None = None,
    pricing: PriceTable | None = None,
) -> Workflow:
    """The quality-control workflow. ``fanout_limit`` bounds how many branches of one
    fanned-out step (images, translations, cards, voices) are in flight at once; ``pricing``
    prices each step's usage, the total on the terminal event."""
    prices = pricing or PriceTable()
    t = {"inspect": 120.0, "translate": 30.0, "card": 60.0, "voice": 60.0, **(timeouts or {})}
    r = retry or StepRetry()
    n = fanout_limit

    def complete(v: SagaView) -> InspectionReported:
        report = build_report(v)
        return InspectionReported(
            inspection_id=_request(v).inspection_id, passed=report.passed,
            overall_score=report.overall_score, summary=report.summary,
            recommendations=report.recommendations, images=report.images,
            documentation=tuple(documentation(v, lang, report) for lang in _languages(v)),
            degraded=v.state.degraded, processing_time_ms=_elapsed_ms(v),
            cost=cost_summary(v.state, prices),
        )

    def fail(v: SagaView, reason: str, step: str | None) -> InspectionFailed:
        return InspectionFailed(inspection_id=_request(v).inspection_id, reason=reason,
                                failed_step=step, processing_time_ms=_elapsed_ms(v),
                                cost=cost_summary(v.state, prices))

    def cancelled(v: SagaView, reason: str, step: str | None) -> InspectionFailed:
        return InspectionFailed(inspection_id=_request(v).inspection_id, reason=reason,
                                cancelled=True, processing_time_ms=_elapsed_ms(v),
                                cost=cost_summary(v.state, prices))

    steps = (
        Step("inspect", "inspection", _inspect,
             for_each=lambda v: [str(i) for i in range(len(_request(v).images))],
             timeout=t["inspect"], retry=r, fallback=_no_result, max_parallel=n),
        Step("translate", "translation", _translate, needs=("inspect",), for_each=_translations,
             when=lambda v: bool(_translations(v)), timeout=t["translate"], retry=r,
             fallback=_no_result, max_parallel=n, on_budget=CACHED_ONLY),
        Step("card", "imagegen", _card, needs=("translate",), for_each=_cards,
             when=lambda v: bool(_cards(v)), timeout=t["card"], retry=r, fallback=_no_result,
             compensate=_delete("card"), max_parallel=n),
        Step("voice", "speech", _voice, needs=("translate",), for_each=_voices,
             when=lambda v: bool(_voices(v)), timeout=t["voice"], retry=r, fallback=_no_result,
             compensate=_delete("voice"), max_parallel=n, on_budget=CACHED_ONLY),
    )
    return Workflow("quality", InspectionRequested, steps, complete, fail, cancelled)


QUALITY_STEPS = tuple(s.name for s in quality_workflow().steps)
