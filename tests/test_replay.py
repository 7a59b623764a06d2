"""Replay, what-if, resume and export of recorded sagas."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from actors.providers.fake import permanent
from events import BlobRef, InquiryFailed, ResponseReady, TextTranslated
from saga import SqliteSagaStore, StepStatus, Workflow, causal_order
from saga.replay import export_lines, import_lines, replay, resume
from saga.workflows.support import support_workflow
from service.cli import app
from service.testing import FakeService, make_inquiry


async def spanish_saga(svc: FakeService, inquiry_id: str = "inq-1") -> None:
    svc.fakes.language.language = "es"
    svc.fakes.vision.ocr_text = "ORD-2024-58317"
    image: BlobRef = await svc.blobs.put(b"\x89PNG label", "image/png", "label.png")
    await svc.submit(make_inquiry(inquiry_id, "Mi pedido llegó roto", attachments=(image,),
                                  voice_reply=True))
    await svc.wait(inquiry_id, timeout=10)
    await svc.settle()


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[FakeService]:
    async with FakeService(tmp_path) as s:
        yield s


def calls(svc: FakeService) -> int:
    return len(svc.fakes.calls())


class TestDeterministicReplay:
    async def test_recorded_saga_replays_identically_without_calls(
        self, svc: FakeService
    ) -> None:
        """A recorded support saga replays to identical decisions with zero provider calls
        and nothing published on the live bus."""
        await spanish_saga(svc)
        original = await svc.saga("inq-1")
        before = calls(svc)
        events = causal_order(await svc.store.events("inq-1"))
        report = await replay(events, [support_workflow()], original=original)
        assert report.identical, report.as_json()
        assert calls(svc) == before
        assert svc.memory.pending == 0
        assert report.state.terminal is not None
        assert report.state.terminal.data["text"] == original.terminal.data["text"]  # type: ignore[union-attr]

    async def test_timeouts_retries_and_fallbacks_replay_identically(
        self, svc: FakeService
    ) -> None:
        """A saga with a timed-out attempt, a retry and a fallback replays the same way: the
        deadlines fire again on the replay's own clock."""
        svc.fakes.responder.behaviour.fail_next("hang")
        svc.fakes.translation.behaviour.fail_always(permanent())
        await svc.submit(make_inquiry(message="Ayuda", language="es"))
        await svc.settle()
        await svc.advance(60)  # respond attempt 1 times out
        await svc.advance(1)  # retried: answers
        done = await svc.wait("inq-1", timeout=5)
        assert isinstance(done.data, ResponseReady)
        original = await svc.saga("inq-1")
        assert original.steps["respond"].attempts == 2
        events = causal_order(await svc.store.events("inq-1"))
        report = await replay(events, [support_workflow()], original=original)
        assert report.identical, report.as_json()

    async def test_changed_workflow_reports_exactly_the_affected_step(
        self, svc: FakeService
    ) -> None:
        """With a new condition on voice, replay names exactly that step (and the terminal
        event's voice field that follows from it)."""
        await spanish_saga(svc)
        original = await svc.saga("inq-1")
        base = support_workflow()
        no_voice = dataclasses.replace(base, steps=tuple(
            dataclasses.replace(s, when=lambda v: False) if s.name == "synthesize_voice" else s
            for s in base.steps
        ))
        assert isinstance(no_voice, Workflow)
        report = await replay(causal_order(await svc.store.events("inq-1")), [no_voice],
                              original=original)
        assert [d.step for d in report.differences] == ["synthesize_voice"]
        (diff,) = report.differences
        assert diff.original is not None
        assert diff.original.outcome == "succeeded"
        assert diff.replayed is not None
        assert diff.replayed.outcome == "skipped"
        # the voice reply, its notice, and its cost (a skipped step is not priced) follow from it
        assert set(report.terminal_differences) == {"voice", "notices", "cost"}

    async def test_what_if_override_reruns_one_step(self, svc: FakeService) -> None:
        """An override answers one step anew; the others reuse the recording; the outputs
        that change are the ones downstream of it."""
        await spanish_saga(svc)
        original = await svc.saga("inq-1")

        async def new_translation(step: str, request: object) -> TextTranslated | None:
            if step != "translate_out":
                return None
            return TextTranslated(text="Respuesta nueva", from_language="en", to_language="es",
                                  provider={"name": "fake"})

        report = await replay(causal_order(await svc.store.events("inq-1")),
                              [support_workflow()], original=original, override=new_translation)
        assert report.differences == []
        assert report.terminal_differences["text"][1] == "Respuesta nueva"


class TestReplayOfBudgetDecisions:
    async def test_a_saga_degraded_by_its_budget_replays_identically(
        self, tmp_path: Path
    ) -> None:
        """A tenant with no budget left: its image analysis was answered from the cache only
        and its reply fell back. The replay decides each dispatch as the original did (it has
        no spend of then to decide on), so nothing differs."""
        from decimal import Decimal

        from saga.budget import TenantBudget
        from saga.cost import Price, PriceTable
        from service.cost_settings import CostSettings

        prices = PriceTable(version="t", prices=(
            Price(provider="fake", model="fake-*", per_1k_transactions=Decimal(500)),
        ))
        cost = CostSettings(budgets={"poor": TenantBudget(day=Decimal(0))},
                            estimate_with={"vision": "fake/fake-1"})
        async with FakeService(tmp_path, pricing=prices, cost=cost) as svc:
            image = await svc.blobs.put(b"x" * 10, "image/png")
            for inquiry_id, tenant in (("rich-1", "rich"), ("poor-1", "poor")):
                await svc.submit(make_inquiry(inquiry_id, message="hi", language="en",
                                              attachments=(image,)), tenant=tenant)
                await svc.wait(inquiry_id, timeout=10)  # rich-1 leaves the analysis cached
            await svc.settle()
            original = await svc.saga("poor-1")
            events = causal_order(await svc.store.events("poor-1"))
            assert svc.coordinator is not None
            report = await replay(events, svc.coordinator.workflows.values(), original=original)
        assert "respond" in original.degraded
        assert any((s.degradation or "").startswith("budget:") for s in original.steps.values())
        assert report.differences == []
        assert report.terminal_differences == {}


class TestResume:
    async def test_failed_saga_resumes_from_the_failed_step(self, tmp_path: Path) -> None:
        """A saga that failed at the response step resumes: image analysis and translation are
        not called again, it completes, and its new events link to the originals."""
        base = support_workflow()
        strict = dataclasses.replace(base, steps=tuple(
            dataclasses.replace(s, fallback=None) if s.name == "respond" else s
            for s in base.steps
        ))
        async with FakeService(tmp_path, store=SqliteSagaStore(tmp_path / "s.db")) as svc:
            assert svc.coordinator is not None
            svc.coordinator.workflows = {"support": strict}
            svc.coordinator._starts = {"InquiryReceived": strict}
            svc.fakes.responder.behaviour.fail_always(permanent())
            await spanish_saga(svc)
            failed = await svc.saga("inq-1")
            assert failed.status.value == "failed"
            assert isinstance((await svc.terminal_events("inq-1"))[0].data, InquiryFailed)
            old_respond = failed.steps["respond"].request_id
            vision_calls = len(svc.fakes.vision.behaviour.calls)
            translate_calls = len(svc.fakes.translation.behaviour.calls)

            svc.fakes.responder.behaviour.heal()
            resumed = await resume(svc.coordinator, "inq-1")
            assert "respond" in resumed
            await svc.settle()
            state = await svc.saga("inq-1")
            assert state.status.value == "completed"
            assert state.steps["respond"].status is StepStatus.SUCCEEDED
            assert len(svc.fakes.vision.behaviour.calls) == vision_calls
            # translate_in was reused; only translate_out (never run before) is new
            assert len(svc.fakes.translation.behaviour.calls) == translate_calls + 1
            events = await svc.store.events("inq-1")
            new_request = next(e for e in events
                               if e.subject == "respond" and e.replayof == old_respond)
            assert new_request.causationid == old_respond
            ready = [e for e in events if e.type == "ResponseReady"]
            assert len(ready) == 1
            assert ready[0].replayof is not None


class TestExport:
    async def test_exported_case_replays_on_a_fresh_store(self, svc: FakeService) -> None:
        """export → import keeps the state and events; the case replays identically, and a
        redacted export carries no customer text."""
        await spanish_saga(svc)
        state = await svc.saga("inq-1")
        events = causal_order(await svc.store.events("inq-1"))
        lines = list(export_lines(events, state=state))
        imported_state, imported = import_lines(lines)
        assert imported_state == state
        report = await replay(imported, [support_workflow()], original=imported_state)
        assert report.identical

        redacted = "\n".join(export_lines(events, state=state, redact=True))
        assert "Mi pedido" not in redacted
        assert "ORD-2024-58317" not in redacted
        r_state, r_events = import_lines(redacted.splitlines())
        assert (await replay(r_events, [support_workflow()], original=r_state)).identical


class TestReplayCommands:
    def test_export_then_replay_from_file(self, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """`ai-apps export ID > case.jsonl` then `ai-apps replay --from case.jsonl` on another
        store reports identical decisions; `replay ID --rerun` shows the rerun step's diff."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/a.db")
        monkeypatch.setenv("AIAPPS_BLOBS", str(tmp_path / "blobs"))
        for s in ("LANGUAGE", "VISION", "TRANSLATION", "RESPONDER", "SPEECH"):
            monkeypatch.setenv(f"AIAPPS_PROVIDERS__{s}", "fake")
        (tmp_path / "i.json").write_text(json.dumps({
            "inquiry_id": "cli-r", "customer": {"id": "c"}, "message": "hola",
            "language": "es"}))
        runner = CliRunner()
        assert runner.invoke(app, ["inquiry", "i.json"]).exit_code == 0
        exported = runner.invoke(app, ["export", "cli-r"])
        assert exported.exit_code == 0, exported.output
        (tmp_path / "case.jsonl").write_text(exported.output)

        monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/fresh.db")
        shown = runner.invoke(app, ["replay", "--from", "case.jsonl", "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["identical"] is True

        monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/a.db")
        rerun = runner.invoke(app, ["replay", "cli-r", "--rerun", "translate_out", "--json"])
        assert rerun.exit_code == 0, rerun.output
        body = json.loads(rerun.output)
        assert body["rerun"]["rerun_type"] == "TextTranslated"
        assert body["rerun"]["changed"] == {}


class TestPrune:
    def test_prune_command(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """`ai-apps prune --older-than 1s` removes a finished saga and its events; a bad age
        says what to write."""
        import time

        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/a.db")
        monkeypatch.setenv("AIAPPS_BLOBS", str(tmp_path / "blobs"))
        for s in ("LANGUAGE", "VISION", "TRANSLATION", "RESPONDER", "SPEECH"):
            monkeypatch.setenv(f"AIAPPS_PROVIDERS__{s}", "fake")
        (tmp_path / "i.json").write_text(json.dumps({
            "inquiry_id": "old", "customer": {"id": "c"}, "message": "hello", "language": "en"}))
        runner = CliRunner()
        assert runner.invoke(app, ["inquiry", "i.json"]).exit_code == 0
        assert runner.invoke(app, ["prune", "--older-than", "1d"]).output.startswith(
            "removed 0 events and 0 finished sagas")
        time.sleep(1.1)
        pruned = runner.invoke(app, ["prune", "--older-than", "1s"])
        assert pruned.exit_code == 0, pruned.output
        assert pruned.output.startswith("removed 4 events and 1 finished sagas")
        assert runner.invoke(app, ["timeline", "old"]).exit_code == 1
        bad = runner.invoke(app, ["prune", "--older-than", "soon"])
        assert bad.exit_code == 2
        assert "like 30d" in bad.output
