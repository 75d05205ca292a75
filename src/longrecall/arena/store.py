"""The results store: one SQLite file, one row per run, shared safely by several processes.

    store = Store.open("runs/quick.sqlite")
    store.add_runs(load_spec("quick.toml").expand())     # pending rows; existing ids are kept
    while (run := store.next_pending()) is not None:     # claims it: status running, owner host:pid
        metrics = train(TrainConfig(**run["config"]))
        store.finish(run["id"], metrics, eval_seconds=...)
    store.export("results.csv")

Guarantees:

* Every write is one transaction (``BEGIN IMMEDIATE``); the file is in WAL mode with a busy
  timeout, so executors in several processes can share it.
* ``claim`` is exclusive: a run is claimed when pending, or when running under an owner process
  that is dead (same host, ``os.kill(pid, 0)`` fails). A run on another host is never stolen.
* ``finish`` writes a result only for a run that is running and owned by the caller: a done run
  never gets a second result, so a killed arena resumes without losing or duplicating results.
* A file that is not SQLite, a SQLite file that is not a longrecall store, or a store written by a
  newer schema is refused with ``StoreError`` and left byte-for-byte untouched (it is inspected
  read-only before anything is written). An older store is migrated in place when opened
  (schema 1 -> 2 adds the policy tables; 2 -> 3 adds ``runs.convergence`` and fills it from each
  finished run's stored loss and held-out histories, ``longrecall.convergence``; 3 -> 4 adds
  ``evaluations``, the rows of ``kv-eval`` and ``memory-eval``: ``store_evaluations``).

The tables and their columns: ``store_schema``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Collection, Iterable, Iterator

from .export import policy_csv, runs_csv, write_records
from .owners import code_version, default_owner, owner_alive, torch_version
from .store_evaluations import EvaluationsMixin
from .store_reassess import ReassessMixin
from .store_schema import (  # noqa: F401 - re-exported
    _SCHEMA,
    _SCHEMA_V2,
    _SCHEMA_V4,
    _SPLIT_EVAL_KEYS,
    APP,
    BUSY_TIMEOUT_S,
    JSON_COLUMNS,
    POLICY_COLUMNS,
    POLICY_JSON_COLUMNS,
    POLICY_STATUSES,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    STATUSES,
    StoreError,
    _decode,
    _dumps,
    check_store_file,
    convergence_of,
    holds_store,
    migrate,
    now,
)

__all__ = ["Store", "StoreError", "SCHEMA_VERSION", "APP", "STATUSES", "POLICY_STATUSES", "code_version",
           "default_owner"]


class Store(EvaluationsMixin, ReassessMixin):
    """One SQLite results file. Use ``Store.open(path)``; see the module docstring."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = None
        check_store_file(self.path, create)
        if create:  # `--store runs/x.db` on a fresh clone: SQLite will not create the folder
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connect(initialise=True)

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> "Store":
        return cls(path, create=create)

    def _connect(self, initialise: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if initialise:
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # the file was checked to be ours or new
                with self._transaction(conn):
                    if not holds_store(conn, self.path):  # re-checked under the write lock
                        for statement in _SCHEMA + _SCHEMA_V2 + _SCHEMA_V4:
                            conn.execute(statement)
                        conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                                         [("app", APP), ("schema_version", str(SCHEMA_VERSION)), ("created_at", now())])
                    else:
                        migrate(conn)
            except BaseException:
                conn.close()
                raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection of this process (a forked child opens its own)."""
        if self._conn is None or self._pid != os.getpid():
            self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self):
        return self._transaction(self.conn)

    # -- adding and claiming -------------------------------------------------------------------

    def add_runs(self, run_specs: Iterable) -> int:
        """Insert pending rows (RunSpec objects or dicts with id, config, labels, spec_name);
        ids already present are left as they are. Returns how many rows are new."""
        rows = []
        for run in run_specs:
            if isinstance(run, dict):
                run_id, config, labels, spec_name = (run["id"], run["config"], run.get("labels", {}),
                                                     run.get("spec_name"))
            else:
                run_id, config, labels, spec_name = run.id, run.config, run.labels, run.spec_name
            if hasattr(config, "to_dict"):
                config = config.to_dict()
            rows.append((run_id, spec_name, _dumps(config), _dumps(labels or {}), now()))
        added = 0
        with self._write() as conn:
            for row in rows:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO runs (id, spec_name, status, config, labels, created_at, attempts) "
                    "VALUES (?, ?, 'pending', ?, ?, ?, 0)", row)
                added += cursor.rowcount
        return added

    def _claimable(self, row) -> bool:
        return row is not None and (row["status"] == "pending"
                                    or (row["status"] == "running" and not owner_alive(row["owner"])))

    def _take(self, conn, run_id: str, owner: str) -> None:
        conn.execute(
            "UPDATE runs SET status = 'running', owner = ?, started_at = ?, finished_at = NULL, error = NULL, "
            "attempts = attempts + 1 WHERE id = ?", (owner, now(), run_id))

    def claim(self, run_id: str, owner: str | None = None) -> bool:
        """Mark the run running under ``owner`` (default: this process) if it is pending, or running
        under a dead process on this host. Returns whether this call claimed it."""
        owner = owner or default_owner()
        with self._write() as conn:
            row = conn.execute("SELECT status, owner FROM runs WHERE id = ?", (run_id,)).fetchone()
            if not self._claimable(row):
                return False
            self._take(conn, run_id, owner)
            return True

    def next_pending(self, owner: str | None = None, ids: Collection[str] | None = None) -> dict | None:
        """Claim the next claimable run (pending first, in insertion order, which the arena makes
        largest first with ``spec.longest_first``; then runs left by dead processes), among ``ids``
        when given (the runs of the spec being run: a store may also hold other specs' runs, or
        runs of an edited spec that no longer exist in it); returns
        ``{"id", "config", "labels", "spec_name", "attempts"}`` or None."""
        owner = owner or default_owner()
        wanted = None if ids is None else set(ids)
        with self._write() as conn:
            row = None
            for candidate in conn.execute("SELECT id, status, owner FROM runs WHERE status = 'pending' ORDER BY rowid"):
                if wanted is None or candidate["id"] in wanted:
                    row = candidate
                    break
            if row is None:
                for candidate in conn.execute("SELECT id, status, owner FROM runs WHERE status = 'running' "
                                              "ORDER BY rowid"):
                    if (wanted is None or candidate["id"] in wanted) and self._claimable(candidate):
                        row = candidate
                        break
            if row is None:
                return None
            self._take(conn, row["id"], owner)
            claimed = conn.execute("SELECT id, config, labels, spec_name, attempts FROM runs WHERE id = ?",
                                   (row["id"],)).fetchone()
        return _decode(claimed)

    def reset_stale(self, run_ids: Collection[str] | None = None) -> int:
        """Running rows (among ``run_ids`` when given) whose owner process (on this host) is dead go back to
        pending; returns how many."""
        wanted = None if run_ids is None else set(run_ids)
        with self._write() as conn:
            stale = [r["id"] for r in conn.execute("SELECT id, status, owner FROM runs WHERE status = 'running'")
                     if self._claimable(r) and (wanted is None or r["id"] in wanted)]
            conn.executemany("UPDATE runs SET status = 'pending', owner = NULL WHERE id = ? AND status = 'running'",
                             [(i,) for i in stale])
        return len(stale)

    def requeue_failed(self) -> int:
        """Failed rows go back to pending (their error is kept until the next attempt); returns how many."""
        with self._write() as conn:
            return conn.execute("UPDATE runs SET status = 'pending', owner = NULL WHERE status = 'failed'").rowcount

    # -- results -------------------------------------------------------------------------------

    def _check_owned(self, conn, run_id: str, owner: str, action: str) -> None:
        row = conn.execute("SELECT status, owner FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"cannot {action} run {run_id}: no such run in {self.path}")
        if row["status"] == "done":
            raise StoreError(f"cannot {action} run {run_id}: it is already done; refusing to write a second result")
        if row["status"] != "running":
            raise StoreError(f"cannot {action} run {run_id}: it is {row['status']}, not running (claim it first)")
        if row["owner"] != owner:
            raise StoreError(f"cannot {action} run {run_id}: it is running under {row['owner']}, not {owner}")

    def finish(self, run_id: str, metrics: dict, *, eval_seconds: float | None = None, owner: str | None = None,
               device: str | None = None) -> None:
        """Store ``train()``'s metrics dict and mark the run done, in one transaction. Refused
        (StoreError) unless the run is running and owned by ``owner`` (default: this process).
        ``eval_seconds`` defaults to ``metrics["eval_seconds"]``."""
        owner = owner or default_owner()
        final = dict(metrics.get("final_eval") or {})
        split = {key: final.pop(key, None) for key in _SPLIT_EVAL_KEYS}
        versions = metrics.get("versions") or {}
        config = metrics.get("config") or {}
        verdict = metrics.get("convergence") or convergence_of(config, metrics.get("history") or [],
                                                                metrics.get("evals") or [])
        values = {
            "convergence": verdict,
            "metrics": _dumps(final),
            "by_distance": _dumps(split["by_distance"]),
            "by_slice": _dumps(split["by_slice"]),
            "state_bytes": _dumps(split["state_bytes"]),
            "history": _dumps(metrics.get("history")),
            "evals": _dumps(metrics.get("evals")),
            "task_config": _dumps(metrics.get("task")),
            "train_status": metrics.get("status"),
            "steps": metrics.get("steps"),
            "params": metrics.get("parameters"),
            "train_seconds": metrics.get("train_seconds"),
            "eval_seconds": eval_seconds if eval_seconds is not None else metrics.get("eval_seconds"),
            "tokens_per_s": metrics.get("train_tokens_per_second"),
            "code_version": versions.get("code") or code_version(),
            "torch_version": versions.get("torch") or torch_version(),
            "device": device or config.get("device"),
            "finished_at": now(),
        }
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self._write() as conn:
            self._check_owned(conn, run_id, owner, "finish")
            conn.execute(f"UPDATE runs SET status = 'done', error = NULL, {assignments} WHERE id = ?",
                         (*values.values(), run_id))

    def set_error(self, run_id: str, error: str) -> None:
        """Attach a note to a done run (a diverged run keeps the message of its divergence)."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET error = ? WHERE id = ?", (str(error), run_id))

    def fail(self, run_id: str, error: str, *, owner: str | None = None) -> None:
        """Mark a running run (owned by ``owner``) failed with ``error``."""
        owner = owner or default_owner()
        with self._write() as conn:
            self._check_owned(conn, run_id, owner, "fail")
            conn.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                         (str(error), now(), run_id))

    # -- reading -------------------------------------------------------------------------------

    def runs(self, status: str | None = None) -> list[dict]:
        """Decoded rows (JSON columns parsed), in insertion order, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)} or None, got {status!r}")
        query, args = "SELECT * FROM runs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        return [_decode(r) for r in self.conn.execute(query + " ORDER BY rowid", args)]

    def get(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _decode(row)

    def counts(self) -> dict:
        """``{"pending": n, "running": n, "done": n, "failed": n}``."""
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"):
            counts[status] = n
        return counts

    def meta(self) -> dict:
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    # -- KV-cache policy evaluations ------------------------------------------------------------

    def claim_policy_job(self, run_id: str, owner: str | None = None) -> bool:
        """Claim the policy evaluations of one run (so two workers do not compute the same ones):
        succeeds when nobody holds them, or their holder is a dead process on this host. The
        results' exactly-once guarantee rests on ``add_policy_eval``, not on this claim."""
        owner = owner or default_owner()
        with self._write() as conn:
            row = conn.execute("SELECT owner FROM policy_claims WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and row["owner"] != owner and owner_alive(row["owner"]):
                return False
            conn.execute("INSERT OR REPLACE INTO policy_claims (run_id, owner, claimed_at) VALUES (?, ?, ?)",
                         (run_id, owner, now()))
            return True

    def release_policy_job(self, run_id: str, owner: str | None = None) -> None:
        owner = owner or default_owner()
        with self._write() as conn:
            conn.execute("DELETE FROM policy_claims WHERE run_id = ? AND owner = ?", (run_id, owner))

    def add_policy_eval(self, record: dict) -> bool:
        """Store one (run, policy, budget) evaluation in one transaction; returns whether it was
        written. Refused (False) when that evaluation is already stored, unless the stored one
        failed: a done or skipped evaluation is never written twice. The run must exist and be done.

        ``record`` holds ``run_id``, ``policy_key``, ``budget_key``, ``policy``, ``policy_label``,
        ``policy_kwargs``, ``mode``, ``budget``, ``status`` and optionally every other column of
        ``policy_evals`` (JSON columns as Python values)."""
        values = {key: record.get(key) for key in POLICY_COLUMNS}
        values["created_at"] = values["created_at"] or now()
        values["code_version"] = values["code_version"] or code_version()
        values["torch_version"] = values["torch_version"] or torch_version()
        if values["status"] not in POLICY_STATUSES:
            raise ValueError(f"status must be one of {', '.join(POLICY_STATUSES)}, got {values['status']!r}")
        for key in POLICY_JSON_COLUMNS:
            values[key] = _dumps(values[key]) if key != "budget" else json.dumps(values[key])
        with self._write() as conn:
            run = conn.execute("SELECT status FROM runs WHERE id = ?", (values["run_id"],)).fetchone()
            if run is None:
                raise StoreError(f"cannot store a policy evaluation of run {values['run_id']}: "
                                 f"no such run in {self.path}")
            if run["status"] != "done":
                raise StoreError(f"cannot store a policy evaluation of run {values['run_id']}: "
                                 f"it is {run['status']}, not done")
            old = conn.execute("SELECT status FROM policy_evals WHERE run_id = ? AND policy_key = ? AND budget_key = ?",
                               (values["run_id"], values["policy_key"], values["budget_key"])).fetchone()
            if old is not None and old["status"] != "failed":
                return False
            columns = ", ".join(POLICY_COLUMNS)
            conn.execute(f"INSERT OR REPLACE INTO policy_evals ({columns}) "
                         f"VALUES ({', '.join('?' * len(POLICY_COLUMNS))})",
                         tuple(values[key] for key in POLICY_COLUMNS))
            return True

    def policy_evals(self, run_ids: Collection[str] | None = None, status: str | None = None) -> list[dict]:
        """Decoded policy evaluations (JSON columns parsed), in insertion order, optionally of some runs
        and of one status."""
        if status is not None and status not in POLICY_STATUSES:
            raise ValueError(f"status must be one of {', '.join(POLICY_STATUSES)} or None, got {status!r}")
        query, args = "SELECT * FROM policy_evals", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        rows = [_decode(r, POLICY_JSON_COLUMNS) for r in self.conn.execute(query + " ORDER BY rowid", args)]
        if run_ids is not None:
            wanted = set(run_ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows

    def policy_eval_keys(self, run_id: str) -> dict[tuple[str, str], str]:
        """``{(policy_key, budget_key): status}`` of one run's stored evaluations."""
        return {(r["policy_key"], r["budget_key"]): r["status"] for r in self.conn.execute(
            "SELECT policy_key, budget_key, status FROM policy_evals WHERE run_id = ?", (run_id,))}

    def policy_counts(self, run_ids: Collection[str] | None = None) -> dict:
        """``{"done": n, "skipped": n, "failed": n}`` over the stored policy evaluations."""
        counts = dict.fromkeys(POLICY_STATUSES, 0)
        wanted = None if run_ids is None else set(run_ids)
        for run_id, status in self.conn.execute("SELECT run_id, status FROM policy_evals"):
            if wanted is None or run_id in wanted:
                counts[status] += 1
        return counts

    def requeue_failed_policy_evals(self, run_ids: Collection[str] | None = None) -> int:
        """Delete failed and skipped policy evaluations (of ``run_ids``) so they run again; returns how many."""
        with self._write() as conn:
            rows = conn.execute("SELECT run_id, policy_key, budget_key FROM policy_evals "
                                "WHERE status IN ('failed', 'skipped')").fetchall()
            wanted = None if run_ids is None else set(run_ids)
            doomed = [tuple(r) for r in rows if wanted is None or r["run_id"] in wanted]
            conn.executemany("DELETE FROM policy_evals WHERE run_id = ? AND policy_key = ? AND budget_key = ?", doomed)
        return len(doomed)

    # -- export --------------------------------------------------------------------------------

    def export(self, path: str | Path, format: str | None = None) -> Path:
        """Write every run to ``path`` atomically: ``csv`` (one flat row per run) or ``jsonl`` (one
        decoded row per line). The format defaults to the file's suffix (csv unless ``.jsonl``)."""
        return write_records(path, format, self.runs(), runs_csv)

    def export_policy_evals(self, path: str | Path, format: str | None = None) -> Path:
        """Write every policy evaluation to ``path`` atomically: ``csv`` (one flat row per
        (run, policy, budget), with the run's labels) or ``jsonl`` (one decoded row per line, with
        the run's ``labels``). The format defaults to the file's suffix (csv unless ``.jsonl``)."""
        labels = {r["id"]: (r.get("labels") or {}, r.get("spec_name")) for r in self.runs()}
        records = [dict(r, labels=labels.get(r["run_id"], ({}, None))[0], spec=labels.get(r["run_id"], ({}, None))[1])
                   for r in self.policy_evals()]
        return write_records(path, format, records, policy_csv)


