"""``ai-apps replay``, ``resume`` and ``export``: debugging a request from its stored events."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from actors.errors import ProviderError
from events.base import Event
from events.envelope import Envelope
from events.support import StepFailed
from saga.memory_store import InMemorySagaStore
from saga.recorder import causal_order
from saga.replay import (
    RecordingTransport,
    ReplayReport,
    export_lines,
    import_lines,
    recorded_answer,
    replay,
    resume,
)
from saga.state import SagaState
from saga.store import Pruned
from service.console import console
from service.settings import Settings
from service.wiring import Service, make_actors, make_coordinator, make_store, make_transport

out = console()
err = console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


async def _load(settings: Settings, saga_id: str) -> tuple[SagaState | None, list[Envelope]]:
    store = make_store(settings)
    await store.open()
    try:
        return await store.load(saga_id), causal_order(await store.events(saga_id))
    finally:
        await store.close()


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``45s`` as a duration."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        value = float(text[:-1])
        unit = units[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise _fail(f"{text!r}: use a number and a unit, like 30d, 12h, 90m or 45s") from None
    if value <= 0:
        raise _fail(f"{text!r}: the age must be positive")
    return timedelta(**{unit: value})


def _apply_sets(settings: Settings, sets: list[str]) -> Settings:
    """``key=value`` overrides, nested with dots (``azure.openai.deployment=gpt-4o-mini``)."""
    data = settings.model_dump()
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--set {item!r}: use key=value")
        target = data
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise _fail(f"--set {item!r}: {part!r} is not a settings section")
            target = target[part]
        if last not in target:
            raise _fail(f"--set {item!r}: unknown setting {key!r}")
        try:
            target[last] = json.loads(value)
        except json.JSONDecodeError:
            target[last] = value
    return Settings.model_validate(data)


def register(app: typer.Typer) -> None:
    """Add the replay commands to the ``ai-apps`` application."""

    @app.command("replay")
    def replay_command(
        saga_id: Annotated[str | None, typer.Argument(help="The inquiry (saga) id.")] = None,
        from_file: Annotated[Path | None, typer.Option(
            "--from", help="Replay an exported case (ai-apps export) instead of the store.")] = None,
        rerun: Annotated[str | None, typer.Option(
            help="Re-execute this step for real (what-if); every other result is reused.")] = None,
        provider: Annotated[str | None, typer.Option(
            help="With --rerun: the provider family to use (local, azure, openai, fake).")] = None,
        sets: Annotated[list[str] | None, typer.Option(
            "--set", help="With --rerun: a setting to change, key=value (repeatable).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Re-run a saga from its stored events with the recorded provider results: no AI
        call is made and nothing is published. Reports whether the coordinator reaches the
        same decisions (a changed workflow shows here, step by step)."""
        settings = Settings()
        if (saga_id is None) == (from_file is None):
            raise _fail("give a saga id or --from FILE")
        if from_file is not None:
            try:
                original, events = import_lines(from_file.read_text().splitlines())
            except (OSError, ValueError) as exc:
                raise _fail(f"{from_file}: {exc}") from None
        else:
            assert saga_id is not None
            original, events = asyncio.run(_load(settings, saga_id))
            if original is None:
                raise _fail(f"no saga {saga_id!r} in {settings.store}", 1)
        rerun_settings = settings
        if rerun is not None:
            rerun_settings = _apply_sets(settings, sets or [])
        report, rerun_diff = asyncio.run(
            _replay(settings, rerun_settings, events, original, rerun, provider)
        )
        result = report.as_json()
        if rerun is not None:
            result["rerun"] = rerun_diff
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
        else:
            _print(report, result)
        if not report.identical and rerun is None:
            raise typer.Exit(1)

    @app.command("resume")
    def resume_command(
        saga_id: Annotated[str, typer.Argument(help="The inquiry (saga) id.")],
        timeout: Annotated[float, typer.Option(help="Seconds to wait (embedded bus).")] = 300,
    ) -> None:
        """Continue a failed or stuck saga from its failed step on the live bus, reusing the
        results already paid for. New events carry a replay marker and link to the originals."""
        settings = Settings()
        steps, terminal = asyncio.run(_resume(settings, saga_id, timeout))
        if not steps:
            raise _fail(f"saga {saga_id}: nothing to resume (no failed, cancelled or overdue "
                        "step)", 1)
        out.print(f"re-dispatched: {', '.join(steps)}")
        if terminal is not None:
            out.print(f"{terminal.type}: {json.dumps(terminal.data.model_dump(mode='json'))}")

    @app.command("prune")
    def prune_command(
        older_than: Annotated[str, typer.Option(
            help="Age of what to remove: 30d, 12h, 90m (default: AIAPPS_RETENTION_DAYS).")] = "",
        tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    ) -> None:
        """Remove what is older than the retention age: events, finished sagas started before
        it, the results actors recorded (the inbox) and idempotency keys."""
        settings = Settings()
        if older_than:
            age = parse_age(older_than)
        elif settings.retention_days is not None:
            age = timedelta(days=settings.retention_days)
        else:
            raise _fail("give --older-than (e.g. 30d) or set AIAPPS_RETENTION_DAYS")

        async def prune() -> Pruned:
            store = make_store(settings)
            await store.open()
            try:
                return await store.prune(datetime.now(UTC) - age, tenant)
            finally:
                await store.close()

        done = asyncio.run(prune())
        out.print(f"removed {done.events} events and {done.sagas} finished sagas older than "
                  f"{older_than or age}, {done.results} recorded results and "
                  f"{done.idempotency_keys} idempotency keys")

    @app.command("export")
    def export_command(
        saga_id: Annotated[str, typer.Argument(help="The inquiry (saga) id.")],
        redact: Annotated[bool, typer.Option(help="Replace customer text.")] = False,
    ) -> None:
        """Write a request's state and events as JSON lines (replay them elsewhere with
        ``ai-apps replay --from FILE``)."""
        settings = Settings()
        state, events = asyncio.run(_load(settings, saga_id))
        if state is None:
            raise _fail(f"no saga {saga_id!r} in {settings.store}", 1)
        for line in export_lines(events, state=state, redact=redact):
            sys.stdout.write(line + "\n")


async def _replay(
    settings: Settings, rerun_settings: Settings, events: list[Envelope],
    original: SagaState | None, rerun: str | None, provider: str | None,
) -> tuple[ReplayReport, dict[str, Any]]:
    workflows = make_coordinator(settings, RecordingTransport(), InMemorySagaStore()).workflows
    diff: dict[str, Any] = {}
    override = None
    actor: Any = None
    if rerun is not None:
        if original is not None and rerun not in original.steps:
            raise _fail(f"no step {rerun!r} in this saga: {', '.join(original.steps)}")
        service = (original.steps[rerun].service if original is not None
                   else rerun.split("[")[0])
        if provider is not None:
            data = rerun_settings.model_dump()
            data["providers"][service] = provider
            rerun_settings = Settings.model_validate(data)
        from actors.blobstore import FileBlobStore

        (actor,) = make_actors(rerun_settings, FileBlobStore(rerun_settings.blobs), [service])
        recorded = recorded_answer(events, rerun)

        async def override_step(step: str, request: Envelope) -> Event | None:
            if step != rerun:
                return None
            try:
                await actor.warm_up()
                result: Event = await actor.perform(request.data)
            except ProviderError as exc:
                result = StepFailed(step=step, service=service, error_class=exc.error_class,
                                    message=str(exc), retryable=exc.retryable)
            diff.update(_diff(recorded.data if recorded else None, result))
            return result

        override = override_step
    try:
        report = await replay(events, workflows.values(), original=original, override=override)
    finally:
        close = getattr(getattr(actor, "provider", None), "aclose", None)
        if callable(close):  # its connections, and the cache's or throttle's Redis client
            await close()
    return report, diff


def _diff(before: Event | None, after: Event) -> dict[str, Any]:
    a = before.model_dump(mode="json") if before is not None else {}
    b = after.model_dump(mode="json")
    changed = {k: {"recorded": a.get(k), "rerun": b.get(k)}
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    return {"recorded_type": type(before).__name__ if before else None,
            "rerun_type": type(after).__name__, "changed": changed}


async def _resume(
    settings: Settings, saga_id: str, timeout: float
) -> tuple[list[str], Envelope | None]:
    if settings.bus.startswith("memory://"):
        # the embedded bus exists only in this process: run the whole service here
        async with Service(settings) as svc:
            assert svc.coordinator is not None
            steps = await resume(svc.coordinator, saga_id)
            terminal = await svc.wait(saga_id, timeout) if steps else None
            return steps, terminal
    transport = make_transport(settings)
    store = make_store(settings)
    await store.open()
    await transport.start()
    try:
        coordinator = make_coordinator(settings, transport, store)
        return await resume(coordinator, saga_id), None  # the running coordinators finish it
    finally:
        await transport.close()
        await store.close()


def _print(report: ReplayReport, result: dict[str, Any]) -> None:
    verdict = "[green]identical decisions[/green]" if report.identical else (
        "[yellow]decisions differ[/yellow]")
    out.print(f"[bold]{report.saga_id}[/bold] replayed: {verdict}; no provider was called and "
              "nothing was published")
    if report.unrecorded:
        out.print(f"[yellow]steps the original run never dispatched:[/yellow] "
                  f"{', '.join(report.unrecorded)}")
    if report.differences:
        table = Table("step", "original", "replayed", title="differences")
        for d in result["differences"]:
            table.add_row(d["step"], _fmt(d["original"]), _fmt(d["replayed"]))
        out.print(table)
    for name, values in result["terminal_differences"].items():
        out.print(f"terminal {name}: {values['original']!r} → {values['replayed']!r}")
    if "rerun" in result:
        rerun = result["rerun"]
        out.print(f"rerun: {rerun.get('recorded_type')} → {rerun.get('rerun_type')}")
        for name, change in rerun.get("changed", {}).items():
            out.print(f"  {name}: {change['recorded']!r} → {change['rerun']!r}")


def _fmt(decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "(absent)"
    return f"{decision['outcome']} x{decision['attempts']}" + (
        " (fallback)" if decision["fallback"] else "")
