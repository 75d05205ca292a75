"""The store's ``evaluations`` table: rows of ``kv-eval`` and ``memory-eval`` beside the arena's runs."""

import sqlite3

import pytest
from store_helpers import evaluation_row as row

from longrecall.arena.store import SCHEMA_VERSION, Store
from longrecall.arena.store_evaluations import evaluation_key


def test_rows_round_trip_and_the_same_evaluation_replaces_its_row(tmp_path):
    with Store.open(tmp_path / "s.db") as store:
        assert store.add_evaluations([row(), row(budget=0.5, score=0.4, state_bytes=2048)]) == 2
        stored = store.evaluations()
        assert [(r["budget"], r["score"]) for r in stored] == [(None, 0.75), (0.5, 0.4)]
        first = stored[0]
        assert first["setting"] == {"k": [5, 10], "seed": 0} and first["metrics"] == {"recall@5": 0.5}
        assert first["key"] == evaluation_key(row()) and first["code_version"] and first["created_at"]
        # the same identity measured again: its row is replaced, not duplicated
        store.add_evaluations([row(score=0.8)])
        assert sorted((r["budget"], r["score"]) for r in store.evaluations()
                      if r["budget"] is None) == [(None, 0.8)]
        assert len(store.evaluations()) == 2
        # another setting (another seed) is another evaluation
        store.add_evaluations([row(setting={"k": [5, 10], "seed": 1})])
        assert len(store.evaluations(source="memory-eval")) == 3 and store.evaluations(source="kv-eval") == []


@pytest.mark.parametrize("bad, message", [
    ({"source": "arena"}, "source must be one of kv-eval, memory-eval"),
    ({"system": ""}, "system must be a non-empty string"),
    ({"length": 0}, "length must be a positive int"),
    ({"score": "high"}, "score must be a number"),
    ({"setting": [1]}, "setting must be a dict"),
    ({"colour": "red"}, "unknown evaluation fields"),
])
def test_bad_rows_are_refused_and_nothing_is_written(tmp_path, bad, message):
    with Store.open(tmp_path / "s.db") as store:
        with pytest.raises(ValueError, match=message):
            store.add_evaluations([row(), row(**bad)])
        assert store.evaluations() == []  # the good row before the bad one is not written either
        with pytest.raises(ValueError, match="source must be one of"):
            store.evaluations(source="runs")


def test_a_schema_3_store_gains_the_table_and_keeps_its_runs(tmp_path):
    from longrecall.arena.store import _SCHEMA, _SCHEMA_V2

    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    for statement in _SCHEMA + _SCHEMA_V2:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [("app", "longrecall"), ("schema_version", "3"), ("created_at", "2026-12-01")])
    conn.execute("INSERT INTO runs (id, status, config, labels, created_at) VALUES ('r', 'pending', '{}', '{}', 'x')")
    conn.commit()
    conn.close()
    with Store.open(path, create=False) as store:
        assert int(store.meta()["schema_version"]) == SCHEMA_VERSION == 4 and "migrated_from_3_at" in store.meta()
        assert [r["id"] for r in store.runs()] == ["r"]
        store.add_evaluations([row()])
        assert len(store.evaluations()) == 1


def test_export_writes_the_evaluations_beside_the_runs(tmp_path):
    import csv
    import json

    from longrecall.cli import main

    path = tmp_path / "s.db"
    with Store.open(path) as store:
        store.add_evaluations([row(), row(budget=0.5, score=0.4)])
    assert main(["export", str(path), "--format", "csv", "-o", str(tmp_path / "out.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out.evaluations.csv")))
    assert [(r["system"], r["budget"], r["score"]) for r in rows] == [("bm25 / turn", "null", "0.75"),
                                                                      ("bm25 / turn", "0.5", "0.4")]
    assert json.loads(rows[0]["setting"]) == {"k": [5, 10], "seed": 0}
    assert main(["export", str(path), "--format", "jsonl", "-o", str(tmp_path / "out.jsonl")]) == 0
    lines = [json.loads(x) for x in open(tmp_path / "out.evaluations.jsonl")]
    assert lines[1]["budget"] == 0.5 and lines[1]["metrics"] == {"recall@5": 0.5}
    empty = tmp_path / "e.db"
    Store.open(empty).close()
    assert main(["export", str(empty), "-o", str(tmp_path / "e.csv")]) == 0
    assert not (tmp_path / "e.evaluations.csv").exists()  # written only when there are some
