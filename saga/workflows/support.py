"""Customer-support automation, as in the founding document.

analyse each image (when there are any) · detect the language (when not given) · translate
to English (when not English) · generate the response from the message and the image findings ·
translate the response back · synthesise a voice reply (when asked). Every step has a
fallback, so a customer always gets an answer; ``degraded`` says which steps used one.
"""

from __future__ import annotations

from events.common import ProviderInfo
from events.support import (
    AnalyzeImageRequested,
    Cost,
    DetectLanguageRequested,
    GenerateResponseRequested,
    ImageAnalyzed,
    ImageFindings,
    InquiryFailed,
    InquiryReceived,
    LanguageDetected,
    ResponseGenerated,
    ResponseReady,
    SpeechSynthesized,
    SynthesizeSpeechRequested,
    TextTranslated,
    TranslateTextRequested,
)
from saga.cost import PriceTable, step_costs, total
from saga.state import StepStatus
from saga.workflow import SagaView, Step, StepRetry, Workflow

BASE_LANGUAGE = "en"
"""The language the responder and the knowledge base work in."""

FALLBACK = ProviderInfo(name="fallback")

TEMPLATE_REPLY = (
    "Thank you for contacting us. We have received your message and a member of our support "
    "team will get back to you shortly."
)


def _inquiry(v: SagaView) -> InquiryReceived:
    return v.start(InquiryReceived)


def customer_language(v: SagaView) -> str:
    """The customer's language: given, else detected, else English."""
    given = _inquiry(v).language
    if given:
        return given
    detected = v.result("detect_language", LanguageDetected)
    return detected.language if detected else BASE_LANGUAGE


def _image_keys(v: SagaView) -> list[str]:
    return [str(i) for i, a in enumerate(_inquiry(v).attachments) if a.media_type.startswith("image/")]


def _message_in_english(v: SagaView) -> str:
    translated = v.result("translate_in", TextTranslated)
    return translated.text if translated else _inquiry(v).message


def _answer(v: SagaView) -> ResponseGenerated | None:
    return v.result("respond", ResponseGenerated)


def _final_text(v: SagaView) -> tuple[str, str]:
    """The reply text and its language, after translating back where that worked."""
    back = v.result("translate_out", TextTranslated)
    if back is not None:
        return back.text, back.to_language
    answer = _answer(v)
    return (answer.text if answer else TEMPLATE_REPLY), BASE_LANGUAGE


# -- requests ----------------------------------------------------------------------------


def _analyze(v: SagaView) -> AnalyzeImageRequested:
    assert v.item is not None
    return AnalyzeImageRequested(image=_inquiry(v).attachments[int(v.item)])


def _detect(v: SagaView) -> DetectLanguageRequested:
    return DetectLanguageRequested(text=_inquiry(v).message)


def _translate_in(v: SagaView) -> TranslateTextRequested:
    return TranslateTextRequested(
        text=_inquiry(v).message, to_language=BASE_LANGUAGE, from_language=customer_language(v)
    )


def _respond(v: SagaView) -> GenerateResponseRequested:
    findings = tuple(
        ImageFindings(description=a.caption, tags=a.tags, ocr_text=a.ocr_text)
        for a in v.results("analyze_image", ImageAnalyzed).values()
    )
    return GenerateResponseRequested(
        message=_message_in_english(v),
        language=BASE_LANGUAGE,
        customer_name=_inquiry(v).customer.name,
        images=findings,
    )


def _translate_out(v: SagaView) -> TranslateTextRequested:
    answer = _answer(v)
    assert answer is not None
    return TranslateTextRequested(
        text=answer.text, to_language=customer_language(v), from_language=BASE_LANGUAGE
    )


def _synthesize(v: SagaView) -> SynthesizeSpeechRequested:
    text, language = _final_text(v)
    return SynthesizeSpeechRequested(text=text, language=language)


# -- fallbacks ---------------------------------------------------------------------------


def _assume_base_language(v: SagaView, reason: str) -> LanguageDetected:
    return LanguageDetected(language=BASE_LANGUAGE, confidence=0.0, provider=FALLBACK)


def _template_reply(v: SagaView, reason: str) -> ResponseGenerated:
    return ResponseGenerated(text=TEMPLATE_REPLY, confidence=0.0, provider=FALLBACK)


def _nothing(v: SagaView, reason: str) -> None:
    return None


# -- the terminal events -----------------------------------------------------------------


def _elapsed_ms(v: SagaView) -> float:
    end = v.state.finished_at or v.state.started_at
    return max((end - v.state.started_at).total_seconds() * 1000, 0.0)


def _notices(v: SagaView) -> tuple[str, ...]:
    notes = []
    if customer_language(v) != BASE_LANGUAGE and v.used_fallback("translate_out"):
        notes.append("Automatic translation was unavailable; this reply is in English.")
    if v.used_fallback("translate_in"):
        notes.append("The message could not be translated; it was answered as written.")
    if _inquiry(v).voice_reply and v.result("synthesize_voice", SpeechSynthesized) is None:
        notes.append("A voice reply was requested but could not be produced.")
    if any(v.state.steps[k].status is StepStatus.FALLBACK for k in v.state.steps
           if k.startswith("analyze_image[")):
        notes.append("An attached image could not be analysed.")
    budget = next((s.fallback_reason for s in v.state.steps.values()
                   if s.status is StepStatus.FALLBACK and s.fallback_reason
                   and s.fallback_reason.startswith("budget: ")), None)
    if budget is not None:
        notes.append(f"A cost budget was reached, so this reply was simplified ({budget}).")
    return tuple(notes)


def _cost(v: SagaView, pricing: PriceTable) -> Cost:
    by_step = step_costs(v.state, pricing)
    return Cost(total=total(by_step.values()), currency=pricing.currency, by_step=by_step,
                price_table=pricing.version)


def support_workflow(
    *,
    escalation_threshold: float = 0.5,
    timeouts: dict[str, float] | None = None,
    retry: StepRetry | None = None,
    pricing: PriceTable | None = None,
) -> Workflow:
    """The support workflow. ``escalation_threshold``: a reply whose confidence is below it is
    flagged for a human. ``timeouts`` overrides per-step timeouts (seconds) by step name.
    ``pricing`` prices each step's usage; the total is on the terminal event."""
    prices = pricing or PriceTable()
    t = {
        "analyze_image": 60.0, "detect_language": 15.0, "translate_in": 30.0, "respond": 60.0,
        "translate_out": 30.0, "synthesize_voice": 60.0, **(timeouts or {}),
    }
    r = retry or StepRetry()

    def complete(v: SagaView) -> ResponseReady:
        answer = _answer(v)
        text, language = _final_text(v)
        voice = v.result("synthesize_voice", SpeechSynthesized)
        confidence = answer.confidence if answer else 0.0
        return ResponseReady(
            inquiry_id=_inquiry(v).inquiry_id,
            text=text,
            language=language,
            voice=voice.audio if voice else None,
            confidence=confidence,
            escalation_required=confidence < escalation_threshold or v.used_fallback("respond"),
            processing_time_ms=_elapsed_ms(v),
            degraded=v.state.degraded,
            sources=answer.sources if answer else (),
            notices=_notices(v),
            cost=_cost(v, prices),
        )

    def fail(v: SagaView, reason: str, step: str | None) -> InquiryFailed:
        return InquiryFailed(
            inquiry_id=_inquiry(v).inquiry_id, reason=reason, failed_step=step,
            degraded=v.state.degraded, processing_time_ms=_elapsed_ms(v), cost=_cost(v, prices),
        )

    steps = (
        Step("analyze_image", "vision", _analyze, for_each=_image_keys,
             when=lambda v: bool(_image_keys(v)), timeout=t["analyze_image"], retry=r,
             fallback=_nothing),
        Step("detect_language", "language", _detect, when=lambda v: _inquiry(v).language is None,
             timeout=t["detect_language"], retry=r, fallback=_assume_base_language),
        Step("translate_in", "translation", _translate_in, needs=("detect_language",),
             when=lambda v: customer_language(v) != BASE_LANGUAGE,
             timeout=t["translate_in"], retry=r, fallback=_nothing),
        Step("respond", "responder", _respond, needs=("analyze_image", "translate_in"),
             timeout=t["respond"], retry=r, fallback=_template_reply),
        Step("translate_out", "translation", _translate_out, needs=("respond",),
             when=lambda v: customer_language(v) != BASE_LANGUAGE and _answer(v) is not None,
             timeout=t["translate_out"], retry=r, fallback=_nothing),
        Step("synthesize_voice", "speech", _synthesize, needs=("translate_out",),
             when=lambda v: _inquiry(v).voice_reply, timeout=t["synthesize_voice"], retry=r,
             fallback=_nothing),
    )
    return Workflow("support", InquiryReceived, steps, complete, fail)


SUPPORT_STEPS = tuple(s.name for s in support_workflow().steps)
