"""Kill a real arena process with SIGKILL mid-run, restart it, and check the store.

Every run must end done exactly once (no lost and no duplicated results), and the run that was
killed mid-training must resume from its checkpoint to exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from longrecall.arena import Store, load_spec
from longrecall.arena.runner import checkpoint_root
from longrecall.config import TrainConfig
from longrecall.train import train

SPEC = """
name = "killme"
mixers = ["attention", "s4d"]
tasks = [{task = "mqar", kwargs = {vocab_size = 32, num_kv_pairs = 2}}]
lengths = [16]
widths = [16]
seeds = [0, 1]
[train]
steps = 240
batch_size = 8
eval_every = 40
eval_examples = 16
warmup_steps = 5
threads = 1
"""


def start(spec: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "longrecall", "arena", str(spec), "--store", str(store),
                             "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("the arena did not reach the expected point in time")


def rows(store: Path) -> list[dict]:
    if not store.exists():
        return []
    with Store.open(store, create=False) as db:
        return db.runs()


def test_sigkill_at_any_moment_then_restart_runs_everything_exactly_once(tmp_path):
    spec, store = tmp_path / "spec.toml", tmp_path / "arena.db"
    spec.write_text(SPEC)
    ckpts = checkpoint_root(store)

    def mid_run_with_checkpoint() -> bool:
        running = [r for r in rows(store) if r["status"] == "running"]
        return any((ckpts / r["id"] / "checkpoint.json").exists() for r in running)

    # 1. kill while a run is mid-training and has checkpointed
    proc = start(spec, store)
    wait_for(mid_run_with_checkpoint)
    killed = [r["id"] for r in rows(store) if r["status"] == "running"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # 2. kill again soon after a restart (possibly while claiming, evaluating or writing)
    proc = start(spec, store)
    time.sleep(3.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # 3. run to the end
    proc = start(spec, store)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output

    final = rows(store)
    expected = load_spec(spec).expand()
    assert sorted(r["id"] for r in final) == sorted(run.id for run in expected)  # none lost, none duplicated
    assert all(r["status"] == "done" for r in final), [(r["id"], r["status"], r["error"]) for r in final]
    assert all(r["metrics"] is not None and len(r["history"]) == 240 for r in final)

    # the run killed mid-training resumed from its checkpoint to exactly the uninterrupted losses
    victim = next(r for r in final if r["id"] == killed[0])
    assert victim["attempts"] >= 2
    fresh = train(TrainConfig(**victim["config"]), progress=False)
    assert [h["loss"] for h in victim["history"]] == [h["loss"] for h in fresh["history"]]
    assert victim["metrics"]["accuracy"] == fresh["final_eval"]["accuracy"]

    # a finished store is left alone by another run of the same spec
    proc = start(spec, store)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "0 new, 4 already finished" in output
    assert [(r["id"], r["finished_at"]) for r in rows(store)] == [(r["id"], r["finished_at"]) for r in final]


def test_process_workers_stop_when_the_arena_is_killed(tmp_path):
    """Killing the arena must not leave its pool workers training on their own."""
    spec, store = tmp_path / "spec.toml", tmp_path / "arena.db"
    spec.write_text(SPEC)
    proc = subprocess.Popen([sys.executable, "-m", "longrecall", "arena", str(spec), "--store", str(store),
                             "--no-progress", "--executor", "process", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: any(r["status"] == "running" for r in rows(store)))
    workers = {int(r["owner"].rsplit(":", 1)[1]) for r in rows(store) if r["status"] == "running"}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] == "Z"  # a zombie has exited
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(pid) for pid in workers), timeout=5)  # a run takes longer than that
    # the interrupted runs are left `running` under a dead owner; a new arena reclaims and finishes them
    proc = start(spec, store)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert all(r["status"] == "done" for r in rows(store))
