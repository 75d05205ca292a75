"""``Store.reassess`` and ``arena --reassess``: stored statuses under the current convergence rule, and the
runs an earlier rule stopped on a plateau continued from their checkpoints."""

import sqlite3

from longrecall.arena import Store, load_spec, run_arena

SPEC = {
    "name": "r", "mixers": ["attention"],
    "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 2}}],
    "lengths": [16], "widths": [16],
    "train": {"steps": 4, "max_steps": 12, "batch_size": 4, "eval_every": 2, "eval_examples": 8, "threads": 1},
}


def finish(store: Store, run, accuracies, losses, steps: int, chance: float | None = None) -> None:
    assert store.claim(run.id)
    final = {"accuracy": accuracies[-1], "loss": losses[-1], "scored": 8, "step": steps, "chance": chance}
    store.finish(run.id, {
        "status": "done", "config": run.config.to_dict(), "steps": steps, "parameters": 1, "train_seconds": 1.0,
        "final_eval": final, "evals": [{"step": 2 * (i + 1), "accuracy": a} for i, a in enumerate(accuracies)],
        "history": [{"step": i + 1, "loss": x} for i, x in enumerate(losses)], "convergence": "plateau"})


def test_reassess_relabels_and_reopens_only_runs_stopped_on_the_rule(tmp_path):
    runs = load_spec({**SPEC, "widths": [16, 24, 32, 40]}).expand()
    with Store.open(tmp_path / "s.db") as store:
        store.add_runs(runs)
        # stopped at `steps` (4) as a plateau by an earlier rule, but its accuracy rose by 0.008
        finish(store, runs[0], [0.010, 0.018], [3.0] * 4, 4)
        # the same histories at max_steps: relabelled, not reopened (nothing left to train)
        finish(store, runs[1], [0.01] * 4 + [0.012, 0.020], [3.0] * 12, 12)
        # a real plateau stays one: far above chance (rule version 3 trains on only near it)
        finish(store, runs[2], [0.400, 0.401], [3.0] * 4, 4, chance=1 / 16)
        # a plateau that never left chance: still a plateau, but reopened to train on to max_steps
        finish(store, runs[3], [0.060, 0.061], [3.0] * 4, 4, chance=1 / 16)
        store.add_policy_eval({"run_id": runs[0].id, "policy_key": "k", "budget_key": "null", "policy": "full",
                               "policy_label": "full", "policy_kwargs": {}, "mode": "step", "status": "done",
                               "metrics": {"accuracy": 0.5}})
        changes = {c["id"]: c for c in store.reassess(reopen=True)}
        assert set(changes) == {runs[0].id, runs[1].id, runs[3].id}
        assert changes[runs[0].id]["reopened"] and not changes[runs[1].id]["reopened"]
        assert changes[runs[0].id]["was"] == "plateau" and changes[runs[0].id]["now"] == "learning"
        assert changes[runs[3].id]["reopened"] and changes[runs[3].id]["now"] == "plateau"
        rows = {r["id"]: r for r in store.runs()}
        assert rows[runs[0].id]["status"] == "pending" and rows[runs[1].id]["status"] == "done"
        assert rows[runs[3].id]["status"] == "pending" and rows[runs[2].id]["status"] == "done"
        assert rows[runs[1].id]["convergence"] == "learning" and rows[runs[2].id]["convergence"] == "plateau"
        assert store.policy_evals(run_ids=[runs[0].id]) == []  # measured on the stopped model
        assert store.reassess(reopen=True) == []  # nothing changes twice


def test_arena_reassess_continues_a_plateau_run_to_the_run_the_current_rule_trains(tmp_path, monkeypatch):
    import longrecall.convergence as convergence

    def current(history, evals, target, **kwargs):  # learning until step 8, then a plateau
        return "learning" if history[-1]["step"] < 8 else "plateau"

    monkeypatch.setattr(convergence, "status", current)
    monkeypatch.setattr(convergence, "stops_on_plateau", lambda evals, chance: True)  # the stub's plateaus stop
    reference = run_arena(SPEC, store=tmp_path / "ref.db", progress=False)["records"][0]
    assert reference["steps"] == 8
    path = tmp_path / "s.db"
    monkeypatch.setattr(convergence, "status", lambda *a, **k: "plateau")  # an earlier, stricter rule
    assert run_arena(SPEC, store=path, progress=False)["records"][0]["steps"] == 4
    monkeypatch.setattr(convergence, "status", current)
    continued = run_arena(SPEC, store=path, progress=False, reassess=True)["records"][0]
    assert continued["steps"] == 8
    assert [h["loss"] for h in continued["history"]] == [h["loss"] for h in reference["history"]]
    assert sqlite3.connect(path).execute("SELECT status FROM runs").fetchall() == [("done",)]
