"""``longrecall reproduce``: a stored run trained again from its config, compared step by step; and
``train(until_step=...)``, the prefix it relies on."""

import json
import sqlite3

import pytest

from longrecall.arena import run_arena
from longrecall.cli import main
from longrecall.config import TrainConfig
from longrecall.train import train

SPEC = {
    "name": "r", "mixers": ["attention", "s4d"],
    "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 2}}],
    "lengths": [16], "widths": [16],
    "train": {"steps": 6, "max_steps": 12, "batch_size": 4, "eval_every": 2, "eval_examples": 8, "threads": 1},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("reproduce") / "s.db"
    run_arena(SPEC, store=path, progress=False)
    return path


def ids(path):
    return [row[0] for row in sqlite3.connect(path).execute("SELECT id FROM runs ORDER BY id")]


def test_until_step_is_the_prefix_of_the_whole_run():
    config = TrainConfig(d_model=16, steps=6, max_steps=12, batch_size=4, eval_every=2, eval_examples=8,
                         task_kwargs={"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2})
    whole, prefix = train(config, progress=False), train(config, progress=False, until_step=3)
    assert [h["loss"] for h in prefix["history"]] == [h["loss"] for h in whole["history"]][:3]
    assert prefix["evals"][0] == {**whole["evals"][0], "seconds": prefix["evals"][0]["seconds"]}
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="until_step"):
            train(config, progress=False, until_step=bad)


def test_a_stored_run_reproduces_bit_for_bit(store, capsys):
    run = ids(store)[0]
    assert main(["reproduce", str(store), run[:6], "--steps", "3", "--no-progress"]) == 0
    assert main(["reproduce", str(store), run, "--no-progress"]) == 0  # the whole run, every evaluation
    assert main(["reproduce", str(store), run, "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("reproduced") == 3 and "NOT" not in out and "largest difference 0" in out


def test_a_changed_history_is_not_reproduced(store, tmp_path, capsys):
    changed = tmp_path / "changed.db"
    changed.write_bytes(store.read_bytes())
    conn = sqlite3.connect(changed)
    run = ids(changed)[1]
    history = json.loads(conn.execute("SELECT history FROM runs WHERE id = ?", (run,)).fetchone()[0])
    history[4]["loss"] += 1e-6  # step 5
    conn.execute("UPDATE runs SET history = ? WHERE id = ?", (json.dumps(history), run))
    conn.commit()
    assert main(["reproduce", str(changed), run, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced" in out and "first beyond 0 at step 5" in out
    assert main(["reproduce", str(changed), run, "--atol", "1e-5", "--no-progress"]) == 0


def test_bad_input_names_what_is_wrong(store, tmp_path, capsys):
    assert main(["reproduce", str(store), "zzzz", "--no-progress"]) == 2
    assert "RUN 'zzzz': no run of the store" in capsys.readouterr().err
    assert main(["reproduce", str(store), "", "--no-progress"]) == 2  # every id starts with ""
    assert "2 runs of the store match" in capsys.readouterr().err
    assert main(["reproduce", str(store), ids(store)[0], "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path / "missing.db"), "abc"]) == 2


def test_a_diverged_run_reproduces_its_divergence(tmp_path, monkeypatch, capsys):
    """A run stored as diverged is trained again up to where its loss blows up, and compared there."""
    import longrecall.train as train_module

    real = train_module.make_model

    def diverging(config, vocab_size):  # the loss turns NaN at the third training step
        model = real(config, vocab_size)
        loss, calls = model.loss, {"n": 0}

        def nan_from_the_third_step(*args, **kwargs):
            out = loss(*args, **kwargs)
            calls["n"] += model.training
            return (out[0] * float("nan"), *out[1:]) if model.training and calls["n"] >= 3 else out

        model.loss = nan_from_the_third_step
        return model

    monkeypatch.setattr(train_module, "make_model", diverging)
    path = tmp_path / "d.db"
    run_arena({**SPEC, "mixers": ["attention"]}, store=path, progress=False)
    assert sqlite3.connect(path).execute("SELECT convergence, steps FROM runs").fetchall() == [("diverged", 2)]
    assert main(["reproduce", str(path), ids(path)[0], "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "diverged again: loss is nan at step 2" in out and "\nreproduced" in out
    monkeypatch.setattr(train_module, "make_model", real)  # the same config, which no longer blows up
    assert main(["reproduce", str(path), ids(path)[0], "--no-progress"]) == 1
    assert "the stored run diverged after step 2; this one did not" in capsys.readouterr().out
