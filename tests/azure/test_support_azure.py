"""The support workflow with every capability on the Azure adapters (real SDKs) against the
loopback fakes: language detection and translation on Translator, image analysis on Vision,
the grounded reply on Azure OpenAI, the voice on Speech."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from actors.providers.local.knowledge import KnowledgeBase
from events import ResponseReady
from saga import StepStatus
from service import Service, Settings
from service.cost_settings import CostSettings
from service.provider_settings import build_azure_provider
from service.testing import FakeService, make_inquiry
from tests.azure.conftest import IMAGES, azure_settings
from tests.azure_fakes import FakeAzure, FakeSpeech, content_filter, server_error, throttle

pytestmark = pytest.mark.azure

MESSAGE = (
    "Hola, la cafetera que compré llegó rota y no funciona. Adjunto una foto de la etiqueta. "
    "¿Me pueden devolver el dinero?"
)
IN_ENGLISH = (
    "Hello, the coffee maker I bought arrived broken and does not work. I attach a photo of the "
    "label. Can you give me my money back?"
)
SERVICES = ("language", "translation", "vision", "responder", "speech")


def _reply(payload: dict[str, Any]) -> str:
    """The fake model's answer: it quotes the order number it was shown, if any."""
    user = payload["messages"][-1]["content"]
    order = re.search(r"ORD-\d{4}-\d{5}", user)
    noted = f" I can see order {order.group(0)} on your label." if order else ""
    return f"Hello María, we are sorry the coffee maker arrived broken.{noted} You can get a full refund."


@pytest.fixture
def providers(fake: FakeAzure, tts: FakeSpeech, kb: KnowledgeBase) -> dict[str, Any]:
    fake.translations[(MESSAGE, "en")] = IN_ENGLISH
    fake.chat_reply = _reply
    cfg = azure_settings(fake, tts)
    translator = build_azure_provider("translation", cfg, kb)
    return {
        "language": translator,  # one Translator client serves detection and translation
        "translation": translator,
        "vision": build_azure_provider("vision", cfg, kb),
        "responder": build_azure_provider("responder", cfg, kb),
        "speech": build_azure_provider("speech", cfg, kb),
    }


@pytest.fixture
async def svc(tmp_path: Path, providers: dict[str, Any]) -> AsyncIterator[Service]:
    settings = Settings(store="memory://", blobs=tmp_path / "blobs", bus_retry_delay=0.01)
    try:
        async with Service(settings, providers=providers) as service:
            yield service
    finally:
        for provider in {id(p): p for p in providers.values()}.values():
            await provider.aclose()


async def _submit_spanish(svc: Service, inquiry_id: str = "az-es") -> ResponseReady:
    label = await svc.attach(IMAGES / "product_label_es.png")
    await svc.submit(make_inquiry(inquiry_id, MESSAGE, attachments=(label,), voice_reply=True, name="María"))
    done = await svc.wait(inquiry_id, timeout=60)
    assert isinstance(done.data, ResponseReady)
    return done.data


async def test_spanish_inquiry_with_photo_and_voice(svc: Service, fake: FakeAzure, tts: FakeSpeech) -> None:
    """analyse → detect → translate in → respond → translate out → voice, all on Azure."""
    reply = await _submit_spanish(svc)
    assert reply.degraded == ()
    assert reply.language == "es"
    assert reply.text.startswith("[en>es] Hello María")
    assert "ORD-2024-58317" in reply.text  # Vision OCR → prompt → model → Spanish reply
    assert reply.sources  # the articles given to the model (ranking is tested in tests/local)
    assert reply.voice is not None
    assert reply.voice.media_type == "audio/wav"

    state = await svc.store.load("az-es")
    assert state is not None
    expected = {
        "analyze_image[0]": "azure", "detect_language": "azure", "translate_in": "azure",
        "respond": "azure-openai", "translate_out": "azure", "synthesize_voice": "azure",
    }
    for step, provider in expected.items():
        assert state.steps[step].status is StepStatus.SUCCEEDED, step
        result = state.steps[step].result
        assert result is not None
        assert result.data["provider"]["name"] == provider, step
    usage = {step: state.steps[step].result.data["usage"] for step in expected}  # type: ignore[union-attr]
    assert usage["analyze_image[0]"]["transactions"] == 3  # caption, tags and read
    assert usage["translate_in"]["characters"] == len(MESSAGE)
    assert usage["respond"]["input_tokens"] > 0
    assert usage["respond"]["output_tokens"] > 0
    assert usage["synthesize_voice"]["audio_seconds"] > 0

    # what each service received
    detect, translate_in, translate_out = (r.json()["inputs"][0] for r in fake.received("translate"))
    assert "language" not in detect
    assert translate_in == {"text": MESSAGE, "targets": [{"language": "en"}], "language": "es"}
    assert translate_out["language"] == "en"
    assert translate_out["targets"] == [{"language": "es"}]
    assert len(fake.received("analyze")) == 1
    [chat] = fake.received("chat")
    _, grounding, user = chat.json()["messages"]
    assert IN_ENGLISH in user["content"]
    assert "PEDIDO ORD-2024-58317" in user["content"]
    for source in reply.sources:
        assert f"[{source.id}] {source.title}" in grounding["content"]
    assert 'voice name="es-ES-ElviraNeural"' in tts.ssml()


async def test_content_filter_takes_the_respond_fallback(svc: Service, fake: FakeAzure) -> None:
    """A 400 content_filter from Azure OpenAI is permanent: no retry, the template reply is
    used, the inquiry is escalated."""
    fake.fail_next("chat", content_filter())
    reply = await _submit_spanish(svc, "az-filter")
    assert reply.degraded == ("respond",)
    assert reply.escalation_required
    assert len(fake.received("chat")) == 1
    state = await svc.store.load("az-filter")
    assert state is not None
    error = state.steps["respond"].error
    assert error is not None
    assert error.error_class == "permanent"
    assert "content filter" in error.message


# -- retries by the saga, on a manual clock ---------------------------------------------------


class AzureFakeService(FakeService):
    """FakeService's manual clock and settle(), with Azure adapters as the providers; the
    saga's retries are under test, so the actors' default throttle (which absorbs a 429 in
    the actor) is off unless ``throttled``."""

    def __init__(self, tmp: Path, providers: dict[str, Any], throttled: bool = False) -> None:
        super().__init__(tmp, providers=SimpleNamespace(**providers),  # type: ignore[arg-type]
                         cost=CostSettings(throttle_external=throttled))

    def _hanging(self) -> int:
        return 0


@pytest.fixture
async def clocked(tmp_path: Path, providers: dict[str, Any]) -> AsyncIterator[AzureFakeService]:
    try:
        service = AzureFakeService(tmp_path, providers)
        async with service:
            yield service
    finally:
        for provider in {id(p): p for p in providers.values()}.values():
            await provider.aclose()


async def test_429_is_retried_after_retry_after(clocked: AzureFakeService, fake: FakeAzure) -> None:
    fake.fail_next("chat", throttle("7"))
    await clocked.submit(make_inquiry("az-429", "My order arrived damaged", language="en"))
    await clocked.settle()
    step = (await clocked.saga("az-429")).steps["respond"]
    assert step.status is StepStatus.WAITING_RETRY
    assert step.error is not None
    assert step.error.error_class == "throttled"
    assert await clocked.advance(6.5) == 0  # not before the server's 7 s
    assert len(fake.received("chat")) == 1
    assert await clocked.advance(0.5) == 1
    done = await clocked.wait("az-429", timeout=10)
    assert isinstance(done.data, ResponseReady)
    assert done.data.degraded == ()
    assert len(fake.received("chat")) == 2


async def test_by_default_a_429_is_absorbed_by_the_actor(
    tmp_path: Path, providers: dict[str, Any], fake: FakeAzure
) -> None:
    """With no quota configured the Azure deployment is still throttled on its 429s: the
    actor pauses for the Retry-After and calls again itself; the saga never sees the 429."""
    from actors.throttle import ThrottledProvider

    fake.fail_next("chat", throttle(None, retry_after_ms="200"))
    try:
        async with AzureFakeService(tmp_path, providers, throttled=True) as service:
            responder = next(a for a in service.runtime.actors if a.service == "responder")
            assert isinstance(responder.provider, ThrottledProvider)
            await service.submit(make_inquiry("az-429", "My order arrived damaged",
                                              language="en"))
            done = await service.wait("az-429", timeout=10)
            step = (await service.saga("az-429")).steps["respond"]
    finally:
        for provider in {id(p): p for p in providers.values()}.values():
            await provider.aclose()
    assert isinstance(done.data, ResponseReady)
    assert step.attempts == 1
    assert step.error is None
    assert len(fake.received("chat")) == 2
    assert responder.provider.stats.throttled == 1


async def test_500_is_retried_with_backoff(clocked: AzureFakeService, fake: FakeAzure) -> None:
    fake.fail_next("translate", server_error(500))
    await clocked.submit(make_inquiry("az-500", "Mi pedido llegó roto", language="es"))
    await clocked.settle()
    step = (await clocked.saga("az-500")).steps["translate_in"]
    assert step.status is StepStatus.WAITING_RETRY
    assert step.error is not None
    assert step.error.error_class == "transient"
    assert await clocked.advance(1.0) == 1  # the first backoff
    done = await clocked.wait("az-500", timeout=10)
    assert isinstance(done.data, ResponseReady)
    assert done.data.degraded == ()
    assert (await clocked.saga("az-500")).steps["translate_in"].attempts == 2
