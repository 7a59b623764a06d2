"""The ``ai-apps`` command line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from events.envelope import Envelope
from events.support import InquiryReceived, ResponseReady
from saga.recorder import causal_order
from service.console import console
from service.logs import configure_logging
from service.settings import REPO_ROOT, Settings
from service.timeline import format_cost, saga_cost, saga_summary, timeline_rows
from service.wiring import (
    ACTOR_ALIASES,
    ALL_SERVICES,
    ConfigurationError,
    Service,
    make_store,
    make_transport,
)

app = typer.Typer(
    help="ai-apps: AI services as actors on a message bus, coordinated by sagas.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(help="Dead-lettered messages: list them, send them back.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
providers_app = typer.Typer(help="The AI service providers in use.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")

out = console()
err = console(stderr=True)

EXAMPLES = REPO_ROOT / "examples" / "inquiries"


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings)
    return settings


def _embedded(settings: Settings) -> bool:
    return settings.bus.startswith("memory://")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# -- inquiries -----------------------------------------------------------------------------


def load_inquiry_file(path: Path) -> tuple[dict[str, Any], list[Path], str]:
    """Read an inquiry file: the inquiry fields, attachment paths (relative to the file) and
    the tenant. Raises ``typer.Exit`` with a message that says what to fix."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _fail(f"{path}: an inquiry file holds one JSON object")
    attachments = [path.parent / a for a in raw.pop("attachments", [])]
    missing = [str(a) for a in attachments if not a.is_file()]
    if missing:
        raise _fail(f"{path}: attachment not found: {', '.join(missing)}")
    tenant = str(raw.pop("tenant", "default"))
    raw.setdefault("inquiry_id", f"inq-{uuid.uuid4().hex[:12]}")
    return raw, attachments, tenant


async def _submit(svc: Service, path: Path) -> Envelope:
    fields, attachments, tenant = load_inquiry_file(path)
    refs = tuple([await svc.attach(a) for a in attachments])
    try:
        inquiry = InquiryReceived.model_validate({**fields, "attachments": refs})
    except Exception as exc:
        raise _fail(f"{path}: invalid inquiry: {exc}") from None
    return await svc.submit(inquiry, tenant=tenant)


def _service(settings: Settings) -> Service:
    """Everything in this process on the embedded bus; only a client on a real broker."""
    if _embedded(settings):
        return Service(settings)
    return Service(settings, coordinator=False, actors=[])


async def _run_inquiries(settings: Settings, paths: list[Path], timeout: float) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    async with _service(settings) as svc:
        sent = [await _submit(svc, p) for p in paths]
        for path, env in zip(paths, sent, strict=True):
            try:
                done = await svc.wait(env.correlationid, timeout=timeout)
            except TimeoutError:
                reports.append({"file": str(path), "inquiry_id": env.correlationid,
                                "error": f"no answer within {timeout:g}s"})
                continue
            # the coordinator saved the saga before it published the answer: the store (the
            # shared one, in a distributed deployment) has its final state
            state = await _stored_saga(svc, env.correlationid)
            voice = None
            if isinstance(done.data, ResponseReady) and done.data.voice is not None:
                voice = str(svc.blobs.path(done.data.voice))
            reports.append({
                "file": str(path),
                "inquiry_id": env.correlationid,
                "type": done.type,
                "result": done.data.model_dump(mode="json"),
                "voice_file": voice,
                "timeline": timeline_rows(state) if state else [],
            })
    return reports


async def _stored_saga(svc: Service, saga_id: str) -> Any:
    """The saga's state in the store; None (no timeline) when the store does not have it or
    cannot be read, which must not spoil the answer itself."""
    from saga.store import StoreError

    try:
        return await svc.store.load(saga_id)
    except StoreError as exc:
        err.print(f"[yellow]no timeline:[/yellow] the store cannot be read ({exc})")
        return None


def _print_report(report: dict[str, Any]) -> None:
    out.rule(f"[bold]{report['inquiry_id']}[/bold]  ({report['file']})")
    if "error" in report:
        out.print(f"[red]{report['error']}[/red]")
        return
    result = report["result"]
    if report["type"] == ResponseReady.event_type:
        flags = []
        if result["escalation_required"]:
            flags.append("[yellow]escalation required[/yellow]")
        if result["degraded"]:
            flags.append(f"[yellow]degraded: {', '.join(result['degraded'])}[/yellow]")
        out.print(f"[green]ResponseReady[/green] language={result['language']} "
                  f"confidence={result['confidence']:.2f} "
                  f"time={result['processing_time_ms']:.0f} ms " + " ".join(flags))
        out.print()
        out.print(result["text"], markup=False, highlight=False)
        out.print()
        for notice in result["notices"]:
            out.print(f"[yellow]notice:[/yellow] {notice}")
        if report["voice_file"]:
            out.print(f"voice reply: {report['voice_file']}")
    else:
        out.print(f"[red]InquiryFailed[/red]: {result['reason']}")
    if report["timeline"]:
        table = Table(title="timeline")
        for name in ("step", "service"):
            table.add_column(name, no_wrap=True)
        for name in ("start ms", "duration ms", "attempts", "outcome", "fallback / error"):
            table.add_column(name)
        for row in report["timeline"]:
            table.add_row(
                row["step"], row["service"], _num(row["start_ms"]), _num(row["duration_ms"]),
                str(row["attempts"]), row["outcome"],
                row["fallback"] or row["degradation"] or row["error"] or "",
            )
        out.print(table)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


@app.command()
def inquiry(
    file: Annotated[Path, typer.Argument(help="An inquiry JSON file (see examples/inquiries).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 300.0,
) -> None:
    """Run one inquiry and print the reply, the voice file and the saga's timeline."""
    settings = _settings()
    reports = _run(_run_inquiries(settings, [file], timeout))
    _emit(reports, as_json)


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 300.0,
) -> None:
    """Run the example inquiries shipped in examples/inquiries and print their outcomes."""
    settings = _settings()
    files = sorted(EXAMPLES.glob("*.json"))
    if not files:
        raise _fail(f"no example inquiries in {EXAMPLES}")
    reports = _run(_run_inquiries(settings, files, timeout))
    _emit(reports, as_json)


def _emit(reports: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")
    else:
        for report in reports:
            _print_report(report)
    if any("error" in r for r in reports):
        raise typer.Exit(1)


# -- inspecting --------------------------------------------------------------------------


@app.command()
def timeline(
    inquiry_id: Annotated[str, typer.Argument(help="The inquiry (saga) id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a stored saga's steps and its events in order."""
    settings = _settings()

    async def load() -> tuple[Any, list[Envelope]]:
        store = make_store(settings)
        await store.open()
        try:
            return await store.load(inquiry_id), causal_order(await store.events(inquiry_id))
        finally:
            await store.close()

    state, events = _run(load())
    if state is None:
        raise _fail(f"no saga {inquiry_id!r} in {settings.store}", 1)
    summary = saga_summary(state)
    summary["events"] = [
        {"id": e.id, "type": e.type, "time": e.time.isoformat(), "subject": e.subject,
         "causationid": e.causationid, "source": e.source}
        for e in events
    ]
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return
    cost = format_cost(summary["cost"])
    out.print(f"[bold]{state.id}[/bold] workflow={state.workflow} status={state.status.value} "
              f"tenant={state.tenant}" + (f" cost={cost}" if cost else ""))
    table = Table()
    for name in ("step", "service"):
        table.add_column(name, no_wrap=True)
    for name in ("start ms", "duration ms", "attempts", "outcome", "provider", "cost",
                 "fallback / error"):
        table.add_column(name)
    for row in summary["steps"]:
        table.add_row(row["step"], row["service"], _num(row["start_ms"]),
                      _num(row["duration_ms"]), str(row["attempts"]), row["outcome"],
                      row["provider"] or "", row["cost"] or "",
                      row["fallback"] or row["degradation"] or row["error"] or "")
    out.print(table)
    events_table = Table("time", "type", "subject", "source", title="events")
    for e in summary["events"]:
        events_table.add_row(e["time"], e["type"], e["subject"] or "", e["source"])
    out.print(events_table)


@app.command("sagas")
def list_sagas(
    status: Annotated[str | None, typer.Option(help="running, completed or failed.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """List the most recent sagas in the store."""
    settings = _settings()

    async def load() -> list[Any]:
        store = make_store(settings)
        await store.open()
        try:
            return await store.list_sagas(status, limit)
        finally:
            await store.close()

    table = Table("id", "workflow", "status", "started", "cost", "degraded")
    for state in _run(load()):
        table.add_row(state.id, state.workflow, state.status.value,
                      state.started_at.isoformat(timespec="seconds"),
                      format_cost(saga_cost(state)), ", ".join(state.degraded))
    out.print(table)


# -- long-running roles ------------------------------------------------------------------


async def _serve(svc: Service) -> None:
    """Run a role until SIGTERM or SIGINT, then stop gracefully: the consumers stop taking
    messages, the handlers in flight finish (for up to the transport's grace; the messages of
    any still running go back to the broker), the connections close, and the process exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with svc:
        err.print("running; SIGTERM or Ctrl-C stops after in-flight messages finish")
        await stop.wait()
        err.print(f"{received[0]}: stopping; finishing the messages in flight")
        stopping = loop.time()
    err.print(f"stopped in {loop.time() - stopping:.1f}s")


_ACTORS_HELP = (
    "Comma-separated actors to run: " + ", ".join(ALL_SERVICES) + " ("
    + ", ".join(f"{alias} = {name}" for alias, name in ACTOR_ALIASES.items()) + ")."
)


@app.command()
def worker(
    actors: Annotated[str, typer.Option(help=_ACTORS_HELP)] = "language,vision,translation,responder,speech",
) -> None:
    """Run a group of actors (competing consumers on the bus) until stopped."""
    settings = _settings()
    chosen = [a.strip() for a in actors.split(",") if a.strip()]
    if not chosen:
        raise _fail("--actors: name at least one actor")
    _require_broker(settings, "worker")
    _run(_serve(_role(settings, coordinator=False, actors=chosen)))


@app.command()
def coordinator() -> None:
    """Run the saga coordinator and the event recorder until stopped."""
    settings = _settings()
    _require_broker(settings, "coordinator")
    _run(_serve(_role(settings, coordinator=True, actors=[])))


def _role(settings: Settings, *, coordinator: bool, actors: list[str]) -> Service:
    """The :class:`Service` of one role; a configuration error is one ``error:`` line (exit 2),
    not a traceback."""
    try:
        return Service(settings, coordinator=coordinator, actors=actors)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None


def _require_broker(settings: Settings, role: str) -> None:
    if _embedded(settings):
        raise _fail(
            f"'ai-apps {role}' runs one role of a distributed deployment and needs a shared bus: "
            "set AIAPPS_BUS=amqp://… (the in-process bus cannot be shared between processes)"
        )


# -- dead letters --------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    group: Annotated[str | None, typer.Option(help="Only this subscriber group.")] = None,
    limit: Annotated[int, typer.Option(
        min=1, help="Show the oldest N (at most N are read from each dead-letter queue).",
    )] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the oldest dead-lettered messages: id, type, group, reason, attempts, time.

    They stay where they are; while the listing reads them (a moment) they are invisible to
    others, so a `dlq redrive` running at that very time may not find one (run it again)."""
    settings = _settings()
    _require_broker(settings, "dlq list")

    async def load() -> list[Any]:
        transport = make_transport(settings)
        await transport.start()
        try:
            return await transport.peek_dead_letters(group, limit)
        finally:
            await transport.close()

    letters = _run(load())
    if len(letters) == limit:
        err.print(f"the oldest {limit} shown; --limit N shows more")
    if as_json:
        sys.stdout.write(json.dumps([
            {"id": d.id, "group": d.group, "type": d.event_type, "reason": d.reason,
             "error_class": d.error_class, "attempts": d.attempts, "time": d.time.isoformat(),
             "correlationid": d.correlationid}
            for d in letters
        ], indent=2) + "\n")
        return
    table = Table("id", "group", "type", "reason", "attempts", "time")
    for d in letters:
        table.add_row(d.id, d.group, d.event_type or "?", d.reason, str(d.attempts),
                      d.time.isoformat(timespec="seconds"))
    out.print(table)


@dlq_app.command("redrive")
def dlq_redrive(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids; none: all.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this subscriber group.")] = None,
) -> None:
    """Send dead-lettered messages back to their group's queue for another try.

    With ids, each queue is read only until they are all found. Without, every letter there
    when it starts is re-driven (not those that fail again meanwhile). Exits 1 if an id was
    not found: re-driven already, or held for a moment by a `dlq list` running now."""
    settings = _settings()
    _require_broker(settings, "dlq redrive")

    async def redrive() -> int:
        transport = make_transport(settings)
        await transport.start()
        try:
            return await transport.redrive(ids or None, group)
        finally:
            await transport.close()

    moved = _run(redrive())
    out.print(f"re-driven: {moved}")
    if ids and moved < len(set(ids)):
        raise _fail(f"{len(set(ids)) - moved} of the ids not found (re-driven already, or "
                    "held by a `dlq list` running now: try again)", 1)


@providers_app.command("check")
def providers_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """For each configured Azure/OpenAI capability: does its endpoint answer and accept the
    credentials (without spending money where the API allows)."""
    settings = _settings()
    from service.provider_settings import check_providers

    reports: list[dict[str, Any]] = _run(check_providers(settings.azure))
    if as_json:
        sys.stdout.write(json.dumps(reports, indent=2) + "\n")
    else:
        table = Table("capability", "provider", "endpoint", "reachable", "authenticated", "detail")
        for r in reports:
            table.add_row(r["capability"], r["provider"], r["endpoint"] or "", str(r["reachable"]),
                          str(r["authenticated"]), r["detail"] or "")
        out.print(table)
        families = settings.providers.model_dump()
        out.print("families: " + ", ".join(f"{k}={v}" for k, v in families.items()))
    if any(r["reachable"] is False or r["authenticated"] is False for r in reports):
        raise typer.Exit(1)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None


def _register_extensions() -> None:
    from service import cost_cli, gateway_cli, health_cli, replay_cli, workflow_cli
    from service.servicebus_cli import servicebus_app
    from service.telemetry import cli as telemetry_cli

    replay_cli.register(app)
    workflow_cli.register(app)
    health_cli.register(app)
    gateway_cli.register(app)
    cost_cli.register(app)
    telemetry_cli.register(app)
    app.add_typer(servicebus_app, name="servicebus")


_register_extensions()


def main() -> None:
    app()


if __name__ == "__main__":
    main()


__all__ = ["app", "main"]

