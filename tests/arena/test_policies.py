"""KV-cache policies x budgets in the arena: spec keys, ids, evaluations stored once, resume, migration."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from longrecall.arena import Store, load_spec, run_arena
from longrecall.arena.runner import checkpoint_root
from longrecall.arena.spec import budget_key
from longrecall.arena.store import _SCHEMA, SCHEMA_VERSION
from longrecall.config import ConfigError

SPEC = {
    "name": "kv",
    "mixers": ["attention"],
    "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 2}}],
    "lengths": [16],
    "widths": [16],
    "seeds": [0],
    "train": {"steps": 6, "batch_size": 8, "eval_every": 6, "eval_examples": 16, "warmup_steps": 2, "threads": 1},
    "policies": ["window", {"name": "h2o", "kwargs": {"recent_ratio": 0.5}}],
    "budgets": [0.25, 2],
}


def test_policy_plan_of_a_spec():
    spec = load_spec({**SPEC, "policies": ["window", {"name": "h2o", "kwargs": {"recent_ratio": 1}, "mode": "prefill"},
                                           "full", {"name": "window", "budgets": [0.5, 2]}]})
    plan = {entry["label"]: entry for entry in spec.policy_plan}
    assert list(plan) == ["window", "h2o(recent_ratio=1.0)/prefill", "full"]  # the two windows are one entry
    assert plan["window"]["budgets"] == [0.25, 2, 0.5]
    assert plan["full"]["budgets"] == [None]  # full keeps every token: evaluated once, without a budget
    h2o = plan["h2o(recent_ratio=1.0)/prefill"]
    assert h2o["mode"] == "prefill" and h2o["kwargs"] == {"recent": None, "recent_ratio": 1.0}  # defaults resolved
    assert json.loads(h2o["key"]) == {"name": "h2o", "kwargs": h2o["kwargs"], "mode": "prefill"}
    assert budget_key(2) != budget_key(2.0) and budget_key(None) == "null"
    everything = load_spec({**SPEC, "policies": "all"}).policy_plan
    from longrecall.registry import POLICIES

    assert sorted(e["name"] for e in everything) == POLICIES.names()
    budgets = {e["name"]: e["budgets"] for e in everything}
    assert budgets["full"] == [None] and budgets["window"] == [0.25, 2]
    for name in ("kivi", "think"):  # keep every token in a compressed form: no budget
        assert budgets.get(name, [None]) == [None]
    for name in ("quest", "infllm"):  # keep every token, but a budget bounds what a query reads
        assert budgets.get(name, [0.25, 2]) == [0.25, 2]
    # runs without an attention layer simply get no policy evaluations
    mixed = load_spec({**SPEC, "mixers": ["attention", "s4d"]})
    assert len(mixed) == 2 and mixed.policy_plan


def test_policies_skip_memory_token_models_around_attention():
    from longrecall.arena.spec import policy_applies

    assert policy_applies({"layers": ["attention", "attention"]}) and policy_applies({"layers": ["mamba", "attention"]})
    # RMT's attention reads one segment and its memory tokens: no policy's cache describes it
    assert not policy_applies({"layers": ["attention", "attention"], "model": "rmt"})
    mixers = [{"name": "attention", "model": "rmt", "model_kwargs": {"segment_len": 8, "num_memory": 2}}]
    with pytest.raises(ConfigError, match="policies"):
        load_spec({**SPEC, "mixers": mixers})


def test_run_ids_do_not_depend_on_policies():
    plain = {k: v for k, v in SPEC.items() if k not in ("policies", "budgets")}
    ids = [r.id for r in load_spec(plain).expand()]
    assert [r.id for r in load_spec(SPEC).expand()] == ids
    assert [r.id for r in load_spec({**SPEC, "policies": "all", "budgets": [0.5]}).expand()] == ids


def _evals(store) -> list[dict]:
    with Store.open(store, create=False) as db:
        return db.policy_evals()


@pytest.fixture(scope="module")
def arena_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("kv") / "arena.db"
    summary = run_arena(SPEC, store=store, progress=False)
    return store, summary


def test_end_to_end_evaluations_are_written_once(arena_store):
    store, summary = arena_store
    assert summary["counts"]["done"] == 1
    assert summary["policy_evals"] == {"expected": 4, "done": 4, "skipped": 0, "failed": 0, "missing": 0, "new": 4}
    rows = _evals(store)
    assert len(rows) == 4 and len({(r["run_id"], r["policy_key"], r["budget_key"]) for r in rows}) == 4
    by = {(r["policy_label"], r["budget_key"]): r for r in rows}
    assert set(by) == {("window", "0.25"), ("window", "2"),
                       ("h2o(recent_ratio=0.5)", "0.25"), ("h2o(recent_ratio=0.5)", "2")}
    window = by[("window", "0.25")]
    assert window["status"] == "done" and window["budget"] == 0.25 and window["budget_tokens"] == 4
    assert window["context_len"] == 16 and window["mode"] == "step" and window["protocol"]
    assert 0 <= window["metrics"]["accuracy"] <= 1 and window["metrics"]["reference_accuracy"] is not None
    assert window["by_distance"] and window["state_bytes"] > 0 and window["state_bytes_end"] > 0
    assert window["checkpoint_step"] == 6 and window["eval_seconds"] > 0 and window["code_version"]
    assert by[("window", "2")]["state_bytes_end"] < window["state_bytes_end"]  # fewer tokens, fewer bytes


def test_rerun_skips_stored_evaluations_and_never_retrains(arena_store):
    store, _ = arena_store
    before = _evals(store)
    with Store.open(store, create=False) as db:
        run_before = db.runs()[0]
    again = run_arena(SPEC, store=store, progress=False)
    assert again["policy_evals"]["new"] == 0 and again["policy_evals"]["done"] == 4
    assert _evals(store) == before  # nothing recomputed, nothing rewritten
    # adding a policy evaluates only the new pairs, from the checkpoint: the run is not retrained
    more = run_arena({**SPEC, "policies": SPEC["policies"] + ["full"]}, store=store, progress=False)
    assert more["policy_evals"]["new"] == 1 and more["policy_evals"]["done"] == 5
    after = _evals(store)
    assert after[:4] == before and after[4]["policy"] == "full" and after[4]["budget"] is None
    with Store.open(store, create=False) as db:
        run_after = db.runs()[0]
        assert db.add_policy_eval({**after[0], "metrics": {"accuracy": 0.0}}) is False  # exactly once
    assert (run_after["finished_at"], run_after["attempts"]) == (run_before["finished_at"], run_before["attempts"])
    # a full-cache evaluation scores like the run's own (same batch, no budget)
    assert after[4]["metrics"]["accuracy"] == after[4]["metrics"]["reference_accuracy"]


def test_missing_checkpoint_is_reported_not_retrained(arena_store, tmp_path):
    store, _ = arena_store
    copy = tmp_path / "copy.db"
    with Store.open(store, create=False) as db:
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(store, copy)  # a store whose run folders are gone
    with Store.open(copy, create=False) as db:
        before, n_stored = db.runs()[0], len(db.policy_evals())
    summary = run_arena({**SPEC, "budgets": [0.5]}, store=copy, progress=False)
    assert summary["policy_evals"]["missing"] == 2 and summary["policy_evals"]["new"] == 0
    (run_id, reason), = summary["policy_unavailable"].items()
    assert run_id == before["id"] and "no checkpoint" in reason and "not retrained" in reason
    with Store.open(copy, create=False) as db:
        assert db.runs()[0]["finished_at"] == before["finished_at"]
        assert len(db.policy_evals()) == n_stored  # only the ones copied over
    assert not (checkpoint_root(copy) / run_id).exists()


def test_skipped_budget_is_stored_with_its_reason(arena_store):
    store, _ = arena_store
    summary = run_arena({**SPEC, "policies": ["streaming"], "budgets": [2]}, store=store, progress=False)
    assert summary["policy_evals"]["skipped"] == 1
    row = next(r for r in _evals(store) if r["policy"] == "streaming")
    assert row["status"] == "skipped" and "n_sink" in row["error"] and row["metrics"] is None
    again = run_arena({**SPEC, "policies": ["streaming"], "budgets": [2]}, store=store, progress=False)
    assert again["policy_evals"]["new"] == 0


def test_report_and_export_include_policies(arena_store, tmp_path):
    pytest.importorskip("matplotlib")
    from longrecall.report import write_report

    store, _ = arena_store
    with Store.open(store, create=False) as db:
        records, evals = db.runs(), db.policy_evals()
    paths = write_report(records, tmp_path / "report", policy_evals=evals)
    assert paths["accuracy_vs_budget"].exists() and paths["accuracy_vs_budget"].stat().st_size > 10_000
    md = paths["markdown"].read_text()
    assert "## KV-cache policies" in md and "| window |" in md and "accuracy_vs_budget.png" in md
    assert "attention+policy" in md  # the frontier's caption explains the policy points
    html = paths["html"].read_text()
    assert 'id="kv-cache-policies"' in html and html.count("data:image/png;base64") == 5
    # without policy evaluations the plot is left out (and a stale one removed)
    assert "accuracy_vs_budget" not in write_report(records, tmp_path / "report")
    assert not (tmp_path / "report" / "accuracy_vs_budget.png").exists()

    out = subprocess.run([sys.executable, "-m", "longrecall", "export", str(store), "--format", "csv",
                          "-o", str(tmp_path / "runs.csv")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "runs.policies.csv").open()))
    assert len(rows) == len(evals) and {r["task"] for r in rows} == {"mqar"}
    window = next(r for r in rows if r["policy_label"] == "window" and r["budget"] == "0.25")
    assert window["budget_fraction"] == "0.25" and window["budget_tokens"] == "4" and float(window["accuracy"]) >= 0
    out = subprocess.run([sys.executable, "-m", "longrecall", "report", str(store), "-o", str(tmp_path / "r2")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "accuracy_vs_budget" in out.stdout, out.stderr


def test_process_executor_evaluates_like_local(arena_store, tmp_path):
    store, _ = arena_store
    other = tmp_path / "process.db"
    run_arena(SPEC, store=other, executor="process", workers=2, progress=False)
    local = {(r["policy_key"], r["budget_key"]): r["metrics"]["accuracy"] for r in _evals(store)
             if r["policy"] in ("window", "h2o")}
    assert {(r["policy_key"], r["budget_key"]): r["metrics"]["accuracy"] for r in _evals(other)} == local


def test_a_store_of_the_previous_schema_opens_and_gains_the_table(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [("app", "longrecall"), ("schema_version", "1"), ("created_at", "2024-01-01")])
    conn.execute("INSERT INTO runs (id, status, config, labels, created_at) VALUES ('r1', 'done', '{}', '{}', 'x')")
    conn.commit()
    conn.close()
    with Store.open(path, create=False) as store:
        assert int(store.meta()["schema_version"]) == SCHEMA_VERSION == 4
        assert "migrated_from_1_at" in store.meta()
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "policy_evals", "policy_claims", "evaluations"} <= tables
        assert [r["id"] for r in store.runs()] == ["r1"] and store.policy_evals() == []
        assert store.add_policy_eval({"run_id": "r1", "policy_key": "k", "budget_key": "0.5", "policy": "window",
                                      "policy_label": "window", "policy_kwargs": {}, "mode": "step", "budget": 0.5,
                                      "status": "done", "metrics": {"accuracy": 1.0}})
        assert store.policy_evals()[0]["budget"] == 0.5
    with Store.open(path, create=False) as store:  # a second open leaves it as it is
        assert len(store.policy_evals()) == 1


def test_policy_claims_keep_workers_apart(tmp_path):
    from longrecall.arena.store import default_owner

    with Store.open(tmp_path / "c.db") as store:
        assert store.claim_policy_job("r", owner="elsewhere:1")
        assert not store.claim_policy_job("r")  # held by another (live, remote) owner
        store.release_policy_job("r", owner="elsewhere:1")
        assert store.claim_policy_job("r") and store.claim_policy_job("r", owner=default_owner())


def test_ray_executor_evaluates_policies_on_the_driver(arena_store, tmp_path):
    pytest.importorskip("ray")
    store, _ = arena_store
    other = tmp_path / "ray.db"
    summary = run_arena(SPEC, store=other, executor="ray", workers=1, progress=False)
    assert summary["policy_evals"]["done"] == 4 and summary["policy_evals"]["missing"] == 0
    local = {(r["policy_key"], r["budget_key"]): r["metrics"]["accuracy"] for r in _evals(store)
             if r["policy"] in ("window", "h2o")}
    assert {(r["policy_key"], r["budget_key"]): r["metrics"]["accuracy"] for r in _evals(other)} == local


def test_policy_entries_take_a_protocol(tmp_path):
    spec = load_spec({**SPEC, "policies": ["window", {"name": "window", "protocol": "aware"},
                                           {"name": "window", "protocol": "decode", "decode_tokens": 4},
                                           {"name": "window", "protocol": "reuse"}], "budgets": [0.5]})
    plan = {entry["label"]: entry for entry in spec.policy_plan}
    assert list(plan) == ["window", "window@aware", "window@decode4", "window@reuse"]
    assert "protocol" not in json.loads(plan["window"]["key"])  # agnostic keys as before protocols existed
    assert json.loads(plan["window@decode4"]["key"])["decode_tokens"] == 4
    for bad, match in (({"protocol": "lazy"}, "protocol must be one of"),
                       ({"protocol": "aware", "decode_tokens": 3}, "decode_tokens applies"),
                       ({"protocol": "decode", "decode_tokens": -1}, "decode_tokens must be")):
        with pytest.raises(Exception, match=match):
            load_spec({**SPEC, "policies": [{"name": "window", **bad}]})
    store = tmp_path / "p.db"
    run_arena({**SPEC, "policies": [{"name": "window", "protocol": p} for p in ("agnostic", "aware", "reuse")]},
              store=store, progress=False)
    stored = {(r["policy_label"], r["budget_key"]): r for r in _evals(store)}
    assert {r["protocol"] for r in stored.values()} == {"query_agnostic_v1", "query_aware_v1", "reuse_v1"}
    assert all(r["status"] == "done" for r in stored.values()) and len(stored) == 6


def test_spec_protocols_cross_every_entry_without_its_own():
    spec = load_spec({**SPEC, "policies": ["window", {"name": "h2o", "protocol": "decode"}],
                      "protocols": ["agnostic", "reuse"], "budgets": [0.5]})
    assert [e["label"] for e in spec.policy_plan] == ["window", "window@reuse", "h2o@decode32"]
    with pytest.raises(Exception, match=r"protocols\[1\] must be one of"):
        load_spec({**SPEC, "protocols": ["aware", "later"]})
    with pytest.raises(Exception, match="protocols: given without policies"):
        load_spec({k: v for k, v in {**SPEC, "protocols": ["aware"]}.items() if k not in ("policies", "budgets")})
