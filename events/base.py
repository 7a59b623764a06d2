"""The base of every event payload and the type registry."""

from __future__ import annotations

from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from events.errors import EventError, UnknownEventType


class Event(BaseModel):
    """Base of every event payload: frozen, and unknown fields are an error.

    ``event_type`` is the CloudEvents ``type`` on the wire; it is the class name unless a
    subclass sets it (a breaking change gets a new versioned type, e.g. ``InquiryReceived.v2``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = ""


E = TypeVar("E", bound=type[Event])


class EventRegistry:
    """Maps a CloudEvents ``type`` to the pydantic model of its ``data``."""

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}

    def register(self, model: E) -> E:
        """Register ``model`` under its ``event_type`` (the class name when unset)."""
        name = model.__dict__.get("event_type") or model.__name__
        model.event_type = name
        existing = self._types.get(name)
        if existing is not None and existing is not model:
            raise EventError(f"event type {name!r} is already registered to {existing!r}")
        self._types[name] = model
        return model

    def resolve(self, event_type: str) -> type[Event]:
        """The model registered for ``event_type``; :class:`UnknownEventType` otherwise."""
        try:
            return self._types[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._types

    def types(self) -> list[str]:
        """Every registered type name, sorted."""
        return sorted(self._types)


registry = EventRegistry()
"""The process-wide registry every built-in event type is registered in."""


def event(model: E) -> E:
    """Class decorator: register an event model in the default :data:`registry`."""
    return registry.register(model)
