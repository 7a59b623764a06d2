"""What the result cache saved, beyond the process: each hit's ledger row carries the list
price of the call it did not make, ``ai-apps costs`` shows it, and it is exported as the
OpenTelemetry counter ``ai_apps.cache.saved`` (with its currency)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from events import ResponseReady, Usage
from saga.sqlite_store import SqliteSagaStore
from saga.store import CostEntry
from service import cost_cli
from service.cost_settings import CostSettings
from service.telemetry import Telemetry
from service.telemetry.settings import TelemetrySettings
from service.testing import FakeService, make_inquiry
from tests.cost.test_budget import PRICES
from tests.telemetry.conftest import instrument

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


async def twice(svc: FakeService) -> ResponseReady:
    first: ResponseReady | None = None
    for inquiry_id in ("inq-1", "inq-2"):
        await svc.submit(make_inquiry(inquiry_id, message="Mi cafetera llegó rota",
                                      language="es", voice_reply=True))
        done = (await svc.wait(inquiry_id, timeout=10)).data
        assert isinstance(done, ResponseReady)
        first = first or done
    assert first is not None
    return first


class TestSavedInTheLedger:
    async def test_hits_carry_what_they_saved(self, tmp_path: Path) -> None:
        """The repeat's translations and voice are hits: zero cost, and saved exactly what
        the first inquiry paid for them."""
        store = SqliteSagaStore(tmp_path / "s.db")
        async with FakeService(tmp_path, store=store, pricing=PRICES, cost=CostSettings()) as svc:
            first = await twice(svc)
            (row,) = await svc.store.cost_report(EPOCH, "workflow")
        assert first.cost is not None
        cached_steps = ("translate_in", "translate_out", "synthesize_voice")
        assert row.cached == 3
        assert row.saved == sum(first.cost.by_step[s] for s in cached_steps) > 0
        assert row.cost == first.cost.total + first.cost.by_step["respond"]

    async def test_an_old_store_file_gains_the_column(self, tmp_path: Path) -> None:
        """A ledger made before ``saved`` existed is opened and written as before."""
        import aiosqlite

        path = tmp_path / "old.db"
        async with aiosqlite.connect(path) as db:
            await db.execute(
                "CREATE TABLE cost_ledger (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, workflow "
                "TEXT NOT NULL, correlation_id TEXT NOT NULL, step TEXT NOT NULL, service TEXT "
                "NOT NULL, provider TEXT NOT NULL, model TEXT, usage TEXT NOT NULL, cost TEXT "
                "NOT NULL, currency TEXT NOT NULL, price_table TEXT NOT NULL, at TEXT NOT NULL, "
                "cached INTEGER NOT NULL DEFAULT 0)")
            await db.execute(
                "INSERT INTO cost_ledger VALUES ('old', 't1', 'support', 's', 'respond', "
                "'responder', 'fake', 'm', '{}', '0.5', 'USD', 't', "
                "'2026-01-01T00:00:00.000000Z', 0)")
            await db.commit()
        store = SqliteSagaStore(path)
        await store.open()
        try:
            (row,) = await store.cost_report(EPOCH, "tenant")
        finally:
            await store.close()
        assert (row.cost, row.saved) == (Decimal("0.5"), 0)


class TestSavedAsAMetric:
    async def test_the_counter_has_the_money_saved_and_its_currency(
        self, tmp_path: Path
    ) -> None:
        telemetry = Telemetry(TelemetrySettings(enabled=True), pricing=PRICES)
        svc = FakeService(tmp_path, pricing=PRICES, cost=CostSettings())
        async with instrument(svc, telemetry):
            first = await twice(svc)
            await svc.settle()
            text = telemetry.metrics_text().decode()
        assert first.cost is not None
        lines = [line for line in text.splitlines()
                 if line.startswith("ai_apps_cache_saved_total{")]
        by_service = {line.split('ai_apps_service="')[1].split('"')[0]: float(line.split()[-1])
                      for line in lines}
        assert all('ai_apps_currency="USD"' in line for line in lines)
        assert by_service["translation"] == pytest.approx(float(
            first.cost.by_step["translate_in"] + first.cost.by_step["translate_out"]))
        assert by_service["speech"] == pytest.approx(float(first.cost.by_step["synthesize_voice"]))


@pytest.fixture
async def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "costs.db"
    store = SqliteSagaStore(path)
    await store.open()
    now = datetime.now(UTC)

    def entry(eid: str, cost: str, saved: str = "0") -> CostEntry:
        return CostEntry(
            id=eid, tenant="acme", workflow="support", correlation_id=eid, step="translate_in",
            service="translation", provider="azure", model="m", usage=Usage(), cost=Decimal(cost),
            currency="USD", price_table="t", at=now, cached=saved != "0", saved=Decimal(saved),
        )

    await store.record_cost([entry("a", "0.25"), entry("b", "0", "0.25"), entry("c", "0", "0.5")])
    await store.close()
    monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{path}")
    return path


class TestCostsCommand:
    def test_costs_shows_what_the_cache_saved(self, ledger_db: Path) -> None:
        """A column and a total of the money saved, in text and JSON."""
        import typer

        application = typer.Typer()
        cost_cli.register(application)
        application.command("noop")(lambda: None)
        shown = CliRunner().invoke(application, ["costs", "--json"])
        assert shown.exit_code == 0, shown.output
        data = json.loads(shown.output)
        assert data["rows"] == [{"key": "acme", "calls": 3, "cached": 2, "cost": "0.25",
                                 "saved": "0.75"}]
        assert data["saved"] == "0.75"
        text = CliRunner().invoke(application, ["costs"]).output.splitlines()
        assert "saved by cache (USD)" in text[1]
        assert text[-1].split() == ["total", "3", "2", "0.25", "0.75"]
