"""The actor runtime: subscribes each actor to its request event, calls it, and publishes its
result, or a classified ``StepFailed`` when its provider fails.

Actors know nothing of workflows: the request's ``subject`` (the saga step) and
``correlationid`` are carried over to the result by :meth:`Envelope.follow`, and the result's
``causationid`` is the request's id, which is how the coordinator matches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

import structlog

from actors.blobstore import BlobNotFound
from actors.cache import NotCachedError, answering_from_cache_only, serves_from_cache
from actors.errors import PermanentError, ProviderError, ThrottledError
from actors.throttle import waiting_at_most
from bus.base import Handler, Transport
from events.base import Event
from events.envelope import Envelope
from events.support import StepFailed

log = structlog.get_logger("actors")

Middleware = Callable[[Envelope, Handler], Awaitable[None]]
"""Wraps the handling of one event: do something around ``await call_next(envelope)``."""


class Inbox(Protocol):
    """Claims and results by request event id, so a redelivered request is answered again
    without calling (and paying) the provider twice, and two workers never work on one request
    at once (a broker that lost a connection redelivers while the first is still working).
    The saga stores implement it."""

    async def recorded_result(self, request_id: str) -> Envelope | None: ...

    async def claim_request(self, request_id: str, owner: str, lease: float) -> bool: ...

    async def record_result(self, request_id: str, result: Envelope) -> None: ...


class ClaimLost(Exception):
    """The worker's claim on a request ran out (its renewals failed for a whole lease) and
    another worker took the request over: this worker's call is abandoned."""


RENEW_RETRY_PAUSE = 0.5
"""Seconds between attempts to renew a claim after a renewal failed (capped at a tenth of the
lease): soon enough to keep the claim through a short store outage."""


class Actor(ABC):
    """One AI capability as a bus participant. Subclasses set ``service`` and ``consumes``
    and implement :meth:`perform`."""

    service: ClassVar[str]
    consumes: ClassVar[type[Event]]
    call_timeout: float = 120.0
    """Seconds before the actor gives up on its provider and reports a transient timeout."""

    provider: object
    """The capability provider this actor calls."""

    async def warm_up(self) -> None:
        """Load the provider's models now (in a thread) rather than on the first request."""
        load = getattr(self.provider, "load", None)
        if callable(load):
            await asyncio.to_thread(load)

    @abstractmethod
    async def perform(self, request: Event) -> Event:
        """Do the work for one request and return the result event's payload."""

    @property
    def group(self) -> str:
        """The subscriber group: every instance of this actor competes for its requests."""
        return f"actor.{self.service}"


@dataclass(slots=True)
class Handling:
    """What the runtime did with the request being handled, for a middleware to read once
    ``call_next`` returns (telemetry: the provider call's timing, result and usage)."""

    actor: Actor
    result: Event | None = None
    """The result payload: the actor's, or the classified ``StepFailed``."""
    replayed: bool = False
    """Answered from the inbox: the provider was not called (again)."""
    started_ns: int = 0
    """Wall-clock time (``time.time_ns()``) the provider call began; 0 if it was not called."""
    ended_ns: int = 0
    work: asyncio.Task[Envelope | None] | None = None
    """The provider call and the recording of its result: it outlives a delivery cancelled
    under it, so a middleware that sees the cancellation can wait for it to finish."""


_handling: ContextVar[Handling | None] = ContextVar("actor_handling", default=None)


def current_handling() -> Handling | None:
    """The request the actor runtime is handling in this task; None outside its handlers."""
    return _handling.get()


async def bind_log_context(envelope: Envelope, call_next: Handler) -> None:
    """Middleware: every log line written while handling carries the request's ids."""
    with structlog.contextvars.bound_contextvars(
        correlation_id=envelope.correlationid, tenant=envelope.tenant, event_type=envelope.type,
        event_id=envelope.id,
    ):
        await call_next(envelope)


class ActorRuntime:
    """Runs actors on a transport, with a middleware chain around every handler."""

    def __init__(
        self,
        transport: Transport,
        actors: Iterable[Actor],
        *,
        middleware: Sequence[Middleware] = (bind_log_context,),
        concurrency: int | None = None,
        inbox: Inbox | None = None,
        claim_lease: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.transport = transport
        self.clock = clock or _utcnow
        """What request deadlines are compared with (the service's clock: the coordinator
        sets them on its own)."""
        self.expired = 0
        """Requests not worked on because their deadline had passed."""
        self.inbox = inbox
        self.claim_lease = claim_lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.waiting_on_claims = 0
        """Deliveries waiting for another delivery of the same request to finish."""
        self.claims_lost = 0
        """Claims this worker lost while calling a provider (another worker took the request
        over after the renewals failed for a whole lease): a meter, logged as it grows."""
        self.renewals_failed = 0
        """Claim renewals that raised (the store unreachable), each retried."""
        self.actors = list(actors)
        self.middleware = tuple(middleware)
        self.concurrency = concurrency
        self._working: set[asyncio.Task[Envelope | None]] = set()
        self._claimed_at: dict[str, float] = {}
        """When (loop time) each delivery's claim was asked for, until its work starts."""
        """Provider calls in progress, which outlive a delivery cancelled under them."""

    async def close(self, grace: float = 30.0) -> None:
        """Once the bus has stopped: let provider calls whose delivery was cancelled finish and
        record their results (up to ``grace`` seconds, then cancel them: their claims run out
        and another worker takes the requests over), then close providers that hold
        connections (``aclose()``)."""
        if self._working:
            _, pending = await asyncio.wait(set(self._working), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("close: provider calls still running after grace; cancelled",
                            count=len(pending), grace=grace)
                await asyncio.wait(pending, timeout=5)
        for actor in self.actors:
            aclose = getattr(actor.provider, "aclose", None)
            if callable(aclose):
                await aclose()

    async def warm_up(self) -> None:
        """Load every actor's models before taking messages (they load in parallel threads)."""
        await asyncio.gather(*(actor.warm_up() for actor in self.actors))

    async def start(self) -> None:
        for actor in self.actors:
            await self.transport.subscribe(
                actor.group, [actor.consumes.event_type], self._chain(actor),
                concurrency=self.concurrency,
            )
            log.info("actor subscribed", service=actor.service, consumes=actor.consumes.event_type)

    def _chain(self, actor: Actor) -> Handler:
        async def handle(envelope: Envelope) -> None:
            await self._handle(actor, envelope)

        handler: Handler = handle
        for middleware in reversed(self.middleware):
            handler = _wrap(middleware, handler)
        chain = handler

        async def entry(envelope: Envelope) -> None:
            token = _handling.set(Handling(actor))
            try:
                await chain(envelope)
            finally:
                _handling.reset(token)

        return entry

    async def _handle(self, actor: Actor, envelope: Envelope) -> None:
        handling = _handling.get() or Handling(actor)
        # one claim per delivery, not per process: two deliveries of one request to the same
        # worker (a redelivery racing the original) must not both call the provider
        owner = f"{self.owner}:{uuid.uuid4().hex[:8]}"
        if self.inbox is not None:
            recorded = await self._claim(envelope, owner)
            if recorded is not None:
                # a redelivery (a worker died after the call): answer again, do not pay again
                log.info("redelivered request answered from the inbox", service=actor.service)
                handling.replayed, handling.result = True, recorded.data
                await self.transport.publish(recorded)
                return
        # checked once the claim is ours (it may have been waited for, behind another worker's
        # claim that ran out): a request whose step stopped waiting (it sat in a queue, or
        # waited for a worker) is not worked on, nothing is paid, and the failure says why (the
        # coordinator has timed the attempt out, or is about to, and retries or falls back as
        # after any timeout)
        if self._left(envelope) == 0.0:
            if self.inbox is not None:
                self._claimed_at.pop(owner, None)
                with contextlib.suppress(Exception):  # give the claim back: nothing was done
                    await self.inbox.claim_request(envelope.id, owner, 0.0)
            self.expired += 1
            failure = StepFailed(
                step=envelope.subject, service=actor.service, error_class="expired",
                message=f"the request's deadline ({envelope.deadline}) passed before "
                f"{actor.service} took it; not called", retryable=True,
            )
            log.warning("request expired before it was worked on; not called",
                        service=actor.service, deadline=str(envelope.deadline))
            handling.result = failure
            await self.transport.publish(
                envelope.follow(failure, source=f"/ai-apps/actors/{actor.service}")
            )
            return
        # The provider call and the recording of its result run in a task of their own, not
        # in the delivery: a broker that drops the connection cancels the delivery (aiormq
        # cancels a closed channel's consumer tasks), and a call already made is paid for. The
        # work goes on, keeps renewing the claim and records its result; the redelivery waits
        # on the claim and answers from the inbox, so the call is neither lost nor paid twice.
        work = asyncio.create_task(self._work_on(actor, envelope, owner, handling))
        handling.work = work
        self._working.add(work)
        work.add_done_callback(self._working.discard)
        # (without an inbox nothing would keep the result: the work goes with its delivery)
        reply = await (asyncio.shield(work) if self.inbox is not None else work)
        if reply is None:
            return  # the claim was lost: the worker that took the request over answers it
        await self.transport.publish(reply)

    async def _work_on(
        self, actor: Actor, envelope: Envelope, owner: str, handling: Handling
    ) -> Envelope | None:
        """Call the provider (renewing the claim meanwhile) and record the reply in the inbox.
        None if the claim was lost on the way (the call is abandoned: cancelled if it was
        still running)."""
        source = f"/ai-apps/actors/{actor.service}"
        handling.started_ns = time.time_ns()
        loop = asyncio.get_running_loop()
        # until then no other worker can have taken the claim over: it was made (or renewed)
        # for claim_lease seconds from after the moment it was asked for
        held_until = [self._claimed_at.pop(owner, loop.time()) + self.claim_lease]
        # over budget the coordinator asks for a cached answer only: the provider is never
        # called, so a provider without the result cache cannot answer at all
        cache_only = getattr(envelope.data, "cache_only", None) is True
        # the call (its throttle wait too) ends by the request's deadline: after it, nobody
        # waits for the answer
        left = self._left(envelope)
        limit = actor.call_timeout if left is None else min(actor.call_timeout, left)
        try:
            if cache_only and not serves_from_cache(actor.provider):
                raise NotCachedError(
                    f"not cached, over budget: {actor.service} has no result cache here, and "
                    "the budget allows no call", provider=actor.service,
                )
            async with asyncio.timeout(limit):
                # (the call runs in a task of its own, which takes these context variables)
                with answering_from_cache_only(cache_only), waiting_at_most(left):
                    result = await self._perform_holding(actor, envelope, owner, held_until)
        except ClaimLost:
            return None
        except ProviderError as exc:
            result = _failure(actor, envelope, exc)
        except BlobNotFound as exc:
            result = _failure(actor, envelope, PermanentError(str(exc)))
        except TimeoutError:
            result = StepFailed(
                step=envelope.subject, service=actor.service, error_class="timeout",
                message=f"{actor.service} did not answer within {limit:g}s"
                + (" (the request's deadline)" if limit < actor.call_timeout else ""),
                retryable=True,
            )
        except Exception:
            # a bug or a crash, not a provider's answer: give the claim back at once, so the
            # bus's retry does not wait out the lease of a delivery that is over. (Work
            # cancelled at shutdown keeps its claim: the call may have been made; the lease
            # decides.)
            if self.inbox is not None:
                with contextlib.suppress(Exception):
                    await self.inbox.claim_request(envelope.id, owner, 0.0)
            raise
        finally:
            handling.ended_ns = time.time_ns()
        handling.result = result
        if isinstance(result, StepFailed):
            log.warning("step failed", service=actor.service, error_class=result.error_class,
                        error=result.message)
        reply = envelope.follow(result, source=source)
        if self.inbox is not None:
            await self.inbox.record_result(envelope.id, reply)
            if loop.time() >= held_until[0]:
                # the claim may have run out before the record: another worker's result may
                # be the one recorded (the first record wins); answer with that one, so every
                # answer to this request is the same
                recorded = await self.inbox.recorded_result(envelope.id)
                if recorded is not None and recorded.id != reply.id:
                    log.warning("claim ran out before the record; answering with the result "
                                "recorded first", service=actor.service)
                    handling.result = recorded.data
                    reply = recorded
        return reply

    def _left(self, envelope: Envelope) -> float | None:
        """Seconds until the request's deadline (0.0 once it has passed; None: it has none)."""
        if envelope.deadline is None:
            return None
        return max((envelope.deadline - self.clock()).total_seconds(), 0.0)

    async def _claim(self, envelope: Envelope, owner: str) -> Envelope | None:
        """Wait until this worker holds the request's claim (None) or its result is recorded
        (the result). A claim held by a live worker is renewed by it; a dead worker's claim
        runs out within ``claim_lease`` seconds and is taken over."""
        assert self.inbox is not None
        while True:
            recorded = await self.inbox.recorded_result(envelope.id)
            if recorded is not None:
                return recorded
            asked = asyncio.get_running_loop().time()
            if await self.inbox.claim_request(envelope.id, owner, self.claim_lease):
                self._claimed_at[owner] = asked
                return None
            self.waiting_on_claims += 1
            try:
                await asyncio.sleep(min(0.5, self.claim_lease / 4))
            finally:
                self.waiting_on_claims -= 1

    async def _perform_holding(
        self, actor: Actor, envelope: Envelope, owner: str, held_until: list[float]
    ) -> Event:
        """``actor.perform`` while the request's claim is renewed (a long image generation
        outlives a lease). A renewal that fails (the store unreachable) is retried; one that
        finds the claim taken over by another worker cancels the call (a call that had not
        been billed yet is then never billed: one charge, not two) and raises
        :class:`ClaimLost`."""
        if self.inbox is None:
            return await actor.perform(envelope.data)
        # The call runs in this task; renewing waits on a timer, not a task of its own, since
        # most calls end long before a third of the lease (a task and an asyncio.wait per call
        # were a tenth of the actor's CPU per request). A renewal that finds the claim lost
        # cancels this task, unless the call has returned meanwhile: a finished call wins.
        loop = asyncio.get_running_loop()
        work = asyncio.current_task()
        assert work is not None
        calling = True
        lost = False
        renewal: asyncio.Task[None] | None = None

        def renewal_ended(task: asyncio.Task[None]) -> None:
            nonlocal lost
            if calling and not task.cancelled() and isinstance(task.exception(), ClaimLost):
                lost = True
                work.cancel()

        def start_renewing() -> None:
            nonlocal renewal
            renewal = loop.create_task(self._renew(actor, envelope, owner, held_until))
            renewal.add_done_callback(renewal_ended)

        timer = loop.call_later(self.claim_lease / 3, start_renewing)
        try:
            result = await actor.perform(envelope.data)
            calling = False
            return result
        except asyncio.CancelledError:
            calling = False
            if lost and work.uncancel() == 0:  # cancelled by the lost claim alone
                raise ClaimLost(envelope.id) from None
            raise
        finally:
            calling = False
            timer.cancel()
            if renewal is not None and not renewal.done():
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClaimLost):
                    await asyncio.shield(renewal)

    async def _renew(
        self, actor: Actor, envelope: Envelope, owner: str, held_until: list[float]
    ) -> None:
        """Renew the claim now and then every third of the lease until cancelled; raise
        :class:`ClaimLost` once the store says another worker holds it."""
        assert self.inbox is not None
        loop = asyncio.get_running_loop()
        pause = 0.0  # started a third of the lease after the claim was made
        while True:
            if pause:
                await asyncio.sleep(pause)
            asked = loop.time()
            try:
                held = await self.inbox.claim_request(envelope.id, owner, self.claim_lease)
            except Exception as exc:
                # the store away for a moment: try again soon; the claim is good until
                # held_until, and if it runs out meanwhile the next answer says so
                self.renewals_failed += 1
                pause = min(RENEW_RETRY_PAUSE, self.claim_lease / 10)
                log.warning("claim renewal failed; retrying", service=actor.service,
                            error=repr(exc), left=round(held_until[0] - loop.time(), 3))
                continue
            if not held:
                self.claims_lost += 1
                log.error("claim lost: another worker took the request over; abandoning "
                          "this call", service=actor.service, claims_lost=self.claims_lost)
                raise ClaimLost(envelope.id)
            held_until[0] = asked + self.claim_lease
            pause = self.claim_lease / 3


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _failure(actor: Actor, envelope: Envelope, exc: ProviderError) -> StepFailed:
    return StepFailed(
        step=envelope.subject,
        service=actor.service,
        error_class=exc.error_class,
        message=str(exc),
        retryable=exc.retryable,
        retry_after=exc.retry_after if isinstance(exc, ThrottledError) else None,
    )


def _wrap(middleware: Middleware, call_next: Handler) -> Handler:
    async def wrapped(envelope: Envelope) -> None:
        await middleware(envelope, call_next)

    return wrapped
