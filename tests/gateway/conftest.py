"""The gateway on the embedded service with fake providers: in-process through httpx's ASGI
transport, or on a real uvicorn server on a free loopback port (for Server-Sent Events, which
the ASGI transport cannot stream)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image

from service.gateway import GatewaySettings, create_api_key, create_app
from service.testing import FakeService
from service.wiring import Service


def png(color: str = "red", size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def noisy_png(size: int = 5000) -> bytes:
    """A PNG signature and ``size`` random bytes: an image by its content, and large."""
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size)


def inquiry_body(**fields: Any) -> dict[str, Any]:
    return {"customer": {"id": "cust-1", "name": "Ana"}, "channel": "chat",
            "message": "My order arrived broken", "language": "en", **fields}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Gateway:
    """A running gateway: the app, its service, a client and one API key per tenant."""

    app: FastAPI
    service: Any  # a FakeService, or a plain Service for a client-only gateway
    client: httpx.AsyncClient
    keys: dict[str, str] = field(default_factory=dict)
    base_url: str = "http://gateway"

    def auth(self, tenant: str = "acme") -> dict[str, str]:
        return bearer(self.keys[tenant])

    async def post(self, body: dict[str, Any] | None = None, tenant: str = "acme",
                   **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(tenant), **kwargs.pop("headers", {})}
        return await self.client.post("/v1/inquiries", json=body or inquiry_body(),
                                      headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="none",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                    raise AssertionError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


@contextlib.asynccontextmanager
async def gateway_for(
    tmp_path: Path,
    settings: GatewaySettings | None = None,
    *,
    served: bool = False,
    tenants: tuple[str, ...] = ("acme", "globex"),
    service: Service | None = None,
    **create: Any,
) -> AsyncIterator[Gateway]:
    service = service or FakeService(tmp_path)
    app = create_app(service, service.settings, gateway=settings or GatewaySettings(), **create)
    if served:
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            gw = Gateway(app, service, client, base_url=url)
            for tenant in tenants:
                gw.keys[tenant] = (await create_api_key(service.store, tenant))[1]
            yield gw
        return
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     timeout=10) as client:
            gw = Gateway(app, service, client)
            for tenant in tenants:
                gw.keys[tenant] = (await create_api_key(service.store, tenant))[1]
            yield gw


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway_for(tmp_path) as gw:
        yield gw


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(stream_keepalive=1.0, stream_poll_interval=0.5)
    async with gateway_for(tmp_path, settings, served=True) as gw:
        yield gw


# -- Server-Sent Events ------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Reads the events of an open ``text/event-stream`` response in a task of its own, so a
    read that times out loses nothing."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.opened = asyncio.Event()
        self._queue: asyncio.Queue[SseEvent | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        data: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    self.opened.set()
                    if data or fields:
                        self._queue.put_nowait(
                            SseEvent(fields.get("id"), fields.get("event"), "\n".join(data)))
                    fields, data = {}, []
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name in ("id", "event"):
                        fields[name] = value
        except httpx.HTTPError:
            pass
        finally:
            self._queue.put_nowait(None)

    async def next(self, timeout: float = 10.0) -> SseEvent:
        event = await asyncio.wait_for(self._queue.get(), timeout)
        if event is None:
            self._queue.put_nowait(None)
            raise AssertionError("the stream ended")
        return event

    async def events(self, count: int, timeout: float = 10.0) -> list[SseEvent]:
        return [await self.next(timeout) for _ in range(count)]

    async def nothing_for(self, seconds: float) -> None:
        """Assert that no event arrives within ``seconds``."""
        with contextlib.suppress(TimeoutError):
            event = await self.next(seconds)
            raise AssertionError(f"unexpected event {event}")

    async def ended(self, timeout: float = 10.0) -> None:
        """Wait until the server ends the stream."""
        await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def sse(client: httpx.AsyncClient, key: str, params: dict[str, Any] | None = None,
              last_event_id: str | None = None) -> AsyncIterator[SseReader]:
    headers = {**bearer(key), "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with client.stream("GET", "/v1/responses/stream", params=params,
                             headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        try:
            # the stream's opening comment: from here on, what is published is delivered
            await asyncio.wait_for(reader.opened.wait(), 10)
            yield reader
        finally:
            await reader.close()
