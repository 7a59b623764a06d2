"""Builds the running service from settings: the bus and store chosen by URL, the providers
chosen per capability, the actors, the coordinator and the event recorder."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from actors.blobstore import FileBlobStore
from actors.creative import (
    CREATIVE_SERVICES,
    AssetActor,
    BrandComplianceActor,
    ImageGenerationActor,
    InspectionActor,
)
from actors.runtime import Actor, ActorRuntime, bind_log_context
from actors.services import (
    SERVICES,
    LanguageActor,
    ResponderActor,
    SpeechActor,
    TranslationActor,
    VisionActor,
)
from bus.base import ALL_TYPES, RetryPolicy, Transport
from bus.memory import InMemoryTransport
from events.campaign import CampaignCancelled, CampaignFailed, CampaignReady
from events.envelope import Envelope
from events.errors import AiAppsError
from events.quality import InspectionFailed, InspectionReported
from events.support import InquiryFailed, InquiryReceived, ResponseReady
from saga.breaker import BreakerPolicy, BreakerRegistry
from saga.clock import Clock
from saga.coordinator import COORDINATOR_GROUP, SagaCoordinator
from saga.memory_store import InMemorySagaStore
from saga.recorder import RECORDER_GROUP, EventRecorder
from saga.sqlite_store import SqliteSagaStore
from saga.store import SagaStore
from saga.workflow import StepRetry
from saga.workflows.campaign import campaign_workflow
from saga.workflows.quality import quality_workflow
from saga.workflows.support import support_workflow
from service.settings import Settings
from service.telemetry import StoredCircuits, Telemetry

FINISHED_KEPT = 10_000
STORE_POLL_FIRST = 1.0
STORE_POLL_MAX = 5.0
"""Seconds between looks in the event store while waiting for an answer (doubling)."""
HEALTH_REPORT_TTL = 5.0
"""Seconds a health report built from the store is served again (the gateway on a broker)."""
TERMINAL_TYPES = tuple(t.event_type for t in (
    ResponseReady, InquiryFailed, CampaignReady, CampaignFailed, CampaignCancelled,
    InspectionReported, InspectionFailed,
))
ALL_SERVICES: dict[str, type[Actor]] = {**SERVICES, **CREATIVE_SERVICES}
"""Every actor by service name: the support capabilities and the creative ones."""
KNOWN_GROUPS = (COORDINATOR_GROUP, RECORDER_GROUP, *(f"actor.{s}" for s in ALL_SERVICES))
"""The subscriber groups of a deployment, whose dead letters ``ai-apps dlq`` looks at."""
ACTOR_ALIASES = {"ocr": "vision"}
"""Other names an actor answers to in ``ai-apps worker --actors``: OCR is done by the vision
actor (its image analysis reads the text in the image), so ``ocr`` runs ``vision``."""


def actor_names(names: Iterable[str]) -> list[str]:
    """``names`` with aliases resolved (:data:`ACTOR_ALIASES`), each once, in their order.
    Raises :class:`ConfigurationError` naming every actor (and alias) for an unknown one."""
    chosen: list[str] = []
    unknown: list[str] = []
    for name in names:
        service = ACTOR_ALIASES.get(name, name)
        if service not in ALL_SERVICES:
            unknown.append(name)
        elif service not in chosen:
            chosen.append(service)
    if unknown:
        aliases = ", ".join(f"{a}={s}" for a, s in sorted(ACTOR_ALIASES.items()))
        raise ConfigurationError(
            f"unknown actors {unknown}; choose from {', '.join(ALL_SERVICES)} "
            f"(aliases: {aliases})"
        )
    return chosen


class ConfigurationError(AiAppsError):
    """A setting is wrong or needs an extra that is not installed; the message says which."""


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{module} needs the '{extra}' extra: pip install 'ai-apps[{extra}]' ({exc})"
        ) from exc


def make_transport(settings: Settings) -> Transport:
    """The bus named by ``settings.bus``."""
    retry = RetryPolicy(max_attempts=settings.bus_max_attempts,
                        initial_delay=settings.bus_retry_delay)
    url = settings.bus
    if url.startswith("memory://"):
        return InMemoryTransport(retry=retry, concurrency=settings.concurrency)
    if url.startswith(("amqp://", "amqps://")):
        module = _require("bus.rabbitmq", "rabbitmq")
        transport: Transport = module.RabbitMQTransport(
            url, retry=retry, prefetch=settings.concurrency, exchange=settings.bus_exchange,
            queue_type=settings.bus_queue_type, known_groups=KNOWN_GROUPS,
            grace=settings.shutdown_grace,
        )
        return transport
    if url.startswith(("Endpoint=sb://", "endpoint=sb://", "sb://")):
        _require("bus.servicebus", "servicebus")
        from service.servicebus_cli import transport_from_settings

        return transport_from_settings(settings)
    raise ConfigurationError(
        "AIAPPS_BUS: use memory://, amqp://user:pass@host/, a Service Bus connection string "
        "(Endpoint=sb://…) or a namespace (sb://NAME.servicebus.windows.net/)"
    )


def make_store(settings: Settings) -> SagaStore:
    """The saga store named by ``settings.store``."""
    url = settings.store
    if url.startswith("memory://"):
        return InMemorySagaStore()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SqliteSagaStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        module = _require("saga.postgres_store", "postgres")
        store: SagaStore = module.PostgresSagaStore(url, schema=settings.store_schema)
        return store
    raise ConfigurationError(
        f"AIAPPS_STORE={url!r}: use sqlite:///path/to.db, memory:// or postgresql://…"
    )


def _local(module: str, cls: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(f"actors.providers.local.{module}"), cls)  # type: ignore[no-any-return]


def make_actors(
    settings: Settings,
    blobs: FileBlobStore,
    services: Iterable[str] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    store: SagaStore | None = None,
    cache: Any = None,
    clock: Clock | None = None,
) -> list[Actor]:
    """The actors of ``services`` (all by default; an alias of :data:`ACTOR_ALIASES`, such as
    ``ocr``, names its actor), each with the provider chosen for it.
    ``overrides`` maps a service to a ready provider object (tests pass fakes this way).

    With the result cache on (``settings.cost.cache``), each deterministic provider is wrapped
    by :func:`actors.cache.cached_provider`: the cache lives in Redis when a ``redis://`` URL
    is configured, else in ``store`` (the service's saga store), else in memory. ``cache`` is
    a ready :class:`actors.cache.ResultCache` to use instead (its ``stats`` are the meter); the
    cache wrappers close it with the last of them. ``clock`` (the service's) times the
    cache's single-flight, as it times the step timeouts."""
    chosen = actor_names(services) if services is not None else list(ALL_SERVICES)
    overrides = overrides or {}
    from actors.providers import fake

    built: dict[str, Any] = {}

    from actors.cache import (
        CACHEABLE_SERVICES,
        RedisCacheBackend,
        ResultCache,
        StoreCacheBackend,
        cache_url,
        cached_provider,
    )
    from actors.throttle import (
        LocalRateLimiter,
        Quota,
        RateLimiter,
        RedisRateLimiter,
        throttled_provider,
    )
    from service.cost_settings import CostSettings, ThrottleSettings

    # until Settings has its ``cost`` field, a deployment runs without the cache
    configured: CostSettings | None = getattr(settings, "cost", None)
    cost = configured or CostSettings()
    result_cache: ResultCache | None = cache

    def seconds() -> float:
        return clock.now().timestamp() if clock is not None else time.monotonic()

    def cache_for(service: str) -> ResultCache | None:
        # made on first use, so a backend (a Redis client) exists only if a wrapper owns it:
        # the wrappers close it with the last of them (ActorRuntime.close -> aclose())
        nonlocal result_cache
        if result_cache is not None:
            return result_cache
        if configured is None or cost.cache.ttl_of(service) is None:
            return None
        url = cache_url(cost.cache.url)
        if url is not None and url.startswith(("redis://", "rediss://", "unix://")):
            _require("redis", "redis")
            backend: Any = RedisCacheBackend(url)
        else:
            backend = StoreCacheBackend(store if store is not None else InMemorySagaStore())
        result_cache = ResultCache(
            backend, pricing=settings.pricing, version=cost.cache.version,
            wait=cost.cache.single_flight, clock=seconds,
        )
        return result_cache

    def throttle(service: str, made: Any, limits: ThrottleSettings) -> Any:
        import os

        from actors.cache import deployment_identity

        quota = Quota(limits.requests_per_minute, limits.per_minute)
        # one bucket per deployment called (endpoint, resource, model), shared by every
        # worker that calls it, whatever their other settings
        deployment = f"{service}:{deployment_identity(made)}"
        url = (cost.throttle_url or os.environ.get("AIAPPS_THROTTLE_URL")
               or cache_url(cost.cache.url))
        limiter: RateLimiter
        if url is not None and url.startswith(("redis://", "rediss://", "unix://")):
            _require("redis", "redis")
            limiter = RedisRateLimiter(url, deployment, quota)
        else:
            limiter = LocalRateLimiter(quota)
        return throttled_provider(
            made, limiter, deployment=deployment, max_retries=limits.max_retries,
            max_wait=limits.max_wait, default_retry_after=limits.default_retry_after,
            unit=limits.unit,
        )

    def provider(service: str) -> Any:
        # one provider per capability, shared by the actors that use it (one OCR engine)
        if service not in built:
            made = new_provider(service)
            # an adapter that names the deployment it calls is external (Azure, OpenAI
            # compatible): throttled on what the service says by default
            external = callable(getattr(made, "deployment_parts", None))
            quota = (cost.throttle_of(service, external=external) if configured is not None
                     else None)
            if quota is not None:  # inside the cache: a hit takes no quota
                made = throttle(service, made, quota)
            ttl = cost.cache.ttl_of(service)
            if service in CACHEABLE_SERVICES and ttl is not None and (
                shared := cache_for(service)
            ) is not None:
                made = cached_provider(service, made, shared, ttl)
            built[service] = made
        return built[service]

    def new_provider(service: str) -> Any:
        if service in overrides:
            return overrides[service]
        family = getattr(settings.providers, service)
        if service == "imagegen":
            if family == "fake":
                from actors.providers.fake_imagegen import FakeImageGenerator

                return FakeImageGenerator()
            if family == "azure":
                from service.provider_settings import build_image_generator

                return build_image_generator(settings.azure)
            return _local("imagegen", "CardImageGenerator")()
        if family == "fake":
            made = {
                "language": fake.FakeLanguageDetector, "vision": fake.FakeImageAnalyzer,
                "translation": fake.FakeTranslator, "responder": fake.FakeResponder,
                "speech": fake.FakeSpeechSynthesizer,
            }[service]()
            made.behaviour.latency = settings.fake_latency
            made.behaviour.log_path = settings.fake_call_log
            made.behaviour.crash_file = settings.fake_crash_file
            return made
        if family == "azure":
            from service.provider_settings import build_azure_provider

            return build_azure_provider(service, settings.azure, settings.knowledge_base)
        if family == "openai":
            if service != "responder":
                raise ConfigurationError(
                    f"AIAPPS_PROVIDERS__{service.upper()}=openai: the openai family serves the "
                    "responder only; use local, azure or fake"
                )
            from service.provider_settings import build_openai_responder

            return build_openai_responder(settings.azure, settings.knowledge_base, kind="openai")
        if service == "language":
            return _local("language", "LinguaLanguageDetector")(languages=settings.languages)
        if service == "vision":
            return _local("vision", "LocalImageAnalyzer")()
        if service == "translation":
            return _local("translation", "ApertiumTranslator")()
        if service == "responder":
            return _local("responder", "LocalResponder")(settings.knowledge_base)
        return _local("speech", "EspeakSynthesizer")()

    actors: list[Actor] = []
    for service in chosen:
        if service == "language":
            actors.append(LanguageActor(provider(service)))
        elif service == "vision":
            actors.append(VisionActor(provider(service), blobs))
        elif service == "translation":
            actors.append(TranslationActor(provider(service)))
        elif service == "responder":
            actors.append(ResponderActor(provider(service)))
        elif service == "speech":
            actors.append(SpeechActor(provider(service), blobs))
        elif service == "imagegen":
            actors.append(ImageGenerationActor(provider(service), blobs))
        elif service == "assets":
            actors.append(AssetActor(blobs))
        elif service == "compliance":
            actors.append(BrandComplianceActor(provider("vision"), blobs))
        elif service == "inspection":
            actors.append(InspectionActor(provider("vision"), blobs))
    return actors


def deployment_topology(
    settings: Settings, coordinator: SagaCoordinator | None = None
) -> dict[str, list[str]]:
    """Every durable subscriber group of a deployment and the event types it takes: one group
    per actor the wiring knows (its request type), the saga coordinator's (what its workflows
    subscribe to; ``coordinator``'s when given) and the event recorder's (every type). Every
    process declares all of them at start (:meth:`Service.start`), and
    ``ai-apps servicebus provision`` creates them on Service Bus."""
    groups = {f"actor.{name}": [actor.consumes.event_type] for name, actor in ALL_SERVICES.items()}
    if coordinator is None:
        # built only to ask what it subscribes to: nothing is started
        coordinator = make_coordinator(settings, InMemoryTransport(), InMemorySagaStore())
    groups[COORDINATOR_GROUP] = sorted(coordinator.subscribed_types())
    groups[RECORDER_GROUP] = [ALL_TYPES]
    return groups


def make_coordinator(
    settings: Settings, transport: Transport, store: SagaStore, clock: Clock | None = None
) -> SagaCoordinator:
    from service.cost_settings import CostSettings

    cost: CostSettings | None = getattr(settings, "cost", None)  # until Settings has it
    retry = StepRetry(max_attempts=settings.step_max_attempts)
    workflows = [
        support_workflow(
            escalation_threshold=settings.escalation_threshold, timeouts=settings.step_timeouts,
            retry=retry, pricing=settings.pricing,
            cheaper_responder=cost.cheaper("responder") if cost is not None else None,
        ),
        campaign_workflow(
            fanout_limit=settings.fanout_limit, timeouts=settings.step_timeouts, retry=retry,
            budget_service=settings.budget_service, pricing=settings.pricing,
        ),
        quality_workflow(
            fanout_limit=settings.fanout_limit, timeouts=settings.step_timeouts, retry=retry,
            pricing=settings.pricing,
        ),
    ]
    breakers = BreakerRegistry(
        BreakerPolicy(settings.breaker_failure_threshold, settings.breaker_cooldown)
    )
    return SagaCoordinator(
        transport, store, workflows, clock=clock, breakers=breakers,
        timer_interval=settings.timer_interval, outbox_interval=settings.outbox_interval,
        costs=cost.control(settings.pricing) if cost is not None else None,
    )


class Service:
    """Everything in one process: the embedded default (``ai-apps inquiry``, ``demo``).

    ``roles`` picks what runs here: the coordinator (with the event recorder), the actors, or
    both. Use as an async context manager; :meth:`submit` publishes an inquiry and
    :meth:`wait` returns its terminal event.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        coordinator: bool = True,
        actors: Iterable[str] | None = None,
        providers: dict[str, Any] | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        store: SagaStore | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.telemetry = Telemetry.from_settings(self.settings)
        self.transport = self.telemetry.instrument_transport(
            transport or make_transport(self.settings)
        )
        self.store = store or make_store(self.settings)
        self.blobs = FileBlobStore(self.settings.blobs)
        self.coordinator = (
            make_coordinator(self.settings, self.transport, self.store, clock)
            if coordinator else None
        )
        self.recorder = EventRecorder(self.transport, self.store) if coordinator else None
        self.runtime = ActorRuntime(
            self.transport,
            make_actors(self.settings, self.blobs, actors, providers, store=self.store,
                        clock=clock),
            middleware=(*self.telemetry.actor_middleware(), bind_log_context),
            concurrency=self.settings.concurrency,
            inbox=self.store,
            claim_lease=self.settings.claim_lease,
            clock=clock.now if clock is not None else None,
        )
        self.telemetry.observe_runtime(self.runtime)
        self.circuits: StoredCircuits | None = None
        """The coordinator's circuit states, kept in the store for the other processes."""
        if self.coordinator is not None:
            self.telemetry.observe_coordinator(self.coordinator)
            self.circuits = StoredCircuits(
                self.store, self.coordinator.breakers, self.coordinator.clock
            )
        self._pruner: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Future[Envelope]] = {}
        # terminal events seen, for a wait() that comes after the answer; bounded, as a
        # long-running gateway sees every answer of the deployment
        self._finished: OrderedDict[str, Envelope] = OrderedDict()
        self._health_lock = asyncio.Lock()
        self._health_report: tuple[float, dict[str, Any]] | None = None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self.telemetry.start()
        await self.store.open()
        if self.circuits is not None:
            await self.circuits.restore()
        # the whole topology first, whatever runs here: an inquiry published by a client
        # before any coordinator ever ran, or a request for a worker group that has not
        # started yet, waits in its group's durable queue instead of being dropped
        for group, types in deployment_topology(self.settings, self.coordinator).items():
            await self.transport.declare(group, types)
        await self.transport.subscribe(
            f"replies.{uuid.uuid4().hex[:12]}", TERMINAL_TYPES, self._on_terminal, ephemeral=True
        )
        if self.recorder is not None:
            await self.recorder.start()
        await self.runtime.warm_up()
        await self.runtime.start()
        if self.coordinator is not None:
            await self.coordinator.start()
            if self.settings.retention_days is not None:
                self._pruner = asyncio.create_task(self._prune_forever(), name="retention")
        await self.transport.start()

    async def _prune_forever(self) -> None:
        """Retention: every hour, drop what is past its age (:meth:`SagaStore.prune`: events,
        finished sagas, inbox results, idempotency keys)."""
        from datetime import UTC, datetime, timedelta

        import structlog

        assert self.settings.retention_days is not None
        age = timedelta(days=self.settings.retention_days)
        log = structlog.get_logger("service.retention")
        while True:
            try:
                pruned = await self.store.prune(datetime.now(UTC) - age)
                if any(pruned):
                    log.info("pruned", **pruned._asdict())
            except Exception:  # a failed prune is retried next hour, never fatal
                log.exception("retention prune failed")
            await asyncio.sleep(3600)

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self.coordinator is not None:
            await self.coordinator.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace
        await self.transport.close()
        # provider calls whose delivery was cancelled (a dropped connection, or the transport's
        # grace) get what is left of the same grace to record their results
        await self.runtime.close(grace=max(deadline - loop.time(), 0.0))
        if self.circuits is not None:
            await self.circuits.flush()
        await self.store.close()
        await asyncio.to_thread(self.telemetry.shutdown)

    async def health(self) -> dict[str, Any]:
        """The health report this process can give: its own (live) one when it runs the
        coordinator or actors, else the store's (the gateway on a broker, whose deployment's
        calls and circuits are in the shared store)."""
        if self.coordinator is not None or self.runtime.actors:
            return self.telemetry.health()
        from service.telemetry import stored_health

        # built from hundreds of stored sagas (tens of ms of the event loop): at most once per
        # HEALTH_REPORT_TTL seconds, however many probes and dashboards ask, one build at a time
        async with self._health_lock:
            now = time.monotonic()
            if self._health_report is None or now - self._health_report[0] >= HEALTH_REPORT_TTL:
                report = await stored_health(
                    self.store, self.telemetry.settings.health, redactor=self.telemetry.redactor
                )
                self._health_report = (time.monotonic(), report)
            return self._health_report[1]

    async def submit(
        self, inquiry: InquiryReceived, *, tenant: str = "default",
        traceparent: str | None = None, tracestate: str | None = None,
        baggage: str | None = None,
    ) -> Envelope:
        """Publish an inquiry; its correlation id is its inquiry id. ``traceparent``,
        ``tracestate`` and ``baggage`` (W3C) continue the caller's trace (the gateway's
        helpdesk)."""
        envelope = Envelope.new(
            inquiry, correlationid=inquiry.inquiry_id, tenant=tenant, source="/ai-apps/cli",
            traceparent=traceparent,
        )
        if tracestate is not None or baggage is not None:
            envelope = envelope.model_copy(update={"tracestate": tracestate, "baggage": baggage})
        await self.transport.publish(envelope)
        return envelope

    async def wait(self, inquiry_id: str, timeout: float | None = 300) -> Envelope:
        """The terminal event (``ResponseReady`` or ``InquiryFailed``) of an inquiry."""
        if inquiry_id in self._finished:
            return self._finished[inquiry_id]
        waiter = self._waiter(inquiry_id)
        try:
            async with asyncio.timeout(timeout):
                # The answer comes on this process's reply subscription. That is ephemeral: a
                # broker restart deletes it and answers sent before it is declared again are
                # not delivered to it. The event store has them: look there now and then.
                pause = STORE_POLL_FIRST
                while True:
                    await asyncio.wait({waiter}, timeout=pause)
                    if waiter.done():
                        return waiter.result()
                    stored = await self._stored_terminal(inquiry_id)
                    if stored is not None:
                        await self._on_terminal(stored)
                        return stored
                    pause = min(pause * 2, STORE_POLL_MAX)
        except TimeoutError:
            self._waiters.pop(inquiry_id, None)
            raise

    async def _stored_terminal(self, inquiry_id: str) -> Envelope | None:
        try:
            events = await self.store.events(inquiry_id)
        except Exception as exc:  # the store down for a moment: the subscription may answer
            structlog.get_logger("service").warning(
                "cannot read the event store while waiting", inquiry=inquiry_id, error=repr(exc)
            )
            return None
        return next((e for e in events if e.type in TERMINAL_TYPES), None)

    def _waiter(self, inquiry_id: str) -> asyncio.Future[Envelope]:
        fut = self._waiters.get(inquiry_id)
        if fut is None:
            fut = self._waiters[inquiry_id] = asyncio.get_running_loop().create_future()
        return fut

    async def _on_terminal(self, envelope: Envelope) -> None:
        self._finished[envelope.correlationid] = envelope
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        fut = self._waiters.pop(envelope.correlationid, None)
        if fut is not None and not fut.done():
            fut.set_result(envelope)

    async def attach(self, path: Path, media_type: str | None = None) -> Any:
        """Put a file in the blob store and return its reference."""
        import mimetypes

        kind = media_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = await asyncio.to_thread(path.read_bytes)
        return await self.blobs.put(data, kind, filename=path.name)
