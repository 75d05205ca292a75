"""Export of a results store: one flat CSV row per run (or per policy evaluation), or JSON lines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

__all__ = ["write_records", "runs_csv", "policy_csv", "evaluations_csv", "CSV_TAIL", "POLICY_CSV_COLUMNS"]


def _largest_length(table: dict | None) -> tuple[str | None, Any]:
    if not table:
        return None, None

    def order(key):
        try:
            return (0, int(key))
        except (TypeError, ValueError):
            return (1, 0)

    key = max(table, key=order)
    return key, table[key]


def write_records(path: str | Path, format: str | None, records: list[dict], to_csv) -> Path:
    """``records`` to ``path`` atomically as csv (``to_csv``) or jsonl; the format defaults to the suffix."""
    from ..checkpoint import atomic_write_bytes

    path = Path(path)
    format = format or ("jsonl" if path.suffix == ".jsonl" else "csv")
    if format == "jsonl":
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    elif format == "csv":
        text = to_csv(records)
    else:
        raise ValueError(f"format must be 'csv' or 'jsonl', got {format!r}")
    atomic_write_bytes(path, text.encode())
    return path


CSV_TAIL = ("accuracy", "convergence", "loss", "params", "state_bytes", "state_bytes_seq_len", "tokens_per_s",
            "train_seconds", "eval_seconds", "steps", "train_status", "attempts", "code_version", "torch_version",
            "device", "created_at", "started_at", "finished_at", "owner", "error")


def runs_csv(records: list[dict]) -> str:
    """One row per run: id, spec, status, every label, then metrics, largest-length state bytes, timings."""
    label_keys: list[str] = []
    for r in records:
        for key in (r.get("labels") or {}):
            if key not in label_keys and key not in ("spec",):
                label_keys.append(key)
    columns = ["id", "spec", "status", *label_keys, *CSV_TAIL]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in records:
        labels = r.get("labels") or {}
        metrics = r.get("metrics") or {}
        seq_len, state = _largest_length(r.get("state_bytes"))
        row = {"id": r["id"], "spec": r.get("spec_name") or labels.get("spec"), "status": r["status"]}
        for key in label_keys:
            value = labels.get(key)
            row[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        row.update({
            "accuracy": metrics.get("accuracy"), "loss": metrics.get("loss"), "params": r.get("params"),
            "state_bytes": state, "state_bytes_seq_len": seq_len,
        })
        for key in CSV_TAIL:
            if key not in row:
                row[key] = r.get(key)
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


POLICY_CSV_COLUMNS = (
    "run_id", "spec", "task", "seq_len", "mixer", "d_model", "seed", "policy", "policy_label", "mode", "policy_kwargs",
    "budget", "budget_fraction", "budget_tokens", "context_len", "status", "accuracy", "loss", "scored",
    "reference_accuracy", "state_bytes", "state_bytes_end", "resident_bytes", "resident_bytes_end", "eval_seconds",
    "checkpoint_step", "protocol", "code_version", "torch_version", "created_at", "error",
)


def policy_csv(records: list[dict]) -> str:
    from ..report.tables import budget_fraction

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=POLICY_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        labels, metrics = r.get("labels") or {}, r.get("metrics") or {}
        row = {key: r.get(key) for key in POLICY_CSV_COLUMNS}
        row.update({key: labels.get(key) for key in ("task", "seq_len", "mixer", "d_model", "seed")})
        row.update({key: metrics.get(key) for key in ("accuracy", "loss", "scored", "reference_accuracy")})
        row["policy_kwargs"] = json.dumps(r.get("policy_kwargs"), sort_keys=True)
        row["budget"] = json.dumps(r.get("budget"))
        row["budget_fraction"] = budget_fraction(r)
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def evaluations_csv(records: list[dict]) -> str:
    """One flat row per ``kv-eval`` / ``memory-eval`` evaluation: its columns, JSON ones as JSON text."""
    from .store_schema import EVAL_COLUMNS, EVAL_JSON_COLUMNS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EVAL_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {key: r.get(key) for key in EVAL_COLUMNS}
        for key in EVAL_JSON_COLUMNS:
            row[key] = json.dumps(row[key], sort_keys=True)
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()
