"""The results store's ``evaluations`` table: memories measured without an arena run of their own.

Two commands measure a memory on data the arena does not train on: ``longrecall kv-eval`` (a KV-cache
policy on a local Hugging Face model, on RULER-style text tasks) and ``longrecall memory-eval`` (a text
memory for agents, on LoCoMo/LongMemEval-format evidence). Given ``--store``, both write their rows
here, so one store and one report hold every memory family: the trained mixers (``runs``), the KV-cache
policies on trained runs (``policy_evals``) and these.

One row per evaluation::

    store.add_evaluations([{
        "source": "memory-eval", "family": "agent memory", "task": "locomo-style (generator, 10 conv.)",
        "length": 304, "system": "bm25 / turn", "budget": None, "protocol": None,
        "setting": {"k": [5, 10], "seed": 0}, "metric": "recall@10", "score": 0.876,
        "reference_score": None, "state_bytes": 43930.0, "metrics": {...}, "seconds": 1.2,
    }])

``source`` (``kv-eval`` or ``memory-eval``), ``family``, ``task``, ``system`` and ``metric`` are
required strings; ``length`` the context length in the task's units (tokens, or turns per conversation);
``budget`` any JSON value; ``setting`` a dict of whatever else identifies the evaluation (the model
directory, the number of examples, the seed). The row's ``key`` is the canonical JSON of
``(source, task, length, system, budget, protocol, setting)``: the same evaluation written again
replaces its row (a re-run is a newer measurement, not a second point), a different one is added.
All rows of one call are written in one transaction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from .export import evaluations_csv, write_records
from .owners import code_version, torch_version
from .store_schema import EVAL_COLUMNS, EVAL_JSON_COLUMNS, _decode, now

__all__ = ["EVAL_SOURCES", "EvaluationsMixin", "evaluation_key", "check_evaluation"]

EVAL_SOURCES = ("kv-eval", "memory-eval")
_REQUIRED_STR = ("source", "family", "task", "system", "metric")
_IDENTITY = ("source", "task", "length", "system", "budget", "protocol", "setting")


def evaluation_key(row: dict) -> str:
    """The canonical JSON of what identifies an evaluation (sorted keys, no spaces)."""
    return json.dumps({name: row.get(name) for name in _IDENTITY}, sort_keys=True, separators=(",", ":"))


def _number_or_none(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"evaluation {name} must be a number or None, got {value!r}")
    value = float(value)
    return None if math.isnan(value) else value


def check_evaluation(row: dict) -> dict:
    """The column values of one evaluation row, checked; raises ValueError naming the field."""
    unknown = set(row) - set(EVAL_COLUMNS)
    if unknown:
        raise ValueError(f"unknown evaluation fields {sorted(unknown)}; accepted: {', '.join(EVAL_COLUMNS)}")
    for name in _REQUIRED_STR:
        if not isinstance(row.get(name), str) or not row[name]:
            raise ValueError(f"evaluation {name} must be a non-empty string, got {row.get(name)!r}")
    if row["source"] not in EVAL_SOURCES:
        raise ValueError(f"evaluation source must be one of {', '.join(EVAL_SOURCES)}, got {row['source']!r}")
    length = row.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"evaluation length must be a positive int or None, got {length!r}")
    if row.get("protocol") is not None and not isinstance(row["protocol"], str):
        raise ValueError(f"evaluation protocol must be a string or None, got {row['protocol']!r}")
    setting = row.get("setting", {})
    if not isinstance(setting, dict):
        raise ValueError(f"evaluation setting must be a dict, got {type(setting).__name__}")
    values = {name: row.get(name) for name in EVAL_COLUMNS}
    values["setting"] = setting
    for name in ("score", "reference_score", "state_bytes", "seconds"):
        values[name] = _number_or_none(name, values[name])
    values["key"] = evaluation_key(values)
    values["created_at"] = values["created_at"] or now()
    values["code_version"] = values["code_version"] or code_version()
    values["torch_version"] = values["torch_version"] or torch_version()
    for name in EVAL_JSON_COLUMNS:  # budget null is stored as JSON "null", as every JSON column
        values[name] = json.dumps(values[name], sort_keys=True)
    return values


class EvaluationsMixin:
    """``Store`` methods for the ``evaluations`` table (needs ``self._write()`` and ``self.conn``)."""

    def add_evaluations(self, rows: Iterable[dict]) -> int:
        """Insert or replace evaluation rows (see the module docstring) in one transaction; returns how
        many were written. Every row is checked before anything is written."""
        checked = [check_evaluation(dict(row)) for row in rows]
        if not checked:
            return 0
        columns = ", ".join(EVAL_COLUMNS)
        with self._write() as conn:
            conn.executemany(f"INSERT OR REPLACE INTO evaluations ({columns}) "
                             f"VALUES ({', '.join('?' * len(EVAL_COLUMNS))})",
                             [tuple(values[name] for name in EVAL_COLUMNS) for values in checked])
        return len(checked)

    def evaluations(self, source: str | None = None) -> list[dict]:
        """Decoded evaluation rows (JSON columns parsed), in the order written (a replaced row moves to
        the end), optionally of one ``source``."""
        if source is not None and source not in EVAL_SOURCES:
            raise ValueError(f"source must be one of {', '.join(EVAL_SOURCES)} or None, got {source!r}")
        query, args = "SELECT * FROM evaluations", ()
        if source is not None:
            query, args = query + " WHERE source = ?", (source,)
        return [_decode(r, EVAL_JSON_COLUMNS) for r in self.conn.execute(query + " ORDER BY rowid", args)]

    def export_evaluations(self, path: str | Path, format: str | None = None) -> Path:
        """Write every evaluation to ``path`` atomically: ``csv`` (one flat row each) or ``jsonl`` (one
        decoded row per line). The format defaults to the file's suffix (csv unless ``.jsonl``)."""
        return write_records(path, format, self.evaluations(), evaluations_csv)
