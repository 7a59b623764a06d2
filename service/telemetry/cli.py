"""``ai-apps health``: the health report over the saga store.

A CLI process has no traffic of its own, so the report is built from the most recent stored
sagas and the circuit states the coordinators keep in the store
(:func:`~service.telemetry.health.stored_health`): the same report the HTTP gateway's
``/v1/health`` serves on a broker, and the same shape as a running process's
``Telemetry.health()``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from service.console import console
from service.logs import configure_logging, redactor_for
from service.settings import Settings
from service.telemetry.health import stored_health
from service.telemetry.redaction import Redactor
from service.telemetry.settings import TelemetrySettings

out = console()
err = console(stderr=True)
_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}


def register(app: typer.Typer) -> None:
    """Add ``health`` to the ``ai-apps`` command line."""
    app.command("health")(health)


def health(
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest sagas to read.")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Health of each AI service from the newest sagas in the store: calls, average and p95
    duration, success rate, recent errors, circuit (as the coordinators keep it in the store)
    and status. Exits 1 when the overall status is unhealthy."""
    settings = Settings()
    configure_logging(settings)
    telemetry: TelemetrySettings = getattr(settings, "telemetry", None) or TelemetrySettings()
    redactor = redactor_for(settings)
    try:
        report = asyncio.run(_load(settings, limit, telemetry, redactor))
    except Exception as exc:  # the store's errors say what is wrong with it
        err.print(f"[red]error:[/red] cannot read the store: {redactor.scrub(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_report(report)
    if report["status"] == "unhealthy":
        raise typer.Exit(1)


async def _load(
    settings: Settings, limit: int, telemetry: TelemetrySettings, redactor: Redactor
) -> dict[str, Any]:
    from service.wiring import make_store

    store = make_store(settings)
    await store.open()
    try:
        return await stored_health(store, telemetry.health, limit=limit, redactor=redactor)
    finally:
        await store.close()


def print_report(report: dict[str, Any]) -> None:
    """The report as a table, one row per service operation, and the overall status."""
    table = Table("service", "operation", "status", "calls", "success", "avg ms", "p95 ms",
                  "circuit", "last error", title=f"health ({report['source']})")
    for service, data in report["services"].items():
        rows = data["operations"] or {"-": None}
        for operation, op in rows.items():
            status = op["status"] if op else data["status"]
            last = op["recent_errors"][0] if op and op["recent_errors"] else None
            table.add_row(
                service, operation, f"[{_STYLE[status]}]{status}[/]",
                str(op["calls"]) if op else "0", _fmt(op and op["success_rate"], "{:.0%}"),
                _fmt(op and op["avg_ms"], "{:.1f}"), _fmt(op and op["p95_ms"], "{:.1f}"),
                data["circuit"] or "", f"{last['error_class']}: {last['message']}" if last else "",
            )
    out.print(table)
    overall = report["status"]
    reasons = [f"{s}: {r}" for s, d in report["services"].items() if d["status"] != "healthy"
               for r in d["reasons"][:1]]
    suffix = f" ({'; '.join(reasons)})" if reasons else ""
    out.print(f"overall: [{_STYLE[overall]}]{overall}[/]{suffix}", highlight=False)


def _fmt(value: Any, pattern: str) -> str:
    return "" if value is None or value is False else pattern.format(value)
