"""The saga coordinator: runs workflows over the bus.

For each request it keeps a :class:`~saga.state.SagaState` in the store, dispatches request
events to the actors, matches their results by ``causationid``, applies timeouts (durable
timers), retries, circuit breakers and fallbacks, and ends every saga in exactly one terminal
event. State changes, the events they cause (outbox) and the cost-ledger entries of the
results they accept are saved in one transaction and then published, so a crash between the
two loses nothing: the outbox is relayed on restart, and no call is billed without its result
being taken or taken without being billed.

A running saga can be cancelled (:meth:`SagaCoordinator.cancel`, or a ``SagaCancelRequested``
event on the bus): its succeeded steps are compensated and the workflow's cancelled (else
failed) terminal event is emitted. A result that arrives for a step the saga's end cancelled
is compensated on arrival, so work finished too late is undone as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import structlog
from pydantic import Field

from bus.base import Transport
from events.base import Event, event
from events.envelope import Envelope
from events.support import NOT_CACHED, StepFailed
from saga.breaker import BreakerRegistry
from saga.budget import CostControl, Spending
from saga.clock import Clock, SystemClock
from saga.observe import CoordinatorObserver, StepEvent, StepEventKind
from saga.state import (
    LateCost,
    SagaState,
    SagaStatus,
    StepError,
    StepState,
    StepStatus,
    StoredEvent,
)
from saga.store import ConcurrencyError, CostEntry, Reservation, SagaStore, Timer
from saga.workflow import SagaView, Workflow

log = structlog.get_logger("saga.coordinator")

COORDINATOR_GROUP = "saga-coordinator"
SOURCE = "/ai-apps/coordinator"

_IN_FLIGHT = (StepStatus.DISPATCHED, StepStatus.WAITING_RETRY)


@event
class SagaCancelRequested(Event):
    """Asks the coordinator to cancel the running saga this envelope's ``correlationid``
    names. A saga that already ended (or never started) is left as it is."""

    reason: str = Field(default="cancelled", min_length=1, max_length=500)
    requested_by: str | None = None


@dataclass(slots=True)
class _Changes:
    """What one application of an event to a saga produced."""

    outbox: list[Envelope] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    ended: bool = False
    ledger: list[CostEntry] = field(default_factory=list)
    """The provider results accepted, for the cost ledger (written by the same save)."""
    reserve: list[Reservation] = field(default_factory=list)
    """The estimates of the calls dispatched, held against the tenant's budget."""
    release: list[str] = field(default_factory=list)
    """Request ids whose reservations end (their calls failed, timed out, were cancelled or
    answered)."""
    released: Decimal = Decimal(0)
    """What the reservations released here held when the tenant's spend was read."""
    cause: str | None = None
    """The event that caused these changes (their ``causationid``); None for a timer."""
    steps: list[StepEvent] = field(default_factory=list)
    trials: list[str] = field(default_factory=list)
    """Services whose circuit let a call through in this change: handed back when the
    change is not saved (a concurrent save), so a half-open circuit's trial is not lost."""
    outcomes: list[tuple[str, _Outcome, datetime]] = field(default_factory=list)
    """Each service call's outcome (service, outcome, when), for its circuit breaker once
    saved: a change reapplied after a concurrent save must not count a failure twice."""
    """Retries, timeouts and fallbacks decided, for the observers once saved."""

    def note(self, kind: StepEventKind, state: SagaState, step: StepState, reason: str) -> None:
        self.steps.append(StepEvent(
            kind=kind, workflow=state.workflow, step=step.name, service=step.service,
            reason=reason, saga_id=state.id, tenant=state.tenant, attempt=step.attempts,
        ))

    def withdraw(self, step: StepState) -> bool:
        """Take back ``step``'s request if this very change dispatched it: it was never sent,
        so nobody will pay for it, nothing of it is held against a budget, and its deadline
        will not fire. False if it was dispatched before (it is out there)."""
        sent = [e for e in self.outbox if e.id == step.request_id]
        if step.request_id is None or not sent:
            return False
        self.outbox = [e for e in self.outbox if e.id != step.request_id]
        self.reserve = [r for r in self.reserve if r.id != step.request_id]
        self.timers = [t for t in self.timers
                       if not (t.step == step.key and t.attempt == step.attempts)]
        if step.service in self.trials:  # the circuit's trial was not used either
            self.outcomes.append((step.service, "no verdict", sent[0].time))
        return True

    def unrecorded(self) -> Decimal:
        """What these changes add to the tenant's spend and reservations as read before."""
        return (sum((e.cost for e in self.ledger), Decimal(0))
                + sum((r.amount for r in self.reserve), Decimal(0)) - self.released)

    def emit(
        self, state: SagaState, event: Event, subject: str | None, now: datetime,
        deadline: datetime | None = None,
    ) -> Envelope:
        envelope = state.start_envelope().follow(event, source=SOURCE, subject=subject, time=now)
        if self.cause is not None:
            envelope = envelope.model_copy(update={"causationid": self.cause})
        if deadline is not None:  # a request: its answer is awaited until then
            envelope = envelope.model_copy(update={"deadline": deadline})
        if state.resumed_from is not None:  # a resumed saga marks everything it emits
            envelope = envelope.model_copy(update={"replayof": state.resumed_from})
        self.outbox.append(envelope)
        return envelope


_Outcome = Literal["success", "failure", "no verdict"]

_ChangeFn = Callable[[SagaState | None], tuple[SagaState, _Changes] | None]


class SagaCoordinator:
    """Runs the given workflows. One coordinator process, or several sharing a store."""

    def __init__(
        self,
        transport: Transport,
        store: SagaStore,
        workflows: Iterable[Workflow],
        *,
        clock: Clock | None = None,
        breakers: BreakerRegistry | None = None,
        timer_interval: float = 0.2,
        outbox_interval: float = 5.0,
        concurrency: int = 16,
        costs: CostControl | None = None,
    ) -> None:
        self.transport = transport
        self.costs = costs
        self._spending: Spending | None = None
        """The tenant's spend, read in :meth:`_apply` just before its (synchronous) change
        function runs, for the budget check in :meth:`_dispatch_or_fallback`."""
        self.store = store
        self.workflows = {w.name: w for w in workflows}
        self._starts = {w.starts_on.event_type: w for w in self.workflows.values()}
        if len(self._starts) != len(self.workflows):
            raise ValueError("two workflows start on the same event type")
        self.clock = clock or SystemClock()
        self.breakers = breakers or BreakerRegistry()
        self.timer_interval = timer_interval
        self.outbox_interval = outbox_interval
        self.concurrency = concurrency
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._tenant_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._timer_task: asyncio.Task[None] | None = None
        self._observers: list[CoordinatorObserver] = []

    def add_observer(self, observer: CoordinatorObserver) -> None:
        """Tell ``observer`` of every step retry, timeout and fallback (see
        :mod:`saga.observe`)."""
        self._observers.append(observer)

    # -- lifecycle -------------------------------------------------------------------------

    def subscribed_types(self) -> set[str]:
        """The start events of every workflow, plus every result and failure event."""
        from events.support import ProviderResult

        types = set(self._starts) | {StepFailed.event_type, SagaCancelRequested.event_type}
        types |= {t.event_type for t in _subclasses(ProviderResult) if t.event_type}
        return types

    async def start(self, *, run_timers: bool = True) -> None:
        """Subscribe to the bus, relay any outbox left by a crash, and start firing timers."""
        await self.transport.subscribe(
            COORDINATOR_GROUP, sorted(self.subscribed_types()), self.handle,
            concurrency=self.concurrency,
        )
        await self.relay_outbox()
        if run_timers and self._timer_task is None:
            self._timer_task = asyncio.create_task(self._timer_loop(), name="saga-timers")

    async def stop(self) -> None:
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
            self._timer_task = None

    # -- handling events -------------------------------------------------------------------

    async def handle(self, envelope: Envelope) -> None:
        """Apply one event from the bus to its saga."""
        workflow = self._starts.get(envelope.type)
        if workflow is not None:
            await self._apply(
                envelope.correlationid, lambda s: self._begin(workflow, envelope, s),
                tenant=envelope.tenant,
            )
        elif isinstance(envelope.data, SagaCancelRequested):
            await self.cancel(envelope.correlationid, envelope.data.reason, cause=envelope.id)
        else:
            await self._apply(envelope.correlationid, lambda s: self._on_result(envelope, s))

    async def cancel(
        self, saga_id: str, reason: str = "cancelled", *, cause: str | None = None
    ) -> bool:
        """End a running saga now: steps still pending or in flight are cancelled, succeeded
        steps are compensated, and the workflow's cancelled terminal event (its failed one if
        it has none) is emitted. Returns False when the saga is unknown or already ended."""
        done: list[bool] = []

        def change(existing: SagaState | None) -> tuple[SagaState, _Changes] | None:
            done.clear()
            if existing is None or existing.status is not SagaStatus.RUNNING:
                return None
            state = existing.model_copy(deep=True)
            changes = _Changes(cause=cause)
            self._end_failed(
                self.workflows[state.workflow], state, reason, None, changes, cancelled=True
            )
            done.append(True)
            return state, changes

        await self._apply(saga_id, change)
        return bool(done)

    async def fire_due_timers(self) -> int:
        """Fire every timer that is due now; returns how many fired. Called by the timer loop
        and by tests that move the clock."""
        fired = 0
        claim_due = getattr(self.store, "claim_due_timers", None)
        if claim_due is not None:
            # the store claims a batch atomically (FOR UPDATE SKIP LOCKED): one round trip
            timers: list[Timer] = await claim_due(self.clock.now())
            claimed = timers
        else:
            timers = await self.store.due_timers(self.clock.now())
            claimed = [t for t in timers if await self.store.claim_timer(t.id)]
        for timer in claimed:  # a timer another coordinator claimed is not in our list
            # bound around the whole firing (not just the transition), so its own lines name
            # the saga and the tenant the transition found too
            with structlog.contextvars.bound_contextvars(correlation_id=timer.saga_id,
                                                         tenant=None):
                try:
                    await self._apply_bound(
                        timer.saga_id, functools.partial(self._on_timer, timer), None
                    )
                    # only now: had we died while applying, the lease would run out and
                    # another coordinator would fire it (applying a timer twice is a no-op:
                    # it is checked)
                    await self.store.complete_timer(timer.id)
                except Exception:
                    # this one stays leased and fires again when its lease runs out; the rest
                    # of the batch (leased with it) must not wait for that
                    log.exception("timer failed; it fires again once its lease runs out",
                                  saga=timer.saga_id, step=timer.step, kind=timer.kind)
                    continue
                fired += 1
                log.info("timer fired", saga=timer.saga_id, step=timer.step, kind=timer.kind,
                         attempt=timer.attempt, timer=timer.id)
        return fired

    async def relay_outbox(self, min_age: float = 0.0) -> int:
        """Publish outbox events that were saved but not yet published (after a crash, or a
        publish that failed); ``min_age`` leaves alone those saved in the last seconds, which
        their own coordinator is publishing now."""
        relayed = 0
        while batch := await self.store.pending_outbox(min_age=min_age):
            for env in batch:
                await self.transport.publish(env)
            await self.store.mark_published([e.id for e in batch])
            relayed += len(batch)
        return relayed

    # -- the core: load, apply, save with the outbox, publish ------------------------------

    async def _apply(self, saga_id: str, change: _ChangeFn, tenant: str | None = None) -> None:
        # every line a transition logs (a timer's too, which runs in no handler) names the
        # saga and its tenant, whatever the telemetry settings
        with structlog.contextvars.bound_contextvars(correlation_id=saga_id, tenant=tenant):
            await self._apply_bound(saga_id, change, tenant)

    async def _apply_bound(self, saga_id: str, change: _ChangeFn, tenant: str | None) -> None:
        lock = self._locks.get(saga_id)
        if lock is None:
            lock = self._locks[saga_id] = asyncio.Lock()
        async with lock:
            for _ in range(20):
                state = await self.store.load(saga_id)
                if state is not None:  # reset with the binding above
                    structlog.contextvars.bind_contextvars(tenant=state.tenant)
                expected = state.version if state else 0
                who = state.tenant if state else tenant
                # a tenant's budget checks take turns in this process, from reading its spend
                # to saving what they reserved: a saga never misses another's calls in flight
                async with self._budget_turn(who):
                    spending = await self._tenant_spending(who)
                    # no await between setting it and the change: concurrent sagas never see
                    # another's spend
                    self._spending = spending
                    try:
                        result = change(state)
                    finally:
                        self._spending = None
                    if result is None:
                        return
                    new_state, changes = result
                    try:
                        await self.store.save(
                            new_state,
                            expected_version=expected,
                            outbox=changes.outbox,
                            timers=changes.timers,
                            cancel_timers_of=new_state.id if changes.ended else None,
                            costs=changes.ledger,
                            reserve=changes.reserve,
                            release=changes.release,
                        )
                    except ConcurrencyError:
                        log.info("saga changed concurrently; reapplying", saga=saga_id)
                        for service in changes.trials:
                            self.breakers.get(service).release_trial()
                        continue
                break
            else:
                raise ConcurrencyError(f"saga {saga_id}: too many concurrent changes")
        for service, outcome, when in changes.outcomes:
            breaker = self.breakers.get(service)
            if outcome == "success":
                breaker.record_success()
            elif outcome == "failure":
                breaker.record_failure(when)
            else:
                breaker.release_trial()
        for decided in changes.steps:
            for observer in self._observers:
                try:
                    observer.step_event(decided)
                except Exception:  # an observer never fails a saga
                    log.exception("coordinator observer failed")
        for env in changes.outbox:
            await self.transport.publish(env)
        await self.store.mark_published([e.id for e in changes.outbox])

    # -- transitions (pure: state in, state and changes out) -------------------------------

    def _begin(
        self, workflow: Workflow, envelope: Envelope, existing: SagaState | None
    ) -> tuple[SagaState, _Changes] | None:
        if existing is not None:
            log.info("duplicate start ignored", saga=envelope.correlationid)
            return None
        now = self.clock.now()
        state = SagaState(
            id=envelope.correlationid,
            workflow=workflow.name,
            tenant=envelope.tenant,
            start=StoredEvent.of(envelope.data),
            start_envelope_id=envelope.id,
            traceparent=envelope.traceparent,
            tracestate=envelope.tracestate,
            baggage=envelope.baggage,
            started_at=now,
        )
        for step in workflow.steps:
            state.steps[step.name] = StepState(key=step.name, name=step.name, service=step.service)
        changes = _Changes(cause=envelope.id)
        self._advance(workflow, state, changes)
        log.info("saga started", saga=state.id, workflow=workflow.name)
        return state, changes

    def _on_result(
        self, envelope: Envelope, existing: SagaState | None
    ) -> tuple[SagaState, _Changes] | None:
        if existing is None:
            return None  # not one of ours
        if existing.status is not SagaStatus.RUNNING:
            return self._late_result(envelope, existing)
        state = existing.model_copy(deep=True)
        step = state.step_by_request(envelope.causationid)
        if step is None or step.status is not StepStatus.DISPATCHED:
            # too late for its attempt (timed out): not used, but billed if it was paid for
            stale = _Changes(cause=envelope.id)
            if self._bill_late(state, envelope, stale):
                return state, stale
            log.debug("stale or duplicate result ignored", saga=state.id, type=envelope.type)
            return None
        workflow = self.workflows[state.workflow]
        changes = _Changes(cause=envelope.id)
        now = self.clock.now()
        self._release(state, step, changes, now)
        if isinstance(envelope.data, StepFailed):
            failure = envelope.data
            if failure.error_class == NOT_CACHED and step.degradation is not None:
                # asked for a cached answer only (over budget) and there was none: refused
                # after all, for the budget's reason; no fault of the service (nor a sign of
                # health: a half-open circuit's trial is handed back)
                changes.outcomes.append((step.service, "no verdict", now))
                self._give_up(workflow, state, step, f"{step.degradation}; none was cached",
                              changes)
            else:
                changes.outcomes.append((step.service, "failure", now))
                error = StepError(
                    error_class=failure.error_class, message=failure.message,
                    retryable=failure.retryable,
                )
                self._failed(workflow, state, step, error, failure.retry_after, changes)
        else:
            changes.outcomes.append((step.service, "success", now))
            step.status = StepStatus.SUCCEEDED
            step.result = StoredEvent.of(envelope.data)
            step.finished_at = now
            step.deadline = None
            if self.costs is not None:
                entry = self.costs.entry(state, step, envelope, now)
                if entry is not None:
                    changes.ledger.append(entry)
        self._advance(workflow, state, changes)
        return state, changes

    def _late_result(
        self, envelope: Envelope, existing: SagaState
    ) -> tuple[SagaState, _Changes] | None:
        """A step's result after its saga ended: billed if it was paid for (the ledger and
        the saga's ``late_costs``; the terminal event is out already), and, when the end
        cancelled the step and it has a compensation, undone now (once: the result is
        kept)."""
        state = existing.model_copy(deep=True)
        changes = _Changes(cause=envelope.id)
        billed = self._bill_late(state, envelope, changes)
        step = state.step_by_request(envelope.causationid)
        if (step is None or step.status is not StepStatus.CANCELLED or step.result is not None
                or isinstance(envelope.data, StepFailed)):
            return (state, changes) if billed else None
        definition = self.workflows[state.workflow].step(step.name)
        if definition.compensate is None:
            return (state, changes) if billed else None
        step.result = StoredEvent.of(envelope.data)
        request = definition.compensate(SagaView(state, step.item))
        changes.emit(state, request, f"compensate:{step.key}", self.clock.now())
        log.info("late result of a cancelled step compensated", saga=state.id, step=step.key)
        return state, changes

    def _bill_late(self, state: SagaState, envelope: Envelope, changes: _Changes) -> bool:
        """A provider's result that came too late to be used (its attempt timed out, or the
        saga ended) was paid for all the same: its ledger entry (once per request id) and
        the saga's ``late_costs``. False when there is nothing to bill: a failure, the
        accepted result again, one billed already, or no cost control."""
        request_id = envelope.causationid
        if (self.costs is None or request_id is None or isinstance(envelope.data, StepFailed)
                or request_id in state.late_costs):
            return False
        current = state.step_by_request(request_id)
        if current is not None and current.status is StepStatus.SUCCEEDED:
            return False  # the result it accepted, delivered again
        step = current or state.steps.get(envelope.subject or "")
        if step is None:
            return False
        entry = self.costs.entry(state, step, envelope, self.clock.now(), request_id)
        if entry is None:
            return False
        changes.ledger.append(entry)
        state.late_costs[request_id] = LateCost(
            step=step.key, cost=entry.cost, after_end=state.status is not SagaStatus.RUNNING
        )
        log.info("late result billed", saga=state.id, step=step.key, cost=str(entry.cost))
        return True

    def _on_timer(
        self, timer: Timer, existing: SagaState | None
    ) -> tuple[SagaState, _Changes] | None:
        if existing is None or existing.status is not SagaStatus.RUNNING:
            return None
        state = existing.model_copy(deep=True)
        step = state.steps.get(timer.step)
        if step is None or step.attempts != timer.attempt:
            return None  # a stale timer: the step moved on since it was set
        workflow = self.workflows[state.workflow]
        changes = _Changes()
        if timer.kind == "deadline" and step.status is StepStatus.DISPATCHED:
            self._release(state, step, changes, self.clock.now())
            changes.outcomes.append((step.service, "failure", self.clock.now()))
            changes.note("timeout", state, step, "timeout")
            timeout = workflow.step(step.name).timeout
            error = StepError(
                error_class="timeout",
                message=f"no answer from {step.service} within {timeout:g}s",
                retryable=True,
            )
            self._failed(workflow, state, step, error, None, changes)
        elif timer.kind == "retry" and step.status is StepStatus.WAITING_RETRY:
            self._dispatch_or_fallback(workflow, state, step, changes)
        else:
            return None
        self._advance(workflow, state, changes)
        return state, changes

    def _failed(
        self,
        workflow: Workflow,
        state: SagaState,
        step: StepState,
        error: StepError,
        retry_after: float | None,
        changes: _Changes,
    ) -> None:
        definition = workflow.step(step.name)
        step.error = error
        step.deadline = None
        if error.retryable and step.attempts < definition.retry.max_attempts:
            delay = definition.retry.delay(step.attempts, retry_after)
            step.status = StepStatus.WAITING_RETRY
            changes.timers.append(self._timer(state, step, "retry", delay))
            changes.note("retry", state, step, error.error_class)
            log.info("step retry scheduled", saga=state.id, step=step.key, delay=delay,
                     error=error.error_class)
            return
        self._give_up(workflow, state, step, f"{error.error_class}: {error.message}", changes)

    def _give_up(
        self, workflow: Workflow, state: SagaState, step: StepState, reason: str, changes: _Changes
    ) -> None:
        """The step will not get its service's answer: fall back, or fail it (and the saga)."""
        definition = workflow.step(step.name)
        step.finished_at = self.clock.now()
        if definition.fallback is not None:
            substitute = definition.fallback(SagaView(state, step.item), reason)
            step.status = StepStatus.FALLBACK
            step.fallback_reason = reason
            step.result = StoredEvent.of(substitute) if substitute is not None else None
            changes.note("fallback", state, step, reason.split(":", 1)[0])
            log.warning("step fell back", saga=state.id, step=step.key, reason=reason)
            return
        step.status = StepStatus.FAILED
        if definition.required:
            self._end_failed(workflow, state, f"step {step.key} failed: {reason}", step.key, changes)

    def _advance(self, workflow: Workflow, state: SagaState, changes: _Changes) -> None:
        """Dispatch every step whose needs are settled, until nothing changes; then finish."""
        progressed = True
        while progressed and state.status is SagaStatus.RUNNING:
            progressed = False
            for definition in workflow.steps:
                root = state.steps[definition.name]
                if root.status is StepStatus.EXPANDED:
                    limit = definition.max_parallel
                    in_flight = sum(state.steps[k].status in _IN_FLIGHT for k in root.branches)
                    for key in root.branches:
                        branch = state.steps[key]
                        if branch.status is not StepStatus.PENDING:
                            continue
                        if limit is not None and in_flight >= limit:
                            break  # the rest go out as these settle
                        self._dispatch_or_fallback(workflow, state, branch, changes)
                        progressed = True
                        if state.status is not SagaStatus.RUNNING:
                            return
                        in_flight += branch.status in _IN_FLIGHT
                    continue
                if root.status is not StepStatus.PENDING:
                    continue
                if not all(self._settled(state, need) for need in definition.needs):
                    continue
                progressed = True
                view = SagaView(state)
                if definition.when is not None and not definition.when(view):
                    root.status = StepStatus.SKIPPED
                    continue
                if definition.for_each is not None:
                    root.status = StepStatus.EXPANDED
                    for item in dict.fromkeys(definition.for_each(view)):
                        key = f"{definition.name}[{item}]"
                        state.steps[key] = StepState(
                            key=key, name=definition.name, service=definition.service, item=item
                        )
                        root.branches.append(key)
                    continue
                self._dispatch_or_fallback(workflow, state, root, changes)
                if state.status is not SagaStatus.RUNNING:
                    return
        if state.status is SagaStatus.RUNNING and all(
            self._settled(state, d.name) for d in workflow.steps
        ):
            self._end_completed(workflow, state, changes)

    def _settled(self, state: SagaState, name: str) -> bool:
        step = state.steps[name]
        if step.status is StepStatus.EXPANDED:
            return all(state.steps[k].status.settled for k in step.branches)
        return step.status.settled

    def _dispatch_or_fallback(
        self, workflow: Workflow, state: SagaState, step: StepState, changes: _Changes
    ) -> None:
        definition = workflow.step(step.name)
        now = self.clock.now()
        request = definition.request(SagaView(state, step.item))
        step.degradation = None  # decided afresh at each dispatch (a retry, a resume)
        step.reserved = None
        if self.costs is not None:
            decision = self.costs.decide(
                state, step, request, self._spending, changes.unrecorded(),
                definition.on_budget,
            )
            if decision.request is None:
                # refused before any call: nothing is paid, and the workflow degrades
                step.started_at = step.started_at or now
                self._give_up(workflow, state, step, f"budget: {decision.reason}", changes)
                return
            if decision.reason is not None:
                # sent degraded (a cheaper model, a cached answer only): the step says so,
                # and the saga is degraded
                request = decision.request
                step.degradation = f"budget: {decision.reason}"
                log.warning("step degraded", saga=state.id, step=step.key,
                            reason=step.degradation)
            step.reserved = decision.estimate or None
        # the circuit guards the service: asked after the budget, so a half-open circuit's one
        # trial is not used up by a call the budget then refuses; a cached answer only calls
        # nothing, so it needs no trial (and may answer while the service is down)
        if getattr(request, "cache_only", None) is not True:
            if not self.breakers.get(step.service).allow(now):
                step.started_at = step.started_at or now
                step.degradation = step.reserved = None
                self._give_up(workflow, state, step,
                              f"circuit_open: {step.service} is unavailable", changes)
                return
            changes.trials.append(step.service)
        deadline = now + timedelta(seconds=definition.timeout)
        envelope = changes.emit(state, request, step.key, now, deadline)
        step.status = StepStatus.DISPATCHED
        step.attempts += 1
        step.request_id = envelope.id
        step.started_at = step.started_at or now
        step.deadline = deadline
        changes.timers.append(self._timer(state, step, "deadline", definition.timeout))
        if self.costs is not None and (held := self.costs.reservation(state, step, now)):
            changes.reserve.append(held)

    def _release(
        self, state: SagaState, step: StepState, changes: _Changes, now: datetime
    ) -> None:
        """The step's call is over (answered, failed, timed out, cancelled): what it held
        against the budgets is released (its result's ledger entry, if any, replaces it)."""
        held, step.reserved = step.reserved, None
        if (held is None or step.status is not StepStatus.DISPATCHED or self.costs is None
                or step.request_id is None or not self.costs.reserves_for(state.tenant)):
            return
        changes.release.append(step.request_id)
        if step.deadline is None or step.deadline > now:  # still counted when spend was read
            changes.released += held

    def _budget_turn(self, tenant: str | None) -> contextlib.AbstractAsyncContextManager[Any]:
        """The tenant's turn at its budget in this process (no turn without a budget)."""
        if self.costs is None or tenant is None or not self.costs.reserves_for(tenant):
            return contextlib.nullcontext()
        lock = self._tenant_locks.get(tenant)
        if lock is None:
            lock = self._tenant_locks[tenant] = asyncio.Lock()
        return lock

    async def _tenant_spending(self, tenant: str | None) -> Spending | None:
        if self.costs is None or tenant is None:
            return None
        return await self.costs.spending(self.store, tenant, self.clock.now())

    def _timer(self, state: SagaState, step: StepState, kind: str, delay: float) -> Timer:
        return Timer(
            id=str(uuid.uuid4()), saga_id=state.id, step=step.key, kind=kind,  # type: ignore[arg-type]
            due_at=self.clock.now() + timedelta(seconds=delay), attempt=step.attempts,
        )

    def _end_completed(self, workflow: Workflow, state: SagaState, changes: _Changes) -> None:
        state.status = SagaStatus.COMPLETED
        state.finished_at = self.clock.now()
        self._terminal(state, workflow.complete(SagaView(state)), changes)
        log.info("saga completed", saga=state.id, degraded=list(state.degraded))

    def _end_failed(
        self, workflow: Workflow, state: SagaState, reason: str, step: str | None,
        changes: _Changes, *, cancelled: bool = False,
    ) -> None:
        state.status = SagaStatus.FAILED
        state.failure_reason = f"cancelled: {reason}" if cancelled else reason
        state.finished_at = self.clock.now()
        for other in state.steps.values():
            if other.status in (StepStatus.DISPATCHED, StepStatus.WAITING_RETRY,
                                StepStatus.PENDING):
                if other.status is StepStatus.DISPATCHED and changes.withdraw(other):
                    other.reserved = None  # dispatched and ended in one change: never sent
                else:
                    self._release(state, other, changes, state.finished_at)
                other.status = StepStatus.CANCELLED
        for other in state.steps.values():
            definition = workflow.step(other.name)
            if other.status is StepStatus.SUCCEEDED and definition.compensate is not None:
                request = definition.compensate(SagaView(state, other.item))
                changes.emit(state, request, f"compensate:{other.key}", self.clock.now())
        finisher = (workflow.cancelled or workflow.fail) if cancelled else workflow.fail
        self._terminal(state, finisher(SagaView(state), reason, step), changes)
        log.warning("saga cancelled" if cancelled else "saga failed", saga=state.id, reason=reason)

    def _terminal(self, state: SagaState, event: Event, changes: _Changes) -> None:
        state.terminal = StoredEvent.of(event)
        changes.emit(state, event, None, self.clock.now())
        changes.ended = True

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_relay = loop.time() + self.outbox_interval
        while True:
            try:
                await self.fire_due_timers()
                if loop.time() >= next_relay:
                    # events whose publish failed after their commit (the broker was away)
                    # go out now rather than at the next restart; a duplicate is harmless,
                    # consumers dedup by request id and the event store by event id
                    next_relay = loop.time() + self.outbox_interval
                    if relayed := await self.relay_outbox(min_age=self.outbox_interval):
                        log.info("outbox relayed", events=relayed)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive one bad timer; the error is logged
                log.exception("timer loop error")
            await asyncio.sleep(self.timer_interval)


def _subclasses(cls: type[Event]) -> list[type[Event]]:
    out: list[type[Event]] = []
    sub: type[Event]
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out
