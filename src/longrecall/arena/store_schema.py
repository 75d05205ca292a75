"""The results store's schema: tables, columns, versions and the migrations between them.

Each column is declared once, in its table's SQL; the tuples of column names the store and the
export use are read off that SQL (``_columns``), so adding a column is one edit.

KV-cache policy evaluations (schema 2) live in ``policy_evals``, one row per (run, policy,
budget): primary key ``(run_id, policy_key, budget_key)`` where ``policy_key`` is the canonical
JSON of the policy's name, resolved kwargs and mode, and ``budget_key`` the JSON of the budget as
given (``0.25``, ``16``, ``null`` for none); ``metrics`` holds accuracy, loss, scored,
reference_accuracy and protocol details, ``state_bytes`` is measured after the context and
``state_bytes_end`` after the sequence. ``policy_claims`` keeps two workers from evaluating the
same run at once.

Evaluations without a run of their own (schema 4: ``kv-eval`` on a Hugging Face model, ``memory-eval``
on a text memory) live in ``evaluations``, keyed by the canonical JSON of what identifies them.

Before a store writes to a file, ``check_store_file`` inspects it read-only and refuses anything
that is not a longrecall store of this or an older schema, leaving it untouched.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["APP", "SCHEMA_VERSION", "STATUSES", "POLICY_STATUSES", "SQLITE_HEADER", "BUSY_TIMEOUT_S", "RUN_COLUMNS",
           "POLICY_COLUMNS", "JSON_COLUMNS", "POLICY_JSON_COLUMNS", "EVAL_COLUMNS", "EVAL_JSON_COLUMNS", "migrate",
           "now", "convergence_of", "StoreError", "check_store_file", "holds_store"]

APP = "longrecall"
# 1: runs; 2: + policy_evals (KV-cache policy x budget evaluations of finished runs) and policy_claims;
# 3: + runs.convergence (converged / learning / plateau / diverged, longrecall.convergence)
# 4: + evaluations (results of `kv-eval` and `memory-eval`: memories measured without an arena run)
SCHEMA_VERSION = 4
STATUSES = ("pending", "running", "done", "failed")
# done: evaluated; skipped: the policy rejects the budget at this length (e.g. fewer tokens than
# its sinks), stored so it is not retried; failed: the evaluation raised (retried with retry_failed)
POLICY_STATUSES = ("done", "skipped", "failed")
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 60.0

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        spec_name TEXT,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
        config TEXT NOT NULL,
        labels TEXT NOT NULL,
        metrics TEXT,
        by_distance TEXT,
        by_slice TEXT,
        state_bytes TEXT,
        history TEXT,
        evals TEXT,
        task_config TEXT,
        train_status TEXT,
        convergence TEXT,
        steps INTEGER,
        params INTEGER,
        train_seconds REAL,
        eval_seconds REAL,
        tokens_per_s REAL,
        code_version TEXT,
        torch_version TEXT,
        device TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS runs_status ON runs (status)",
]
# schema 2: tables added to a version-1 store by the migration, and created with every new store
_SCHEMA_V2 = [
    """CREATE TABLE IF NOT EXISTS policy_evals (
        run_id TEXT NOT NULL REFERENCES runs (id),
        policy_key TEXT NOT NULL,
        budget_key TEXT NOT NULL,
        policy TEXT NOT NULL,
        policy_label TEXT NOT NULL,
        policy_kwargs TEXT NOT NULL,
        mode TEXT NOT NULL,
        budget TEXT,
        budget_tokens INTEGER,
        context_len INTEGER,
        status TEXT NOT NULL CHECK (status IN ('done', 'skipped', 'failed')),
        metrics TEXT,
        by_distance TEXT,
        by_slice TEXT,
        state_bytes INTEGER,
        state_bytes_end INTEGER,
        resident_bytes INTEGER,
        resident_bytes_end INTEGER,
        eval_seconds REAL,
        checkpoint_step INTEGER,
        protocol TEXT,
        code_version TEXT,
        torch_version TEXT,
        owner TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (run_id, policy_key, budget_key)
    )""",
    """CREATE TABLE IF NOT EXISTS policy_claims (
        run_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        claimed_at TEXT NOT NULL
    )""",
]
POLICY_JSON_COLUMNS = ("policy_kwargs", "budget", "metrics", "by_distance", "by_slice")
# schema 4: evaluations that have no run of their own: a KV-cache policy on a Hugging Face model
# (`longrecall kv-eval`) or a text memory (`longrecall memory-eval`). One row per (source, task, length,
# system, budget, protocol, setting); ``key`` is the canonical JSON of those fields, so the same evaluation
# run again replaces its row. ``score`` is the headline number (``metric`` names it: accuracy, recall@10)
# and ``state_bytes`` the memory it was measured at, so the report draws it on the memory frontier.
_SCHEMA_V4 = [
    """CREATE TABLE IF NOT EXISTS evaluations (
        key TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        family TEXT NOT NULL,
        task TEXT NOT NULL,
        length INTEGER,
        system TEXT NOT NULL,
        budget TEXT,
        protocol TEXT,
        setting TEXT NOT NULL,
        metric TEXT NOT NULL,
        score REAL,
        reference_score REAL,
        state_bytes REAL,
        metrics TEXT,
        seconds REAL,
        code_version TEXT,
        torch_version TEXT,
        created_at TEXT NOT NULL
    )""",
]
EVAL_JSON_COLUMNS = ("budget", "setting", "metrics")


def _columns(create_table: str) -> tuple[str, ...]:
    """Column names of a ``CREATE TABLE`` statement, in order (constraint lines skipped)."""
    body = create_table[create_table.index("(") + 1 : create_table.rindex(")")]
    names = []
    for line in body.split("\n"):
        match = re.match(r"\s*([a-z_]+)\s+(TEXT|INTEGER|REAL)\b", line)
        if match:
            names.append(match.group(1))
    return tuple(names)


RUN_COLUMNS = _columns(_SCHEMA[1])
POLICY_COLUMNS = _columns(_SCHEMA_V2[0])
EVAL_COLUMNS = _columns(_SCHEMA_V4[0])
JSON_COLUMNS = ("config", "labels", "metrics", "by_distance", "by_slice", "state_bytes", "history", "evals",
                "task_config")
# final_eval keys that get their own columns (the rest of final_eval goes to ``metrics``)
_SPLIT_EVAL_KEYS = ("by_distance", "by_slice", "state_bytes")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def convergence_of(config: dict, history: list, evals: list) -> str:
    """A finished run's convergence status from its stored histories (``longrecall.convergence``)."""
    from ..convergence import status

    return status(history, evals, (config or {}).get("target_accuracy", 0.99))


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _decode(row: sqlite3.Row, columns: tuple = JSON_COLUMNS) -> dict:
    record = dict(row)
    for key in columns:
        if record.get(key) is not None:
            record[key] = json.loads(record[key])
    return record


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an older store up to this schema, inside the caller's write transaction.

    1 -> 2: add the ``policy_evals`` and ``policy_claims`` tables (the runs are untouched).
    2 -> 3: add ``runs.convergence``, computed for every done run from its stored ``history`` and
    ``evals`` (``longrecall.convergence.status``; the target is the run config's
    ``target_accuracy``, 0.99 for configs written before it existed).
    3 -> 4: add the ``evaluations`` table.
    """
    version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    if version < 2:
        for statement in _SCHEMA_V2:
            conn.execute(statement)
    if version < 3:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        if "convergence" not in columns:
            conn.execute("ALTER TABLE runs ADD COLUMN convergence TEXT")
        for row in conn.execute("SELECT id, config, history, evals FROM runs WHERE status = 'done'").fetchall():
            verdict = convergence_of(json.loads(row[1] or "{}"), json.loads(row[2] or "null") or [],
                                     json.loads(row[3] or "null") or [])
            conn.execute("UPDATE runs SET convergence = ? WHERE id = ?", (verdict, row[0]))
    if version < 4:
        for statement in _SCHEMA_V4:
            conn.execute(statement)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"migrated_from_{version}_at", now()))


class StoreError(RuntimeError):
    """The file is not a usable longrecall store, or a write was refused."""


def check_store_file(path: Path, create: bool) -> None:
    """Refuse foreign or newer files before opening them for writing (they stay untouched)."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a results store file")
    if not path.exists():
        if not create:
            raise StoreError(f"no results store at {path} (pass create=True to make one)")
        return
    if path.stat().st_size == 0:
        return  # an empty file is an empty database: it becomes a new store
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StoreError(f"{path} is not a SQLite database (and so not a longrecall results store); "
                         f"refusing to open or overwrite it")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path} read-only to inspect it: {error}") from None
    try:
        holds_store(conn, path)
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} is a damaged or unreadable SQLite file: {error}; refusing to use it") from None
    finally:
        conn.close()


def holds_store(conn: sqlite3.Connection, path: Path) -> bool:
    """True if ``conn`` holds our schema (this version or an older one ``migrate`` upgrades), False if
    it holds no tables; StoreError naming ``path`` otherwise."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return False
    if "meta" not in tables:
        raise StoreError(f"{path} is a SQLite database but not a longrecall results store "
                         f"(tables: {', '.join(sorted(tables))}); refusing to modify it")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} has a meta table this store cannot read ({error}); "
                         f"it is not a longrecall results store; refusing to modify it") from None
    if meta.get("app") != APP:
        raise StoreError(f"{path} is a SQLite database of another application "
                         f"(meta.app = {meta.get('app')!r}, expected {APP!r}); refusing to modify it")
    try:
        version = int(meta.get("schema_version"))
    except (TypeError, ValueError):
        raise StoreError(f"{path}: meta.schema_version is {meta.get('schema_version')!r}, "
                         f"not an integer; the store is damaged") from None
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written with store schema version {version}, newer than this "
                         f"longrecall understands ({SCHEMA_VERSION}); upgrade longrecall to read it")
    if "runs" not in tables:
        raise StoreError(f"{path}: the runs table is missing; the store is damaged")
    return True
