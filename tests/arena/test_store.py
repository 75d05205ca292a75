"""The results store: round trip, idempotent adds, exclusive claims, stale owners, refusals, export."""

import csv
import json
import multiprocessing
import os
import socket
import sqlite3

import pytest
from store_helpers import dead_pid

from longrecall.arena.spec import load_spec
from longrecall.arena.store import SCHEMA_VERSION, Store, StoreError, code_version, default_owner


def specs(n_widths: int = 2):
    return load_spec({
        "name": "s", "mixers": ["attention", "s4d"],
        "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 4}}],
        "lengths": [32, 64], "widths": [16, 32][:n_widths], "train": {"steps": 2},
    }).expand()


def fake_metrics(config: dict, accuracy: float = 0.75) -> dict:
    """The shape of ``train()``'s return value."""
    final = {"accuracy": accuracy, "loss": 1.25, "scored": 40, "step": 2,
             "by_slice": {"num_kv_pairs": {"4": {"accuracy": accuracy, "scored": 40}}},
             "by_distance": {"1": {"accuracy": 1.0, "scored": 4}, "2-3": {"accuracy": 0.5, "scored": 36}},
             "state_bytes": {"32": 4096, "128": 16384}}
    return {"status": "done", "config": config, "task": {"task": "mqar", "version": 1, "seq_len": 32},
            "steps": 2, "parameters": 12345, "train_seconds": 1.5, "eval_seconds": 0.125,
            "train_tokens_per_second": 321.0,
            "final_eval": final, "evals": [final], "history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
            "versions": {"longrecall": "0.1.0", "torch": "9.9.9"}}


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "runs.sqlite") as s:
        yield s


def test_new_store_schema_and_wal(store):
    assert store.meta()["app"] == "longrecall" and int(store.meta()["schema_version"]) == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.counts() == {"pending": 0, "running": 0, "done": 0, "failed": 0}
    assert isinstance(code_version(), str) and code_version()


def test_round_trip_of_a_finished_run(store):
    runs = specs()
    assert store.add_runs(runs) == len(runs) == 8
    run = runs[0]
    assert store.claim(run.id)
    metrics = fake_metrics(run.config_dict)
    store.finish(run.id, metrics, eval_seconds=0.5)
    row = store.get(run.id)
    assert row["status"] == "done" and row["spec_name"] == "s"
    assert row["config"] == run.config_dict and row["labels"] == run.labels
    assert row["metrics"] == {"accuracy": 0.75, "loss": 1.25, "scored": 40, "step": 2}
    assert row["by_distance"] == metrics["final_eval"]["by_distance"]
    assert row["by_slice"] == metrics["final_eval"]["by_slice"]
    assert row["state_bytes"] == {"32": 4096, "128": 16384}
    assert row["history"] == metrics["history"] and row["evals"] == metrics["evals"]
    assert row["task_config"] == metrics["task"] and row["train_status"] == "done" and row["steps"] == 2
    assert row["params"] == 12345 and row["train_seconds"] == 1.5 and row["eval_seconds"] == 0.5
    assert row["tokens_per_s"] == 321.0 and row["torch_version"] == "9.9.9" and row["device"] == "cpu"
    assert row["code_version"] == code_version()
    assert row["attempts"] == 1 and row["owner"] == default_owner() and row["error"] is None
    assert row["created_at"] <= row["started_at"] <= row["finished_at"]
    assert store.counts() == {"pending": 7, "running": 0, "done": 1, "failed": 0}
    assert [r["id"] for r in store.runs("done")] == [run.id]
    other_run = runs[1]
    store.claim(other_run.id)
    store.finish(other_run.id, fake_metrics(other_run.config_dict))
    assert store.get(other_run.id)["eval_seconds"] == 0.125  # from the metrics when not given
    assert len(store.runs()) == 8 and store.get("nope") is None
    # a second process sees the same
    with Store.open(store.path, create=False) as other:
        assert other.get(run.id) == row


def test_add_runs_is_idempotent(store):
    assert store.add_runs(specs(1)) == 4
    assert store.add_runs(specs(2)) == 4  # only the new widths
    assert store.add_runs(specs(2)) == 0
    assert store.counts()["pending"] == 8


def test_claim_is_exclusive(store):
    run = specs(1)[0]
    store.add_runs([run])
    host = socket.gethostname()
    assert store.claim(run.id, owner=f"{host}:{os.getpid()}")
    assert not store.claim(run.id, owner=f"{host}:{os.getppid()}")  # another live process
    assert not store.claim(run.id, owner="elsewhere:1")
    assert store.get(run.id)["owner"] == f"{host}:{os.getpid()}" and store.get(run.id)["attempts"] == 1
    assert not store.claim("missing-id")


def test_stale_run_of_a_dead_process_is_reclaimed(store):
    a, b = specs(1)[:2]
    store.add_runs([a, b])
    dead = f"{socket.gethostname()}:{dead_pid()}"
    assert store.claim(a.id, owner=dead) and store.claim(b.id, owner=dead)
    assert store.claim(a.id)  # its owner is gone
    row = store.get(a.id)
    assert row["owner"] == default_owner() and row["attempts"] == 2 and row["status"] == "running"
    with pytest.raises(StoreError, match="running under"):  # the dead owner's late result is refused
        store.finish(a.id, fake_metrics(a.config_dict), owner=dead)
    # a run on another host is never stolen
    c = specs(1)[2]
    store.add_runs([c])
    assert store.claim(c.id, owner="another-host:1")
    assert store.reset_stale() == 1  # b only
    assert store.get(b.id)["status"] == "pending" and store.get(c.id)["status"] == "running"


def test_next_pending_then_stale(store):
    runs = specs(1)
    store.add_runs(runs)
    dead = f"{socket.gethostname()}:{dead_pid()}"
    claimed = [store.next_pending(owner=dead)["id"] for _ in runs]
    assert claimed == [r.id for r in runs]
    again = store.next_pending()  # nothing pending: the dead owner's runs are claimable
    assert again["id"] == runs[0].id and again["attempts"] == 2 and again["config"] == runs[0].config_dict


def test_next_pending_only_among_the_given_ids(store):
    """An arena claims only its own spec's runs, never another spec's (or an edited spec's old) rows."""
    runs = specs(1)[:3]
    store.add_runs(runs)
    mine = {runs[1].id, runs[2].id}
    assert [store.next_pending(ids=mine)["id"] for _ in range(2)] == [runs[1].id, runs[2].id]
    assert store.next_pending(ids=mine) is None
    assert store.get(runs[0].id)["status"] == "pending"
    dead = f"{socket.gethostname()}:{dead_pid()}"
    assert store.next_pending(owner=dead, ids={runs[0].id})["id"] == runs[0].id
    assert store.next_pending(ids=mine) is None  # runs[0] (dead owner) is not among them
    assert store.next_pending()["id"] == runs[0].id


def test_finish_is_refused_for_done_pending_and_foreign_runs(store):
    a, b = specs(1)[:2]
    store.add_runs([a, b])
    with pytest.raises(StoreError, match="not running"):
        store.finish(a.id, fake_metrics(a.config_dict))
    store.claim(a.id)
    store.finish(a.id, fake_metrics(a.config_dict, accuracy=0.5))
    before = store.get(a.id)
    with pytest.raises(StoreError, match="already done"):
        store.finish(a.id, fake_metrics(a.config_dict, accuracy=0.9))
    with pytest.raises(StoreError, match="already done"):
        store.fail(a.id, "boom")
    assert not store.claim(a.id)
    assert store.get(a.id) == before
    store.claim(b.id, owner="elsewhere:1")
    with pytest.raises(StoreError, match="running under elsewhere:1"):
        store.finish(b.id, fake_metrics(b.config_dict))
    with pytest.raises(StoreError, match="no such run"):
        store.finish("missing", fake_metrics(b.config_dict))


def test_fail_and_requeue(store):
    a = specs(1)[0]
    store.add_runs([a])
    store.claim(a.id)
    store.fail(a.id, "Traceback: loss is nan")
    row = store.get(a.id)
    assert row["status"] == "failed" and "nan" in row["error"] and row["finished_at"]
    assert not store.claim(a.id)
    assert store.requeue_failed() == 1 and store.claim(a.id) and store.get(a.id)["attempts"] == 2


def _assert_refused(path, match):
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        Store.open(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no -wal/-shm/-journal left behind


def test_non_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "random.sqlite"
    path.write_bytes(bytes(range(256)) * 17)
    _assert_refused(path, "not a SQLite database")


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('ada')")
    conn.commit()
    conn.close()
    _assert_refused(path, "not a longrecall results store")
    # a meta table of another application
    other = tmp_path / "sub" / "other.db"
    other.parent.mkdir()
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('app', 'someone-else')")
    conn.commit()
    conn.close()
    _assert_refused(other, "another application")


def test_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "new" / "runs.sqlite"
    path.parent.mkdir()
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")  # fold the WAL back so the file is self-contained
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    _assert_refused(path, "newer")


def test_missing_store_without_create(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        Store.open(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with Store.open(empty) as s:  # an empty file becomes a new store
        assert s.meta()["app"] == "longrecall"


def _worker(path, queue, barrier):
    store = Store.open(path, create=False)
    barrier.wait()
    claimed = []
    while (run := store.next_pending()) is not None:
        claimed.append(run["id"])
        store.finish(run["id"], fake_metrics(run["config"]))
    queue.put(claimed)
    store.close()


def test_concurrent_claims_never_overlap(tmp_path):
    path = tmp_path / "shared.sqlite"
    runs = load_spec({"name": "c", "mixers": ["attention"],
                      "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 4}}],
                      "lengths": [32], "widths": [16], "seeds": list(range(40)), "train": {"steps": 2}}).expand()
    with Store.open(path) as store:
        assert store.add_runs(runs) == 40
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    workers = [ctx.Process(target=_worker, args=(path, queue, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    first, second = map(set, results)
    assert not first & second
    assert first | second == {r.id for r in runs}
    with Store.open(path) as store:
        assert store.counts() == {"pending": 0, "running": 0, "done": 40, "failed": 0}
        assert all(r["attempts"] == 1 for r in store.runs())


def test_export_csv_and_jsonl(store, tmp_path):
    runs = specs(1)
    store.add_runs(runs)
    store.claim(runs[0].id)
    store.finish(runs[0].id, fake_metrics(runs[0].config_dict), eval_seconds=0.25)
    store.claim(runs[1].id)
    store.fail(runs[1].id, "boom, with a comma\nand a newline")

    csv_path = store.export(tmp_path / "out.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["id"] for r in rows] == [r.id for r in runs]
    done = rows[0]
    assert done["status"] == "done" and done["spec"] == "s" and done["mixer"] == "attention"
    assert done["seq_len"] == "32" and done["d_model"] == "16" and done["seed"] == "0"
    assert json.loads(done["task_kwargs"]) == {"vocab_size": 64, "num_kv_pairs": 4}
    assert float(done["accuracy"]) == 0.75 and done["params"] == "12345"
    assert done["state_bytes"] == "16384" and done["state_bytes_seq_len"] == "128"  # the largest length
    assert float(done["tokens_per_s"]) == 321.0 and float(done["train_seconds"]) == 1.5
    assert float(done["eval_seconds"]) == 0.25 and done["code_version"] and done["torch_version"] == "9.9.9"
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "boom, with a comma\nand a newline"
    assert rows[2]["status"] == "pending" and rows[2]["accuracy"] == ""

    jsonl = store.export(tmp_path / "out.jsonl")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert records == store.runs()
    assert store.export(tmp_path / "forced.txt", format="jsonl").read_text() == jsonl.read_text()
    with pytest.raises(ValueError, match="csv"):
        store.export(tmp_path / "x.xml", format="xml")
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_a_new_store_creates_its_folder(tmp_path):
    from longrecall.arena import Store

    with Store.open(tmp_path / "runs" / "deeper" / "arena.db") as store:
        assert store.counts()["done"] == 0
    assert (tmp_path / "runs" / "deeper" / "arena.db").exists()


# ----------------------------------------------------------------------------- convergence (schema 3)


def test_finish_stores_the_convergence_status(store):
    run = specs(1)[0]
    store.add_runs([run])
    store.claim(run.id)
    metrics = fake_metrics(run.config_dict, accuracy=0.995)
    metrics["convergence"] = "converged"
    store.finish(run.id, metrics)
    assert store.get(run.id)["convergence"] == "converged"
    rows = list(csv.DictReader(open(store.export(store.path.with_suffix(".csv")))))
    assert rows[0]["convergence"] == "converged"


def test_finish_computes_the_status_when_metrics_lack_it(store):
    run = specs(1)[0]
    store.add_runs([run])
    store.claim(run.id)
    metrics = fake_metrics(run.config_dict, accuracy=0.2)
    metrics.pop("convergence", None)
    metrics["history"] = [{"step": s, "loss": 2.0} for s in range(1, 101)]
    metrics["evals"] = [{"step": 50, "accuracy": 0.2}, {"step": 100, "accuracy": 0.2}]
    store.finish(run.id, metrics)
    assert store.get(run.id)["convergence"] == "plateau"


def test_a_schema_2_store_gains_convergence_computed_from_its_histories(tmp_path):
    from longrecall.arena.store import _SCHEMA, _SCHEMA_V2

    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    for statement in _SCHEMA + _SCHEMA_V2:
        conn.execute(statement.replace("        convergence TEXT,\n", ""))
    assert "convergence" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [("app", "longrecall"), ("schema_version", "2"), ("created_at", "2026-11-30")])
    flat = json.dumps([{"step": s, "loss": 2.0} for s in range(1, 101)])
    for rid, evals in (("up", [[50, 0.1], [100, 0.6]]), ("flat", [[50, 0.2], [100, 0.2]]), ("top", [[100, 0.995]])):
        conn.execute("INSERT INTO runs (id, status, config, labels, history, evals, created_at) "
                     "VALUES (?, 'done', '{}', '{}', ?, ?, 'x')",
                     (rid, flat, json.dumps([{"step": s, "accuracy": a} for s, a in evals])))
    conn.execute("INSERT INTO runs (id, status, config, labels, created_at) "
                 "VALUES ('todo', 'pending', '{}', '{}', 'x')")
    conn.commit()
    conn.close()
    with Store.open(path, create=False) as db:
        assert int(db.meta()["schema_version"]) == SCHEMA_VERSION == 4 and "migrated_from_2_at" in db.meta()
        status = {r["id"]: r["convergence"] for r in db.runs()}
        assert db.evaluations() == []  # 3 -> 4: the evaluations table exists, empty
    assert status == {"up": "learning", "flat": "plateau", "top": "converged", "todo": None}


def test_a_diverged_run_is_stored_as_a_result_with_its_status(tmp_path, monkeypatch):
    """The arena stores a run whose loss blew up as done, convergence "diverged", with the metrics
    of its last good evaluation and the divergence message (not as a failure)."""
    from longrecall.arena.runner import work_loop
    from longrecall.models import LanguageModel

    spec = load_spec({"name": "d", "mixers": ["attention"],
                      "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 2}}],
                      "lengths": [16], "widths": [16], "train": {"steps": 6, "batch_size": 4, "eval_every": 3,
                                                               "eval_examples": 8, "warmup_steps": 1}})
    path = tmp_path / "d.db"
    with Store.open(path) as db:
        db.add_runs(spec.expand())
    calls = {"n": 0}
    real_loss = LanguageModel.loss

    def poisoned(self, inputs, targets):
        calls["n"] += 1
        loss, logits, labels = real_loss(self, inputs, targets)
        return (loss * float("nan") if calls["n"] >= 5 else loss), logits, labels

    monkeypatch.setattr(LanguageModel, "loss", poisoned)
    work_loop(path)
    with Store.open(path, create=False) as db:
        row = db.runs()[0]
    assert row["status"] == "done" and row["convergence"] == "diverged" and row["train_status"] == "diverged"
    assert "loss is nan at step 4" in row["error"]
    assert row["steps"] == 4 and row["metrics"]["accuracy"] is not None  # its step-3 evaluation


def test_reset_stale_puts_interrupted_runs_back_at_their_place_in_the_queue(store):
    """What the arena does at start: runs a killed arena left running are claimed again before the
    pending runs queued after them (insertion order is the queue: largest first)."""
    runs = specs(1)[:3]
    store.add_runs(runs)
    dead = f"{socket.gethostname()}:{dead_pid()}"
    assert store.next_pending(owner=dead)["id"] == runs[0].id  # interrupted by the kill
    assert store.reset_stale(run_ids=[runs[1].id]) == 0  # another spec's arena leaves it alone
    assert store.reset_stale(run_ids=[runs[0].id]) == 1
    assert [store.next_pending()["id"] for _ in range(3)] == [r.id for r in runs]
