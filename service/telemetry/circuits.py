"""The coordinator's circuit states, kept in the saga store.

A coordinator's breakers live in its memory; the processes that report health without one
(the gateway on a broker, ``ai-apps health``) read the states from the store instead.
:class:`StoredCircuits` listens to a :class:`~saga.breaker.BreakerRegistry` and writes each
change (:meth:`~saga.store.SagaStore.put_circuit`) in the background: a breaker changes inside
a saga's synchronous transition, which must not wait for the store. At start it gives the
breakers the states kept from before, so a restarted coordinator does not report (or act on)
a circuit as closed that it had open, and a stored ``open`` is not left standing forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars

import structlog

from saga.breaker import BreakerRegistry, CircuitBreaker, CircuitState
from saga.clock import Clock
from saga.store import CircuitRecord, SagaStore

log = structlog.get_logger("service.telemetry")


class StoredCircuits:
    """Keeps the circuits of ``breakers`` in ``store`` as they change (newest wins)."""

    def __init__(self, store: SagaStore, breakers: BreakerRegistry, clock: Clock) -> None:
        self.store = store
        self.breakers = breakers
        self.clock = clock
        self._pending: dict[str, CircuitRecord] = {}
        self._writer: asyncio.Task[None] | None = None
        breakers.add_listener(self.changed)

    async def restore(self) -> int:
        """Give the breakers the states the store keeps; returns how many."""
        records = await self.store.circuits()
        for record in records:
            try:
                state = CircuitState(record.state)
            except ValueError:
                log.warning("unknown circuit state in the store", service=record.service,
                            state=record.state)
                continue
            self.breakers.get(record.service).restore(state, record.failures, record.opened_at)
        return len(records)

    def changed(self, breaker: CircuitBreaker) -> None:
        """A breaker changed state: write it soon (the latest state of each service)."""
        self._pending[breaker.service] = CircuitRecord(
            service=breaker.service, state=breaker.state.value, failures=breaker.failures,
            changed_at=self.clock.now(), opened_at=breaker.opened_at,
        )
        if self._writer is None or self._writer.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): flush() writes it
                return
            # a context of its own: not the log context of the saga whose change woke it
            self._writer = loop.create_task(
                self._write(), name="circuit-states", context=contextvars.Context()
            )

    async def _write(self) -> None:
        while self._pending:
            service, record = next(iter(self._pending.items()))
            try:
                await self.store.put_circuit(record)
            except Exception:  # the store away for a moment: the next change or flush retries
                log.exception("cannot keep the circuit state in the store", service=service)
                return
            if self._pending.get(service) is record:
                del self._pending[service]

    async def flush(self) -> None:
        """Write whatever is not written yet (at shutdown)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        await self._write()
