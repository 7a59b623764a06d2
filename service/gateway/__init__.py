"""The HTTP gateway: helpdesks post inquiries, chatbots stream responses (extra ``gateway``).

``create_app(service, settings)`` builds the FastAPI application; ``ai-apps serve`` runs it on
uvicorn. Only the settings are imported eagerly, so ``service.settings`` can use
:class:`GatewaySettings` without the extra installed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from service.gateway.app import create_app
    from service.gateway.asyncapi import asyncapi_document
    from service.gateway.auth import create_api_key, verify_api_key

_LAZY = {
    "create_app": "service.gateway.app",
    "asyncapi_document": "service.gateway.asyncapi",
    "create_api_key": "service.gateway.auth",
    "verify_api_key": "service.gateway.auth",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["GatewaySettings", "asyncapi_document", "create_api_key", "create_app",
           "verify_api_key"]
