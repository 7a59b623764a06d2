"""The campaign and quality-control workflows put their cost on every terminal event, as the
support workflow does; their calls are in the ledger; the CLI shows the cost of a saga."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from events.campaign import CampaignCancelled, CampaignReady, Money
from events.quality import InspectionFailed, InspectionReported, InspectionRequested
from saga.cost import Price, PriceTable
from saga.state import SagaState
from saga.store import SagaStore
from service.cost_settings import CacheSettings, CostSettings
from service.timeline import saga_summary
from tests.workflows.harness import WorkflowFakeService, campaign

PRICES = PriceTable(version="wf-1", prices=(
    Price(provider="fake", model="fake-*", per_image=Decimal("0.04"),
          per_million_characters=Decimal(20), per_1k_transactions=Decimal(2)),
))
COST = CostSettings(cache=CacheSettings(enabled=False))
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


async def ledger_of(store: SagaStore, saga_id: str, state: SagaState) -> dict[str, Decimal]:
    """What the ledger holds for the saga, by step (from the cost report by service, checked
    against the steps' services)."""
    rows = await store.cost_report(EPOCH, "workflow")
    assert len(rows) == 1
    return {k: v for k, v in (await _entries(store, saga_id)).items() if k in state.steps}


async def _entries(store: SagaStore, saga_id: str) -> dict[str, Decimal]:
    from saga.memory_store import InMemorySagaStore

    assert isinstance(store, InMemorySagaStore)
    return {e.step: e.cost for e in store._ledger.values() if e.correlation_id == saga_id}


class TestCampaignCost:
    async def test_a_campaign_reports_its_cost_by_step(self, tmp_path: Path) -> None:
        """Each image is priced at 0.04, each compliance check at one transaction; the total
        is the ledger's for the campaign."""
        async with WorkflowFakeService(tmp_path, pricing=PRICES, cost=COST) as svc:
            svc.fakes.vision.ocr_text = "AQUAPURE\nAquaPure Bottle"
            await svc.submit_event(campaign(languages=("en", "es")), "camp-1")
            done = (await svc.wait("camp-1", timeout=10)).data
            state = await svc.saga("camp-1")
            ledger = await ledger_of(svc.store, "camp-1", state)
        assert isinstance(done, CampaignReady)
        assert done.cost is not None
        assert done.cost.price_table == "wf-1"
        assert done.cost.by_step["concepts[0]"] == Decimal("0.04")
        assert done.cost.by_step["visual[es]"] == Decimal("0.04")
        assert done.cost.by_step["compliance[es]"] == Decimal("0.002")
        description = campaign().product_description
        assert done.cost.by_step["translate[es]"] == Decimal(20) * len(description) / 1_000_000
        assert done.cost.by_step == ledger
        assert done.cost.total == sum(ledger.values()) > Decimal("0.12")

    async def test_a_cancelled_campaign_reports_what_it_spent(self, tmp_path: Path) -> None:
        """Cancelled with a visual still being made: the cost is that of the steps done."""
        async with WorkflowFakeService(tmp_path, budget=True, pricing=PRICES, cost=COST) as svc:
            svc.imagegen.hold(language="fr")
            await svc.submit_event(campaign(budget=Money(amount=5000)), "camp-1")
            await svc.settle()
            await svc.cancel("camp-1", "called off")
            done = (await svc.wait("camp-1", timeout=10)).data
            svc.imagegen.release()
            await svc.settle()
        assert isinstance(done, CampaignCancelled)
        assert done.cost is not None
        assert "visual[fr]" not in done.cost.by_step
        assert done.cost.by_step["concepts[0]"] == Decimal("0.04")
        assert done.cost.total == sum(done.cost.by_step.values())


class TestInspectionCost:
    async def test_an_inspection_report_carries_its_cost(self, tmp_path: Path) -> None:
        """An unreadable image is reported as failing; its report's voice instructions were
        paid for, and the report says so, as the ledger does."""
        async with WorkflowFakeService(tmp_path, pricing=PRICES, cost=COST) as svc:
            broken = await svc.blobs.put(b"\x89PNG broken", "image/png")
            await svc.submit_event(InspectionRequested(inspection_id="insp-1", images=(broken,)),
                                   "insp-1")
            done = (await svc.wait("insp-1", timeout=10)).data
            state = await svc.saga("insp-1")
            ledger = await ledger_of(svc.store, "insp-1", state)
        assert isinstance(done, InspectionReported)
        assert done.cost is not None
        assert done.cost.by_step == ledger
        assert done.cost.by_step["voice[en]"] > 0
        assert done.cost.total == sum(ledger.values())

    async def test_a_cancelled_inspection_reports_its_cost(self, tmp_path: Path) -> None:
        """Cancelled while its image is being inspected: nothing was paid, and it says so at
        the table's version."""
        async with WorkflowFakeService(tmp_path, pricing=PRICES, cost=COST) as svc:
            svc.fakes.vision.behaviour.fail_next("hang")
            image = await svc.blobs.put(b"\x89PNG broken", "image/png")
            await svc.submit_event(InspectionRequested(inspection_id="insp-1", images=(image,)),
                                   "insp-1")
            await svc.settle()
            await svc.cancel("insp-1", "stop")
            done = (await svc.wait("insp-1", timeout=10)).data
        assert isinstance(done, InspectionFailed)
        assert done.cancelled
        assert done.cost is not None
        assert (done.cost.total, done.cost.price_table) == (0, "wf-1")


runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/aiapps.db")
    monkeypatch.setenv("AIAPPS_BLOBS", str(tmp_path / "blobs"))
    monkeypatch.setenv("AIAPPS_PRICING", PRICES.model_dump_json())
    for service in ("language", "vision", "translation", "responder", "speech"):
        monkeypatch.setenv(f"AIAPPS_PROVIDERS__{service.upper()}", "fake")
    return tmp_path


class TestCostOnTheCommandLine:
    def test_timeline_and_sagas_show_the_cost(self, env: Path) -> None:
        """`timeline` prints the saga's cost and each step's; `sagas` lists each saga's."""
        from service.cli import app

        inquiry = {"inquiry_id": "cli-1", "customer": {"id": "c1"}, "message": "Hola amigo",
                   "language": "es"}
        (env / "inquiry.json").write_text(json.dumps(inquiry))
        assert runner.invoke(app, ["inquiry", str(env / "inquiry.json")]).exit_code == 0
        # 10 characters each way at 20 per million: 0.0002, then the reply's characters
        shown = runner.invoke(app, ["timeline", "cli-1", "--json"])
        summary = json.loads(shown.output)
        assert summary["cost"]["currency"] == "USD"
        rows = {r["step"]: r for r in summary["steps"]}
        assert rows["translate_in"]["cost"] == "0.0002"
        assert Decimal(summary["cost"]["total"]) > Decimal("0.0002")
        text = runner.invoke(app, ["timeline", "cli-1"]).output
        assert f"cost={summary['cost']['total']} USD" in text
        listed = runner.invoke(app, ["sagas"]).output
        assert f"{summary['cost']['total']} USD" in listed

    def test_a_running_saga_has_no_cost_yet(self) -> None:
        """No terminal event, no cost in the summary."""
        from events import Customer, InquiryReceived
        from saga.state import StoredEvent

        state = SagaState(
            id="s", workflow="support", tenant="t",
            start=StoredEvent.of(InquiryReceived(inquiry_id="s", customer=Customer(id="c"),
                                                 message="hi")),
            start_envelope_id="e", started_at=EPOCH,
        )
        assert saga_summary(state)["cost"] is None
