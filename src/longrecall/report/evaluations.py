"""The report's section for memories measured outside the arena (the store's ``evaluations`` table).

``longrecall kv-eval --store`` writes a KV-cache policy on a Hugging Face model per (task, length,
policy, protocol); ``longrecall memory-eval --store`` a text memory per (retriever, unit, byte budget).
Each row carries a headline score (accuracy, or evidence recall@k), the score of the same system with
nothing dropped (the full cache; ``None`` where the row is that system), and the bytes the memory held.
This module turns them into the report's tables, one per (source, task), and into points on the memory
frontier (``plots.plot_accuracy_vs_state_bytes``), where each (task, length) gets its own panel beside
the trained mixers': a recurrent state, a compressed KV cache and a text store are compared on one axis
of bytes, each on the data it can be measured on.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Sequence

from .records import _html_table, _md_table, fmt_bytes, fmt_pct, is_finite

__all__ = ["EVALUATIONS_HOW_TO_READ", "FRONTIER_EVALUATIONS_NOTE", "evaluation_points", "evaluation_tables",
           "evaluations_to_markdown", "evaluations_to_html"]

EVALUATIONS_HOW_TO_READ = (
    "Memories measured on data the arena does not train on, written to this store by `longrecall kv-eval` "
    "(KV-cache policies on a Hugging Face model, RULER-style text tasks; accuracy of the generated answers) "
    "and `longrecall memory-eval` (text memories for agents; evidence recall@k of the retrieved items). One "
    "table per command and task; 'reference' is the same model or memory with nothing dropped (full cache, "
    "all text), and bytes is what the memory held: the KV cache after the prompt, or the text store's text "
    "plus its index per conversation. The settings line under each table says what else defines the rows."
)
FRONTIER_EVALUATIONS_NOTE = (
    " Diamonds are memories measured outside the arena (`kv-eval`, `memory-eval`), in panels of their own "
    "task; they are measurements, not training lower bounds, so they take part in their panel's front."
)
COLUMNS = ("system", "length", "budget", "protocol", "metric", "score", "reference", "Δ", "bytes")


def _budget(value) -> str:
    if value is None:
        return "all"
    if isinstance(value, float) and 0 < value <= 1:
        return f"{value:g} of the memory"
    return str(value)


def _score(row: dict) -> str:
    return fmt_pct(row.get("score")) if is_finite(row.get("score")) else "—"


def evaluation_tables(evaluations: Sequence[dict]) -> list[tuple[str, str, list[list[str]]]]:
    """``[(heading, settings line, rows of COLUMNS)]``, one per (source, task), in the order first written."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in evaluations:
        groups[(row["source"], row["task"])].append(row)
    out = []
    for (source, task), rows in groups.items():
        settings = sorted({json.dumps(r.get("setting") or {}, sort_keys=True) for r in rows})
        body = []
        for r in sorted(rows, key=lambda r: (r.get("length") or 0, r["system"], str(r.get("protocol")),
                                             -(r.get("state_bytes") or 0))):
            delta = ""
            if is_finite(r.get("score")) and is_finite(r.get("reference_score")):
                delta = f"{100 * (r['score'] - r['reference_score']):+.1f}"
            body.append([r["system"], "" if r.get("length") is None else str(r["length"]), _budget(r.get("budget")),
                         r.get("protocol") or "", r["metric"], _score(r),
                         fmt_pct(r["reference_score"]) if is_finite(r.get("reference_score")) else "",
                         delta, fmt_bytes(r.get("state_bytes"))])
        out.append((f"{source}: {task} ({rows[0]['family']})", "; ".join(settings), body))
    return out


def evaluations_to_markdown(evaluations: Sequence[dict]) -> str:
    parts = []
    for heading, settings, body in evaluation_tables(evaluations):
        parts += [f"### {heading}", "", _md_table(COLUMNS, body, {1, 5, 6, 7, 8}), f"Settings: `{settings}`", ""]
    return "\n".join(parts)


def evaluations_to_html(evaluations: Sequence[dict]) -> str:
    parts = []
    for heading, settings, body in evaluation_tables(evaluations):
        parts += [f"<h3>{html.escape(heading)}</h3>", _html_table(COLUMNS, body, {1, 5, 6, 7, 8}, "evaluations"),
                  f'<p class="muted">Settings: <code>{html.escape(settings)}</code></p>']
    return "\n".join(parts)


def evaluation_points(evaluations: Sequence[dict]) -> list[dict]:
    """Frontier points: one per evaluation with a finite score and positive bytes, in the frontier's
    point schema (``task``, ``seq_len``, ``mixer``: the system, ``acc``, ``bytes``, ``converged``: True);
    the task is prefixed with its command so a text task never shares a panel with a token task."""
    points = []
    for row in evaluations:
        score, nbytes = row.get("score"), row.get("state_bytes")
        if is_finite(score) and is_finite(nbytes) and nbytes > 0:
            protocol = f" [{row['protocol']}]" if row.get("protocol") else ""
            points.append({"task": f"{row['source']}: {row['task']}", "seq_len": row.get("length"),
                           "mixer": f"{row['system']}{protocol}", "d_model": None, "acc": float(score),
                           "bytes": float(nbytes), "converged": True, "metric": row["metric"]})
    return points
