"""Retrieval and answer metrics against cases computed by hand.

LongMemEval's DCG (src/retrieval/eval_utils.py) weighs rank 1 and rank 2 by 1 and rank r > 2 by 1/log2(r),
so the expected values below are written with that discount.
"""

import math
from pathlib import Path

import pytest

from longrecall.agent_memory.loaders import load_locomo
from longrecall.agent_memory.metrics import (
    evidence_recall_at_k,
    locomo_recall,
    longmemeval_recall,
    longmemeval_session_recall_from_turns,
    multi_answer_f1,
    ndcg_any_at_k,
    normalize_answer,
    recall_all_at_k,
    recall_any_at_k,
    says_not_mentioned,
    score_answer,
    score_answers,
    strip_turn_index,
    token_f1,
    turn_to_session_scores,
)
from longrecall.agent_memory.records import QAItem
from longrecall.validation import ArgumentError

FIXTURES = Path(__file__).parent / "fixtures"


def qa(question_id, category_name="single-hop", turns=(), sessions=(), answer="x", abstention=False, category=4):
    return QAItem(question_id=question_id, conversation_id="c", question="?", answer=answer, category=category,
                  category_name=category_name, evidence_turn_ids=tuple(turns), evidence_session_ids=tuple(sessions),
                  abstention=abstention)


# ------------------------------------------------------------------------------------ LoCoMo recall@k


def test_evidence_recall_fraction_and_k_beyond_the_list():
    ranked = ["D1:1", "D1:3", "D2:2"]
    evidence = ["D1:3", "D2:2", "D3:1"]
    assert evidence_recall_at_k(ranked, evidence, 1) == 0.0
    assert evidence_recall_at_k(ranked, evidence, 2) == pytest.approx(1 / 3)
    assert evidence_recall_at_k(ranked, evidence, 3) == pytest.approx(2 / 3)
    assert evidence_recall_at_k(ranked, evidence, 50) == pytest.approx(2 / 3)  # k larger than the list
    assert evidence_recall_at_k([], evidence, 5) == 0.0


def test_evidence_recall_ties_and_repeats_follow_the_given_order():
    # two turns tied by a retriever: the metric takes the order it is given, it never re-sorts
    assert evidence_recall_at_k(["x", "y"], ["y"], 1) == 0.0
    assert evidence_recall_at_k(["y", "x"], ["y"], 1) == 1.0
    # an id repeated in the ranking (several facts from one turn) still takes a slot each time
    assert evidence_recall_at_k(["a", "a", "b"], ["b"], 2) == 0.0
    assert evidence_recall_at_k(["a", "a", "b"], ["b"], 3) == 1.0


def test_evidence_recall_rejects_empty_evidence_and_bad_k():
    with pytest.raises(ArgumentError) as error:
        evidence_recall_at_k(["a"], [], 5)
    assert error.value.arg == "evidence_ids"
    with pytest.raises(ArgumentError) as error:
        evidence_recall_at_k(["a"], ["a"], 0)
    assert error.value.arg == "k"


def test_locomo_recall_per_category_and_overall():
    items = [qa("q1", turns=["D1:1", "D1:2"]), qa("q2", turns=["D2:1"]),
             qa("q3", "multi-hop", turns=["D3:1", "D3:2", "D3:3"], category=1), qa("q4", turns=[])]
    rankings = {"q1": ["D1:1", "D9:9", "D1:2"], "q2": ["D2:1"], "q3": ["x", "D3:3"]}
    report = locomo_recall(items, rankings, ks=(1, 3))
    assert report.overall["recall@1"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert report.overall["recall@3"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert report.by_category["single-hop"] == pytest.approx({"recall@1": 0.75, "recall@3": 1.0})
    assert report.by_category["multi-hop"] == pytest.approx({"recall@1": 0.0, "recall@3": 1 / 3})
    assert report.counts == {"overall": 3, "multi-hop": 1, "single-hop": 2}
    assert report.skipped == {"no_valid_evidence": 1}  # q4 needs no ranking: it is skipped first
    assert report.per_question["q1"] == {"recall@1": 0.5, "recall@3": 1.0}
    assert report.to_dict()["skipped"] == {"no_valid_evidence": 1}


def test_locomo_recall_session_unit_and_errors():
    items = [qa("q1", turns=["D1:1", "D2:1", "D2:2"], sessions=["session_1", "session_2"])]
    report = locomo_recall(items, {"q1": ["session_2", "session_5"]}, ks=(1,), unit="session")
    assert report.overall == {"recall@1": 0.5}  # distinct sessions, not weighted by evidence turns
    with pytest.raises(ArgumentError) as error:
        locomo_recall(items, {}, ks=(1,))
    assert error.value.arg == "rankings"
    with pytest.raises(ArgumentError) as error:
        locomo_recall(items, {"q1": []}, ks=())
    assert error.value.arg == "ks"
    with pytest.raises(ArgumentError) as error:
        locomo_recall(items, {"q1": []}, unit="fact")
    assert error.value.arg == "unit"


def test_locomo_recall_on_the_loaded_fixture():
    _, items, _ = load_locomo(FIXTURES / "locomo_quirks.json")
    # an oracle ranking puts each question's evidence first: recall 1 everywhere it is defined
    oracle = {item.question_id: list(item.evidence_turn_ids) + ["D4:1"] for item in items}
    report = locomo_recall(items, oracle, ks=(1, 5))
    assert report.skipped == {"no_valid_evidence": 2}
    assert report.counts["overall"] == 7
    assert report.overall["recall@5"] == 1.0
    # conv-a:q2 ("D1:2; D2:3") and conv-a:q3 (three turns) hold more than one id: recall@1 < 1 there
    assert report.per_question["conv-a:q2"]["recall@1"] == 0.5
    assert report.per_question["conv-a:q3"]["recall@1"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------- LongMemEval metrics


def test_recall_any_and_all():
    ranked = ["a", "b", "c", "d"]
    assert recall_any_at_k(ranked, {"b", "d"}, 1) == 0.0
    assert recall_any_at_k(ranked, {"b", "d"}, 2) == 1.0
    assert recall_all_at_k(ranked, {"b", "d"}, 2) == 0.0
    assert recall_all_at_k(ranked, {"b", "d"}, 4) == 1.0
    assert recall_all_at_k(ranked, {"b", "d"}, 100) == 1.0  # k larger than the list


def test_empty_relevant_set_follows_any_and_all():
    assert recall_any_at_k(["a"], set(), 5) == 0.0
    assert recall_all_at_k(["a"], set(), 5) == 1.0
    assert ndcg_any_at_k(["a"], set(), 5) == 0.0


def test_corpus_ids_drop_relevant_ids_never_indexed():
    ranked, corpus = ["b", "a", "c"], ["a", "b", "c"]
    assert recall_all_at_k(ranked, {"b", "z"}, 1) == 0.0
    assert recall_all_at_k(ranked, {"b", "z"}, 1, corpus_ids=corpus) == 1.0
    assert ndcg_any_at_k(ranked, {"b", "z"}, 2) == pytest.approx(1 / 2)  # ideal DCG counts z
    assert ndcg_any_at_k(ranked, {"b", "z"}, 2, corpus_ids=corpus) == 1.0
    assert recall_any_at_k(ranked, {"z"}, 3, corpus_ids=corpus) == 0.0


def test_ndcg_reference_discount():
    # rank 2 weighs as much as rank 1 in the reference DCG
    assert ndcg_any_at_k(["x", "r"], {"r"}, 2) == 1.0
    assert ndcg_any_at_k(["x", "y", "r"], {"r"}, 3) == pytest.approx(1 / math.log2(3))
    assert ndcg_any_at_k(["x", "r"], {"r"}, 1) == 0.0


def test_ndcg_several_relevant_items():
    ranked = ["a", "b", "c", "d"]
    # b at rank 2 (gain 1) + d at rank 4 (1/log2 4 = 0.5); ideal: ranks 1 and 2 -> 2
    assert ndcg_any_at_k(ranked, {"b", "d"}, 4) == pytest.approx(1.5 / 2)
    assert ndcg_any_at_k(ranked, {"b", "d"}, 3) == pytest.approx(1 / 2)
    ranked = ["x", "r1", "y", "r2", "r3"]
    expected = (1 + 1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 + 1 / math.log2(3))
    assert ndcg_any_at_k(ranked, {"r1", "r2", "r3"}, 5) == pytest.approx(expected)
    assert ndcg_any_at_k(["r3", "r2", "r1"], {"r1", "r2", "r3"}, 3) == pytest.approx(1.0)


def test_ndcg_k_beyond_the_list_and_repeated_ids():
    assert ndcg_any_at_k(["r1"], {"r1", "r2"}, 10) == pytest.approx(1 / 2)  # ideal holds both relevant ids
    assert ndcg_any_at_k(["r1", "r1"], {"r1"}, 2) == 1.0  # a repeat gains nothing (a naive sum would give 2)


def test_strip_turn_index():
    assert strip_turn_index("answer_4be1b6b4_2_3") == "answer_4be1b6b4_2"
    assert strip_turn_index("sharegpt_x_10") == "sharegpt_x"


def test_turn_to_session_scores_grow_k_to_k_sessions():
    ranked = ["s1_1", "s1_2", "s2_1", "s3_1", "s1_3", "s3_2"]  # sessions s1 s1 s2 s3 s1 s3
    # k=2: the top 3 turns cover 2 sessions (s1, s2): s3 is missed
    assert turn_to_session_scores(ranked, {"s3_2"}, 2) == {"recall_any": 0.0, "recall_all": 0.0, "ndcg_any": 0.0}
    # k=3: 4 turns for 3 sessions; gains [0, 0, 0, 1] -> 1/log2(4); ideal: s3 has 2 turns in the corpus -> 1 + 1
    scores = turn_to_session_scores(ranked, {"s3_2"}, 3)
    assert (scores["recall_any"], scores["recall_all"]) == (1.0, 1.0)
    assert scores["ndcg_any"] == pytest.approx(0.5 / 2)
    # k beyond the sessions: all 6 turns; s3 gains at ranks 4 and 6 (a repeated session gains each time)
    scores = turn_to_session_scores(ranked, {"s3_2"}, 10)
    assert scores["ndcg_any"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(6)) / 2)
    # two evidence sessions: all needs both
    scores = turn_to_session_scores(ranked, {"s2_1", "s3_1"}, 2)
    assert (scores["recall_any"], scores["recall_all"]) == (1.0, 0.0)


def test_turn_to_session_scores_with_a_larger_corpus():
    ranked = ["s3_1", "s1_1"]
    corpus = ["s1_1", "s3_1", "s3_2", "s3_3"]
    # ideal DCG counts the 3 corpus turns of s3 (1 + 1 + 1/log2 3); the ranking holds one of them at rank 1
    scores = turn_to_session_scores(ranked, {"s3_3"}, 2, corpus_turn_ids=corpus)
    assert scores["ndcg_any"] == pytest.approx(1 / 2)
    scores = turn_to_session_scores(ranked, {"s3_3"}, 3, corpus_turn_ids=corpus)
    assert scores["ndcg_any"] == pytest.approx(1 / (2 + 1 / math.log2(3)))
    # an evidence turn that was never indexed does not count (the reference builds its labels from the corpus)
    assert turn_to_session_scores(ranked, {"s9_1"}, 2, corpus_turn_ids=corpus)["recall_all"] == 1.0


def test_longmemeval_recall_skips_abstention_and_averages():
    items = [qa("a", "single-session-user", turns=["s1_1"], sessions=["s1"], category=1),
             qa("b", "temporal-reasoning", sessions=["s1"], abstention=True, category=5),
             qa("c", "multi-session", turns=["s1_1", "s2_1"], sessions=["s1", "s2"], category=4),
             qa("d", "multi-session", category=4)]
    rankings = {"a": ["s3", "s1"], "c": ["s2", "s3", "s1"]}
    report = longmemeval_recall(items, rankings, ks=(1, 3), granularity="session")
    assert report.skipped == {"abstention": 1, "no_valid_evidence": 1}
    assert report.per_question["a"] == pytest.approx({"recall_any@1": 0.0, "recall_all@1": 0.0, "ndcg_any@1": 0.0,
                                                      "recall_any@3": 1.0, "recall_all@3": 1.0, "ndcg_any@3": 1.0})
    assert report.per_question["c"] == pytest.approx({
        "recall_any@1": 1.0, "recall_all@1": 0.0, "ndcg_any@1": 1.0,
        "recall_any@3": 1.0, "recall_all@3": 1.0, "ndcg_any@3": (1 + 1 / math.log2(3)) / 2})
    assert report.overall["recall_any@1"] == 0.5
    assert report.by_category["multi-session"]["recall_all@1"] == 0.0
    turn_report = longmemeval_recall(items, {"a": ["s1_2", "s1_1"], "c": ["s1_1"]}, ks=(1,), granularity="turn",
                                     corpus_ids={"c": ["s1_1"]})
    assert turn_report.per_question["a"]["recall_any@1"] == 0.0
    assert turn_report.per_question["c"]["recall_all@1"] == 1.0  # s2_1 was not indexed for c
    with pytest.raises(ArgumentError) as error:
        longmemeval_recall(items, rankings, granularity="fact")
    assert error.value.arg == "granularity"


def test_longmemeval_session_recall_from_turns_matches_the_single_question_function():
    items = [qa("a", "multi-session", turns=["s3_2"], sessions=["s3"])]
    ranked = ["s1_1", "s1_2", "s2_1", "s3_1", "s1_3", "s3_2"]
    report = longmemeval_session_recall_from_turns(items, {"a": ranked}, ks=(3,))
    assert report.overall == pytest.approx({"recall_any@3": 1.0, "recall_all@3": 1.0, "ndcg_any@3": 0.25})


# ------------------------------------------------------------------------------------------ answer F1


def test_normalize_answer():
    assert normalize_answer("The cat, and a Dog!") == "cat dog"
    assert normalize_answer("  7 May,   2023. ") == "7 may 2023"
    assert normalize_answer("Anthem of the band") == "anthem of band"  # whole words only


@pytest.fixture
def stemmer():
    pytest.importorskip("Stemmer")


def test_token_f1(stemmer):
    assert token_f1("the running dogs", "a dog runs") == 1.0  # run/run, dog/dog after stemming
    assert token_f1("Lisbon Portugal", "Lisbon") == pytest.approx(2 / 3)  # P = 1/2, R = 1
    assert token_f1("cat cat dog", "cat") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))  # counts clip repeats
    assert token_f1("", "x") == 0.0 and token_f1("", "") == 0.0
    assert token_f1("Paris", "London") == 0.0


def test_multi_answer_f1(stemmer):
    # each gold part takes its best predicted part: hiking 1, painting 1, swimming 0
    assert multi_answer_f1("painting, hiking", "hiking, painting, swimming") == pytest.approx(2 / 3)
    # one predicted part "hiking painting" against each gold part: P = 1/2, R = 1 -> 2/3 each
    assert multi_answer_f1("hiking and painting", "hiking, painting") == pytest.approx(2 / 3)


def test_says_not_mentioned():
    assert says_not_mentioned("That is Not mentioned in the conversation.")
    assert says_not_mentioned("No information available.")
    assert not says_not_mentioned("I don't know")


def test_score_answer_by_category(stemmer):
    assert score_answer(qa("o", "open-domain", answer="Paris; France", category=3), "Paris") == 1.0
    assert score_answer(qa("s", "single-hop", answer="Paris; France"), "Paris") == pytest.approx(2 / 3)
    assert score_answer(qa("m", "multi-hop", answer="hiking, painting", category=1), "hiking") == 0.5
    adversarial = qa("v", "adversarial", answer=None, abstention=True, category=5)
    assert score_answer(adversarial, "This is not mentioned.") == 1.0
    assert score_answer(adversarial, "Miso") == 0.0
    abstention = qa("b", "temporal-reasoning", answer="The information is not enough", abstention=True)
    assert score_answer(abstention, "No information available") == 1.0
    with pytest.raises(ArgumentError) as error:
        score_answer(qa("n", answer=None), "x")
    assert error.value.arg == "item"


def test_score_answers_report_and_missing_hypotheses(stemmer):
    items = [qa("s", answer="Lisbon"), qa("v", "adversarial", answer=None, abstention=True, category=5),
             qa("n", answer=None), qa("m", "multi-hop", answer="a cat, a dog", category=1)]
    hypotheses = {"s": "Lisbon Portugal", "v": "not mentioned"}
    report = score_answers(items, hypotheses)
    assert {q: scores["f1"] for q, scores in report.per_question.items()} == pytest.approx(
        {"s": 2 / 3, "v": 1.0, "m": 0.0})
    assert report.overall["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert report.skipped == {"no_gold_answer": 1} and report.notes == {"missing_hypothesis_scored_zero": 1}
    skipped = score_answers(items, hypotheses, missing="skip")
    assert skipped.counts["overall"] == 2 and skipped.skipped["missing_hypothesis"] == 1
    with pytest.raises(ArgumentError) as error:
        score_answers(items, hypotheses, missing="error")
    assert error.value.arg == "hypotheses"
    with pytest.raises(ArgumentError) as error:
        score_answers(items, hypotheses, missing="ignore")
    assert error.value.arg == "missing"
