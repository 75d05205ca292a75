"""``longrecall arena SPEC --status``: where a spec's runs stand, from the store and the checkpoints of the
runs in progress, without running or changing anything."""

import json
import socket

from store_helpers import dead_pid

from longrecall.arena import Store, load_spec, run_arena
from longrecall.arena.progress import arena_progress, format_progress
from longrecall.arena.runner import checkpoint_root
from longrecall.cli import main

SPEC = {
    "name": "p", "mixers": ["attention"],
    "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 2}}],
    "lengths": [16], "widths": [16, 24],
    "train": {"steps": 4, "max_steps": 8, "batch_size": 4, "eval_every": 2, "eval_examples": 8, "threads": 1},
}


def test_done_interrupted_and_pending_runs(tmp_path, capsys):
    path = tmp_path / "s.db"
    run_arena({**SPEC, "widths": [16]}, store=path, progress=False)  # one run done
    runs = load_spec({**SPEC, "widths": [16, 24, 32]}).expand()
    with Store.open(path) as store:
        store.add_runs(runs)
        assert store.claim(runs[1].id, owner=f"{socket.gethostname()}:{dead_pid()}")  # killed mid-run
    out = checkpoint_root(path) / runs[1].id
    out.mkdir(parents=True)
    (out / "checkpoint.json").write_text(json.dumps({
        "step": 2, "evals": [{"step": 2, "accuracy": 0.25}], "history": [{"step": 1, "seconds": 0.5},
                                                                          {"step": 2, "seconds": 0.25}]}))
    progress = arena_progress(path, [r.id for r in runs])
    states = {r["id"]: r for r in progress["runs"]}
    assert states[runs[0].id]["state"] == "done" and states[runs[0].id]["convergence"] is not None
    assert states[runs[1].id]["state"] == "interrupted"
    assert (states[runs[1].id]["steps"], states[runs[1].id]["accuracy"]) == (2, 0.25)
    assert states[runs[1].id]["train_seconds"] == 0.75
    assert states[runs[2].id]["state"] == "pending" and states[runs[2].id]["steps"] == 0
    totals = progress["totals"]
    assert (totals["done"], totals["interrupted"], totals["pending"], totals["cap"]) == (1, 1, 1, 24)
    text = format_progress(progress)
    assert text.index("| interrupted |") < text.index("| pending |") < text.index("| done |")
    assert "3 runs: 1 done, 1 interrupted, 1 pending" in text
    assert "| 2 / 8 | 0.38 | 0.250 |" in text  # the median of 0.5 and 0.25 s
    # the command reads the same, and changes nothing
    before = [(r["id"], r["status"]) for r in Store.open(path).runs()]
    assert main(["arena", "--preset", "quick", "--store", str(tmp_path / "missing.db"), "--status"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with Store.open(path) as store:
        assert [(r["id"], r["status"]) for r in store.runs()] == before


def test_policy_evaluations_are_counted(tmp_path):
    spec = {**SPEC, "widths": [16], "policies": ["window"], "budgets": [0.5]}
    path = tmp_path / "s.db"
    run_arena(spec, store=path, progress=False)
    loaded = load_spec(spec)
    progress = arena_progress(path, [r.id for r in loaded.expand()], loaded.policy_plan)
    assert progress["policies"]["expected"] == 1 and progress["policies"]["done"] == 1
    assert "policy evaluations of the done attention runs: 1 done" in format_progress(progress)
