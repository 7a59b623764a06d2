"""The AsyncAPI 3.0 document of the bus, generated from the event models.

One channel per registered event type: its address is the routing key (the type) on the
topic exchange, and its message is the CloudEvents envelope (structured JSON mode) with the
type's payload schema as ``data``. Operations say which role sends and which receives each
type: helpdesks and chatbots, the saga coordinator, each actor, the event store. They are
derived from the code (workflow definitions, the actors' ``consumes`` and result types), so
the document follows the models as they change.
"""

from __future__ import annotations

import importlib
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic.json_schema import models_json_schema

from events.base import Event, registry
from events.envelope import CONTENT_TYPE, Envelope
from events.support import InquiryFailed, InquiryReceived, ResponseReady, StepFailed

ASYNCAPI_VERSION = "3.0.0"
_REF = "#/components/schemas/{model}"
_KEY = re.compile(r"[^A-Za-z0-9_\-]")

_WORKFLOW_FACTORIES = (
    ("saga.workflows.support", "support_workflow"),
    ("saga.workflows.campaign", "campaign_workflow"),
    ("saga.workflows.quality", "quality_workflow"),
)
_ACTOR_MODULES = ("actors.services", "actors.creative")


def _key(name: str) -> str:
    return _KEY.sub("_", name)


def _event_types(fn: Callable[..., Any] | None) -> list[type[Event]]:
    """The event classes a function is annotated to return (unions and Optional unpacked)."""
    if fn is None:
        return []
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: nothing to learn from it
        return []
    found: list[type[Event]] = []
    stack = [hint]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, Event):
            found.append(item)
        elif typing.get_origin(item) in (typing.Union, types.UnionType):
            stack.extend(typing.get_args(item))
    return found


def _workflows() -> list[Any]:
    made = []
    for module, factory in _WORKFLOW_FACTORIES:
        try:
            made.append(getattr(importlib.import_module(module), factory)())
        except Exception:  # a workflow that cannot be built here is left out
            continue
    return made


def _actors() -> list[tuple[str, type[Event], list[type[Event]]]]:
    """(service, request type, result types) of every actor class."""
    from actors.runtime import Actor

    for module in _ACTOR_MODULES:
        try:
            importlib.import_module(module)
        except Exception:
            continue
    seen: dict[str, tuple[str, type[Event], list[type[Event]]]] = {}
    stack = list(Actor.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        service = getattr(cls, "service", None)
        consumes = getattr(cls, "consumes", None)
        if isinstance(service, str) and isinstance(consumes, type):
            seen[service] = (service, consumes, _event_types(cls.perform))
    return [seen[k] for k in sorted(seen)]


def roles() -> dict[str, dict[str, set[str]]]:
    """Which event types each role sends and receives."""
    out: dict[str, dict[str, set[str]]] = {}

    def add(role: str, action: str, *models: type[Event]) -> None:
        entry = out.setdefault(role, {"send": set(), "receive": set()})
        entry[action].update(m.event_type for m in models if m.event_type in registry)

    add("helpdesk", "send", InquiryReceived)
    add("helpdesk", "receive", ResponseReady, InquiryFailed)
    add("chatbot", "receive", ResponseReady, InquiryFailed)

    actors = _actors()
    results = [r for _, _, rs in actors for r in rs]
    from saga.coordinator import SagaCancelRequested

    add("coordinator", "receive", StepFailed, SagaCancelRequested, *results)
    for workflow in _workflows():
        add("coordinator", "receive", workflow.starts_on)
        for step in workflow.steps:
            add("coordinator", "send", *_event_types(step.request),
                *_event_types(step.compensate))
        for finisher in (workflow.complete, workflow.fail, workflow.cancelled):
            add("coordinator", "send", *_event_types(finisher))
    for service, consumes, produced in actors:
        add(f"actor.{service}", "receive", consumes)
        add(f"actor.{service}", "send", *produced, StepFailed)
    add("event-store", "receive", *(registry.resolve(t) for t in registry.types()))
    return out


_ROLE_DESCRIPTIONS = {
    "helpdesk": "A helpdesk or webhook bridge: publishes inquiries, gets their outcome.",
    "chatbot": "A chatbot backend: subscribes to responses (or uses the gateway's SSE stream).",
    "coordinator": "The saga coordinator (group saga-coordinator).",
    "event-store": "The event recorder (group event-store): appends every event.",
}


def _envelope_schema() -> dict[str, Any]:
    """The CloudEvents attributes of the envelope, without ``data``."""
    schema = Envelope.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)
    # the payload's own schema is given per message (allOf): here data is just an object
    schema["properties"]["data"] = {"type": "object", "description": "The event's payload."}
    schema["title"] = "CloudEvent"
    schema["description"] = (
        "A CloudEvents 1.0 envelope in structured JSON mode, with ai-apps' extension "
        "attributes: correlationid (the saga), causationid (the event that caused this one), "
        "tenant, traceparent/tracestate/baggage (W3C), replayof."
    )
    return schema


def asyncapi_document(
    *,
    exchange: str = "ai-apps",
    server_host: str = "localhost:5672",
    version: str | None = None,
    event_types: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus (a JSON-ready dict)."""
    by_role = roles()  # first: it imports the modules that register the workflows' events
    names = sorted(event_types) if event_types is not None else registry.types()
    models = [registry.resolve(n) for n in names]
    key_map, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["CloudEvent"] = _envelope_schema()

    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, model in zip(names, models, strict=True):
        key = _key(name)
        ref = key_map[(model, "validation")]["$ref"]
        doc = (model.__doc__ or "").strip()
        messages[key] = {
            "name": name,
            "title": name,
            "summary": doc.splitlines()[0] if doc else f"The {name} event.",
            "contentType": CONTENT_TYPE,
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/CloudEvent"},
                    {
                        "type": "object",
                        "required": ["type", "data"],
                        "properties": {"type": {"const": name}, "data": {"$ref": ref}},
                    },
                ],
            },
        }
        channels[key] = {
            "address": name,
            "title": name,
            "description": f"Events of type {name}: the routing key on the {exchange!r} topic "
            "exchange.",
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": exchange, "type": "topic", "durable": True,
                             "autoDelete": False, "vhost": "/"},
                "bindingVersion": "0.3.0",
            }},
        }

    operations: dict[str, Any] = {}
    for role, actions in sorted(by_role.items()):
        for action in ("send", "receive"):
            for name in sorted(actions[action]):
                key = _key(name)
                if key not in channels:
                    continue
                operations[_key(f"{role}-{action}-{name}")] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{key}"},
                    "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
                    "title": f"{role} {action}s {name}",
                    "tags": [{"name": role,
                              "description": _ROLE_DESCRIPTIONS.get(
                                  role, f"The {role.removeprefix('actor.')} actor "
                                  f"(group {role}).")}],
                }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "ai-apps message bus",
            "version": version or _package_version(),
            "description": (
                "AI services as actors on a message bus, coordinated by sagas. Every event is "
                "a CloudEvent (structured JSON) published on a topic exchange with its type "
                "as routing key; each subscriber group has a queue bound to the types it "
                "consumes. Helpdesks publish InquiryReceived; chatbots subscribe to "
                "ResponseReady (and InquiryFailed), or use the HTTP gateway's "
                "GET /v1/responses/stream."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": server_host,
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ (AIAPPS_BUS=amqp://…); the exchange is "
                f"{exchange!r} (AIAPPS_BUS_EXCHANGE).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("ai-apps")
    except Exception:
        return "0.0.0"
