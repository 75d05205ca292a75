"""Every executor writes the same results through the same store API; the CLI wraps it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longrecall.arena import PRESETS, Store, load_spec, run_arena

TINY = {
    "name": "tiny",
    "mixers": ["attention", {"name": "sliding_window", "kwargs": {"window": 4}}],
    "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 2}}],
    "lengths": [16],
    "widths": [16],
    "seeds": [0],
    "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "eval_examples": 16, "warmup_steps": 2, "threads": 1},
}


def accuracies(store) -> dict:
    with Store.open(store, create=False) as db:
        runs = db.runs()
    assert runs and all(r["status"] == "done" for r in runs), [(r["status"], r["error"]) for r in runs]
    return {r["id"]: (r["metrics"]["accuracy"], [h["loss"] for h in r["history"]]) for r in runs}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    store = tmp_path_factory.mktemp("local") / "arena.db"
    summary = run_arena(TINY, store=store, executor="local", progress=False)
    assert summary["counts"]["done"] == 2
    return accuracies(store)


def test_the_arena_queues_the_largest_runs_first(tmp_path, monkeypatch):
    """Workers claim in insertion order; the arena inserts longest first so no big run starts last."""
    from longrecall.arena import arena as arena_module
    monkeypatch.setattr(arena_module.executors, "run", lambda *args, **kwargs: None)  # queue only
    spec = {**TINY, "lengths": [8, 16], "widths": [8, 16]}
    run_arena(spec, store=tmp_path / "arena.db", progress=False)
    with Store.open(tmp_path / "arena.db", create=False) as db:
        queued = [(r["labels"]["seq_len"], r["labels"]["d_model"]) for r in db.runs()]  # insertion order
    assert queued[:2] == [(16, 16)] * 2 and queued[-2:] == [(8, 8)] * 2  # 2 mixers each
    assert sorted(queued[2:4] + queued[4:6]) == [(8, 16), (8, 16), (16, 8), (16, 8)]  # equal work


def test_process_executor_matches_local(tmp_path, local_results):
    store = tmp_path / "arena.db"
    run_arena(TINY, store=store, executor="process", workers=2, progress=False)
    assert accuracies(store) == local_results


def test_ray_executor_on_a_local_two_cpu_instance(tmp_path, local_results):
    pytest.importorskip("ray")
    store = tmp_path / "arena.db"
    run_arena(TINY, store=store, executor="ray", workers=2, progress=False)
    assert accuracies(store) == local_results


def test_report_and_export_from_the_cli(tmp_path):
    pytest.importorskip("matplotlib")
    store = tmp_path / "arena.db"
    run_arena(TINY, store=store, executor="local", progress=False, report_dir=tmp_path / "report")
    assert (tmp_path / "report" / "report.html").exists() and (tmp_path / "report" / "report.md").exists()
    out = subprocess.run([sys.executable, "-m", "longrecall", "report", str(store), "-o", str(tmp_path / "r2")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r2" / "report.md").read_text().count("| attention") >= 1
    for fmt in ("csv", "jsonl"):
        target = tmp_path / f"runs.{fmt}"
        out = subprocess.run([sys.executable, "-m", "longrecall", "export", str(store), "--format", fmt,
                              "-o", str(target)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert target.exists()
    lines = (tmp_path / "runs.jsonl").read_text().strip().splitlines()
    assert len(lines) == 2 and {json.loads(line)["status"] for line in lines} == {"done"}


def test_cli_presets_and_bad_specs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "longrecall", "arena", "--list-presets"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "quick" in out.stdout and "zoology-mqar" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nmixers = ["atention"]\ntasks = ["mqar"]\nlengths = [16]\nwidths = [16]\n')
    out = subprocess.run([sys.executable, "-m", "longrecall", "arena", str(bad), "--store", str(tmp_path / "x.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "attention" in out.stderr and "mixers" in out.stderr
    assert not (tmp_path / "x.db").exists()  # rejected before anything was created


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_specs(name):
    spec = load_spec(PRESETS[name]["spec"])
    assert len(spec.expand()) > 0 and PRESETS[name]["description"]


def test_foreign_store_is_refused_by_the_arena(tmp_path):
    foreign = tmp_path / "notes.db"
    foreign.write_bytes(b"these are not the results you are looking for")
    before = foreign.read_bytes()
    out = subprocess.run([sys.executable, "-m", "longrecall", "arena", "--preset", "quick", "--store", str(foreign)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "error" in out.stderr
    assert foreign.read_bytes() == before
