"""The campaign and quality-control workflows in the running service, and their commands.

:class:`WorkflowService` is :class:`~service.wiring.Service` plus the campaign and quality
workflows (and any extra workflow, e.g. a pattern from :mod:`saga.patterns`) in its
coordinator, and the image-generation, asset, brand-compliance and inspection actors in its
runtime. :func:`add_workflows` does the same to any ``Service`` (tests use it on
``FakeService``).

Commands (``register(app)`` adds them to ``ai-apps``; ``python -m service.workflow_cli`` runs
them alone)::

    ai-apps campaign examples/campaigns/aquapure.json
    ai-apps inspect good.png bad.png --criteria criteria.json --languages en,es

Both show a progress bar per branch, read from the saga's state in the store while waiting.
Ctrl-C cancels the saga: what it produced is removed, and its terminal event is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import signal
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.capabilities import ImageAnalyzer, ImageGenerator
from actors.creative import AssetActor, BrandComplianceActor, ImageGenerationActor, InspectionActor
from actors.runtime import Actor
from actors.services import VisionActor
from events.base import Event
from events.campaign import CampaignCancelled, CampaignFailed, CampaignReady, CampaignRequested
from events.common import BlobRef
from events.envelope import Envelope
from events.quality import InspectionCriteria, InspectionFailed, InspectionReported, InspectionRequested
from saga.coordinator import SagaCancelRequested, SagaCoordinator
from saga.patterns import PATTERN_TERMINALS
from saga.state import SagaState, StepStatus
from saga.workflow import StepRetry, Workflow
from saga.workflows.campaign import campaign_workflow
from saga.workflows.quality import quality_workflow
from service.console import console as make_console
from service.logs import configure_logging
from service.settings import REPO_ROOT, Settings
from service.wiring import ConfigurationError, Service

WORKFLOW_TERMINALS: tuple[type[Event], ...] = (
    CampaignReady, CampaignFailed, CampaignCancelled, InspectionReported, InspectionFailed,
    *PATTERN_TERMINALS,
)
CREATIVE_GROUPS = tuple(f"actor.{s}" for s in ("imagegen", "assets", "compliance", "inspection"))


class WorkflowSettings(Settings):
    """Settings of the campaign and quality workflows (``AIAPPS_FANOUT_LIMIT`` …)."""

    fanout_limit: int = Field(
        default=4, ge=1, description="Branches of one fanned-out step in flight at once."
    )
    imagegen: Literal["local", "fake"] | None = Field(
        default=None,
        description="Image generator: local (labelled cards) or fake; unset: providers.imagegen, else local.",
    )
    budget_service: str | None = Field(
        default=None, description="Service that reserves campaign budgets (none yet: off)."
    )


# -- composition ---------------------------------------------------------------------------------


def make_imagegen(settings: Settings) -> ImageGenerator:
    family = getattr(settings, "imagegen", None) or getattr(settings.providers, "imagegen", "local")
    if family == "fake":
        from actors.providers.fake_imagegen import FakeImageGenerator

        return FakeImageGenerator()
    from actors.providers.local.imagegen import CardImageGenerator

    return CardImageGenerator()


def _analyzer(svc: Service) -> ImageAnalyzer:
    """The vision actor's provider (one OCR engine for the process), else a new one."""
    for actor in svc.runtime.actors:
        if isinstance(actor, VisionActor):
            return actor.provider
    if svc.settings.providers.vision == "fake":
        from actors.providers.fake import FakeImageAnalyzer

        return FakeImageAnalyzer()
    from actors.providers.local.vision import LocalImageAnalyzer

    return LocalImageAnalyzer()


def creative_actors(svc: Service, imagegen: ImageGenerator, analyzer: ImageAnalyzer) -> list[Actor]:
    return [
        ImageGenerationActor(imagegen, svc.blobs), AssetActor(svc.blobs),
        BrandComplianceActor(analyzer, svc.blobs), InspectionActor(analyzer, svc.blobs),
    ]


def add_workflows(
    svc: Service,
    *,
    imagegen: ImageGenerator | None = None,
    analyzer: ImageAnalyzer | None = None,
    fanout_limit: int | None = None,
    budget_service: str | None = None,
    extra_workflows: Iterable[Workflow] = (),
    with_actors: bool | None = None,
) -> None:
    """Put the campaign and quality workflows (and ``extra_workflows``) in ``svc``'s
    coordinator and their actors in its runtime. Call before ``svc.start()``.
    ``with_actors`` defaults to whether ``svc`` runs actors at all."""
    settings = svc.settings
    limit = fanout_limit or getattr(settings, "fanout_limit", 4)
    budget = budget_service or getattr(settings, "budget_service", None)
    retry = StepRetry(max_attempts=settings.step_max_attempts)
    workflows = [
        campaign_workflow(fanout_limit=limit, timeouts=settings.step_timeouts, retry=retry,
                          budget_service=budget, pricing=settings.pricing),
        quality_workflow(fanout_limit=limit, timeouts=settings.step_timeouts, retry=retry,
                         pricing=settings.pricing),
        *extra_workflows,
    ]
    old = svc.coordinator
    if old is not None:
        # these definitions (with the arguments given here) replace any of the same name
        names = {w.name for w in workflows}
        kept = [w for name, w in old.workflows.items() if name not in names]
        svc.coordinator = SagaCoordinator(
            old.transport, old.store, [*kept, *workflows], clock=old.clock,
            breakers=old.breakers, timer_interval=old.timer_interval,
            outbox_interval=old.outbox_interval, concurrency=old.concurrency,
            costs=old.costs,  # the ledger and budgets apply to these workflows too
        )
    if with_actors if with_actors is not None else bool(svc.runtime.actors):
        made = creative_actors(svc, imagegen or make_imagegen(settings), analyzer or _analyzer(svc))
        if imagegen is not None or analyzer is not None:
            # providers given here win over those the service made for these actors
            replaced = {actor.service for actor in made}
            svc.runtime.actors[:] = [a for a in svc.runtime.actors if a.service not in replaced]
        present = {actor.service for actor in svc.runtime.actors}
        svc.runtime.actors.extend(actor for actor in made if actor.service not in present)


async def listen_for_terminals(svc: Service) -> None:
    """Let ``svc.wait()`` return the terminal events of these workflows too."""
    await svc.transport.subscribe(
        f"replies.{uuid.uuid4().hex[:12]}", [t.event_type for t in WORKFLOW_TERMINALS],
        svc._on_terminal, ephemeral=True,
    )


async def submit_event(
    svc: Service, start: Event, correlationid: str, *, tenant: str = "default"
) -> Envelope:
    """Publish the event that starts a saga; its correlation id is the saga id."""
    envelope = Envelope.new(start, correlationid=correlationid, tenant=tenant,
                            source="/ai-apps/cli")
    svc._waiter(correlationid)
    await svc.transport.publish(envelope)
    return envelope


async def request_cancel(svc: Service, saga_id: str, reason: str, *, tenant: str = "default") -> None:
    """Ask the coordinator (here or on the bus) to cancel a running saga."""
    envelope = Envelope.new(SagaCancelRequested(reason=reason, requested_by="cli"),
                            correlationid=saga_id, tenant=tenant, source="/ai-apps/cli")
    await svc.transport.publish(envelope)


class WorkflowService(Service):
    """The embedded service with the campaign and quality workflows (see the module doc)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        imagegen: ImageGenerator | None = None,
        analyzer: ImageAnalyzer | None = None,
        extra_workflows: Iterable[Workflow] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(settings or WorkflowSettings(), **kwargs)
        add_workflows(self, imagegen=imagegen, analyzer=analyzer, extra_workflows=extra_workflows)

    async def start(self) -> None:
        await listen_for_terminals(self)
        await super().start()

    async def submit_event(self, start: Event, correlationid: str, *, tenant: str = "default") -> Envelope:
        return await submit_event(self, start, correlationid, tenant=tenant)

    async def cancel(self, saga_id: str, reason: str = "cancelled") -> None:
        await request_cancel(self, saga_id, reason)


# -- progress ------------------------------------------------------------------------------------


def branch_progress(state: SagaState, item: str, steps: Sequence[str]) -> tuple[int, int, str]:
    """How far one branch (``item``: a language, an image index) is through ``steps``: the
    settled step branches whose item is ``item`` or starts with ``item|`` (every branch for
    ``"*"``), of all those known; a step not fanned out yet counts as one to do. Returns done, total and the
    latest failure or fallback of the branch ('' if none)."""
    done = total = 0
    trouble = ""
    for name in steps:
        root = state.steps.get(name)
        if root is None:
            continue
        if root.status is not StepStatus.EXPANDED:
            total += 1
            done += root.status.settled
            continue
        for key in root.branches:
            branch = state.steps[key]
            mine = item == "*" or branch.item == item or (branch.item or "").startswith(f"{item}|")
            if not mine:
                continue
            total += 1
            done += branch.status.settled
            if branch.status in (StepStatus.FALLBACK, StepStatus.FAILED):
                trouble = f"{name}: {branch.fallback_reason or branch.status}"
    return done, max(total, 1), trouble


async def follow(
    svc: Service, saga_id: str, branches: dict[str, tuple[str, Sequence[str]]], timeout: float,
    *, console: Console | None = None,
) -> Envelope:
    """Wait for the saga's terminal event, drawing one progress bar per branch
    (``label → (item, steps)``). Ctrl-C asks for cancellation, then keeps waiting."""
    console = console or make_console(stderr=True)
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("[yellow]{task.fields[note]}"))
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            tasks = {label: progress.add_task(label, total=1, note="") for label in branches}
            waiter = asyncio.ensure_future(svc.wait(saga_id, timeout=timeout))
            cancelling = False
            while True:
                try:
                    done = await asyncio.wait_for(asyncio.shield(waiter), 0.25)
                except TimeoutError:
                    if waiter.done():
                        raise  # no outcome within ``timeout``
                else:
                    state = await svc.store.load(saga_id)
                    if state is not None:
                        _draw(progress, tasks, branches, state)
                    return done
                if interrupted.is_set() and not cancelling:
                    cancelling = True
                    console.print("[yellow]cancelling: removing what was produced …[/yellow]")
                    await request_cancel(svc, saga_id, "interrupted from the command line")
                state = await svc.store.load(saga_id)
                if state is not None:
                    _draw(progress, tasks, branches, state)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


def _draw(progress: Progress, tasks: dict[str, Any], branches: dict[str, tuple[str, Sequence[str]]],
          state: SagaState) -> None:
    for label, (item, steps) in branches.items():
        done, total, note = branch_progress(state, item, steps)
        progress.update(tasks[label], completed=done, total=total, note=note[:60])


# -- the commands --------------------------------------------------------------------------------

out = make_console()
err = make_console(stderr=True)
app = typer.Typer(help="Campaign and quality-control workflows.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
EXAMPLES = REPO_ROOT / "examples"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _settings() -> WorkflowSettings:
    settings = WorkflowSettings()
    configure_logging(settings)
    return settings


def _service(settings: WorkflowSettings) -> WorkflowService:
    if settings.bus.startswith("memory://"):
        return WorkflowService(settings)
    return WorkflowService(settings, coordinator=False, actors=[])


def _path(svc: Service, ref: BlobRef | None) -> str:
    return str(svc.blobs.path(ref)) if ref is not None else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _fail(f"{path}: expected one JSON object")
    return raw


async def _attach(svc: Service, path: Path) -> BlobRef:
    if not await asyncio.to_thread(path.is_file):
        raise _fail(f"{path}: no such image")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return await svc.blobs.put(await asyncio.to_thread(path.read_bytes), kind, filename=path.name)


async def _run_campaign(settings: WorkflowSettings, file: Path, timeout: float) -> dict[str, Any]:
    raw = _read_json(file)
    raw.setdefault("campaign_id", f"camp-{uuid.uuid4().hex[:10]}")
    try:
        request = CampaignRequested.model_validate(raw)
    except ValidationError as exc:
        raise _fail(f"{file}: invalid campaign: {exc}") from None
    svc = _service(settings)
    async with svc:
        await svc.submit_event(request, request.campaign_id)
        branches: dict[str, tuple[str, Sequence[str]]] = {
            "concepts": ("*", ("reserve_budget", "concepts"))
        }
        steps = ("translate", "visual", "voice", "compliance")
        branches |= {f"language {lang}": (lang, steps) for lang in request.target_languages}
        try:
            done = await follow(svc, request.campaign_id, branches, timeout)
        except TimeoutError:
            raise _fail(f"no outcome within {timeout:g}s", 1) from None
        result = done.data.model_dump(mode="json")
        files: dict[str, str] = {}
        if isinstance(done.data, CampaignReady):
            for i, ref in enumerate(done.data.concepts):
                files[f"concept {i + 1}"] = _path(svc, ref)
            for lang in done.data.languages:
                if lang.visual:
                    files[f"visual {lang.language}"] = _path(svc, lang.visual)
                if lang.voice_over:
                    files[f"voice-over {lang.language}"] = _path(svc, lang.voice_over)
        return {"type": done.type, "result": result, "files": files}


async def _run_inspection(
    settings: WorkflowSettings, images: list[Path], criteria_file: Path, languages: list[str],
    report_language: str, voice: bool, timeout: float,
) -> dict[str, Any]:
    raw = _read_json(criteria_file)
    reference = raw.pop("reference_image", None)
    try:
        criteria = InspectionCriteria.model_validate(raw)
    except ValidationError as exc:
        raise _fail(f"{criteria_file}: invalid criteria: {exc}") from None
    inspection_id = f"insp-{uuid.uuid4().hex[:10]}"
    svc = _service(settings)
    async with svc:
        refs = tuple([await _attach(svc, p) for p in images])
        reference_ref = await _attach(svc, criteria_file.parent / reference) if reference else None
        try:
            request = InspectionRequested(
                inspection_id=inspection_id, images=refs, criteria=criteria,
                reference_image=reference_ref, report_language=report_language,
                documentation_languages=tuple(languages), voice_instructions=voice,
            )
        except ValidationError as exc:
            raise _fail(f"invalid inspection: {exc}") from None
        await svc.submit_event(request, inspection_id)
        branches: dict[str, tuple[str, Sequence[str]]] = {
            f"image {i + 1}": (str(i), ("inspect",)) for i in range(len(images))
        }
        branches |= {f"docs {lang}": (lang, ("translate", "card", "voice")) for lang in languages}
        try:
            done = await follow(svc, inspection_id, branches, timeout)
        except TimeoutError:
            raise _fail(f"no outcome within {timeout:g}s", 1) from None
        files: dict[str, str] = {}
        if isinstance(done.data, InspectionReported):
            for doc in done.data.documentation:
                for card in doc.corrective_images:
                    files[f"card {doc.language} image {card.image_index + 1} defect "
                          f"{card.defect_index + 1}"] = _path(svc, card.image)
                if doc.voice_instructions:
                    files[f"voice {doc.language}"] = _path(svc, doc.voice_instructions)
        return {"type": done.type, "result": done.data.model_dump(mode="json"), "files": files}


def _print_campaign(report: dict[str, Any]) -> None:
    result = report["result"]
    if report["type"] != CampaignReady.event_type:
        out.print(f"[red]{report['type']}[/red]: {result['reason']}")
        out.print(f"assets removed: {len(result['assets_removed'])}; "
                  f"budget released: {result['budget_released']}")
        return
    ready = ", ".join(result["market_ready"]) or "none"
    out.print(f"[green]CampaignReady[/green] {result['campaign_id']}: market-ready: {ready} "
              f"(threshold {result['score_threshold']:.2f}, {result['processing_time_ms']:.0f} ms)")
    table = Table("language", "market-ready", "score", "visual", "voice-over", "why not")
    for lang in result["languages"]:
        score = lang["compliance_score"]
        table.add_row(
            lang["language"], "[green]yes[/green]" if lang["market_ready"] else "[red]no[/red]",
            "" if score is None else f"{score:.2f}", "yes" if lang["visual"] else "-",
            "yes" if lang["voice_over"] else "-", lang["failure"] or "",
        )
    out.print(table)
    _print_files(report["files"])


def _print_inspection(report: dict[str, Any]) -> None:
    result = report["result"]
    if report["type"] != InspectionReported.event_type:
        out.print(f"[red]{report['type']}[/red]: {result['reason']}")
        return
    verdict = "[green]PASS[/green]" if result["passed"] else "[red]FAIL[/red]"
    out.print(f"{verdict} overall score {result['overall_score']:.2f}")
    out.print(result["summary"], markup=False)
    table = Table("image", "passed", "score", "defects (x, y, w, h)")
    for image in result["images"]:
        defects = "; ".join(
            f"{d['severity']} {d['kind']}"
            + (f" at ({d['box']['x']}, {d['box']['y']}, {d['box']['width']}, {d['box']['height']})"
               if d["box"] else "")
            for d in image["defects"]
        ) or image["failure"] or ""
        table.add_row(image["image"]["filename"] or str(image["index"] + 1),
                      "yes" if image["passed"] else "no", f"{image['quality_score']:.2f}", defects)
    out.print(table)
    out.print("[bold]recommendations[/bold]")
    for line in result["recommendations"]:
        out.print(f" • {line}", markup=False)
    for doc in result["documentation"]:
        out.rule(f"documentation: {doc['language']}")
        out.print(doc["report"] or "(no report)", markup=False)
        for failure in doc["failures"]:
            out.print(f"[yellow]missing:[/yellow] {failure}")
    _print_files(report["files"])


def _print_files(files: dict[str, str]) -> None:
    if files:
        table = Table("asset", "file")
        for name, path in files.items():
            table.add_row(name, path)
        out.print(table)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None


def _emit(report: dict[str, Any], as_json: bool, printer: Any, ok: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        printer(report)
    if not ok:
        raise typer.Exit(1)


@app.command()
def campaign(
    file: Annotated[Path, typer.Argument(help="A campaign JSON file (see examples/campaigns).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 600.0,
) -> None:
    """Run a marketing campaign: concepts, then per language translation, visual, voice-over
    and brand-compliance score. Ctrl-C cancels it and removes what it produced."""
    settings = _settings()
    report = _run(_run_campaign(settings, file, timeout))
    _emit(report, as_json, _print_campaign, report["type"] == CampaignReady.event_type)


@app.command()
def inspect(
    images: Annotated[list[Path], typer.Argument(help="Product photos to inspect.")],
    criteria: Annotated[Path, typer.Option(
        "--criteria", help="Criteria JSON (see examples/inspections); may name a reference_image.",
    )],
    languages: Annotated[str, typer.Option(help="Documentation languages, comma-separated.")] = "en",
    report_language: Annotated[str, typer.Option(help="Language the report is written in.")] = "en",
    voice: Annotated[bool, typer.Option(help="Voice instructions for the workers.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 600.0,
) -> None:
    """Inspect product photos against criteria (and a reference photo): defects with their
    locations, scores, pass or fail, and documentation per language. Exit 1 on FAIL."""
    settings = _settings()
    chosen = [lang.strip() for lang in languages.split(",") if lang.strip()]
    report = _run(_run_inspection(settings, images, criteria, chosen, report_language, voice, timeout))
    ok = report["type"] == InspectionReported.event_type and report["result"]["passed"]
    _emit(report, as_json, _print_inspection, ok)


def register(target: typer.Typer) -> None:
    """Add the ``campaign`` and ``inspect`` commands to another Typer app (``ai-apps``)."""
    target.command("campaign")(campaign)
    target.command("inspect")(inspect)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
