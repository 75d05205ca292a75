"""Retrievers over memory items: BM25, reciprocal-rank fusion, date-prefixed turns and a date filter.

A retriever indexes items and answers ``search(query, k)`` with ``[(item_id, score), ...]``, best first.
An item is anything with an ``id`` and a ``text`` (a ``MemoryItem`` of ``store.MemoryStore``, or a mapping
with those keys); the time-aware wrappers also read its ``timestamp`` (an ISO string, a ``datetime``, a
``date`` or None) and ``speaker``. Every ranking breaks ties by the order the items were indexed in, so it
is a function of its inputs alone. ``nbytes()`` is the size of the index a retriever holds, in the
compact encoding each class states (not Python's object overhead), so a memory's byte count can include it.

- ``BM25Retriever``: Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework")
  through ``rank_bm25.BM25Okapi`` over lowercased, punctuation-stripped, Porter-stemmed tokens
  (PyStemmer's ``"porter"``): the setting of issue 16's LoCoMo reference numbers.
- ``RRFRetriever``: reciprocal-rank fusion, ``score(d) = sum_r w_r / (rrf_k + rank_r(d))`` with ranks from 1
  and ``rrf_k = 60`` (Cormack, Clarke & Buettcher 2009, "Reciprocal Rank Fusion outperforms Condorcet and
  individual Rank Learning Methods", SIGIR).
- ``DatePrefixRetriever``: indexes each turn as ``(8 May, 2023) Caroline said, "..."``, the form LoCoMo's
  retrieval baselines embed (snap-research/locomo ``task_eval/dpr_qa.py``, ``get_context_embeddings``),
  so a query's month or year can match the turn's session date.
- ``DateFilteredRetriever``: resolves a time expression in the query (``time_expressions``) and keeps the
  candidates dated inside that range, falling back to the unfiltered ranking when none is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..validation import ArgumentError, check_int, is_number
from .time_expressions import as_date, parse_timestamp, resolve_time_expression

__all__ = ["Retriever", "tokenize", "BM25Retriever", "RRFRetriever", "date_prefixed", "DatePrefixRetriever",
           "DateFilteredRetriever", "resolve_time_expression"]


@runtime_checkable
class Retriever(Protocol):
    """What ``MemoryStore`` and the evaluation need from a retriever."""

    def index(self, items: Sequence[Any]) -> None:
        """Replace the index with these items (each with ``id`` and ``text``)."""

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best items for ``query`` as ``(item_id, score)``, best first (fewer if fewer are indexed)."""

    def nbytes(self) -> int:
        """Bytes of the index held (0 before ``index``)."""


def item_field(item: Any, name: str) -> Any:
    """``item.name`` or ``item[name]``; None when absent."""
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _ids_and_texts(items: Sequence[Any]) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for item in items:
        item_id, text = item_field(item, "id"), item_field(item, "text")
        if item_id is None or not isinstance(text, str):
            raise ArgumentError("items", "objects or mappings with an id and a str text", repr(item)[:200])
        ids.append(str(item_id))
        texts.append(text)
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise ArgumentError("items", "items with distinct ids", f"duplicated ids {duplicated[:5]}")
    return ids, texts


def _top_k(ids: list[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    # a stable sort on -score keeps equal scores in indexing order (numpy's default quicksort does not)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


# Anything that is neither a word character nor space splits a token: "Caroline's" -> "caroline", "s"
# and "2023-05-08" -> three tokens, so a query word matches its possessive and the parts of a date.
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_STEMMERS: dict[str, Any] = {}


def tokenize(text: str) -> list[str]:
    """Lowercase, replace punctuation with spaces, split on whitespace, Porter-stem (PyStemmer); the stemmer
    maps a lone ``s`` to an empty string, which is dropped."""
    if "porter" not in _STEMMERS:
        import Stemmer  # PyStemmer, the optional `memory` extra: imported only when BM25 is used

        _STEMMERS["porter"] = Stemmer.Stemmer("porter")
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return [stem for stem in _STEMMERS["porter"].stemWords(words) if stem]


class BM25Retriever:
    """Okapi BM25 over ``tokenize``d texts, scored by ``rank_bm25.BM25Okapi(k1, b, epsilon)``.

    ``search`` returns the top ``k`` by score even when the score is 0 (as ``BM25Okapi.get_top_n`` does), ties
    in indexing order. ``nbytes`` counts an inverted index: per term its UTF-8 bytes and a float64 idf, per
    (term, document) posting an int32 document number and an int32 term frequency, per document an int32
    length. As rank_bm25 does, a term found in more than half the documents gets ``epsilon`` times the
    mean idf, which can be negative on a tiny corpus: such a term then lowers a score.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25,
                 tokenizer: Callable[[str], list[str]] = tokenize):
        for name, value in (("k1", k1), ("b", b), ("epsilon", epsilon)):
            if not is_number(value) or value < 0:
                raise ArgumentError(name, "a non-negative number", repr(value))
        if b > 1:
            raise ArgumentError("b", "a number in [0, 1]", repr(b))
        self.k1, self.b, self.epsilon, self.tokenizer = k1, b, epsilon, tokenizer
        self._ids: list[str] = []
        self._bm25 = None
        self._nbytes = 0

    def index(self, items: Sequence[Any]) -> None:
        self._ids, texts = _ids_and_texts(list(items))
        corpus = [self.tokenizer(text) for text in texts]
        self._bm25 = None
        # BM25Okapi divides by the corpus size and the mean length: with no tokens every score is 0
        if sum(map(len, corpus)):
            from rank_bm25 import BM25Okapi  # the optional `memory` extra

            self._bm25 = BM25Okapi(corpus, k1=self.k1, b=self.b, epsilon=self.epsilon)
        vocabulary = {term for document in corpus for term in document}
        postings = sum(len(set(document)) for document in corpus)
        self._nbytes = sum(len(t.encode("utf-8")) + 8 for t in vocabulary) + 8 * postings + 4 * len(corpus)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        check_int(k=k)
        if self._bm25 is None:
            scores = np.zeros(len(self._ids))
        else:
            scores = np.asarray(self._bm25.get_scores(self.tokenizer(query)), dtype=np.float64)
        return _top_k(self._ids, scores, k)

    def nbytes(self) -> int:
        return self._nbytes


class RRFRetriever:
    """Reciprocal-rank fusion of several retrievers: ``score(d) = sum_r weights[r] / (rrf_k + rank_r(d))``.

    Each retriever ranks ``depth`` items (default: every indexed item, the full ranking fusion is defined
    on); an item a retriever does not return adds nothing from it. Ties in the fused score go to indexing
    order. ``nbytes`` is the sum of the fused retrievers' indexes.
    """

    def __init__(self, retrievers: Sequence[Retriever], weights: Sequence[float] | None = None, rrf_k: float = 60,
                 depth: int | None = None):
        self.retrievers = list(retrievers)
        if not self.retrievers:
            raise ArgumentError("retrievers", "a non-empty sequence of retrievers", "[]")
        weights = [1.0] * len(self.retrievers) if weights is None else list(weights)
        if len(weights) != len(self.retrievers):
            raise ArgumentError("weights", f"{len(self.retrievers)} numbers (one per retriever)", repr(weights))
        if not all(is_number(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
            raise ArgumentError("weights", "non-negative numbers, at least one positive", repr(weights))
        if not is_number(rrf_k) or rrf_k < 0:
            raise ArgumentError("rrf_k", "a non-negative number", repr(rrf_k))
        check_int(depth=depth, allow_none=True)
        self.weights, self.rrf_k, self.depth = [float(w) for w in weights], float(rrf_k), depth
        self._ids: list[str] = []

    def index(self, items: Sequence[Any]) -> None:
        items = list(items)
        self._ids, _ = _ids_and_texts(items)
        for retriever in self.retrievers:
            retriever.index(items)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        check_int(k=k)
        if not self._ids:
            return []
        position = {item_id: i for i, item_id in enumerate(self._ids)}
        fused = np.zeros(len(self._ids))
        depth = self.depth or len(self._ids)
        for retriever, weight in zip(self.retrievers, self.weights, strict=True):
            for rank, (item_id, _) in enumerate(retriever.search(query, depth), start=1):
                fused[position[item_id]] += weight / (self.rrf_k + rank)
        return _top_k(self._ids, fused, k)

    def nbytes(self) -> int:
        return sum(retriever.nbytes() for retriever in self.retrievers)


_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                "November", "December")


def date_prefixed(text: str, timestamp: Any, speaker: str | None = None) -> str:
    """``(1:56 pm on 8 May, 2023) Caroline said, "text"``: a turn in the form LoCoMo's retrieval baselines
    index it (``task_eval/dpr_qa.py``). The time is written only when the timestamp has one (a ``date`` or
    a date-only ISO string gives ``(8 May, 2023)``); no timestamp gives no prefix; no speaker gives the
    bare text after the date."""
    body = f'{speaker} said, "{text}"' if speaker else text
    if timestamp is None:
        return body
    moment = parse_timestamp(timestamp, "timestamp")
    when = f"{moment.day} {_MONTH_NAMES[moment.month - 1]}, {moment.year}"
    if isinstance(moment, datetime):
        hour = moment.hour % 12 or 12
        when = f"{hour}:{moment.minute:02d} {'am' if moment.hour < 12 else 'pm'} on {when}"
    return f"({when}) {body}"


class DatePrefixRetriever:
    """Indexes ``date_prefixed(text, timestamp, speaker)`` in ``inner`` (the speaker only when
    ``with_speaker``); the stored texts are unchanged, the prefixes live in the inner index."""

    def __init__(self, inner: Retriever, with_speaker: bool = True):
        self.inner, self.with_speaker = inner, with_speaker

    def index(self, items: Sequence[Any]) -> None:
        items = list(items)
        _ids_and_texts(items)  # a clear error before the prefixing reads the fields
        self.inner.index([{"id": item_field(item, "id"), "timestamp": item_field(item, "timestamp"),
                           "speaker": item_field(item, "speaker"),
                           "text": date_prefixed(item_field(item, "text"), item_field(item, "timestamp"),
                                                 item_field(item, "speaker") if self.with_speaker else None)}
                          for item in items])

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        return self.inner.search(query, k)

    def nbytes(self) -> int:
        return self.inner.nbytes()


class DateFilteredRetriever:
    """Time-aware retrieval: when ``resolve_time_expression(query, now)`` finds a range, only items whose
    timestamp's date lies in it (both ends included) are returned, in ``inner``'s order; when no item
    matches, or the query has no time expression, ``inner``'s ranking is returned unfiltered.

    ``now`` is the moment relative expressions count from: a date or datetime, or None for the latest
    timestamp among the indexed items (the present of a conversation that is being remembered). With
    ``fill`` the filtered items are followed by the others, so ``k`` items come back whenever ``k`` are
    indexed. Items without a timestamp are never inside a range. ``nbytes`` adds an int32 day number per
    item to ``inner``'s index.
    """

    def __init__(self, inner: Retriever, now: date | datetime | None = None, fill: bool = False):
        if now is not None:
            as_date(now, "now")
        self.inner, self.now, self.fill = inner, now, fill
        self._ids: list[str] = []
        self._dates: dict[str, date | None] = {}

    def index(self, items: Sequence[Any]) -> None:
        items = list(items)
        self._ids, _ = _ids_and_texts(items)
        self._dates = {item_id: (None if item_field(item, "timestamp") is None
                                 else as_date(item_field(item, "timestamp"), "timestamp"))
                       for item_id, item in zip(self._ids, items, strict=True)}
        self.inner.index(items)

    def reference_date(self) -> date | None:
        """The date relative expressions resolve against (``now``, or the latest indexed date)."""
        if self.now is not None:
            return as_date(self.now, "now")
        dated = [d for d in self._dates.values() if d is not None]
        return max(dated) if dated else None

    def resolved_range(self, query: str) -> tuple[date, date] | None:
        """The date range the query is filtered to, or None."""
        reference = self.reference_date()
        return None if reference is None else resolve_time_expression(query, reference)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        check_int(k=k)
        window = self.resolved_range(query)
        if window is None:
            return self.inner.search(query, k)
        ranking = self.inner.search(query, len(self._ids)) if self._ids else []
        start, end = window
        inside = [hit for hit in ranking if self._dates[hit[0]] is not None and start <= self._dates[hit[0]] <= end]
        if not inside:
            return ranking[:k]
        if self.fill:
            kept = {item_id for item_id, _ in inside}
            inside += [hit for hit in ranking if hit[0] not in kept]
        return inside[:k]

    def nbytes(self) -> int:
        return self.inner.nbytes() + 4 * len(self._ids)
