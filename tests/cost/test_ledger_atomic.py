"""The cost ledger is written by the saga's save: a save that fails records nothing, and the
redelivered result is then taken and billed exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from events import ResponseReady
from saga.memory_store import InMemorySagaStore
from saga.state import SagaState
from saga.store import CostEntry, StoreError
from service.cost_settings import CacheSettings, CostSettings
from service.testing import FakeService, make_inquiry
from tests.cost.test_budget import PRICES


class Unavailable(StoreError):
    retryable = True


class FlakyStore(InMemorySagaStore):
    """Fails the first ``failures`` saves that carry ledger entries, before writing anything
    (a database that went away as the result was taken); never used for record_cost."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.saved_costs: list[str] = []

    async def save(self, state: SagaState, **kwargs: Any) -> SagaState:
        costs: Sequence[CostEntry] = kwargs.get("costs", ())
        if costs and self.failures:
            self.failures -= 1
            raise Unavailable("the database went away")
        saved = await super().save(state, **kwargs)
        self.saved_costs.extend(e.step for e in costs)
        return saved

    async def record_cost(self, entries: Sequence[CostEntry]) -> None:
        raise AssertionError("the coordinator records its costs with the save")


async def test_a_failed_save_bills_nothing_and_the_redelivery_bills_once(tmp_path: Path) -> None:
    store = FlakyStore(failures=2)
    svc = FakeService(tmp_path, store=store, pricing=PRICES,
                      cost=CostSettings(cache=CacheSettings(enabled=False)))
    async with svc:
        await svc.submit(make_inquiry("inq-1", message="Mi cafetera llegó rota", language="es"),
                         tenant="acme")
        done = (await svc.wait("inq-1", timeout=10)).data
        rows = await store.cost_report(datetime(2000, 1, 1, tzinfo=UTC), "service")
        spent = await store.spent("acme", datetime(2000, 1, 1, tzinfo=UTC))
        calls = len(svc.fakes.calls())
    assert isinstance(done, ResponseReady)
    assert store.failures == 0  # both failures happened, and were retried
    assert done.degraded == ()
    assert sorted(store.saved_costs) == ["respond", "translate_in", "translate_out"]
    assert sum(r.calls for r in rows) == calls == 3
    assert done.cost is not None
    assert spent == done.cost.total > Decimal(0)
