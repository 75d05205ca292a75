"""Evidence-retrieval metrics of LoCoMo and LongMemEval, and LoCoMo's answer F1 for answers made elsewhere.

Retrieval (what can be measured without a language model):

* LoCoMo evidence recall@k (arXiv:2402.17753; snap-research/locomo ``task_eval/evaluation.py``,
  ``eval_question_answering``): for one question, the fraction of its evidence dia ids found among the
  top-k retrieved turn ids. The reference gives a question with no evidence a recall of 1; here such a
  question (none of its ids names a turn, see ``loaders``) is left out of every mean and counted in
  ``skipped["no_valid_evidence"]``, which is how the reference numbers of issue 16 count "questions with
  valid evidence". Evidence ids are distinct (the loader removes repeats).
* LongMemEval recall_any@k, recall_all@k and ndcg_any@k (arXiv:2410.10813; xiaowu0162/LongMemEval
  ``src/retrieval/eval_utils.py``): whether any / all relevant ids are in the top k, and NDCG with binary
  gains and the reference's discount (the first two ranks both weigh 1, rank r > 1 weighs 1/log2(r)).
  Session scores from a turn ranking follow ``evaluate_retrieval_turn2session``: k grows until the top k
  turns cover k distinct sessions. Abstention questions are skipped when averaging, as the reference does.

Answers (``score_answers``), as ``evaluation.py`` scores them: text is lowercased, commas, punctuation and
the words a/an/the/and removed, tokens Porter-stemmed; token F1 per question; multi-hop (category 1)
answers are split on commas and each gold part takes its best F1 over the predicted parts (then the mean);
open-domain (category 3) gold answers keep the part before the first ``;``; adversarial (category 5) and
abstention questions score 1 when the prediction contains "no information available" or "not mentioned".
Departure: the stemmer is PyStemmer's Porter (the original algorithm), the reference uses NLTK's
``PorterStemmer`` (its extended mode), so a few words stem differently (``"dying"``: ``"dy"`` / ``"die"``).

Rankings are lists of ids best first; ties must already be broken by the retriever, and the metrics use
the order as given.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Mapping, Sequence

from ..validation import ArgumentError, check_choice, check_int
from .records import QAItem

__all__ = ["ScoreReport", "evidence_recall_at_k", "recall_any_at_k", "recall_all_at_k", "ndcg_any_at_k",
           "turn_to_session_scores", "strip_turn_index", "locomo_recall", "longmemeval_recall",
           "longmemeval_session_recall_from_turns", "normalize_answer", "answer_tokens", "token_f1",
           "multi_answer_f1", "says_not_mentioned", "score_answer", "score_answers"]

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCTUATION = set(string.punctuation)
_NOT_MENTIONED = ("no information available", "not mentioned")


@dataclass
class ScoreReport:
    """Means of per-question scores, overall and by category name.

    Attributes:
        overall: metric name (``"recall@5"``, ``"ndcg_any@10"``, ``"f1"``) -> mean over scored questions.
        by_category: category name -> metric name -> mean over that category's scored questions.
        counts: scored questions, overall (``"overall"``) and per category name.
        skipped: reason -> questions left out of every mean.
        notes: event -> questions scored under a rule worth knowing (``"missing_hypothesis_scored_zero"``).
        per_question: question id -> metric name -> score.
    """

    overall: dict[str, float] = field(default_factory=dict)
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    per_question: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return {"overall": dict(self.overall), "by_category": {k: dict(v) for k, v in self.by_category.items()},
                "counts": dict(self.counts), "skipped": dict(self.skipped), "notes": dict(self.notes),
                "per_question": {k: dict(v) for k, v in self.per_question.items()}}


def _report(scored: list[tuple[QAItem, dict[str, float]]], skipped: Counter,
            notes: Counter | None = None) -> ScoreReport:
    report = ScoreReport(skipped=skipped, notes=notes or Counter())
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for item, scores in scored:
        report.per_question[item.question_id] = scores
        groups[item.category_name].append(scores)

    def means(rows: list[dict[str, float]]) -> dict[str, float]:
        return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]} if rows else {}

    report.overall = means([scores for _, scores in scored])
    report.counts = {"overall": len(scored), **{name: len(rows) for name, rows in sorted(groups.items())}}
    report.by_category = {name: means(rows) for name, rows in sorted(groups.items())}
    return report


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ArgumentError("ks", "a non-empty sequence of positive ints", "()")
    for k in ks:
        check_int(k=k)
    return ks


def _ranking_of(rankings: Mapping[str, Sequence[str]], item: QAItem) -> Sequence[str]:
    if item.question_id not in rankings:
        raise ArgumentError("rankings", "a ranked id list for every question scored",
                            f"none for question {item.question_id!r}")
    return rankings[item.question_id]


# ------------------------------------------------------------------------------------ one question


def evidence_recall_at_k(ranked_ids: Sequence[str], evidence_ids: Collection[str], k: int) -> float:
    """LoCoMo recall@k: the fraction of the distinct ``evidence_ids`` among ``ranked_ids[:k]``."""
    check_int(k=k)
    evidence = set(evidence_ids)
    if not evidence:
        raise ArgumentError("evidence_ids", "at least one id (skip questions without evidence)", "none")
    top = set(ranked_ids[:k])
    return sum(e in top for e in evidence) / len(evidence)


def _relevant(relevant_ids: Collection[str], corpus_ids: Collection[str] | None) -> set[str]:
    # the reference builds its relevant set from the indexed corpus, so relevant ids that were never
    # indexed do not count; without a corpus every relevant id is taken as indexed
    relevant = set(relevant_ids)
    return relevant if corpus_ids is None else relevant & set(corpus_ids)


def recall_any_at_k(ranked_ids: Sequence[str], relevant_ids: Collection[str], k: int,
                    corpus_ids: Collection[str] | None = None) -> float:
    """1.0 if any relevant id is in ``ranked_ids[:k]``, else 0.0 (0.0 when nothing is relevant)."""
    check_int(k=k)
    top = set(ranked_ids[:k])
    return float(any(r in top for r in _relevant(relevant_ids, corpus_ids)))


def recall_all_at_k(ranked_ids: Sequence[str], relevant_ids: Collection[str], k: int,
                    corpus_ids: Collection[str] | None = None) -> float:
    """1.0 if every relevant id is in ``ranked_ids[:k]``, else 0.0 (1.0 when nothing is relevant, as ``all``)."""
    check_int(k=k)
    top = set(ranked_ids[:k])
    return float(all(r in top for r in _relevant(relevant_ids, corpus_ids)))


def _dcg(gains: Sequence[float]) -> float:
    # LongMemEval's dcg: gains[0] + sum_{i >= 1} gains[i] / log2(i + 1), i.e. ranks 1 and 2 both weigh 1
    return sum(g if i == 0 else g / math.log2(i + 1) for i, g in enumerate(gains))


def ndcg_any_at_k(ranked_ids: Sequence[str], relevant_ids: Collection[str], k: int,
                  corpus_ids: Collection[str] | None = None) -> float:
    """NDCG@k with binary gains (0.0 when nothing is relevant); an id repeated in the ranking gains once."""
    check_int(k=k)
    relevant = _relevant(relevant_ids, corpus_ids)
    if not relevant:
        return 0.0
    seen: set[str] = set()
    gains = []
    for doc_id in ranked_ids[:k]:
        gains.append(1.0 if doc_id in relevant and doc_id not in seen else 0.0)
        seen.add(doc_id)
    return _dcg(gains) / _dcg([1.0] * min(len(relevant), k))


def strip_turn_index(turn_id: str) -> str:
    """A LongMemEval turn id's session: ``"answer_4be1b6b4_2_3"`` -> ``"answer_4be1b6b4_2"`` (drop the last ``_i``)."""
    return turn_id.rsplit("_", 1)[0]


def turn_to_session_scores(ranked_turn_ids: Sequence[str], evidence_turn_ids: Collection[str], k: int, *,
                           session_of: Callable[[str], str] = strip_turn_index,
                           corpus_turn_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Session-level recall_any, recall_all and ndcg_any from a turn ranking, as LongMemEval's
    ``evaluate_retrieval_turn2session`` computes them.

    Turns are replaced by their sessions; the cut-off grows from k until the top turns cover k distinct
    sessions (or the corpus ends); the metrics are then taken over the session ids of that many turns, with
    a repeated session gaining at every rank it holds and the ideal DCG counting every corpus turn of a
    relevant session. ``corpus_turn_ids`` (the turns indexed) defaults to ``ranked_turn_ids``, which is
    exact when the ranking covers the whole index, as in the reference.
    """
    check_int(k=k)
    corpus = list(ranked_turn_ids if corpus_turn_ids is None else corpus_turn_ids)
    relevant = {session_of(t) for t in _relevant(evidence_turn_ids, corpus_turn_ids)}
    ranked = [session_of(t) for t in ranked_turn_ids]
    effective_k = k
    while effective_k <= len(corpus) and len(set(ranked[:effective_k])) < k:
        effective_k += 1
    top = set(ranked[:effective_k])
    ideal = _dcg([1.0] * min(sum(session_of(t) in relevant for t in corpus), effective_k))
    ndcg = _dcg([1.0 if s in relevant else 0.0 for s in ranked[:effective_k]]) / ideal if ideal else 0.0
    return {"recall_any": float(any(s in top for s in relevant)),
            "recall_all": float(all(s in top for s in relevant)), "ndcg_any": ndcg}


# -------------------------------------------------------------------------------------- aggregates


def locomo_recall(items: Iterable[QAItem], rankings: Mapping[str, Sequence[str]],
                  ks: Iterable[int] = (5, 10), unit: str = "turn") -> ScoreReport:
    """LoCoMo evidence recall@k for each k, per category name and overall (``"recall@{k}"``).

    ``rankings`` maps each question id to its retrieved ids, best first: turn ids for ``unit="turn"``,
    session ids for ``unit="session"`` (then the evidence is the item's distinct evidence sessions; the
    reference instead counts each evidence turn whose session was retrieved, weighting a session by how
    many evidence turns it holds). Questions without valid evidence are skipped and counted.
    """
    ks = _check_ks(ks)
    check_choice("unit", unit, ("turn", "session"))
    scored, skipped = [], Counter()
    for item in items:
        evidence = item.evidence_turn_ids if unit == "turn" else item.evidence_session_ids
        if not evidence:
            skipped["no_valid_evidence"] += 1
            continue
        ranked = _ranking_of(rankings, item)
        scored.append((item, {f"recall@{k}": evidence_recall_at_k(ranked, evidence, k) for k in ks}))
    return _report(scored, skipped)


def _longmemeval_scorable(item: QAItem, evidence: Collection[str], skipped: Counter) -> bool:
    if item.abstention:
        skipped["abstention"] += 1  # no evidence location: the reference skips them too
        return False
    if not evidence:
        skipped["no_valid_evidence"] += 1
        return False
    return True


def longmemeval_recall(items: Iterable[QAItem], rankings: Mapping[str, Sequence[str]],
                       ks: Iterable[int] = (1, 3, 5, 10, 30, 50), granularity: str = "session",
                       corpus_ids: Mapping[str, Collection[str]] | None = None) -> ScoreReport:
    """LongMemEval recall_any@k, recall_all@k and ndcg_any@k per question type and overall.

    ``rankings`` holds session ids (``granularity="session"``: relevant = ``evidence_session_ids``) or turn ids
    (``"turn"``: relevant = ``evidence_turn_ids``). ``corpus_ids`` (question id -> ids indexed) drops relevant
    ids that were never indexed, as the reference does when it indexes user turns only.
    """
    ks = _check_ks(ks)
    check_choice("granularity", granularity, ("session", "turn"))
    scored, skipped = [], Counter()
    for item in items:
        evidence = item.evidence_session_ids if granularity == "session" else item.evidence_turn_ids
        if not _longmemeval_scorable(item, evidence, skipped):
            continue
        ranked = _ranking_of(rankings, item)
        corpus = None if corpus_ids is None else corpus_ids.get(item.question_id)
        scores = {}
        for k in ks:
            scores[f"recall_any@{k}"] = recall_any_at_k(ranked, evidence, k, corpus)
            scores[f"recall_all@{k}"] = recall_all_at_k(ranked, evidence, k, corpus)
            scores[f"ndcg_any@{k}"] = ndcg_any_at_k(ranked, evidence, k, corpus)
        scored.append((item, scores))
    return _report(scored, skipped)


def longmemeval_session_recall_from_turns(items: Iterable[QAItem], turn_rankings: Mapping[str, Sequence[str]],
                                          ks: Iterable[int] = (1, 3, 5, 10, 30, 50), *,
                                          session_of: Callable[[str], str] = strip_turn_index,
                                          corpus_turn_ids: Mapping[str, Sequence[str]] | None = None) -> ScoreReport:
    """Session-level LongMemEval metrics from turn rankings (``turn_to_session_scores`` for each question)."""
    ks = _check_ks(ks)
    scored, skipped = [], Counter()
    for item in items:
        if not _longmemeval_scorable(item, item.evidence_turn_ids, skipped):
            continue
        ranked = _ranking_of(turn_rankings, item)
        corpus = None if corpus_turn_ids is None else corpus_turn_ids.get(item.question_id)
        scores = {}
        for k in ks:
            for name, value in turn_to_session_scores(ranked, item.evidence_turn_ids, k, session_of=session_of,
                                                      corpus_turn_ids=corpus).items():
                scores[f"{name}@{k}"] = value
        scored.append((item, scores))
    return _report(scored, skipped)


# ------------------------------------------------------------------------------------------- answers


def normalize_answer(text: str) -> str:
    """LoCoMo's normalisation: drop commas, lowercase, drop punctuation, drop a/an/the/and, squeeze spaces."""
    text = str(text).replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


_stemmer = None


def answer_tokens(text: str) -> list[str]:
    """Normalised, Porter-stemmed tokens (PyStemmer, the ``memory`` extra)."""
    global _stemmer
    if _stemmer is None:
        try:
            import Stemmer
        except ImportError as error:  # an optional dependency: say which one
            raise ImportError("answer F1 needs PyStemmer: pip install 'longrecall[memory]'") from error
        _stemmer = Stemmer.Stemmer("porter")
    return _stemmer.stemWords(normalize_answer(text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the stemmed tokens (0.0 when nothing is shared, including two empty texts)."""
    predicted, expected = answer_tokens(prediction), answer_tokens(gold)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    """Multi-hop F1: split both on commas; each gold part takes its best F1 over the predicted parts; mean."""
    predicted = [p.strip() for p in str(prediction).split(",")]
    parts = [g.strip() for g in str(gold).split(",")]
    return sum(max(token_f1(p, g) for p in predicted) for g in parts) / len(parts)


def says_not_mentioned(prediction: str) -> bool:
    """Whether a prediction declines: it contains "no information available" or "not mentioned"."""
    lowered = str(prediction).lower()
    return any(phrase in lowered for phrase in _NOT_MENTIONED)


def score_answer(item: QAItem, prediction: str) -> float:
    """One answer's score by the item's category (see the module docstring); the item must have a gold
    answer unless it is adversarial or an abstention question."""
    if item.category_name == "adversarial" or item.abstention:
        return 1.0 if says_not_mentioned(prediction) else 0.0
    if item.answer is None:
        raise ArgumentError("item", "a question with a gold answer (or an adversarial/abstention one)",
                            f"{item.question_id!r} without one")
    if item.category_name == "multi-hop":
        return float(multi_answer_f1(prediction, item.answer))
    gold = item.answer.split(";")[0].strip() if item.category_name == "open-domain" else item.answer
    return token_f1(prediction, gold)


def score_answers(items: Iterable[QAItem], hypotheses: Mapping[str, str], missing: str = "zero") -> ScoreReport:
    """LoCoMo answer F1 (metric ``"f1"``) of ``hypotheses`` (question id -> answer text, e.g. from
    ``loaders.read_hypotheses``), per category name and overall.

    A question with no hypothesis scores 0 (``missing="zero"``), is left out (``"skip"``, counted in
    ``skipped["missing_hypothesis"]``) or raises (``"error"``). Non-adversarial questions without a gold
    answer are skipped and counted (``"no_gold_answer"``).
    """
    check_choice("missing", missing, ("zero", "skip", "error"))
    scored, skipped, notes = [], Counter(), Counter()
    for item in items:
        if item.answer is None and not (item.category_name == "adversarial" or item.abstention):
            skipped["no_gold_answer"] += 1
            continue
        if item.question_id not in hypotheses:
            if missing == "error":
                raise ArgumentError("hypotheses", "an answer for every question",
                                    f"none for question {item.question_id!r}")
            if missing == "skip":
                skipped["missing_hypothesis"] += 1
                continue
            notes["missing_hypothesis_scored_zero"] += 1
            scored.append((item, {"f1": 0.0}))
            continue
        scored.append((item, {"f1": score_answer(item, hypotheses[item.question_id])}))
    return _report(scored, skipped, notes)
