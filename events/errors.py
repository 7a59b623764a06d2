"""The root of ai-apps' error tree and the errors of the event layer.

::

    AiAppsError                      every error we raise; ``retryable`` says whether to try again
    ├── EventError
    │   └── DecodeError              bytes that are not a valid CloudEvent of a known type
    │       ├── UnknownEventType
    │       └── InvalidPayload
    ├── bus.TransportError           (in ``bus``)
    ├── actors.ProviderError         (in ``actors``): throttled, transient, permanent, auth
    └── saga.SagaError               (in ``saga``)
"""

from __future__ import annotations


class AiAppsError(Exception):
    """Root of every error raised by ai-apps."""

    retryable: bool = False


class EventError(AiAppsError):
    """A problem with an event: its envelope, its type or its payload."""


class DecodeError(EventError):
    """Bytes could not be turned into an event. Never retryable: the bytes will not change."""


class UnknownEventType(DecodeError):
    """The CloudEvent's ``type`` is not in the registry."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class InvalidPayload(DecodeError):
    """The CloudEvent's ``data`` does not validate against its type's model."""
