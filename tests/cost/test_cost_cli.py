"""``ai-apps costs`` over a SQLite store's ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from events import Usage
from saga.sqlite_store import SqliteSagaStore
from saga.store import CostEntry
from service import cost_cli


def entry(eid: str, tenant: str, service: str, cost: str, at: datetime) -> CostEntry:
    return CostEntry(
        id=eid, tenant=tenant, workflow="support", correlation_id=eid, step=service,
        service=service, provider="azure", model="m", usage=Usage(characters=1),
        cost=Decimal(cost), currency="USD", price_table="t", at=at,
    )


@pytest.fixture
async def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "costs.db"
    store = SqliteSagaStore(path)
    await store.open()
    now = datetime.now(UTC)
    await store.record_cost([
        entry("a", "acme", "translation", "0.25", now - timedelta(hours=1)),
        entry("b", "acme", "speech", "1.5", now - timedelta(days=2)),
        entry("c", "beta", "translation", "0.10", now - timedelta(days=20)),
    ])
    await store.close()
    monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{path}")
    return path


def app() -> typer.Typer:
    application = typer.Typer()
    cost_cli.register(application)
    application.command("noop")(lambda: None)  # two commands: `costs` stays a subcommand
    return application


def test_costs_by_tenant_in_text(db: Path) -> None:
    result = CliRunner().invoke(app(), ["costs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["tenant", "calls", "cached", "cost", "(USD)", "saved", "by",
                                "cache", "(USD)"]
    assert lines[2].split() == ["acme", "2", "0", "1.75", "0"]
    assert lines[-1].split() == ["total", "2", "0", "1.75", "0"]


def test_costs_by_service_as_json(db: Path) -> None:
    result = CliRunner().invoke(app(), ["costs", "--since", "30d", "--by", "service", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows"] == [
        {"key": "speech", "calls": 1, "cached": 0, "cost": "1.5", "saved": "0"},
        {"key": "translation", "calls": 2, "cached": 0, "cost": "0.35", "saved": "0"},
    ]
    assert data["total"] == "1.85"


def test_since_parses_ages_and_dates() -> None:
    now = datetime(2026, 5, 10, 12, tzinfo=UTC)
    assert cost_cli.parse_since("7d", now) == now - timedelta(days=7)
    assert cost_cli.parse_since("12h", now) == now - timedelta(hours=12)
    assert cost_cli.parse_since("2026-05-01", now) == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        cost_cli.parse_since("yesterday", now)
