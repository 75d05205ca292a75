"""Recall against bytes (agent_memory.evaluate, ``longrecall memory-eval``) on generated conversations."""

import json

import pytest

pytest.importorskip("rank_bm25", reason="the retrievers need the `memory` extra")
pytest.importorskip("Stemmer", reason="the retrievers need the `memory` extra")

from longrecall.agent_memory.evaluate import evaluate_memory  # noqa: E402
from longrecall.agent_memory.generator import generate, write_locomo  # noqa: E402
from longrecall.agent_memory.loaders import load_locomo  # noqa: E402
from longrecall.cli import main  # noqa: E402
from longrecall.validation import ArgumentError  # noqa: E402


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "synthetic.json"
    write_locomo(path, generate(2, 6, 10, questions_per_category=3, seed=1))
    return load_locomo(path)


def test_every_question_retrieves_from_its_own_conversation(benchmark):
    out = evaluate_memory(benchmark, fmt="locomo", retriever="bm25", ks=(5, 10))
    scores = out["scores"]
    assert scores["counts"]["overall"] + sum(scores["skipped"].values()) == len(benchmark.items)
    assert 0 < scores["overall"]["recall@5"] <= scores["overall"]["recall@10"] <= 1
    assert out["conversations"] == 2 and out["index_bytes"] > 0
    assert out["total_bytes"] == pytest.approx(out["text_bytes"] + out["index_bytes"])
    turns = sum(1 for c in benchmark.conversations for _ in c.turns()) / 2
    assert out["kept_items"] == turns


def test_a_byte_budget_forgets_the_oldest_and_costs_recall(benchmark):
    full = evaluate_memory(benchmark, fmt="locomo", retriever="bm25")
    half = evaluate_memory(benchmark, fmt="locomo", retriever="bm25", budget=0.5)
    assert half["text_bytes"] <= 0.5 * full["text_bytes"] + 1e-9
    assert half["text_bytes"] > 0.4 * full["text_bytes"]  # turns are short: the budget is nearly filled
    assert half["scores"]["overall"]["recall@10"] < full["scores"]["overall"]["recall@10"]
    with pytest.raises(ArgumentError, match="budget"):
        evaluate_memory(benchmark, fmt="locomo", budget=1.5)


def test_session_unit_and_dated_retrievers(benchmark):
    sessions = evaluate_memory(benchmark, fmt="locomo", unit="session", ks=(1, 3))
    assert sessions["kept_items"] == 6 and sessions["scores"]["overall"]["recall@3"] > 0
    for name in ("bm25-dated", "bm25-time"):
        out = evaluate_memory(benchmark, fmt="locomo", retriever=name)
        assert 0 < out["scores"]["overall"]["recall@10"] <= 1
    with pytest.raises(ArgumentError, match="retriever"):
        evaluate_memory(benchmark, fmt="locomo", retriever="telepathy")


def test_command_writes_its_report(tmp_path):
    code = main(["memory-eval", "--synthetic", "1", "--sessions", "6", "--turns", "10", "--retrievers", "bm25",
                 "--questions", "1", "--budgets", "none,0.5", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "memory_eval.json").read_text())
    assert [r["budget"] for r in report["rows"]] == [None, 0.5]
    assert "| bm25 | turn | all |" in (tmp_path / "memory_eval.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "recall_vs_bytes.png").stat().st_size > 10_000
    assert main(["memory-eval", "--synthetic", "1", "--retrievers", "telepathy", "--out", str(tmp_path)]) == 2


def test_results_go_to_a_results_store_and_its_report(tmp_path):
    from longrecall.arena.store import Store

    store, report = tmp_path / "all.db", tmp_path / "report"
    args = ["memory-eval", "--synthetic", "1", "--sessions", "6", "--turns", "10", "--retrievers", "bm25",
            "--units", "turn,fact", "--questions", "1", "--budgets", "none,0.5", "--out", str(tmp_path / "o")]
    assert main([*args, "--report", str(report)]) == 2  # a report needs --store
    assert main([*args, "--store", str(store), "--report", str(report)]) == 0
    local = json.loads((tmp_path / "o" / "memory_eval.json").read_text())["rows"]
    with Store.open(store, create=False) as db:
        rows = db.evaluations(source="memory-eval")
    assert [(r["system"], r["budget"]) for r in rows] == [("bm25 / turn", None), ("bm25 / turn", 0.5),
                                                          ("bm25 / fact (extractive)", None),
                                                          ("bm25 / fact (extractive)", 0.5)]
    for stored, measured in zip(rows, local, strict=True):
        assert stored["score"] == measured["scores"]["overall"]["recall@10"] and stored["metric"] == "recall@10"
        assert stored["state_bytes"] == measured["total_bytes"] and stored["length"] == 60  # 6 sessions x 10 turns
    assert rows[0]["reference_score"] is None and rows[1]["reference_score"] == rows[0]["score"]
    assert rows[3]["reference_score"] == rows[2]["score"] and rows[0]["setting"]["seed"] == 0
    md = (report / "report.md").read_text()
    assert "memory-eval: locomo-style generator, 1 conversation (text memory)" in md
    assert (report / "accuracy_vs_state_bytes.png").exists()
