"""A property-based run of the gateway's OpenAPI document (schemathesis): requests made from
the schema, valid and not, with and without a valid key, never get a 5xx.

The gateway runs on uvicorn in a thread of its own on a loopback port; attachment URLs are
refused before any network access (no allowed hosts), so nothing leaves the machine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from service.gateway import GatewaySettings, create_api_key, create_app
from service.testing import FakeService
from tests.gateway.conftest import serve_app

STREAM = "/v1/responses/stream"


class LiveGateway:
    """The gateway on fakes, served from a thread with its own event loop."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.url = ""
        self.key = ""
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LiveGateway:
        self._thread.start()
        if not self.ready.wait(30):
            raise AssertionError("the gateway did not start")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        service = FakeService(self.tmp)
        app = create_app(service, service.settings, gateway=GatewaySettings(
            max_upload_bytes=100_000, stream_keepalive=0.2, stream_poll_interval=0.1,
        ))
        async with serve_app(app) as url:
            self.url = url
            self.key = (await create_api_key(service.store, "acme"))[1]
            self.ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = LiveGateway(tmp_path_factory.mktemp("schemathesis")).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def operations(live: LiveGateway) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 10
    return found


def _run(operation: Any, examples: int, call: Any) -> None:
    """``examples`` valid and ``examples`` invalid requests for one operation."""
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            call(case)

        try:
            check()
        except Unsatisfiable:
            # an operation with nothing to get wrong (no parameters, no body)
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path


def test_no_server_errors(operations: list[Any], live: LiveGateway) -> None:
    """No generated request with a valid API key gets a 5xx, nor one without a key."""
    headers = {"Authorization": f"Bearer {live.key}"}
    for operation in operations:
        if operation.path == STREAM:
            continue
        _run(operation, 15, lambda case: case.call_and_validate(
            base_url=live.url, headers=headers, checks=[not_a_server_error], timeout=15))
        _run(operation, 5, lambda case: case.call_and_validate(
            base_url=live.url, checks=[not_a_server_error], timeout=15))


def test_stream_no_server_errors(operations: list[Any], live: LiveGateway) -> None:
    """The response stream (read for half a second each time) never answers a 5xx."""
    headers = {"Authorization": f"Bearer {live.key}"}
    (operation,) = [o for o in operations if o.path == STREAM]
    _run(operation, 10, lambda case: case.call_and_validate(
        base_url=live.url, headers=headers, checks=[not_a_server_error], timeout=(5, 0.5)))
