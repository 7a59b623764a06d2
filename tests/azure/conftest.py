"""Fixtures for the Azure / OpenAI adapter tests: the loopback fakes, settings pointed at them,
and a knowledge base with a tiny bag-of-words embedder (the MiniLM model would spend ~10 s
embedding the articles; retrieval itself is tested in tests/local)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from service.settings import REPO_ROOT

if TYPE_CHECKING:
    from actors.providers.local.knowledge import KnowledgeBase
    from service.provider_settings import AzureProviderSettings
    from tests.azure_fakes import FakeAzure, FakeSpeech


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


MISSING = [
    m for m in ("numpy", "aiohttp", "openai", "azure.ai.translation.text",
                "azure.ai.vision.imageanalysis", "azure.cognitiveservices.speech", "azure.identity")
    if _missing(m)
]
if MISSING:  # the extras 'azure', 'openai' (and numpy from 'local') are not installed
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but the azure/openai extras are missing: {MISSING}")
    collect_ignore_glob = ["test_*.py"]

KEY = "test-key-4f1c9a7e2b8d6053"
"""The fakes' key: a distinctive string the leak tests search for."""

KB_DIR = REPO_ROOT / "examples" / "knowledge_base"
IMAGES = REPO_ROOT / "examples" / "images"

_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "for", "from", "has",
    "have", "i", "in", "is", "it", "my", "of", "on", "or", "our", "the", "this", "to", "was", "we",
    "what", "when", "where", "which", "with", "you", "your", "me", "not", "no",
})


class BagOfWordsEmbedder:
    """Unit-length hashed bag of words (and word pairs): deterministic, instant."""

    dim = 2048

    def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP]
            for token in (*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))):
                out[row, zlib.crc32(token.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    from actors.providers.local.knowledge import KnowledgeBase

    base = KnowledgeBase(KB_DIR, BagOfWordsEmbedder())
    base.load()
    return base


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzure]:
    from tests.azure_fakes import FakeAzure

    async with FakeAzure(key=KEY) as server:
        yield server


@pytest.fixture
async def tts() -> AsyncIterator[FakeSpeech]:
    from tests.azure_fakes import FakeSpeech

    async with FakeSpeech(key=KEY) as server:
        yield server


def azure_settings(fake: FakeAzure, tts: FakeSpeech | None = None, **top: object) -> AzureProviderSettings:
    """Every section pointed at the fakes, authenticated with :data:`KEY`."""
    from service.provider_settings import (
        AzureProviderSettings,
        AzureSpeechSettings,
        AzureTranslatorSettings,
        AzureVisionSettings,
        ImageGenSettings,
        OpenAISettings,
    )

    return AzureProviderSettings(
        translator=AzureTranslatorSettings(endpoint=fake.url, key=KEY, region="westeurope"),
        vision=AzureVisionSettings(endpoint=fake.url, key=KEY),
        speech=AzureSpeechSettings(endpoint=tts.endpoint if tts else None, key=KEY),
        openai=OpenAISettings(endpoint=fake.url, api_key=KEY, deployment="gpt-4o-mini", min_score=0.1),
        images=ImageGenSettings(deployment="dall-e-3"),
        **top,
    )
