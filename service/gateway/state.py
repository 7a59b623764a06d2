"""What every request of the gateway works with."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from saga.store import SagaStore
from service.gateway.fetch import UrlFetcher
from service.gateway.settings import GatewaySettings
from service.gateway.stream import ResponseHub
from service.settings import Settings
from service.wiring import Service


@dataclass
class GatewayState:
    service: Service
    settings: Settings
    gateway: GatewaySettings
    hub: ResponseHub
    fetcher: UrlFetcher
    in_flight: set[tuple[str, str]] = field(default_factory=set)
    """(tenant, Idempotency-Key) of the requests this process is carrying out."""

    @property
    def store(self) -> SagaStore:
        return self.service.store


def gateway_state(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state
