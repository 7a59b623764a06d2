"""Keys never appear in error messages, provider reprs, settings reprs or logs (every logger at
DEBUG, so the SDKs' own request logging is included)."""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from actors.capabilities import ResponseQuery
from actors.errors import AuthError, ProviderError, TransientError
from actors.providers.azure.speech import AzureSpeechSynthesizer
from actors.providers.azure.translation import AzureTranslator
from actors.providers.azure.vision import AzureImageAnalyzer
from actors.providers.local.knowledge import KnowledgeBase
from actors.providers.openai_compat import (
    AzureImageGenerator,
    OpenAIConnection,
    OpenAIImageGenerator,
    OpenAIResponder,
)
from service.provider_settings import AzureProviderSettings
from tests.azure.conftest import IMAGES, KEY, azure_settings
from tests.azure_fakes import FakeAzure, FakeSpeech

pytestmark = pytest.mark.azure

LABEL = (IMAGES / "product_label_es.png").read_bytes()


@dataclass
class Case:
    provider: Any
    call: Callable[[], Awaitable[object]]


def _cases(http: str, ws: str, kb: KnowledgeBase) -> dict[str, Callable[[], Case]]:
    def translator() -> Case:
        p = AzureTranslator(http, key=KEY, region="westeurope")
        return Case(p, lambda: p.translate("Hola", "en"))

    def vision() -> Case:
        p = AzureImageAnalyzer(http, key=KEY)
        return Case(p, lambda: p.analyze(LABEL, "image/png", ("read",)))

    def speech() -> Case:
        p = AzureSpeechSynthesizer(endpoint=ws, key=KEY)
        return Case(p, lambda: p.synthesize("Hola", "es"))

    def azure_openai() -> Case:
        p = OpenAIResponder(OpenAIConnection("azure", http, SecretStr(KEY), "2024-10-21"), "gpt", kb)
        return Case(p, lambda: p.respond(ResponseQuery(message="my order is late")))

    def openai() -> Case:
        p = OpenAIResponder(OpenAIConnection("openai", f"{http}/v1", SecretStr(KEY)), "m", kb)
        return Case(p, lambda: p.respond(ResponseQuery(message="my order is late")))

    def azure_images() -> Case:
        p = AzureImageGenerator(http, "dall-e-3", api_key=KEY)
        return Case(p, lambda: p.generate("a box"))

    def openai_images() -> Case:
        p = OpenAIImageGenerator(f"{http}/v1", "gpt-image-1", api_key=KEY)
        return Case(p, lambda: p.generate("a box"))

    return {
        "translator": translator, "vision": vision, "speech": speech, "azure-openai": azure_openai,
        "openai": openai, "azure-images": azure_images, "openai-images": openai_images,
    }


NAMES = ["translator", "vision", "speech", "azure-openai", "openai", "azure-images", "openai-images"]


@pytest.fixture
async def wrong_key_servers() -> AsyncIterator[tuple[FakeAzure, FakeSpeech]]:
    """Fakes that expect another key: every call with KEY is refused (401)."""
    async with FakeAzure(key="the-right-key") as http, FakeSpeech(key="the-right-key") as ws:
        yield http, ws


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _memory_logger() -> Any:
    # the Speech SDK has no type information; imported by name
    return importlib.import_module("azure.cognitiveservices.speech.diagnostics.logging").MemoryLogger


class NativeSpeechLog:
    """The Speech SDK logs natively, not through ``logging``: its memory logger's lines."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.lines: list[str] = []

    def __enter__(self) -> NativeSpeechLog:
        if self.active:
            _memory_logger().start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            _memory_logger().stop()
            self.lines = list(_memory_logger().dump_to_list())


def _assert_no_key(
    error: ProviderError, provider: object, caplog: pytest.LogCaptureFixture, native: NativeSpeechLog
) -> None:
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in repr(provider)
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert KEY not in logged
    assert KEY not in caplog.text
    assert caplog.records or native.lines, "nothing was logged: the log check would prove nothing"
    assert not [line for line in native.lines if KEY in line]


@pytest.mark.parametrize("name", NAMES)
async def test_auth_error_does_not_leak_the_key(
    name: str, wrong_key_servers: tuple[FakeAzure, FakeSpeech], kb: KnowledgeBase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, ws = wrong_key_servers
    caplog.set_level(logging.DEBUG)
    case = _cases(http.url, ws.endpoint, kb)[name]()
    try:
        with NativeSpeechLog(name == "speech") as native, pytest.raises(AuthError) as caught:
            await case.call()
    finally:
        await case.provider.aclose()
    _assert_no_key(caught.value, case.provider, caplog, native)
    sent = [r.headers for r in http.requests] + [s.headers for s in ws.sessions]
    assert any(KEY in value for h in sent for value in h.values())  # the key did go out, to the service only


@pytest.mark.parametrize("name", NAMES)
async def test_connection_error_does_not_leak_the_key(
    name: str, kb: KnowledgeBase, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    caplog.set_level(logging.DEBUG)
    case = _cases(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/cognitiveservices/websocket/v1",
                  kb)[name]()
    try:
        with NativeSpeechLog(name == "speech") as native, pytest.raises(TransientError) as caught:
            await case.call()
    finally:
        await case.provider.aclose()
    _assert_no_key(caught.value, case.provider, caplog, native)


async def test_settings_never_show_keys(fake: FakeAzure, tts: FakeSpeech) -> None:
    cfg = azure_settings(fake, tts)
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(cfg.model_dump())):
        assert KEY not in text
    assert isinstance(cfg.translator.key, SecretStr)
    assert AzureProviderSettings.model_validate_json(cfg.model_dump_json()).translator.key is not None
