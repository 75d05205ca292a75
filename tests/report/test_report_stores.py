"""``longrecall report`` over several stores: the rows of separate presets on one report."""

from store_helpers import evaluation_row as row

from longrecall.arena.spec import load_spec
from longrecall.arena.store import Store
from longrecall.cli import main
from longrecall.cli.report import read_stores


def specs():
    return load_spec({
        "name": "s", "mixers": ["attention", "s4d"],
        "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 4}}],
        "lengths": [32, 64], "widths": [16, 32], "train": {"steps": 2},
    }).expand()


def finish_all(store: Store, runs, accuracy: float) -> None:
    """Mark runs done with ``train()``-shaped metrics of the given accuracy."""
    for spec in runs:
        assert store.claim(spec.id)
        final = {"accuracy": accuracy, "loss": 1.25, "scored": 40, "step": 2, "state_bytes": {"32": 4096}}
        store.finish(spec.id, {"status": "done", "config": spec.config.to_dict(), "steps": 2, "parameters": 10,
                               "train_seconds": 1.5, "eval_seconds": 0.1, "final_eval": final, "evals": [final],
                               "history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
                               "task": {"task": "mqar", "version": 1, "seq_len": 32}})


def test_several_stores_read_as_one_and_a_shared_row_is_kept_once(tmp_path):
    runs = specs()  # 8 runs: attention and s4d x 2 lengths x 2 widths
    with Store.open(tmp_path / "a.db") as a:
        a.add_runs(runs[:5])
        finish_all(a, runs[:4], 0.5)  # runs[4] stays pending in a
        a.add_evaluations([row()])
    with Store.open(tmp_path / "b.db") as b:
        b.add_runs(runs[4:])
        finish_all(b, runs[4:], 0.9)  # the run pending in a is done in b
        b.add_evaluations([row(), row(system="dense / turn", score=0.6)])

    records, policy_evals, evaluations = read_stores([tmp_path / "a.db", tmp_path / "b.db"])
    by_id = {r["id"]: r for r in records}
    assert len(records) == len(by_id) == 8 and policy_evals == []
    assert by_id[runs[4].id]["status"] == "done" and by_id[runs[4].id]["metrics"]["accuracy"] == 0.9
    assert by_id[runs[0].id]["metrics"]["accuracy"] == 0.5
    # the evaluation both stores hold is kept once, from the first store
    assert sorted(e["system"] for e in evaluations) == ["bm25 / turn", "dense / turn"]

    code = main(["report", str(tmp_path / "a.db"), str(tmp_path / "b.db"), "-o", str(tmp_path / "out"),
                 "--title", "two stores"])
    assert code == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "two stores" in md and "dense / turn" in md


def test_a_missing_store_among_several_is_named(tmp_path, capsys):
    with Store.open(tmp_path / "a.db"):
        pass
    code = main(["report", str(tmp_path / "a.db"), str(tmp_path / "nope.db"), "-o", str(tmp_path / "out")])
    assert code == 2 and "nope.db" in capsys.readouterr().err


def test_a_stack_label_names_only_the_kwargs_of_its_own_mixers():
    from longrecall.report.records import mixer_name

    per_mixer = {"sliding_window": {"window": 32}}
    jamba = "mamba+mamba+attention+mamba"
    assert mixer_name({"mixer": jamba, "mixer_kwargs": per_mixer}) == jamba
    assert mixer_name({"mixer": "sliding_window", "mixer_kwargs": per_mixer}) == "sliding_window(window=32)"
    assert mixer_name({"mixer": "mamba+sliding_window", "mixer_kwargs": per_mixer}) == \
        "mamba+sliding_window(sliding_window={'window': 32})"
    assert mixer_name({"mixer": "sliding_window", "mixer_kwargs": {"window": 64}}) == "sliding_window(window=64)"
