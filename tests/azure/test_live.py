"""The adapters against the real services. Each test runs only when its credentials are in the
environment, and is reported as skipped naming the variables to set otherwise:

=================================  ====================================================
Translator                         AIAPPS_TEST_AZURE_TRANSLATOR_KEY (+ _REGION, _ENDPOINT)
Vision                             AIAPPS_TEST_AZURE_VISION_ENDPOINT, _VISION_KEY
Speech                             AIAPPS_TEST_AZURE_SPEECH_KEY, _SPEECH_REGION
Azure OpenAI chat                  AIAPPS_TEST_AZURE_OPENAI_ENDPOINT, _KEY, _DEPLOYMENT
                                   (+ _API_VERSION)
Azure OpenAI images (billed ~$0.04) AIAPPS_TEST_AZURE_IMAGES_DEPLOYMENT with the two above
OpenAI-compatible chat             AIAPPS_TEST_OPENAI_BASE_URL, AIAPPS_TEST_OPENAI_MODEL
                                   (+ AIAPPS_TEST_OPENAI_KEY)
=================================  ====================================================

Each makes one small call (a few characters, one image, one short completion).
"""

from __future__ import annotations

import io
import os
import wave

import pytest
from pydantic import SecretStr

from actors.capabilities import ResponseQuery
from actors.providers.azure.speech import AzureSpeechSynthesizer
from actors.providers.azure.translation import AzureTranslator
from actors.providers.azure.vision import AzureImageAnalyzer
from actors.providers.local.knowledge import KnowledgeBase
from actors.providers.openai_compat import (
    DEFAULT_AZURE_API_VERSION,
    AzureImageGenerator,
    OpenAIConnection,
    OpenAIResponder,
)
from tests.azure.conftest import IMAGES

pytestmark = pytest.mark.azure


def need(*names: str, target: str = "real Azure") -> dict[str, str]:
    """The variables' values, or skip naming the ones that are missing."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.skip(f"set {', '.join(missing)} to run against {target}")
    return {n: os.environ[n] for n in names}


def optional(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


async def test_translator_live() -> None:
    env = need("AIAPPS_TEST_AZURE_TRANSLATOR_KEY")
    endpoint = optional("AIAPPS_TEST_AZURE_TRANSLATOR_ENDPOINT")
    t = AzureTranslator(
        *([endpoint] if endpoint else []), key=env["AIAPPS_TEST_AZURE_TRANSLATOR_KEY"],
        region=optional("AIAPPS_TEST_AZURE_TRANSLATOR_REGION"),
    )
    try:
        done = await t.translate("Hola, mi pedido llegó roto.", "en")
        found = await t.detect("Bonjour, ma commande est arrivée cassée.")
        check = await t.check()
    finally:
        await t.aclose()
    assert done.detected
    assert done.from_language == "es"
    assert "order" in done.text.lower()
    assert found.language == "fr"
    assert "credentials accepted" in check


async def test_vision_live() -> None:
    env = need("AIAPPS_TEST_AZURE_VISION_ENDPOINT", "AIAPPS_TEST_AZURE_VISION_KEY")
    a = AzureImageAnalyzer(env["AIAPPS_TEST_AZURE_VISION_ENDPOINT"], key=env["AIAPPS_TEST_AZURE_VISION_KEY"])
    try:
        found = await a.analyze((IMAGES / "product_label_es.png").read_bytes(), "image/png", ("read", "tags"))
    finally:
        await a.aclose()
    assert "ORD-2024-58317" in found.ocr_text.replace(" ", "")
    assert found.usage.transactions == 2  # read and tags


async def test_speech_live() -> None:
    env = need("AIAPPS_TEST_AZURE_SPEECH_KEY", "AIAPPS_TEST_AZURE_SPEECH_REGION")
    s = AzureSpeechSynthesizer(region=env["AIAPPS_TEST_AZURE_SPEECH_REGION"],
                               key=env["AIAPPS_TEST_AZURE_SPEECH_KEY"])
    try:
        audio = await s.synthesize("Hola, su pedido está en camino.", "es")
        check = await s.check()
    finally:
        await s.aclose()
    with wave.open(io.BytesIO(audio.data)) as w:
        assert w.getframerate() == 16000
    assert audio.duration_seconds > 1
    assert "voices" in check


async def test_azure_openai_live(kb: KnowledgeBase) -> None:
    env = need("AIAPPS_TEST_AZURE_OPENAI_ENDPOINT", "AIAPPS_TEST_AZURE_OPENAI_KEY",
               "AIAPPS_TEST_AZURE_OPENAI_DEPLOYMENT")
    connection = OpenAIConnection(
        "azure", env["AIAPPS_TEST_AZURE_OPENAI_ENDPOINT"], SecretStr(env["AIAPPS_TEST_AZURE_OPENAI_KEY"]),
        optional("AIAPPS_TEST_AZURE_OPENAI_API_VERSION", DEFAULT_AZURE_API_VERSION),
    )
    r = OpenAIResponder(connection, env["AIAPPS_TEST_AZURE_OPENAI_DEPLOYMENT"], kb, max_output_tokens=200)
    try:
        draft = await r.respond(ResponseQuery(message="I forgot my password and cannot sign in."))
        check = await r.check()
    finally:
        await r.aclose()
    assert draft.text
    assert draft.usage.input_tokens > 0
    assert draft.usage.output_tokens > 0
    assert "credentials accepted" in check


async def test_azure_openai_images_live() -> None:
    env = need("AIAPPS_TEST_AZURE_OPENAI_ENDPOINT", "AIAPPS_TEST_AZURE_OPENAI_KEY",
               "AIAPPS_TEST_AZURE_IMAGES_DEPLOYMENT")
    g = AzureImageGenerator(
        env["AIAPPS_TEST_AZURE_OPENAI_ENDPOINT"], env["AIAPPS_TEST_AZURE_IMAGES_DEPLOYMENT"],
        api_key=env["AIAPPS_TEST_AZURE_OPENAI_KEY"],
        api_version=optional("AIAPPS_TEST_AZURE_OPENAI_API_VERSION", DEFAULT_AZURE_API_VERSION) or "",
        send_response_format=not env["AIAPPS_TEST_AZURE_IMAGES_DEPLOYMENT"].startswith("gpt-image"),
    )
    try:
        image = await g.generate("a plain white coffee mug on a wooden table, product photo")
    finally:
        await g.aclose()
    assert image.media_type in ("image/png", "image/jpeg", "image/webp")
    assert len(image.data) > 1000


async def test_openai_compatible_live(kb: KnowledgeBase) -> None:
    env = need("AIAPPS_TEST_OPENAI_BASE_URL", "AIAPPS_TEST_OPENAI_MODEL",
               target="an OpenAI-compatible server")
    key = optional("AIAPPS_TEST_OPENAI_KEY")
    connection = OpenAIConnection(
        "openai", env["AIAPPS_TEST_OPENAI_BASE_URL"], SecretStr(key) if key else None
    )
    r = OpenAIResponder(connection, env["AIAPPS_TEST_OPENAI_MODEL"], kb, max_output_tokens=200)
    try:
        draft = await r.respond(ResponseQuery(message="Where is my order?"))
    finally:
        await r.aclose()
    assert draft.text
