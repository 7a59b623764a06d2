"""An offline responder: retrieval over the knowledge base, no language model.

The reply is assembled from fixed sentences plus the best article's own ``## Answer`` steps, so
it can only state what an article states. What it adds from the inquiry is quoted, not
interpreted: the customer's name, an order number read from the message or an image, an image
caption produced by the image analyzer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from actors.capabilities import ResponseDraft, ResponseQuery
from actors.errors import PermanentError, UnsupportedError
from actors.providers.local.embeddings import MODEL_NAME
from actors.providers.local.knowledge import Article, KnowledgeBase, TextEmbedder
from events.common import ProviderInfo, Usage
from events.support import ImageFindings, Source

PROVIDER = ProviderInfo(name="local", model=MODEL_NAME)

LOW_CONFIDENCE = 0.4
"""Below this the reply does not quote an article: it says the message needs a person. The
coordinator should escalate such drafts."""

# -- confidence ----------------------------------------------------------------------------------
#
# Cosine similarity is not a probability, so it is mapped through anchors read off measurements
# with examples/knowledge_base (tests/local/test_responder.py holds the held-out questions):
#   * off-topic messages ("What is the capital of France?", "hello") score 0.14-0.24;
#   * paraphrased customer questions score 0.38-0.80 on their right article, runner-up articles
#     0.26-0.59.
# Piecewise linear between the anchors below: 0.2 -> 0.05, 0.3 -> 0.25 (still clearly "don't
# know"), 0.4 -> 0.55, 0.5 -> 0.75, 0.7 and above -> 0.95 (never 1: retrieval can be wrong).
_SIMILARITY_ANCHORS = (0.20, 0.30, 0.40, 0.50, 0.70)
_CONFIDENCE_ANCHORS = (0.05, 0.25, 0.55, 0.75, 0.95)
# A runner-up almost as similar as the winner means two articles compete: the confidence is cut
# by up to 20 % when the margin is below 0.10 (0 margin -> x0.8, 0.05 -> x0.9, 0.10+ -> x1).
_FULL_MARGIN = 0.10
_AMBIGUITY_PENALTY = 0.20


def confidence_from_scores(top: float, second: float | None) -> float:
    """Map the best article's cosine similarity, and its margin over the runner-up, to [0, 1]."""
    xs, ys = _SIMILARITY_ANCHORS, _CONFIDENCE_ANCHORS
    if top <= xs[0]:
        base = ys[0] * max(top, 0.0) / xs[0]
    elif top >= xs[-1]:
        base = ys[-1]
    else:
        i = next(j for j in range(1, len(xs)) if top <= xs[j])
        base = ys[i - 1] + (ys[i] - ys[i - 1]) * (top - xs[i - 1]) / (xs[i] - xs[i - 1])
    if second is not None:
        margin = min(max(top - second, 0.0), _FULL_MARGIN)
        base *= 1.0 - _AMBIGUITY_PENALTY * (1.0 - margin / _FULL_MARGIN)
    return round(min(max(base, 0.0), 1.0), 4)


# -- order numbers ---------------------------------------------------------------------------------
#
# The store's order numbers are ORD-YYYY-NNNNN (ORD-2024-58317). OCR damages them in predictable
# ways: O read as 0 or Q, the dash dropped or turned into a dash-like character, spaces inserted,
# and digits read as look-alike letters (O for 0, I/l/| for 1). The prefix anchors the match, so
# tolerating those glitches inside it does not match arbitrary text.
_DIGIT = r"[0-9OoIl|]"
_SEP = r"\s*[-\u2010-\u2015_.:]?\s*"
_ORDER_NUMBER = re.compile(
    rf"(?<![A-Za-z0-9])[O0Q]\s?R\s?D{_SEP}({_DIGIT}{{4}}){_SEP}({_DIGIT}{{5}})(?![0-9])",
    re.IGNORECASE,
)
# The pattern is case-insensitive, so every case of the look-alikes must be translated.
_LOOKALIKES = str.maketrans({"O": "0", "o": "0", "I": "1", "i": "1", "L": "1", "l": "1", "|": "1"})


def mask_order_numbers(text: str) -> str:
    """``text`` with order numbers replaced by "my order": the digits carry no topic, and the
    model otherwise matches them to the example number that many articles quote."""
    return _ORDER_NUMBER.sub("my order", text)


def find_order_numbers(text: str) -> tuple[str, ...]:
    """Order numbers in ``text``, normalised to ``ORD-YYYY-NNNNN``, in order, without repeats."""
    found: list[str] = []
    for match in _ORDER_NUMBER.finditer(text):
        year = match.group(1).translate(_LOOKALIKES)
        number = f"ORD-{year}-{match.group(2).translate(_LOOKALIKES)}"
        if year.startswith("20") and number not in found:
            found.append(number)
    return tuple(found)


# -- composing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Retrieval:
    ranked: list[tuple[Article, float]]
    confidence: float


def _image_context(images: Sequence[ImageFindings]) -> str:
    parts: list[str] = []
    for image in images:
        if image.description:
            parts.append(image.description)
        if image.ocr_text.strip():
            parts.append(" ".join(image.ocr_text.split()))
    return " ".join(parts)


def _clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    cleaned = " ".join(name.split())[:80]
    return cleaned or None


def _plain_step(step: str) -> str:
    # Articles use Markdown emphasis for UI labels; replies go to email, chat and speech.
    return re.sub(r"(\*\*|__|`)", "", step)


def _quote(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def _acknowledgement(query: ResponseQuery) -> list[str]:
    sentences: list[str] = []
    in_message = find_order_numbers(query.message)
    in_images = [
        number
        for image in query.images
        for number in find_order_numbers(image.ocr_text)
        if number not in in_message
    ]
    in_images = list(dict.fromkeys(in_images))
    if in_message:
        noun = "order number" if len(in_message) == 1 else "order numbers"
        sentences.append(f"I have noted your {noun}, {', '.join(in_message)}.")
    if in_images:
        noun = "order number" if len(in_images) == 1 else "order numbers"
        sentences.append(f"I can see {noun} {', '.join(in_images)} in the image you sent.")
    elif query.images:
        captions = [image.description for image in query.images if image.description]
        texts = [image.ocr_text for image in query.images if image.ocr_text.strip()]
        if captions:
            caption = _quote(captions[0]).rstrip(".")
            sentences.append(f"I have looked at the image you sent; it appears to show {caption}.")
        elif texts:
            sentences.append(f'The text in the image you sent reads: "{_quote(texts[0])}"')
    return sentences


def compose_reply(query: ResponseQuery, best: Article, confidence: float) -> str:
    """The reply text: greeting, acknowledgement, the article's steps and a citation line."""
    name = _clean_name(query.customer_name)
    lines = [f"Hello {name}," if name else "Hello,", ""]
    opening = ["Thank you for contacting us.", *_acknowledgement(query)]
    lines.append(" ".join(opening))
    lines.append("")
    if confidence < LOW_CONFIDENCE:
        lines.append(
            "I could not find a help article that clearly answers your question, so rather "
            "than guess, I am passing your message to a member of our support team."
        )
        return "\n".join(lines)
    lines.append(f'Our help article "{best.title}" covers this. Here is what to do:')
    lines.extend(f"{i}. {_plain_step(step)}" for i, step in enumerate(best.answer_steps, 1))
    lines.append("")
    lines.append("If this does not solve the problem, just reply to this message.")
    lines.append("")
    lines.append(f"Source: {best.title} ({best.id})")
    return "\n".join(lines)


class LocalResponder:
    """Answers support inquiries from a folder of Markdown articles, offline.

    Retrieval embeds the message with all-MiniLM-L6-v2 (numpy) and ranks articles by cosine
    similarity. When the images carry text or a caption, the message plus that context is
    embedded too, and each article keeps the better of its two scores: a vague message ("see
    the screenshot") is then answered from the screenshot's text, while a clear message is not
    pulled away by unrelated text such as a shipping label.

    The knowledge base and the model load on first use (or :meth:`load`); one instance can
    serve concurrent requests. CPU work runs in ``asyncio.to_thread``.
    """

    def __init__(
        self,
        knowledge_base: KnowledgeBase | Path | str,
        *,
        embedder: TextEmbedder | None = None,
        top_k: int = 3,
    ) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if isinstance(knowledge_base, KnowledgeBase):
            if embedder is not None:
                raise ValueError("pass the embedder to the KnowledgeBase, not to both")
            self._kb = knowledge_base
        else:
            self._kb = KnowledgeBase(knowledge_base, embedder)
        self._top_k = top_k

    @property
    def knowledge_base(self) -> KnowledgeBase:
        return self._kb

    def output_parts(self) -> dict[str, object]:
        """What changes an answer besides the query (part of the cache key): the knowledge
        base's content and the retrieval depth."""
        return {"knowledge_base": self._kb.fingerprint(), "top_k": self._top_k}

    def load(self) -> None:
        """Load the model and embed the knowledge base now (blocking; seconds)."""
        self._kb.load()

    async def respond(self, query: ResponseQuery) -> ResponseDraft:
        if not query.message.strip():
            raise PermanentError("the message to answer is empty", provider=PROVIDER.name)
        if query.language != "en":
            raise UnsupportedError(
                f"the local responder answers in English only (knowledge base and model are "
                f"English); translate the message to 'en' first, got {query.language!r}",
                provider=PROVIDER.name,
            )
        retrieval = await asyncio.to_thread(self._retrieve, query)
        best = retrieval.ranked[0][0]
        return ResponseDraft(
            text=compose_reply(query, best, retrieval.confidence),
            confidence=retrieval.confidence,
            provider=PROVIDER,
            sources=tuple(
                Source(id=article.id, title=article.title, score=round(score, 4))
                for article, score in retrieval.ranked
            ),
            usage=Usage(characters=len(query.message)),
        )

    def _retrieve(self, query: ResponseQuery) -> _Retrieval:
        message = mask_order_numbers(query.message)
        texts = [message]
        context = mask_order_numbers(_image_context(query.images))
        if context:
            texts.append(f"{message}\n{context}")
        scores = self._kb.scores(self._kb.embedder.encode(texts)).max(axis=0)
        articles = self._kb.articles
        order = sorted(range(len(articles)), key=lambda i: -float(scores[i]))
        ranked = [(articles[i], float(scores[i])) for i in order[: self._top_k]]
        second = float(scores[order[1]]) if len(order) > 1 else None
        return _Retrieval(ranked, confidence_from_scores(ranked[0][1], second))
