"""The KV-cache policy parts of the report: tables, the accuracy-vs-budget plot, frontier points."""

import math
import struct

import pytest

from longrecall.report import budget_fraction, policy_leaderboard, policy_pivots, write_report
from longrecall.report.tables import fmt_budget

BUDGETS = (1 / 32, 1 / 16, 1 / 8, 1 / 4)


def run(seed: int) -> dict:
    labels = {"mixer": "attention", "mixer_kwargs": {}, "task": "passkey", "seq_len": 128, "d_model": 64,
              "seed": seed, "spec": "kv"}
    state = {"128": 135_000}
    return {"id": f"run{seed}", "status": "done", "labels": labels, "state_bytes": state,
            "metrics": {"accuracy": 0.97, "state_bytes": state,
                        "by_distance": {"64-127": {"accuracy": 0.97, "scored": 30}}},
            "history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}], "evals": [{"step": 2, "accuracy": 0.97}]}


def evaluation(run_id: str, policy: str, budget, accuracy, status: str = "done", label: str | None = None) -> dict:
    tokens = None if budget is None else (budget if isinstance(budget, int) else max(1, math.floor(budget * 128)))
    done = status == "done"
    return {"run_id": run_id, "policy": policy, "policy_label": label or policy, "policy_key": policy, "mode": "step",
            "budget": budget, "budget_key": repr(budget), "budget_tokens": tokens, "context_len": 128, "status": status,
            "metrics": {"accuracy": accuracy, "reference_accuracy": 0.97} if done else None,
            "state_bytes": 1000 * (tokens or 128) if done else None,
            "state_bytes_end": 1050 * (tokens or 128) if done else None, "resident_bytes": None,
            "eval_seconds": 0.5, "error": None if done else "budget must be >= n_sink=4; got 2"}


@pytest.fixture(scope="module")
def data():
    records = [run(0), run(1)]
    evals = []
    for seed in (0, 1):
        for i, b in enumerate(BUDGETS):
            evals.append(evaluation(f"run{seed}", "h2o", b, 0.2 + 0.2 * i + 0.01 * seed))
            evals.append(evaluation(f"run{seed}", "window", b, 0.1 + 0.1 * i))
        evals.append(evaluation(f"run{seed}", "window", 8, 0.25))  # tokens: 8/128 = 1/16 of the context
        evals.append(evaluation(f"run{seed}", "streaming", 2, None, status="skipped"))
        evals.append(evaluation(f"run{seed}", "full", None, 0.97))
        evals.append(evaluation(f"run{seed}", "kivi", None, 0.95))
    return records, evals


def test_budget_labels_and_fractions():
    assert [fmt_budget(b) for b in (0.125, 1 / 64, 0.3, 1.0, 16, None)] == ["1/8", "1/64", "0.3", "1", "16 tok", "full"]
    assert budget_fraction({"budget": 16, "context_len": 128}) == 0.125
    assert budget_fraction({"budget": 0.25}) == 0.25 and budget_fraction({"budget": None}) == 1.0


def test_policy_leaderboard_and_pivot(data):
    records, evals = data
    rows = policy_leaderboard(records, evals)
    h2o = next(r for r in rows if r["policy"] == "h2o" and r["budget"] == 0.25)
    assert h2o["seeds"] == 2 and h2o["accuracy"] == pytest.approx(0.805) and h2o["reference"] == 0.97
    assert h2o["delta"] == pytest.approx(0.805 - 0.97) and h2o["state_bytes"] == 32_000 and h2o["fraction"] == 0.25
    skipped = next(r for r in rows if r["policy"] == "streaming")
    assert skipped["seeds"] == 0 and skipped["skipped"] == 2 and "n_sink" in skipped["note"]
    pivot, = policy_pivots(records, evals)
    assert pivot["reference"] == 0.97 and pivot["model"] == "attention d=64"
    assert pivot["budget_labels"] == ["2 tok", "1/32", "1/16", "8 tok", "1/8", "1/4", "no budget"]
    assert [r["policy"] for r in pivot["rows"]] == ["h2o", "window", "streaming", "full", "kivi"]
    assert [r["rank"] for r in pivot["rows"]] == [1, 2, 3, "—", "—"]
    assert pivot["ranked_on"] == ["1/32", "1/16", "1/8", "1/4"]  # every ranked policy has these
    assert pivot["rows"][1]["mean"] == pytest.approx(0.25)  # window over them, not over its 8 tok too
    assert pivot["rows"][0]["cells"]["1/4"] == "80.5%" and pivot["rows"][2]["cells"] == {"2 tok": "skipped"}
    assert pivot["rows"][4]["cells"] == {"no budget": "95.0%"}


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_report_with_policies(data, tmp_path):
    pytest.importorskip("matplotlib")
    records, evals = data
    paths = write_report(records, tmp_path, policy_evals=evals + [evaluation("elsewhere", "h2o", 0.5, 0.1)])
    width, height = _png_size(paths["accuracy_vs_budget"])
    assert width > 600 and height > 300
    md = paths["markdown"].read_text()
    assert "## KV-cache policies" in md and "**passkey, seq_len=128, attention d=64 (full cache: 97.0%; " in md
    assert "mean and rank over 1/32, 1/16, 1/8, 1/4, where every policy ran" in md  # not 8 tok: h2o lacks it
    assert "| 1 | h2o |" in md and "skipped: budget must be >= n_sink=4" in md  # pivot, then the detail
    assert "Hollow markers" in md
    html = paths["html"].read_text()
    assert "<details><summary>Policy evaluations (detail)</summary>" in html and "elsewhere" not in html
