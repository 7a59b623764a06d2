"""A folder of Markdown support articles, searchable by meaning (sentence embeddings).

Article format, one file per article (``*.md``; a ``README.md`` in the folder is ignored)::

    ---
    id: KB-001
    title: Reset a forgotten password
    tags: [account, password]
    ---
    Body paragraphs in Markdown ...

    ## Answer
    1. The steps the responder quotes to the customer.

The front matter is deliberately a tiny strict subset of YAML (``key: value`` lines, ``tags`` as
a ``[a, b]`` list) so that no YAML library is needed and a typo fails loudly, naming the file,
instead of silently producing an article without a title.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from actors.errors import PermanentError, UnsupportedError
from actors.providers.local.embeddings import MiniLMEmbedder

try:
    import numpy as np
    import numpy.typing as npt
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise UnsupportedError(
        "the local knowledge base needs numpy: pip install 'ai-apps[local]'", provider="local"
    ) from exc

_ANSWER_HEADING = "## Answer"
_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*-[A-Za-z0-9_-]+$")
_KEYS = {"id", "title", "tags"}
# Chunks are kept well under the model's 256-token window (and close to the 128 it was trained
# on): one long text would be truncated, and averaging a long text dilutes every topic in it.
_CHUNK_WORDS = 90


class KnowledgeBaseError(PermanentError):
    """The knowledge base cannot be loaded: a malformed article, duplicate ids, no articles.

    Permanent: the same files fail the same way until someone fixes them.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(f"{path}: {message}" if path is not None else message, provider="local")
        self.path = path


class TextEmbedder(Protocol):
    """What the knowledge base needs from an embedder (``MiniLMEmbedder`` is one)."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Article:
    """One support article: ``answer`` is the quotable ``## Answer`` section, ``body`` the rest."""

    id: str
    title: str
    tags: tuple[str, ...]
    body: str
    answer: str

    @property
    def answer_steps(self) -> tuple[str, ...]:
        """The answer's list items without their ``1.`` / ``-`` markers, or its paragraphs."""
        steps = []
        for line in self.answer.splitlines():
            item = re.match(r"^\s*(?:\d+[.)]|[-*])\s+(.*)$", line)
            if item:
                steps.append(item.group(1).strip())
            elif line.strip() and steps:
                steps[-1] = f"{steps[-1]} {line.strip()}"  # a wrapped list item
            elif line.strip():
                steps.append(line.strip())
        return tuple(steps)


def _parse_tags(value: str, path: Path) -> tuple[str, ...]:
    if not (value.startswith("[") and value.endswith("]")):
        raise KnowledgeBaseError(f"tags must be a [a, b] list, got {value!r}", path=path)
    tags = tuple(tag.strip() for tag in value[1:-1].split(",") if tag.strip())
    if any(tag[0] in "\"'" for tag in tags):
        raise KnowledgeBaseError("tags are written without quotes", path=path)
    return tags


def parse_article(text: str, path: Path) -> Article:
    """Parse one article; raise :class:`KnowledgeBaseError` naming ``path`` if malformed."""
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise KnowledgeBaseError("must start with a '---' front matter line", path=path)
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise KnowledgeBaseError("front matter is not closed by a '---' line", path=path) from None

    fields: dict[str, str] = {}
    for number, line in enumerate(lines[1:end], start=2):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise KnowledgeBaseError(
                f"line {number}: expected one of {sorted(_KEYS)} as 'key: value', got {line!r}",
                path=path,
            )
        if key in fields:
            raise KnowledgeBaseError(f"line {number}: duplicate key {key!r}", path=path)
        fields[key] = value.strip()

    for required in ("id", "title"):
        if not fields.get(required):
            raise KnowledgeBaseError(f"front matter has no {required!r}", path=path)
    if not _ID_PATTERN.match(fields["id"]):
        raise KnowledgeBaseError(f"id {fields['id']!r} should look like KB-001", path=path)
    tags = _parse_tags(fields["tags"], path) if "tags" in fields else ()

    body_lines: list[str] = []
    answer_lines: list[str] | None = None
    in_answer = False
    for line in lines[end + 1 :]:
        if line.strip() == _ANSWER_HEADING:
            if answer_lines is not None:
                raise KnowledgeBaseError(f"more than one {_ANSWER_HEADING!r} section", path=path)
            answer_lines, in_answer = [], True
        elif in_answer and line.startswith("## "):
            in_answer = False  # the answer section ends at the next heading of its level
            body_lines.append(line)
        elif in_answer:
            assert answer_lines is not None
            answer_lines.append(line)
        else:
            body_lines.append(line)
    answer = "\n".join(answer_lines or []).strip()
    if not answer:
        raise KnowledgeBaseError(f"has no (or an empty) {_ANSWER_HEADING!r} section", path=path)
    body = "\n".join(body_lines).strip()
    if not body:
        raise KnowledgeBaseError("has no body text", path=path)
    return Article(id=fields["id"], title=fields["title"], tags=tags, body=body, answer=answer)


def load_articles(folder: Path) -> tuple[Article, ...]:
    """Every ``*.md`` article in ``folder`` (not recursive), sorted by file name."""
    if not folder.is_dir():
        raise KnowledgeBaseError("knowledge base folder does not exist", path=folder)
    articles: list[Article] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KnowledgeBaseError(f"cannot be read: {exc}", path=path) from exc
        article = parse_article(text, path)
        if article.id in seen:
            raise KnowledgeBaseError(
                f"duplicate article id {article.id!r} (also in {seen[article.id].name})", path=path
            )
        seen[article.id] = path
        articles.append(article)
    if not articles:
        raise KnowledgeBaseError("contains no *.md articles", path=folder)
    return tuple(articles)


def _plain(markdown: str) -> str:
    """Markdown emphasis and list markers removed: the model reads words, not syntax."""
    text = re.sub(r"[*_`#>]+", "", markdown)
    return re.sub(r"^\s*(?:\d+[.)]|-)\s+", "", text, flags=re.MULTILINE)


def chunk_article(article: Article) -> list[str]:
    """The texts embedded for one article: the title with the tags, the body in paragraph groups
    of at most ~90 words, and the answer, each prefixed with the title so it keeps its topic."""
    # Tags are the author's own keywords for the topic ("where is my order"), worth matching.
    chunks = [f"{article.title}. {', '.join(article.tags)}" if article.tags else article.title]
    paragraphs = [p for p in re.split(r"\n\s*\n", _plain(article.body)) if p.strip()]
    current: list[str] = []
    for paragraph in paragraphs:
        words = paragraph.split()
        if current and len(current) + len(words) > _CHUNK_WORDS:
            chunks.append(f"{article.title}. {' '.join(current)}")
            current = []
        current.extend(words)
    if current:
        chunks.append(f"{article.title}. {' '.join(current)}")
    chunks.append(f"{article.title}. {' '.join(_plain(article.answer).split())}")
    return chunks


class KnowledgeBase:
    """Support articles from a folder, searched by cosine similarity of MiniLM embeddings.

    Articles are parsed and their chunks embedded once, on first search (or :meth:`load`), and
    the matrix is kept in memory. An article's score is the best score of its chunks. Safe to
    share between threads: loading is guarded by a lock and the index is read-only afterwards.
    ``search`` is blocking CPU work; call it from ``asyncio.to_thread`` in async code.
    """

    def __init__(self, folder: Path | str, embedder: TextEmbedder | None = None) -> None:
        self._folder = Path(folder)
        # MiniLMEmbedder loads nothing until first used, so the default costs nothing here.
        self._embedder: TextEmbedder = embedder if embedder is not None else MiniLMEmbedder()
        self._lock = threading.Lock()
        self._index: tuple[tuple[Article, ...], npt.NDArray[np.float32], npt.NDArray[np.intp]]
        self._index_ready = False

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def embedder(self) -> TextEmbedder:
        return self._embedder

    def fingerprint(self) -> str:
        """A hash of the articles' files as they are now (names and bytes) and of the
        embedder, so that a cached answer is not served from an edited knowledge base.
        Reads the files only (no model); ``"missing"`` when the folder does not exist."""
        if not self._folder.is_dir():
            return "missing"
        digest = hashlib.sha256(type(self._embedder).__qualname__.encode())
        for path in sorted(self._folder.glob("*.md")):
            if path.name.lower() == "readme.md":
                continue
            digest.update(path.name.encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"unreadable")
            digest.update(b"\0")
        return digest.hexdigest()

    @property
    def articles(self) -> tuple[Article, ...]:
        return self._load()[0]

    def load(self) -> None:
        """Parse the articles and embed them now (otherwise the first search does)."""
        self._load()

    def _load(
        self,
    ) -> tuple[tuple[Article, ...], npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        if self._index_ready:
            return self._index
        with self._lock:
            if not self._index_ready:
                articles = load_articles(self._folder)
                texts: list[str] = []
                starts: list[int] = []
                for article in articles:
                    starts.append(len(texts))
                    texts.extend(chunk_article(article))
                matrix = self.embedder.encode(texts)
                self._index = (articles, matrix, np.array(starts, dtype=np.intp))
                self._index_ready = True
        return self._index

    def scores(self, query_vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Per-article cosine scores, shape ``(len(query_vectors), len(articles))``.

        ``query_vectors`` must be unit length (as ``MiniLMEmbedder.encode`` returns them).
        """
        _, matrix, starts = self._load()
        chunk_scores = query_vectors @ matrix.T
        # Chunks of one article are contiguous: the best chunk per article in one reduction.
        best: npt.NDArray[np.float32] = np.maximum.reduceat(chunk_scores, starts, axis=1)
        return best

    def search(self, query: str, k: int = 3) -> list[tuple[Article, float]]:
        """The ``k`` articles most similar to ``query``, best first, with cosine scores."""
        if k < 1:
            raise ValueError("k must be at least 1")
        articles = self._load()[0]
        scores = self.scores(self.embedder.encode([query]))[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(articles[i], float(scores[i])) for i in order]
