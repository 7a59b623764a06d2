"""The embedded service on fakes with the campaign and quality workflows added: the
:class:`~service.testing.FakeService` harness (manual clock, settle) plus a fake image
generator, an optional budget actor (the campaign's budget hook) and the terminal events of
these workflows."""

from __future__ import annotations

import functools
import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from actors.providers.fake_imagegen import FakeImageGenerator
from actors.runtime import Actor
from events.base import Event
from events.campaign import (
    BrandGuidelines,
    BudgetReleased,
    BudgetReserved,
    CampaignRequested,
    ReleaseBudgetRequested,
    ReserveBudgetRequested,
)
from events.common import ProviderInfo
from events.envelope import Envelope
from saga.workflow import Workflow
from service.settings import REPO_ROOT
from service.testing import FakeService
from service.workflow_cli import (
    WORKFLOW_TERMINALS,
    add_workflows,
    listen_for_terminals,
    request_cancel,
    submit_event,
)


class Budget:
    """What the fake budget service holds: reservations and releases, by campaign."""

    def __init__(self) -> None:
        self.reserved: dict[str, str] = {}
        self.released: list[str] = []


class ReserveActor(Actor):
    service: ClassVar[str] = "budget"
    consumes: ClassVar[type[Event]] = ReserveBudgetRequested
    provider: Budget

    def __init__(self, budget: Budget) -> None:
        self.provider = budget

    async def perform(self, request: Event) -> BudgetReserved:
        assert isinstance(request, ReserveBudgetRequested)
        reservation = f"res-{uuid.uuid4().hex[:8]}"
        self.provider.reserved[request.campaign_id] = reservation
        return BudgetReserved(reservation_id=reservation, amount=request.amount,
                              provider=ProviderInfo(name="fake"))


class ReleaseActor(Actor):
    service: ClassVar[str] = "budget-release"
    consumes: ClassVar[type[Event]] = ReleaseBudgetRequested
    provider: Budget

    def __init__(self, budget: Budget) -> None:
        self.provider = budget

    async def perform(self, request: Event) -> BudgetReleased:
        assert isinstance(request, ReleaseBudgetRequested)
        self.provider.released.append(request.reservation_id)
        return BudgetReleased(reservation_id=request.reservation_id)


class WorkflowFakeService(FakeService):
    def __init__(
        self,
        tmp: Path,
        *,
        fanout_limit: int = 4,
        budget: bool = False,
        extra_workflows: tuple[Workflow, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(tmp, **kwargs)
        self.imagegen = FakeImageGenerator()
        self.budget = Budget()
        add_workflows(self, imagegen=self.imagegen, analyzer=self.fakes.vision,
                      fanout_limit=fanout_limit, budget_service="budget" if budget else None,
                      extra_workflows=extra_workflows)
        if budget:
            self.runtime.actors.extend([ReserveActor(self.budget), ReleaseActor(self.budget)])

    async def __aenter__(self) -> WorkflowFakeService:
        await self.start()
        return self

    async def start(self) -> None:
        await listen_for_terminals(self)
        await super().start()

    def _hanging(self) -> int:
        return super()._hanging() + self.imagegen.behaviour.hanging

    async def submit_event(self, start: Event, saga_id: str) -> Envelope:
        return await submit_event(self, start, saga_id)

    async def cancel(self, saga_id: str, reason: str = "cancelled by a test") -> None:
        await request_cancel(self, saga_id, reason)

    async def terminal_events_of(self, saga_id: str) -> list[Envelope]:
        names = {t.event_type for t in WORKFLOW_TERMINALS}
        return [e for e in await self.store.events(saga_id) if e.type in names]

    def blob_files(self) -> list[Path]:
        root = self.blobs.root
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def campaign(
    campaign_id: str = "camp-1", languages: tuple[str, ...] = ("en", "es", "fr"), **kwargs: Any
) -> CampaignRequested:
    values: dict[str, Any] = {
        "campaign_id": campaign_id,
        "product_name": "AquaPure Bottle",
        "product_description": "A reusable steel bottle that keeps water cold for 24 hours.",
        "brand": BrandGuidelines(colours=("#0B5FFF", "#FFB400"), tone="fresh, friendly",
                                 forbidden_words=("cheap", "plastic"), logo_text="AQUAPURE"),
        "target_languages": languages,
        **kwargs,
    }
    return CampaignRequested(**values)


def inspection_images() -> ModuleType:
    """examples/make_inspection_images.py, imported from its path."""
    return example("make_inspection_images.py")


@functools.cache
def example(relative: str) -> ModuleType:
    """A script under examples/, imported once (its events register once)."""
    path = REPO_ROOT / "examples" / relative
    spec = importlib.util.spec_from_file_location(f"examples_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module
