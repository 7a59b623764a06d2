"""The generic patterns as workflows, through their examples in examples/patterns/, on fakes."""

from __future__ import annotations

from pathlib import Path

from actors.providers.fake import permanent
from saga.patterns import AnalysisCompleted, PipelineCompleted, PipelineFailed
from tests.workflows.harness import WorkflowFakeService, example

LABEL = example("patterns/read_label_aloud.py")
MESSAGE = example("patterns/analyse_message.py")


async def test_pipeline_passes_each_output_on(tmp_path: Path) -> None:
    """OCR text → translated → spoken: the output is the speech, every stage succeeded."""
    async with WorkflowFakeService(tmp_path, extra_workflows=(LABEL.workflow(),)) as svc:
        svc.fakes.vision.ocr_text = "PEDIDO ORD-2024-58317"
        photo = await svc.blobs.put(b"\x89PNG photo", "image/png", "label.png")
        start = LABEL.ReadLabelAloud(request_id="p-1", image=photo, from_language="es",
                                     to_language="en")
        await svc.submit_event(start, "p-1")
        done = await svc.wait("p-1", timeout=10)
    assert isinstance(done.data, PipelineCompleted)
    assert done.data.output_type == "SpeechSynthesized"
    assert [s.name for s in done.data.stages] == ["read", "translate", "speak"]
    assert all(s.status == "succeeded" for s in done.data.stages)
    spoken = [c.args[0] for c in svc.fakes.speech.behaviour.calls]
    assert spoken == ["[es>en] PEDIDO ORD-2024-58317"]


async def test_pipeline_fails_naming_the_stage(tmp_path: Path) -> None:
    """The translator refuses: the pipeline fails at "translate" and speech is never asked."""
    async with WorkflowFakeService(tmp_path, extra_workflows=(LABEL.workflow(),)) as svc:
        svc.fakes.translation.behaviour.fail_always(permanent("fake 400: unsupported pair"))
        photo = await svc.blobs.put(b"\x89PNG photo", "image/png", "label.png")
        start = LABEL.ReadLabelAloud(request_id="p-2", image=photo, from_language="es",
                                     to_language="xx")
        await svc.submit_event(start, "p-2")
        done = await svc.wait("p-2", timeout=10)
    assert isinstance(done.data, PipelineFailed)
    assert done.data.failed_stage == "translate"
    assert "unsupported pair" in done.data.reason
    assert [s.status for s in done.data.stages] == ["succeeded", "failed", "cancelled"]
    assert svc.fakes.speech.behaviour.calls == []


async def test_parallel_analysis_ranks_by_priority_with_success_rate(tmp_path: Path) -> None:
    """All three at once; the voice fails: 2 of 3 succeeded, ranked detect, to_english,
    voice, and the failure says why."""
    async with WorkflowFakeService(tmp_path, extra_workflows=(MESSAGE.workflow(),)) as svc:
        svc.fakes.speech.behaviour.fail_always(permanent("fake 400: no voice"))
        start = MESSAGE.AnalyseMessage(request_id="a-1", text="Mi cafetera llegó rota", language="es")
        await svc.submit_event(start, "a-1")
        done = await svc.wait("a-1", timeout=10)
    assert isinstance(done.data, AnalysisCompleted)
    result = done.data
    assert [(r.rank, r.name, r.succeeded) for r in result.results] == [
        (1, "detect", True), (2, "to_english", True), (3, "voice", False)
    ]
    assert result.success_rate == round(2 / 3, 4)
    assert result.results[2].error is not None
    assert "no voice" in result.results[2].error
    assert result.results[1].result is not None
    assert result.results[1].result["text"] == "[es>en] Mi cafetera llegó rota"
    # they were all dispatched at once: each was called once, none waited for another
    assert len(svc.fakes.language.behaviour.calls) == 1
