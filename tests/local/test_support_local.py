"""The support workflow end to end on the real offline providers, in one process."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from events import ResponseReady
from saga import StepStatus
from service import Service, Settings
from service.settings import REPO_ROOT
from service.testing import make_inquiry

pytestmark = [pytest.mark.local, pytest.mark.slow]

IMAGES = REPO_ROOT / "examples" / "images"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def svc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    tmp = tmp_path_factory.mktemp("local")
    settings = Settings(store="memory://", blobs=tmp / "blobs", bus_retry_delay=0.01)
    async with Service(settings) as service:
        yield service


class TestSupportOffline:
    @pytest.mark.asyncio(loop_scope="module")
    async def test_spanish_photo_order_number_reaches_the_reply(self, svc: Service) -> None:
        """Spanish inquiry with a photo of a label: analyse → detect → translate in →
        respond → translate out → voice; the order number read from the photo is in the
        Spanish reply, and the voice reply is a real WAV."""
        label = await svc.attach(IMAGES / "product_label_es.png")
        await svc.submit(make_inquiry(
            "local-es",
            "Hola, la cafetera que compré llegó rota y no funciona. Adjunto una foto de la "
            "etiqueta. ¿Me pueden devolver el dinero?",
            attachments=(label,), voice_reply=True, name="María",
        ))
        done = await svc.wait("local-es", timeout=120)
        assert isinstance(done.data, ResponseReady)
        reply = done.data
        assert reply.degraded == ()
        assert reply.language == "es"
        assert "ORD-2024-58317" in reply.text
        assert "María" in reply.text
        assert reply.sources
        assert reply.voice is not None
        state = await svc.store.load("local-es")
        assert state is not None
        for step in ("analyze_image[0]", "detect_language", "translate_in", "respond",
                     "translate_out", "synthesize_voice"):
            assert state.steps[step].status is StepStatus.SUCCEEDED, step
            result = state.steps[step].result
            assert result is not None
            assert result.data["provider"]["name"] == "local"
        audio = Path(reply.voice.uri.removeprefix("file://"))
        with wave.open(str(audio)) as w:
            assert w.getnframes() / w.getframerate() > 2.0

    @pytest.mark.asyncio(loop_scope="module")
    async def test_english_text_only_is_answered_from_the_knowledge_base(
        self, svc: Service
    ) -> None:
        """A paraphrased English question gets the right article, confidently."""
        await svc.submit(make_inquiry("local-en", "I can't get into my account, I forgot "
                                      "my login details", language="en"))
        done = await svc.wait("local-en", timeout=60)
        assert isinstance(done.data, ResponseReady)
        assert done.data.sources[0].id == "KB-001"
        assert not done.data.escalation_required
        assert done.data.voice is None

    @pytest.mark.asyncio(loop_scope="module")
    async def test_unrelated_message_is_escalated(self, svc: Service) -> None:
        """A message the knowledge base does not cover is flagged for a human."""
        await svc.submit(make_inquiry("local-off", "What is your opinion on medieval poetry?",
                                      language="en"))
        done = await svc.wait("local-off", timeout=60)
        assert isinstance(done.data, ResponseReady)
        assert done.data.escalation_required
