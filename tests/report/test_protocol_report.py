"""The report's "Protocols compared" tables: the same policy and budget under each protocol, side by side."""

import math

import pytest
from test_policy_report import evaluation, run

from longrecall.policy_protocols import STORED_NAMES
from longrecall.report import policy_leaderboard, write_report
from longrecall.report.protocol_tables import base_label, protocol_pivots, protocols_to_markdown


def with_protocol(row: dict, protocol: str) -> dict:
    """``row`` as the runner stores it under ``protocol`` (its stored name; agnostic keeps the old label)."""
    row = {**row, "protocol": STORED_NAMES[protocol]}
    if protocol == "agnostic":
        return row
    suffix = f"@{protocol}" + ("32" if protocol == "decode" else "")
    return {**row, "policy_label": row["policy_label"] + suffix, "policy_key": row["policy_key"] + suffix}


def evaluations() -> list[dict]:
    rows = []
    for protocol, snap, window in (("agnostic", 0.30, 0.50), ("aware", 0.90, 0.50), ("decode", 0.20, 0.40)):
        rows.append(with_protocol(evaluation("run0", "snapkv", 0.25, snap), protocol))
        rows.append(with_protocol(evaluation("run0", "window", 0.25, window), protocol))
    rows.append(with_protocol(evaluation("run0", "h2o", 0.25, 0.6), "aware"))  # under one protocol only
    return rows


def test_rows_pair_protocols_and_sort_by_spread():
    (pivot,) = protocol_pivots(policy_leaderboard([run(0)], evaluations()))
    assert pivot["protocols"] == ["agnostic", "aware", "decode"]
    rows = {r["policy"]: r for r in pivot["rows"]}
    assert [r["policy"] for r in pivot["rows"]] == ["snapkv", "window", "h2o"]  # spread 0.7, 0.1, none
    assert rows["snapkv"]["cells"] == {"agnostic": 0.30, "aware": 0.90, "decode": 0.20}
    assert rows["snapkv"]["spread"] == pytest.approx(0.70) and rows["window"]["spread"] == pytest.approx(0.10)
    assert math.isnan(rows["h2o"]["cells"]["agnostic"]) and math.isnan(rows["h2o"]["spread"])
    md = protocols_to_markdown([pivot])
    assert "| policy | budget | agnostic | aware | decode | spread |" in md
    assert "| snapkv | 1/4 | 30.0% | 90.0% | 20.0% | 70.0 |" in md and "| h2o | 1/4 | — | 60.0% | — | — |" in md
    assert base_label("snapkv/prefill@decode32") == "snapkv/prefill"
    legacy = {k: v for k, v in evaluation("run0", "window", 0.25, 0.5).items() if k != "protocol"}
    assert policy_leaderboard([run(0)], [legacy])[0]["protocol"] == "agnostic"  # a store from before protocols


def test_one_protocol_gives_no_table_and_the_report_shows_several(tmp_path):
    agnostic_only = [e for e in evaluations() if not e.get("protocol")]
    assert protocol_pivots(policy_leaderboard([run(0)], agnostic_only)) == []
    pytest.importorskip("matplotlib")
    md = write_report([run(0)], tmp_path / "one", policy_evals=agnostic_only)["markdown"].read_text()
    assert "### Protocols compared" not in md
    md = write_report([run(0)], tmp_path / "all", policy_evals=evaluations())["markdown"].read_text()
    assert "### Protocols compared" in md and "| snapkv | 1/4 | 30.0% | 90.0% | 20.0% | 70.0 |" in md


def test_a_protocol_reads_against_the_full_cache_under_that_protocol():
    rows = evaluations()
    for protocol, accuracy in (("agnostic", 0.97), ("aware", 0.50)):
        rows.append(with_protocol(evaluation("run0", "full", None, accuracy), protocol))
    board = policy_leaderboard([run(0)], rows)
    by = {r["policy"]: r for r in board}
    # aware: the full cache itself falls to 0.50 (the question read twice); SnapKV loses nothing beyond that
    assert by["snapkv@aware"]["reference"] == 0.50 and by["snapkv@aware"]["delta"] == pytest.approx(0.40)
    assert by["snapkv"]["reference"] == 0.97 and by["snapkv"]["delta"] == pytest.approx(0.30 - 0.97)
    # decode has no full-cache row here: the stored (agnostic) reference stays
    assert by["snapkv@decode32"]["reference"] == 0.97
    (pivot,) = protocol_pivots(board)
    assert pivot["rows"][0]["policy"] == "full" and pivot["rows"][0]["cells"]["aware"] == 0.50
    assert [r["policy"] for r in pivot["rows"][1:]] == ["snapkv", "window", "h2o"]


def test_the_pivot_title_keeps_the_agnostic_full_cache():
    from longrecall.report import policy_pivots

    rows = evaluations() + [with_protocol(evaluation("run0", "full", None, 0.50), "aware")]
    (pivot,) = policy_pivots([run(0)], rows)
    assert pivot["reference"] == 0.97  # not the mean with the aware full cache's 0.50


def test_the_budget_figure_draws_the_agnostic_protocol_only(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from longrecall.report import plot_budget

    lines = []
    monkeypatch.setattr(Axes, "plot", lambda self, xs, ys, **kw: lines.append(list(ys)))
    plot_budget.plot_accuracy_vs_budget([run(0)], tmp_path / "b.png", policy_evals=evaluations())
    assert sorted(lines) == [[0.30], [0.50]]  # snapkv and window under agnostic; not aware, decode or h2o@aware
