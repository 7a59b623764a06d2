"""Knowledge-base parsing, retrieval accuracy on paraphrased questions, and the local responder's
replies and confidence, against the shipped examples/knowledge_base."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from actors.capabilities import Responder, ResponseQuery
from actors.errors import PermanentError, UnsupportedError
from actors.providers.local.knowledge import (
    KnowledgeBase,
    KnowledgeBaseError,
    load_articles,
    parse_article,
)
from actors.providers.local.responder import (
    LOW_CONFIDENCE,
    LocalResponder,
    confidence_from_scores,
    find_order_numbers,
)
from events.support import ImageFindings

pytestmark = pytest.mark.local

KB_DIR = Path(__file__).resolve().parents[2] / "examples" / "knowledge_base"

# Written as a customer would ask, without reusing the articles' titles, and held out: the
# articles were not edited after seeing these results. Measured 14/15 top-1 (the miss: the wrong
# TV size ranks "damaged" above "wrong item", 0.384 vs 0.282); >= 13 is asserted.
PARAPHRASES = [
    ("I keep typing my password and it says it's wrong, how do I get a new one?", "KB-001"),
    ("The tracking number you sent me hasn't moved in a week", "KB-002"),
    ("The coffee machine isn't what I expected, can I return it for a refund?", "KB-003"),
    ("My package showed up and the glass shelf inside was shattered", "KB-004"),
    ("I ordered a 55 inch TV and got a 43 inch one instead", "KB-005"),
    ("Is there free delivery if I spend enough?", "KB-006"),
    ("I ordered twice by accident, please cancel one of them", "KB-007"),
    ("Checkout says my payment could not be processed", "KB-008"),
    ("Can you send me a bill for my purchase for my accountant?", "KB-009"),
    ("My hair dryer broke after a year, can you repair it under guarantee?", "KB-010"),
    ("I plugged in the new router and no lights come on at all", "KB-011"),
    ("I want you to erase my account and everything you know about me", "KB-012"),
    ("I paid but there is no confirmation in my inbox", "KB-013"),
    ("My voucher says invalid when I enter it", "KB-014"),
    ("Will I be charged customs fees if I order to Switzerland?", "KB-015"),
]

UNRELATED = [
    "What is the capital of France?",
    "Can you recommend a good pizza recipe?",
    "Who won the football match yesterday?",
]

ARTICLE = """---
id: KB-900
title: Test article
tags: [one, two words]
---
Some body text.

## Answer
1. First step.
2. Second step
   continued on the next line.
"""


@pytest.fixture(scope="module")
def knowledge_base() -> KnowledgeBase:
    kb = KnowledgeBase(KB_DIR)
    kb.load()
    return kb


@pytest.fixture(scope="module")
def responder(knowledge_base: KnowledgeBase) -> LocalResponder:
    return LocalResponder(knowledge_base)


class TestArticleParsing:
    """Articles parse from a strict front matter; malformed ones fail naming their file."""

    def test_parses_fields_body_and_answer_steps(self) -> None:
        article = parse_article(ARTICLE, Path("kb-900.md"))
        assert (article.id, article.title, article.tags) == (
            "KB-900",
            "Test article",
            ("one", "two words"),
        )
        assert article.body == "Some body text."
        assert article.answer_steps == ("First step.", "Second step continued on the next line.")

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("id: KB-1\n---\nbody\n## Answer\n1. x\n", "must start"),
            ("---\nid: KB-1\ntitle: T\nbody\n---\nbody\n## Answer\n1. x\n", "expected one of"),
            ("---\nid: KB-1\ntitle: T\n", "not closed"),
            ("---\nid: KB-1\ntitle: T\nauthor: me\n---\nbody\n## Answer\n1. x\n", "author"),
            ("---\nid: KB-1\ntitle: T\ntags: a, b\n---\nbody\n## Answer\n1. x\n", "tags"),
            ("---\nid: KB-1\n---\nbody\n## Answer\n1. x\n", "'title'"),
            ("---\nid: KB-1\ntitle: T\n---\nbody only\n", "Answer"),
            ("---\nid: not an id\ntitle: T\n---\nbody\n## Answer\n1. x\n", "KB-001"),
        ],
    )
    def test_malformed_article_names_the_file(self, text: str, problem: str) -> None:
        with pytest.raises(KnowledgeBaseError, match=problem) as info:
            parse_article(text, Path("broken.md"))
        assert "broken.md" in str(info.value)

    def test_duplicate_ids_are_refused(self, tmp_path: Path) -> None:
        (tmp_path / "a.md").write_text(ARTICLE, encoding="utf-8")
        (tmp_path / "b.md").write_text(ARTICLE, encoding="utf-8")
        with pytest.raises(KnowledgeBaseError, match="duplicate article id"):
            load_articles(tmp_path)

    def test_empty_folder_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(KnowledgeBaseError, match="no"):
            load_articles(tmp_path)

    def test_shipped_knowledge_base_is_complete(self) -> None:
        articles = load_articles(KB_DIR)
        assert len(articles) >= 14
        assert all(len(article.answer_steps) >= 2 for article in articles)


class TestRetrieval:
    """Paraphrased customer questions retrieve the right article; unrelated ones score low."""

    def test_paraphrase_top1_accuracy(self, knowledge_base: KnowledgeBase) -> None:
        hits = [knowledge_base.search(q, k=1)[0][0].id == want for q, want in PARAPHRASES]
        misses = [q for (q, _), hit in zip(PARAPHRASES, hits, strict=True) if not hit]
        assert sum(hits) >= 13, misses

    def test_unrelated_questions_score_low(self, knowledge_base: KnowledgeBase) -> None:
        for question in UNRELATED:
            assert knowledge_base.search(question, k=1)[0][1] < 0.3, question

    def test_results_are_sorted_and_limited(self, knowledge_base: KnowledgeBase) -> None:
        results = knowledge_base.search("my order never arrived", k=4)
        scores = [score for _, score in results]
        assert len(results) == 4
        assert scores == sorted(scores, reverse=True)


class TestOrderNumbers:
    """Order numbers are found in OCR text despite typical recognition glitches."""

    @pytest.mark.parametrize(
        "text",
        [
            "ORD-2024-58317",
            "Order: 0RD-2024-58317",
            "ORD- 2024-58317",
            "ORD 2024 58317",
            "ord\u20132024\u201358317",
            "ORD-2O24-5831l",
        ],
    )
    def test_glitches_are_normalised(self, text: str) -> None:
        (number,) = find_order_numbers(text)
        assert number in {"ORD-2024-58317", "ORD-2024-58311"}

    @pytest.mark.parametrize("text", ["WORD-2024-58317", "ORD-2024-583170", "ORD-24-58317", ""])
    def test_non_order_numbers_are_ignored(self, text: str) -> None:
        assert find_order_numbers(text) == ()


class TestConfidence:
    """Confidence rises with similarity and falls when two articles compete."""

    def test_monotonic_in_similarity(self) -> None:
        values = [confidence_from_scores(s / 100, None) for s in range(0, 101, 5)]
        assert values == sorted(values)
        assert values[0] >= 0.0
        assert values[-1] <= 1.0

    def test_small_margin_lowers_confidence(self) -> None:
        assert confidence_from_scores(0.6, 0.59) < confidence_from_scores(0.6, 0.3)


class TestLocalResponder:
    """Replies are grounded in the best article, cite it, and use what the images show."""

    def test_is_a_responder(self, responder: LocalResponder) -> None:
        assert isinstance(responder, Responder)

    async def test_on_topic_question_quotes_the_article(self, responder: LocalResponder) -> None:
        draft = await responder.respond(
            ResponseQuery(message="I forgot my password and can't sign in", customer_name="Tom")
        )
        article = next(a for a in responder.knowledge_base.articles if a.id == "KB-001")
        assert draft.text.startswith("Hello Tom,")
        assert draft.sources[0].id == "KB-001"
        assert draft.confidence > 0.6
        assert "Source: Reset a forgotten password (KB-001)" in draft.text
        assert "Send reset link" in draft.text
        assert len(draft.sources) == 3
        assert len(article.answer_steps) >= 3
        assert draft.provider.name == "local"
        assert draft.usage.characters == len("I forgot my password and can't sign in")

    async def test_order_number_from_ocr_is_acknowledged(self, responder: LocalResponder) -> None:
        label = ImageFindings(
            description="a damaged cardboard box with a shipping label",
            ocr_text="SHIP TO: M. Lopez\n0RD- 2024-58317\nParcelCo Standard 2 kg",
        )
        draft = await responder.respond(
            ResponseQuery(
                message="My new blender arrived with a cracked jug, see the photo.",
                customer_name="Maria",
                images=(label,),
            )
        )
        assert "ORD-2024-58317" in draft.text
        assert "image" in draft.text
        assert draft.sources[0].id == "KB-004"
        assert "Source: Item arrived damaged or broken (KB-004)" in draft.text

    async def test_vague_message_is_answered_from_the_screenshot(
        self, responder: LocalResponder
    ) -> None:
        screenshot = ImageFindings(
            ocr_text="Payment failed\nYour card was declined by the issuing bank."
        )
        draft = await responder.respond(
            ResponseQuery(
                message="See the attached screenshot, what should I do?", images=(screenshot,)
            )
        )
        assert draft.sources[0].id == "KB-008"
        assert draft.confidence > 0.6

    async def test_unrelated_message_gets_low_confidence(self, responder: LocalResponder) -> None:
        draft = await responder.respond(ResponseQuery(message="What is the capital of France?"))
        assert draft.confidence < LOW_CONFIDENCE
        assert "Source:" not in draft.text
        assert "support team" in draft.text

    async def test_empty_message_is_a_permanent_error(self, responder: LocalResponder) -> None:
        with pytest.raises(PermanentError):
            await responder.respond(ResponseQuery(message="   "))

    async def test_other_languages_are_unsupported(self, responder: LocalResponder) -> None:
        with pytest.raises(UnsupportedError, match="English"):
            await responder.respond(ResponseQuery(message="¿Dónde está mi pedido?", language="es"))

    async def test_concurrent_requests_are_answered_independently(
        self, responder: LocalResponder
    ) -> None:
        questions = [question for question, _ in PARAPHRASES[:4]]
        drafts = await asyncio.gather(
            *(responder.respond(ResponseQuery(message=q)) for q in questions)
        )
        assert [d.sources[0].id for d in drafts] == [want for _, want in PARAPHRASES[:4]]
