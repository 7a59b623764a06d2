"""``ai-apps costs``: what provider calls cost, from the cost ledger of the store.

    ai-apps costs                      # the last 7 days by tenant
    ai-apps costs --since 30d --by service
    ai-apps costs --since 2026-11-01 --by day --json

Registered on the ``ai-apps`` application by :func:`register`.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import typer

from saga.store import CostGroup, CostRow
from service.settings import Settings
from service.wiring import make_store

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` ago, or an ISO date or time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    found = _AGE.match(value.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: float(found.group(1))})
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r}: use an age (7d, 12h, 30m, 2w) or a date (2026-11-01)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def cost_rows(settings: Settings, since: datetime, by: CostGroup) -> list[CostRow]:
    store = make_store(settings)
    await store.open()
    try:
        return await store.cost_report(since, by)
    finally:
        await store.close()


def render(rows: list[CostRow], by: str, currency: str, since: datetime) -> str:
    """A text table, with a total line."""
    header = (by, "calls", "cached", f"cost ({currency})", f"saved by cache ({currency})")
    body = [(r.key, str(r.calls), str(r.cached), f"{r.cost:f}", f"{r.saved:f}") for r in rows]
    total = sum((r.cost for r in rows), Decimal(0))
    saved = sum((r.saved for r in rows), Decimal(0))
    footer = ("total", str(sum(r.calls for r in rows)), str(sum(r.cached for r in rows)),
              f"{total:f}", f"{saved:f}")
    table = [header, *body, footer]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [f"Provider costs since {since.isoformat(timespec='seconds')}", line(header)]
    out += [line(cells) for cells in body]
    out.append(line(footer))
    return "\n".join(out)


def costs(
    since: Annotated[str, typer.Option(help="An age (7d, 12h, 30m) or a date (2026-11-01).")] = "7d",
    by: Annotated[
        Literal["tenant", "workflow", "service", "day", "provider"],
        typer.Option("--by", help="Group by tenant, workflow, service, day or provider."),
    ] = "tenant",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """What provider calls cost, from the cost ledger, grouped."""
    settings = Settings()
    start = parse_since(since)
    rows = asyncio.run(cost_rows(settings, start, by))
    currency = settings.pricing.currency
    if as_json:
        typer.echo(json.dumps({
            "since": start.isoformat(), "by": by, "currency": currency,
            "price_table": settings.pricing.version,
            "rows": [{"key": r.key, "calls": r.calls, "cached": r.cached, "cost": str(r.cost),
                      "saved": str(r.saved)} for r in rows],
            "total": str(sum((r.cost for r in rows), Decimal(0))),
            "saved": str(sum((r.saved for r in rows), Decimal(0))),
        }, indent=2))
        return
    typer.echo(render(rows, by, currency, start))


def register(app: typer.Typer) -> None:
    """Add ``ai-apps costs`` to the application."""
    app.command("costs")(costs)


__all__ = ["costs", "parse_since", "register", "render"]
