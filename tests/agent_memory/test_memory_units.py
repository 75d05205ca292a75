"""Retrieval units (agent_memory.units): the extractive fact rule, LexRank summaries, the LLM builders against a
fake client, and the scoring of fact and summary rankings through their source turns (agent_memory.evaluate)."""

from datetime import datetime

import pytest

from longrecall.agent_memory.evaluate import covered_sources, evaluate_memory, evidence_level, score_by_sources
from longrecall.agent_memory.records import Conversation, QAItem, Session, Turn
from longrecall.agent_memory.units import (
    build_items,
    extractive_facts,
    extractive_summaries,
    is_content_sentence,
    lexrank_scores,
    resolve_first_person,
    split_sentences,
)
from longrecall.validation import ArgumentError

MAY_8 = datetime(2023, 5, 8, 13, 56)
MAY_20 = datetime(2023, 5, 20, 9, 0)


def _conversation(*sessions: tuple[str, datetime, list[tuple[str, str]]]) -> Conversation:
    """Sessions given as (session id, time, [(speaker, text), ...]); turn ids ``D{n}:{i}`` as LoCoMo's."""
    built = []
    for n, (session_id, when, turns) in enumerate(sessions, start=1):
        built.append(Session(session_id, str(when), when, tuple(
            Turn(f"D{n}:{i}", session_id, speaker, text, str(when), when) for i, (speaker, text) in
            enumerate(turns, start=1))))
    return Conversation("c1", tuple(built), ("Ana", "Bo"))


# ----------------------------------------------------------------------------------- the fact rule


def test_sentences_split_after_end_punctuation_and_closing_quotes():
    assert split_sentences('Hi Ana! How are you? She said "no way." Then\nwe left') == [
        "Hi Ana!", "How are you?", 'She said "no way."', "Then", "we left"]
    assert split_sentences("  ") == []


def test_the_fact_rule_drops_questions_and_fillers():
    assert is_content_sentence("I adopted a beagle named Rex last week.")
    assert not is_content_sentence("Wow, how exciting!")             # wow, exciting: 2 content words
    assert not is_content_sentence("It keeps me sane.")              # keeps, sane
    assert not is_content_sentence("Did you adopt the beagle from the shelter?")  # a question, however long
    assert not is_content_sentence('Did she say "the shelter closed early?"')     # "?" before a closing quote
    assert is_content_sentence("Bo plays cello weekly")              # no end punctuation needed


def test_first_person_pronouns_become_the_speaker():
    assert resolve_first_person("I'm moving to my sister's flat; she helped me and I've packed.", "Bo") == (
        "Bo is moving to Bo's sister's flat; she helped Bo and Bo has packed.")
    assert resolve_first_person("I am sure I'd go, the choice is mine, I told myself.", "Ana") == (
        "Ana is sure Ana would go, the choice is Ana's, Ana told Ana.")
    assert resolve_first_person("I have two cats and we love them. My mimic", "Ana") == (
        "Ana has two cats and we love them. Ana's mimic")          # "we" is left; "mimic" is not "mi..."
    assert resolve_first_person("I went home.", None) == "I went home."
    assert resolve_first_person("I went home.", r"A\1") == r"A\1 went home."  # a name is never a template


def test_extractive_facts_keep_content_sentences_with_their_turn():
    conversation = _conversation(("session_1", MAY_8, [
        ("Ana", "Hi Bo! How are you? I adopted a beagle named Rex last week. It keeps me sane."),
        ("Bo", "Wow, how exciting!"),
        ("Bo", "My sister plays cello in an orchestra.")]))
    facts = extractive_facts(conversation)
    assert [(f["item_id"], f["text"], f["source_ids"], f["speaker"]) for f in facts] == [
        ("D1:1#3", "Ana adopted a beagle named Rex last week.", ["D1:1"], "Ana"),
        ("D1:3#1", "Bo's sister plays cello in an orchestra.", ["D1:3"], "Bo")]
    assert {f["kind"] for f in facts} == {"fact"} and facts[0]["timestamp"] == MAY_8.isoformat()
    assert facts[0]["conversation_id"] == "c1"
    assert build_items(conversation, "fact") == facts  # the default builder is the extractive one


# ------------------------------------------------------------------------------------ summaries


def test_lexrank_of_a_three_sentence_chain_by_hand():
    # A={x,y}, B={y,z}, C={z,w}: cosines A-B = B-C = 1/2, A-C = 0, so M = [[2/3,1/3,0],[1/4,1/2,1/4],[0,1/3,2/3]].
    # By symmetry p_A = p_C = (1 - b) / 2 and b = 0.15/3 + 0.85 (p_A/3 + b/2 + p_C/3) gives b = 2 / 5.15.
    scores = lexrank_scores([["x", "y"], ["y", "z"], ["z", "w"]], {t: 1.0 for t in "xyzw"})
    hub = 2 / 5.15
    assert scores == pytest.approx([(1 - hub) / 2, hub, (1 - hub) / 2], abs=1e-12)
    assert lexrank_scores([["x"]], {"x": 1.0}) == pytest.approx([1.0])
    assert lexrank_scores([["x"], ["y"]], {}) == pytest.approx([0.5, 0.5])  # no edges: uniform
    assert len(lexrank_scores([], {})) == 0


SUMMARY_SESSION = ("session_1", MAY_8, [
    ("Ana", "Rex chased ducks around the pond."),                  # 6 words, shares rex/chased/ducks/pond
    ("Bo", "Rex and Luna chased ducks at the pond yesterday."),     # 9 words: the hub
    ("Ana", "Luna swam yesterday. Hey, how are you?"),              # 3 words kept, shares luna/yesterday
    ("Bo", "Bo's cousin sells violins in Prague."),                # 6 words, shares nothing
])


def test_summary_takes_central_sentences_within_the_word_budget_in_order():
    conversation = _conversation(SUMMARY_SESSION, ("session_2", MAY_20, [("Bo", "Okay, bye!")]))
    hub = "Rex and Luna chased ducks at the pond yesterday."
    only_hub = extractive_summaries(conversation, max_words=9)
    assert [(r["item_id"], r["text"], r["source_ids"]) for r in only_hub] == [
        ("session_1#summary", hub, ["D1:2"])]              # session_2 holds no content sentence: no summary
    # 12 words: the hub (9), then the next best that fits; the 6-word sentences do not, "Luna swam" (3) does;
    # written in the session's order
    assert extractive_summaries(conversation, max_words=12)[0]["text"] == hub + " Luna swam yesterday."
    everything = extractive_summaries(conversation)[0]
    assert everything["text"] == ("Rex chased ducks around the pond. " + hub +
                                  " Luna swam yesterday. Bo's cousin sells violins in Prague.")
    assert everything["source_ids"] == ["D1:1", "D1:2", "D1:3", "D1:4"]
    assert everything["kind"] == "summary" and everything["speaker"] is None
    assert everything["timestamp"] == MAY_8.isoformat()
    assert extractive_summaries(conversation, max_words=2) == []  # no kept sentence fits
    with pytest.raises(ArgumentError, match="max_words"):
        extractive_summaries(conversation, max_words=0)


# ------------------------------------------------------------------------------------ LLM builders


class FakeChat:
    """A ChatClient with canned replies: facts for the extraction prompt, a summary for the summary prompt."""

    def __init__(self, facts: str = "- Ana adopted Rex in May 2023.\n- Bo plays cello.\n"):
        self.facts, self.prompts = facts, []

    def chat(self, messages, *, temperature=0.0, max_tokens=256):
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        return self.facts if prompt.rstrip().endswith("Facts:") else "Summary: Ana and Bo talked about Rex."


def test_llm_builders_source_every_turn_of_their_session():
    conversation = _conversation(SUMMARY_SESSION, ("session_2", MAY_20, []))
    client = FakeChat()
    facts = build_items(conversation, "fact", builder="llm", client=client)
    assert [(f["item_id"], f["text"]) for f in facts] == [
        ("session_1#fact1", "Ana adopted Rex in May 2023."), ("session_1#fact2", "Bo plays cello.")]
    assert all(f["source_ids"] == ["D1:1", "D1:2", "D1:3", "D1:4"] and f["speaker"] is None for f in facts)
    assert facts[0]["timestamp"] == MAY_8.isoformat()
    assert len(client.prompts) == 1 and "Bo: Rex and Luna chased ducks" in client.prompts[0]  # no call for session_2
    summaries = build_items(conversation, "summary", builder="llm", client=client)
    assert [(s["item_id"], s["text"], s["kind"]) for s in summaries] == [
        ("session_1#summary", "Ana and Bo talked about Rex.", "summary")]
    assert "at most 120 words" in client.prompts[-1]
    assert build_items(conversation, "fact", builder="llm", client=FakeChat("NONE")) == []
    with pytest.raises(ArgumentError, match="client"):
        build_items(conversation, "fact", builder="llm")
    with pytest.raises(ArgumentError, match="builder"):
        build_items(conversation, "fact", builder="oracle")
    with pytest.raises(ArgumentError, match="unit"):
        build_items(conversation, "paragraph")


# ------------------------------------------------------------------ scoring through source turns


def _item(qid, evidence, category=4, name="single-hop", sessions=(), abstention=False):
    return QAItem(qid, "c1", "q?", "a", category, name, tuple(evidence), tuple(sessions), abstention=abstention)


def test_covered_sources_flatten_in_rank_order_once():
    ranked = [["D1:2"], ["D1:2"], ["D1:5"], ["D1:7", "D1:8"]]  # two facts of turn D1:2
    assert covered_sources(ranked, 1) == ["D1:2"]
    assert covered_sources(ranked, 2) == ["D1:2"]
    assert covered_sources(ranked, 3) == ["D1:2", "D1:5"]
    assert covered_sources(ranked, 10) == ["D1:2", "D1:5", "D1:7", "D1:8"]


def test_locomo_recall_over_the_sources_of_the_top_k_items_by_hand():
    items = [_item("q1", ["D1:2", "D1:5"]), _item("q2", ["D1:8", "D1:9"], 1, "multi-hop"), _item("q3", [])]
    rankings = {"q1": [["D1:2"], ["D1:2"], ["D1:5"]], "q2": [["D1:7", "D1:8"], ["D1:1"], ["D1:9"]]}
    report = score_by_sources(items, rankings, (1, 2, 3), fmt="locomo").to_dict()
    # q1: 1/2 at k = 1 and 2 (the second fact repeats D1:2), 2/2 at 3; q2: 1/2, 1/2, 2/2
    assert report["per_question"]["q1"] == {"recall@1": 0.5, "recall@2": 0.5, "recall@3": 1.0}
    assert report["per_question"]["q2"] == {"recall@1": 0.5, "recall@2": 0.5, "recall@3": 1.0}
    assert report["overall"] == {"recall@1": 0.5, "recall@2": 0.5, "recall@3": 1.0}
    assert report["skipped"] == {"no_valid_evidence": 1} and report["counts"]["multi-hop"] == 1
    with pytest.raises(ArgumentError, match="source_rankings"):
        score_by_sources(items, {"q1": []}, (1,), fmt="locomo")


def test_longmemeval_scores_over_covered_sessions_by_hand():
    items = [_item("q1", ["s2_1"], sessions=["s2"]), _item("q2", ["s1_1"], sessions=["s1"], abstention=True)]
    rankings = {"q1": [["s1"], ["s3"], ["s3"], ["s2"]], "q2": [["s1"]]}
    report = score_by_sources(items, rankings, (2, 4), fmt="longmemeval", level="session").to_dict()
    # k=2 covers [s1, s3]: nothing relevant; k=4 covers [s1, s3, s2]: s2 third, DCG 1/log2(3), ideal 1
    assert report["per_question"]["q1"] == pytest.approx({
        "recall_any@2": 0.0, "recall_all@2": 0.0, "ndcg_any@2": 0.0,
        "recall_any@4": 1.0, "recall_all@4": 1.0, "ndcg_any@4": 0.6309297535714575})
    assert report["skipped"] == {"abstention": 1}


def test_evidence_levels():
    assert evidence_level("locomo", "summary", "llm") == "turn"
    assert evidence_level("locomo", "session") == "session"
    assert evidence_level("longmemeval", "fact") == "turn"
    assert evidence_level("longmemeval", "fact", "llm") == "session"
    assert evidence_level("longmemeval", "summary") == "session"
    with pytest.raises(ArgumentError, match="unit"):
        evidence_level("locomo", "paragraph")


# -------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    pytest.importorskip("rank_bm25", reason="the retrievers need the `memory` extra")
    pytest.importorskip("Stemmer", reason="the retrievers need the `memory` extra")
    from longrecall.agent_memory.generator import generate, write_locomo
    from longrecall.agent_memory.loaders import load_locomo

    path = tmp_path_factory.mktemp("units") / "synthetic.json"
    write_locomo(path, generate(2, 6, 10, questions_per_category=2, seed=3))
    return load_locomo(path)


def test_facts_and_summaries_end_to_end(benchmark):
    turns = evaluate_memory(benchmark, fmt="locomo", unit="turn")
    facts = evaluate_memory(benchmark, fmt="locomo", unit="fact")
    summaries = evaluate_memory(benchmark, fmt="locomo", unit="summary", ks=(1, 3))
    assert facts["text_bytes"] < turns["text_bytes"] and facts["kept_items"] < turns["kept_items"]
    assert facts["builder"] == "extractive" and turns["builder"] is None and facts["evidence_level"] == "turn"
    assert 0 < facts["scores"]["overall"]["recall@5"] <= facts["scores"]["overall"]["recall@10"] <= 1
    assert summaries["kept_items"] == 6 and summaries["text_bytes"] < turns["text_bytes"]
    assert 0 < summaries["scores"]["overall"]["recall@1"] <= summaries["scores"]["overall"]["recall@3"] <= 1
    assert facts["scores"]["counts"]["overall"] == turns["scores"]["counts"]["overall"]
    half = evaluate_memory(benchmark, fmt="locomo", unit="fact", budget=0.5)
    assert half["text_bytes"] <= 0.5 * facts["text_bytes"]


def test_llm_facts_are_built_once_across_retrievers(benchmark):
    client, cache = FakeChat(), {}
    for retriever in ("bm25", "bm25-dated"):
        out = evaluate_memory(benchmark, fmt="locomo", retriever=retriever, unit="fact", builder="llm",
                              client=client, row_cache=cache)
        assert out["builder"] == "llm" and out["kept_items"] == 6 * 2  # two canned facts per session
    assert len(client.prompts) == 2 * 6  # one request per session, not per retriever
    with pytest.raises(ArgumentError, match="client"):
        evaluate_memory(benchmark, fmt="locomo", unit="summary", builder="llm")


def test_command_with_fact_units_and_its_llm_flags(benchmark, tmp_path, capsys):
    from longrecall.cli import main

    code = main(["memory-eval", "--synthetic", "1", "--sessions", "6", "--turns", "10", "--questions", "1",
                 "--units", "turn,fact,summary", "--out", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "memory_eval.md").read_text()
    assert "| bm25 | turn | - | all |" in table and "| bm25 | fact | extractive | all |" in table
    assert "| bm25 | summary | extractive | all |" in table and "sources of the top k items" in table
    capsys.readouterr()
    assert main(["memory-eval", "--synthetic", "1", "--builder", "llm", "--out", str(tmp_path)]) == 2
    assert "--llm-url must be given with --builder llm" in capsys.readouterr().out
    assert main(["memory-eval", "--synthetic", "1", "--builder", "llm", "--llm-url", "http://localhost:9/v1",
                 "--out", str(tmp_path)]) == 2
    assert "--llm-model" in capsys.readouterr().out
    assert main(["memory-eval", "--synthetic", "1", "--builder", "llm", "--llm-url", "http://localhost:9/v1",
                 "--llm-model", "m", "--llm-key-env", "LONGRECALL_TEST_UNSET_KEY", "--out", str(tmp_path)]) == 2
    assert "--llm-key-env" in capsys.readouterr().out
    assert main(["memory-eval", "--synthetic", "1", "--units", "turn,paragraph", "--out", str(tmp_path)]) == 2
    assert "--units" in capsys.readouterr().out


def test_longmemeval_units_and_a_conversation_without_facts():
    pytest.importorskip("rank_bm25", reason="the retrievers need the `memory` extra")
    pytest.importorskip("Stemmer", reason="the retrievers need the `memory` extra")
    from pathlib import Path

    from longrecall.agent_memory.loaders import load_longmemeval
    from longrecall.agent_memory.records import LoadedBenchmark, LoadStats

    loaded = load_longmemeval(Path(__file__).parent / "fixtures" / "longmemeval_quirks.json")
    sessions = evaluate_memory(loaded, fmt="longmemeval", unit="session", ks=(1, 3))
    summaries = evaluate_memory(loaded, fmt="longmemeval", unit="summary", ks=(1, 3))
    facts = evaluate_memory(loaded, fmt="longmemeval", unit="fact", ks=(1, 3))
    assert (summaries["evidence_level"], facts["evidence_level"]) == ("session", "turn")
    assert summaries["scores"]["counts"] == sessions["scores"]["counts"]  # the same questions, session evidence
    assert "recall_all@3" in facts["scores"]["overall"]
    # only fillers: no fact is kept, so the question retrieves nothing and scores 0 (no error, no bytes)
    chatter = _conversation(("session_1", MAY_8, [("Ana", "Hi Bo!"), ("Bo", "How are you?")]))
    empty = LoadedBenchmark([chatter], [_item("q1", ["D1:1"])], LoadStats("hand"))
    out = evaluate_memory(empty, fmt="locomo", unit="fact")
    assert out["scores"]["overall"] == {"recall@5": 0.0, "recall@10": 0.0} and out["total_bytes"] == 0
    with pytest.raises(ArgumentError, match="budget"):
        evaluate_memory(empty, fmt="locomo", unit="fact", budget=0.5)
