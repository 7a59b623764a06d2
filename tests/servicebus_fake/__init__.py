"""A fake Azure Service Bus for tests: an AMQP 1.0 broker the real ``azure-servicebus`` client
talks to (:mod:`.broker`), and a stand-in for the management API that writes the broker's
subscription rules directly (:class:`FakeAdmin`), since the fake has no management endpoint."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from proton import Message

from bus.servicebus_admin import RuleSpec, SubscriptionSettings
from tests.servicebus_fake.broker import FakeServiceBus, Rule

_NOT_EXISTS = re.compile(r"NOT EXISTS\(\[(?P<name>[^\]]+)\]\)")


def predicate(spec: RuleSpec) -> Rule:
    """A :class:`RuleSpec` as the broker evaluates it: correlation filters on the subject and
    application properties, and the one SQL filter the transport uses (``NOT EXISTS([p])``)."""
    if spec.sql is not None:
        found = _NOT_EXISTS.fullmatch(spec.sql)
        if found is None:
            raise ValueError(f"the fake evaluates no SQL filter but NOT EXISTS([p]): {spec.sql!r}")
        name = found["name"]
        return lambda message: name not in (message.properties or {})
    subject = spec.subject
    wanted = dict(spec.properties)

    def matches(message: Message) -> bool:
        if subject is not None and message.subject != subject:
            return False
        properties: dict[Any, Any] = message.properties or {}
        return all(k in properties and str(properties[k]) == v for k, v in wanted.items())

    return matches


class FakeAdmin:
    """:class:`~bus.servicebus_admin.SubscriptionAdmin` on the fake broker. It records what it
    was asked, so tests can check ephemeral subscriptions are created and deleted."""

    def __init__(self, broker: FakeServiceBus) -> None:
        self.broker = broker
        self.created: list[tuple[str, str, SubscriptionSettings]] = []
        self.deleted: list[tuple[str, str]] = []

    async def ensure_topic(self, topic: str) -> list[str]:
        self.broker.create_topic(topic)
        return []

    async def ensure_subscription(
        self, topic: str, name: str, rules: Sequence[RuleSpec], settings: SubscriptionSettings
    ) -> list[str]:
        self.broker.set_rules(topic, name, [predicate(r) for r in rules])
        self.created.append((topic, name, settings))
        return [f"set rules of {topic}/{name}"]

    async def delete_subscription(self, topic: str, name: str) -> None:
        self.broker.delete_subscription(topic, name)
        self.deleted.append((topic, name))

    async def close(self) -> None:
        return None


def provision_fake(
    broker: FakeServiceBus,
    topic: str,
    groups: Mapping[str, Sequence[str]],
    *,
    lock_seconds: float | None = None,
) -> None:
    """What ``ai-apps servicebus provision`` does on a namespace, done on the fake."""
    from bus.servicebus_admin import rules_for, subscription_name

    broker.create_topic(topic)
    for group, types in groups.items():
        rules = [predicate(r) for r in rules_for(group, types)]
        broker.set_rules(topic, subscription_name(group), rules, lock_seconds=lock_seconds)


__all__ = ["FakeAdmin", "FakeServiceBus", "predicate", "provision_fake"]
