"""The report's section and frontier points for ``kv-eval`` / ``memory-eval`` rows (the store's ``evaluations``)."""

import random

import pytest
from test_report import make_record

from longrecall.report import write_report
from longrecall.report.evaluations import evaluation_points, evaluation_tables


def evaluation(system, budget, score, nbytes, *, source="memory-eval", task="locomo-style", reference=None,
               protocol=None, metric="recall@10"):
    return {"source": source, "family": "agent memory" if source == "memory-eval" else "KV-cache policy",
            "task": task, "length": 300, "system": system, "budget": budget, "protocol": protocol,
            "setting": {"seed": 0}, "metric": metric, "score": score, "reference_score": reference,
            "state_bytes": nbytes}


ROWS = [
    evaluation("bm25 / turn", None, 0.876, 43_900),
    evaluation("bm25 / turn", 0.5, 0.432, 22_200, reference=0.876),
    evaluation("dense / turn", None, None, 470_000),  # no score (e.g. no question): no point, a "—" cell
    evaluation("tiny-llama + window", 0.25, 0.5, 8192, source="kv-eval", task="passkey", reference=0.75,
               protocol="agnostic", metric="accuracy"),
]


def test_points_keep_scored_rows_in_panels_of_their_command():
    points = evaluation_points(ROWS)
    assert [(p["task"], p["mixer"], p["acc"], p["bytes"]) for p in points] == [
        ("memory-eval: locomo-style", "bm25 / turn", 0.876, 43_900.0),
        ("memory-eval: locomo-style", "bm25 / turn", 0.432, 22_200.0),
        ("kv-eval: passkey", "tiny-llama + window [agnostic]", 0.5, 8192.0)]
    assert all(p["converged"] and p["seq_len"] == 300 for p in points)


def test_tables_group_by_command_and_task_with_the_change_from_the_reference():
    tables = {heading: body for heading, _, body in evaluation_tables(ROWS)}
    assert set(tables) == {"memory-eval: locomo-style (agent memory)", "kv-eval: passkey (KV-cache policy)"}
    memory = tables["memory-eval: locomo-style (agent memory)"]
    assert [r[0] for r in memory] == ["bm25 / turn", "bm25 / turn", "dense / turn"]
    assert memory[1][2] == "0.5 of the memory" and memory[1][7] == "-44.4" and memory[2][5] == "—"
    assert tables["kv-eval: passkey (KV-cache policy)"][0][7] == "-25.0"


def test_a_store_of_evaluations_only_gets_the_frontier_and_the_section(tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_report([], tmp_path, evaluations=ROWS)
    assert set(paths) == {"markdown", "html", "accuracy_vs_state_bytes"}
    md = paths["markdown"].read_text()
    assert "## Memories measured outside the arena" in md and "### kv-eval: passkey (KV-cache policy)" in md
    assert "Diamonds are memories measured outside the arena" in md
    assert "Memories measured outside the arena" in paths["html"].read_text()


def test_evaluations_join_the_front_of_their_own_panel(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from longrecall.report import plots

    fronts = []
    real = plots.pareto_front
    monkeypatch.setattr(plots, "pareto_front", lambda pts: fronts.append(list(pts)) or real(fronts[-1]))
    records = [make_record("attention", 64, 32, 0, random.Random(0))]
    write_report(records, tmp_path, evaluations=ROWS)
    assert [(43_900.0, 0.876), (22_200.0, 0.432)] in [sorted(f, reverse=True) for f in fronts]
    assert [(8192.0, 0.5)] in fronts
    assert len(fronts) == 3  # mqar T=64, and one panel per evaluated (command: task, length)
