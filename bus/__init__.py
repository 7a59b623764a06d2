"""The bus: the transport protocol and its backends, chosen by URL and imported when chosen."""

from bus.base import (
    ALL_TYPES,
    DeadLetter,
    DeadLetterNotFound,
    Handler,
    RetryPolicy,
    Transport,
    TransportError,
)
from bus.memory import InMemoryTransport

__all__ = [
    "ALL_TYPES",
    "DeadLetter",
    "DeadLetterNotFound",
    "Handler",
    "InMemoryTransport",
    "RetryPolicy",
    "Transport",
    "TransportError",
]
