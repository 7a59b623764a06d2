"""Provisioning of the Azure Service Bus topology, with the ``ServiceBusAdministrationClient``.

The transport (:mod:`bus.servicebus`) assumes its topic and subscriptions exist; this module
creates them, or brings them in line, idempotently. For a topic ``T`` and a subscriber group
``G`` subscribed to some event types:

* ``T``: the topic every event is sent to.
* ``T/Subscriptions/G``: the group's subscription (name: :func:`subscription_name`), with
  ``max_delivery_count``, ``lock_duration`` and ``dead_lettering_on_message_expiration``, and the
  rules of :func:`rules_for` in place of the ``$Default`` rule (which accepts everything):

  - ``type.<EventType>``: a correlation filter on the subject (the event type), one per type;
  - ``all`` (for :data:`~bus.base.ALL_TYPES`): the SQL filter ``NOT EXISTS([x-target-group])``,
    every event but the copies targeted at one group;
  - ``target``: a correlation filter on the application property ``x-target-group = G``: the
    copies sent to this group alone (retries and re-driven dead letters).

Rules are OR-ed by Service Bus, so a group gets an event if any of its rules matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from bus.base import ALL_TYPES, TransportError

if TYPE_CHECKING:
    from azure.servicebus.aio.management import ServiceBusAdministrationClient
    from azure.servicebus.management import SubscriptionProperties

log = structlog.get_logger("bus.servicebus_admin")

H_TARGET = "x-target-group"
"""Application property of a copy meant for one subscriber group only."""
DEFAULT_RULE = "$Default"
EPHEMERAL_IDLE = timedelta(minutes=5)
"""``auto_delete_on_idle`` of an ephemeral group's subscription (the minimum Service Bus takes)."""

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One subscription rule, independent of the SDK: a correlation filter on the subject and
    application properties, or a SQL filter."""

    name: str
    subject: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    sql: str | None = None

    def describe(self) -> str:
        if self.sql is not None:
            return f"sql {self.sql!r}"
        parts = [f"subject = {self.subject!r}"] if self.subject is not None else []
        parts += [f"{k} = {v!r}" for k, v in sorted(self.properties.items())]
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """What a subscription is created or updated with."""

    max_delivery_count: int = 10
    lock_duration: timedelta = timedelta(seconds=60)
    dead_lettering_on_message_expiration: bool = True
    auto_delete_on_idle: timedelta | None = None


class SubscriptionAdmin(Protocol):
    """What the transport needs of the management plane: ephemeral groups, and (with
    ``provision=True``) its own groups. :class:`AzureSubscriptionAdmin` is the real one."""

    async def ensure_topic(self, topic: str) -> list[str]: ...

    async def ensure_subscription(
        self, topic: str, name: str, rules: Sequence[RuleSpec], settings: SubscriptionSettings
    ) -> list[str]: ...

    async def delete_subscription(self, topic: str, name: str) -> None: ...

    async def close(self) -> None: ...


def subscription_name(group: str) -> str:
    """The Service Bus subscription of a subscriber group: the group's name when Service Bus
    accepts it (1-50 letters, digits, ``.``, ``-``, ``_``), else a sanitized name with a hash."""
    if _NAME_OK.match(group):
        return group
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", group).strip("._-") or "group"
    digest = hashlib.sha256(group.encode()).hexdigest()[:8]
    return f"{cleaned[:41]}.{digest}"


def rule_name(event_type: str) -> str:
    name = f"type.{event_type}"
    if _NAME_OK.match(name):
        return name
    return subscription_name(name)


def rules_for(group: str, event_types: Collection[str]) -> list[RuleSpec]:
    """The rules of ``group``'s subscription for ``event_types`` (see the module doc)."""
    rules: list[RuleSpec] = []
    if ALL_TYPES in event_types:
        rules.append(RuleSpec("all", sql=f"NOT EXISTS([{H_TARGET}])"))
    for event_type in sorted(set(event_types) - {ALL_TYPES}):
        rules.append(RuleSpec(rule_name(event_type), subject=event_type))
    rules.append(RuleSpec("target", properties={H_TARGET: group}))
    return rules


# -- the real management plane -----------------------------------------------------------


def admin_client(
    connection_string: str | None = None, *, namespace: str | None = None, credential: Any = None
) -> tuple[ServiceBusAdministrationClient, Any]:
    """An async administration client, and the credential this call created (to close), if any."""
    from azure.servicebus.aio.management import ServiceBusAdministrationClient

    if connection_string:
        return ServiceBusAdministrationClient.from_connection_string(connection_string), None
    if not namespace:
        raise ValueError("give a connection string or a namespace")
    owned = None
    if credential is None:
        from azure.identity.aio import DefaultAzureCredential

        credential = owned = DefaultAzureCredential()
    return ServiceBusAdministrationClient(fully_qualified_namespace(namespace), credential), owned


def fully_qualified_namespace(namespace: str) -> str:
    """``my-ns``, ``my-ns.servicebus.windows.net`` or ``sb://my-ns.servicebus.windows.net/``
    → ``my-ns.servicebus.windows.net``."""
    host = namespace.removeprefix("sb://").removeprefix("amqps://").strip("/")
    return host if "." in host else f"{host}.servicebus.windows.net"


class AzureSubscriptionAdmin:
    """:class:`SubscriptionAdmin` on ``ServiceBusAdministrationClient`` (aio). With ``dry_run``
    it reads the namespace and reports what it would change, but changes nothing."""

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        namespace: str | None = None,
        credential: Any = None,
        client: ServiceBusAdministrationClient | None = None,
        dry_run: bool = False,
    ) -> None:
        self._owned_credential: Any = None
        if client is None:
            client, self._owned_credential = admin_client(
                connection_string, namespace=namespace, credential=credential
            )
        self.client = client
        self.dry_run = dry_run

    async def close(self) -> None:
        await self.client.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def ensure_topic(self, topic: str, message_ttl: timedelta | None = None) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = await self.client.get_topic(topic)
        except ResourceNotFoundError:
            if message_ttl is None:
                await self._do(self.client.create_topic(topic))
                return [f"create topic {topic}"]
            await self._do(self.client.create_topic(topic, default_message_time_to_live=message_ttl))
            return [f"create topic {topic} (default_message_time_to_live={message_ttl})"]
        if message_ttl is not None and props.default_message_time_to_live != message_ttl:
            action = (f"update topic {topic}: default_message_time_to_live "
                      f"{props.default_message_time_to_live} -> {message_ttl}")
            props.default_message_time_to_live = message_ttl
            await self._do(self.client.update_topic(props))
            return [action]
        return []

    async def ensure_subscription(
        self, topic: str, name: str, rules: Sequence[RuleSpec], settings: SubscriptionSettings
    ) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        path = f"{topic}/{name}"
        wanted = _settings_dict(settings)
        try:
            props = await self.client.get_subscription(topic, name)
        except ResourceNotFoundError:
            props = None
        actions: list[str] = []
        if props is None:
            await self._do(self.client.create_subscription(topic, name, **wanted))
            actions.append(f"create subscription {path}" + _fmt(wanted))
            # a new subscription has the $Default rule (everything): it goes first, so that the
            # subscription never takes events it does not want
            current: dict[str, RuleSpec | None] = {DEFAULT_RULE: None}
        else:
            changed = _changed(props, wanted)
            if changed:
                for key, (_, new) in changed.items():
                    setattr(props, key, new)
                await self._do(self.client.update_subscription(topic, props))
                actions.append(f"update subscription {path}: " + ", ".join(
                    f"{k} {old} -> {new}" for k, (old, new) in changed.items()
                ))
            current = {}
            async for existing in self.client.list_rules(topic, name):
                current[existing.name] = _spec_of(existing)
        desired = {r.name: r for r in rules}
        if props is None and DEFAULT_RULE not in desired:
            await self._do(self.client.delete_rule(topic, name, DEFAULT_RULE))
            actions.append(f"delete rule {path}/{DEFAULT_RULE}")
            current.pop(DEFAULT_RULE)
        for rule in rules:
            if rule.name in current and current[rule.name] == rule:
                continue
            if rule.name in current:
                await self._do(self.client.delete_rule(topic, name, rule.name))
                actions.append(f"replace rule {path}/{rule.name}: {rule.describe()}")
            else:
                actions.append(f"create rule {path}/{rule.name}: {rule.describe()}")
            await self._do(self.client.create_rule(topic, name, rule.name, filter=_filter(rule)))
        for stale in sorted(set(current) - set(desired)):
            await self._do(self.client.delete_rule(topic, name, stale))
            actions.append(f"delete rule {path}/{stale}")
        return actions

    async def delete_subscription(self, topic: str, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            await self._do(self.client.delete_subscription(topic, name))

    async def _do(self, call: Any) -> None:
        """Await a change, or (dry run) close the coroutine unawaited."""
        if self.dry_run:
            call.close()
            return
        await call


async def provision(
    connection_string: str | None = None,
    *,
    namespace: str | None = None,
    credential: Any = None,
    topic: str = "ai-apps",
    groups: Mapping[str, Collection[str]],
    max_delivery_count: int = 10,
    lock_duration: timedelta = timedelta(seconds=60),
    message_ttl: timedelta | None = None,
    dry_run: bool = False,
    admin: AzureSubscriptionAdmin | None = None,
) -> list[str]:
    """Create or update ``topic`` and one subscription per group of ``groups`` (group → event
    types), with their rules, dead-lettering on expiry and ``max_delivery_count``. Idempotent:
    returns the changes made, which is empty when everything was already in place. With
    ``dry_run`` it reads the namespace and returns the changes it would make, making none.

    ``max_delivery_count`` is the broker's own limit, a backstop behind the transport's retry
    policy: keep it above the policy's ``max_attempts``."""
    if max_delivery_count < 1:
        raise ValueError("max_delivery_count must be at least 1")
    owned = admin is None
    if admin is None:
        admin = AzureSubscriptionAdmin(
            connection_string, namespace=namespace, credential=credential, dry_run=dry_run
        )
    elif dry_run:
        admin.dry_run = True
    from azure.core.exceptions import AzureError

    settings = SubscriptionSettings(max_delivery_count=max_delivery_count, lock_duration=lock_duration)
    actions: list[str] = []
    try:
        topic_actions = await admin.ensure_topic(topic, message_ttl)
        actions += topic_actions
        new_topic = bool(topic_actions) and topic_actions[0].startswith("create topic")
        for group, types in sorted(groups.items()):
            name = subscription_name(group)
            rules = rules_for(group, types)
            if dry_run and new_topic:
                # nothing to read below a topic that does not exist yet
                actions.append(f"create subscription {topic}/{name}" + _fmt(_settings_dict(settings)))
                actions.append(f"delete rule {topic}/{name}/{DEFAULT_RULE}")
                actions += [f"create rule {topic}/{name}/{r.name}: {r.describe()}" for r in rules]
                continue
            actions += await admin.ensure_subscription(topic, name, rules, settings)
    except AzureError as exc:
        raise TransportError(f"provisioning {topic!r} failed: {exc}") from exc
    finally:
        if owned:
            await admin.close()
    for action in actions:
        log.info("provision", action=action, dry_run=dry_run)
    return actions


# -- helpers -------------------------------------------------------------------------------


def _settings_dict(settings: SubscriptionSettings) -> dict[str, Any]:
    wanted: dict[str, Any] = {
        "max_delivery_count": settings.max_delivery_count,
        "lock_duration": settings.lock_duration,
        "dead_lettering_on_message_expiration": settings.dead_lettering_on_message_expiration,
    }
    if settings.auto_delete_on_idle is not None:
        wanted["auto_delete_on_idle"] = settings.auto_delete_on_idle
    return wanted


def _changed(props: SubscriptionProperties, wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        key: (getattr(props, key, None), value)
        for key, value in wanted.items()
        if getattr(props, key, None) != value
    }


def _fmt(options: Mapping[str, Any]) -> str:
    if not options:
        return ""
    return " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"


def _filter(rule: RuleSpec) -> Any:
    from azure.servicebus.management import CorrelationRuleFilter, SqlRuleFilter

    if rule.sql is not None:
        return SqlRuleFilter(rule.sql)
    return CorrelationRuleFilter(label=rule.subject, properties=dict(rule.properties) or None)


def _spec_of(rule: Any) -> RuleSpec | None:
    """A rule read from the namespace as a :class:`RuleSpec`; None for one we would not make
    (an action, or a filter on other fields)."""
    from azure.servicebus.management import CorrelationRuleFilter, SqlRuleFilter

    if rule.action is not None:
        return None
    flt = rule.filter
    if isinstance(flt, CorrelationRuleFilter):
        others = (flt.correlation_id, flt.message_id, flt.to, flt.reply_to, flt.session_id,
                  flt.reply_to_session_id, flt.content_type)
        if any(v is not None for v in others):
            return None
        props = {str(k): str(v) for k, v in (flt.properties or {}).items()}
        return RuleSpec(rule.name, subject=flt.label, properties=props)
    if isinstance(flt, SqlRuleFilter):
        return RuleSpec(rule.name, sql=flt.sql_expression)
    return None


__all__ = [
    "H_TARGET",
    "AzureSubscriptionAdmin",
    "RuleSpec",
    "SubscriptionAdmin",
    "SubscriptionSettings",
    "admin_client",
    "fully_qualified_namespace",
    "provision",
    "rule_name",
    "rules_for",
    "subscription_name",
]
