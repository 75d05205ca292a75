"""`longrecall bench --train-steps`: one process, every mixer, ratios to attention, JSON + markdown."""

from __future__ import annotations

import json

from longrecall.bench.train_step import TrainStepSpec, run_train_steps, to_markdown
from longrecall.cli import main


def test_train_step_report_has_every_cell_and_the_reference_ratio():
    spec = TrainStepSpec(mixers=["attention", "s4d"], widths=[16], lengths=[16, 32], batch_size=4, steps=2, rounds=2,
                         warmup=1)
    report = run_train_steps(spec)
    cells = {(r["mixer"], r["d_model"], r["T"]) for r in report["results"]}
    assert cells == {(m, 16, t) for m in ("attention", "s4d") for t in (16, 32)}
    for r in report["results"]:
        assert r["ms_per_step"] > 0 and len(r["rounds_ms"]) == 2 and r["parameters"] > 0
        if r["mixer"] == "attention":
            assert r["ratio_to_reference"] == 1.0
    assert set(report["load_average"]) == {"before", "after"}
    md = to_markdown(report)
    assert "| s4d | 16 | 32 |" in md and "x attention" in md


def test_cli_train_steps_writes_json_and_markdown(tmp_path, capsys):
    code = main(["bench", "--train-steps", "--mixers", "s4d", "--widths", "16", "--lengths", "16", "--batch-sizes", "2",
                 "--repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "train_steps.json").read_text())
    assert {r["mixer"] for r in report["results"]} == {"attention", "s4d"}  # attention added for the ratio
    assert (tmp_path / "train_steps.md").read_text().startswith("# longrecall bench --train-steps")


def test_compile_mode_times_both_forms(monkeypatch):
    """--compile adds a compiled row per model (torch.compile replaced by identity here: no compiler run)."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    report = run_train_steps(TrainStepSpec(mixers=["attention"], widths=[16], lengths=[16], batch_size=2, steps=1,
                                           rounds=1, warmup=1, compile=True))
    assert sorted(r["compiled"] for r in report["results"]) == [False, True]
    assert "attention (compiled)" in to_markdown(report)
