"""KV-cache policy evaluations (rows of the store's ``policy_evals`` table) as tables.

One row per (task, length, model, policy, budget), and one policy x budget pivot per (task,
length, model); the same reading rules as the run records (``records``).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any, Callable, Sequence

from .records import (
    _html_table,
    _md_escape,
    _md_table,
    _mean,
    _sort_int,
    convergence_of,
    first_line,
    fmt_bytes,
    fmt_pct,
    is_finite,
    labels_of,
    mixer_name,
)

POLICY_COLUMNS = (
    "task", "seq_len", "model", "policy", "budget", "tokens", "accuracy", "Δ vs full", "seeds",
    "bytes after context", "bytes at end", "resident bytes", "eval s", "note",
)
_POLICY_NUMERIC = {1, 5, 6, 7, 8, 9, 10, 11, 12}


def budget_fraction(record: dict) -> float | None:
    """The budget as a fraction of the evaluated length: a float budget itself, tokens / context
    length for an int budget (at most 1), 1.0 when unlimited."""
    budget, context = record.get("budget"), record.get("context_len")
    if budget is None:
        return 1.0
    if isinstance(budget, float):
        return budget
    if isinstance(budget, int) and not isinstance(budget, bool) and is_finite(context) and context > 0:
        return min(1.0, budget / context)
    return None


def fmt_budget(budget: Any) -> str:
    """``1/8`` for a power-of-two fraction, ``0.3`` for another one, ``16 tok`` for tokens, ``full``."""
    if budget is None:
        return "full"
    if isinstance(budget, str):  # bytes per sequence, as given ("32KiB")
        return budget
    if isinstance(budget, float):
        inverse = 1.0 / budget if budget > 0 else 0.0
        if budget == 1.0:
            return "1"
        if inverse and abs(inverse - round(inverse)) < 1e-9:
            return f"1/{int(round(inverse))}"
        return f"{budget:g}"
    return f"{budget} tok"


def protocol_name(stored: str | None) -> str:
    """A protocol as ``policy_protocols.PROTOCOLS`` names it, from what an evaluation stores
    (``STORED_NAMES``: ``query_aware_v1`` -> ``aware``; nothing, in stores older than protocols -> agnostic)."""
    from ..policy_protocols import STORED_NAMES

    return {v: k for k, v in STORED_NAMES.items()}.get(stored, stored) if stored else "agnostic"


def model_name(labels: dict) -> str:
    """``attention d=64``: the mixer (with kwargs) and the width of a run."""
    return f"{mixer_name(labels)} d={labels.get('d_model')}"


def _policy_groups(records: Sequence[dict], policy_evals: Sequence[dict]) -> dict[tuple, list[tuple[dict, dict]]]:
    """(task, seq_len, model, policy label, budget key) -> [(evaluation, run labels), ...]."""
    labels = {str(r.get("id")): labels_of(r) for r in records}
    groups: dict[tuple, list] = defaultdict(list)
    for e in policy_evals:
        lab = labels.get(str(e.get("run_id")))
        if lab is None:
            continue
        key = (str(lab.get("task") or "?"), lab.get("seq_len"), model_name(lab), str(e.get("policy_label")),
               str(e.get("budget_key")))
        groups[key].append((e, lab))
    return groups


def policy_leaderboard(records: Sequence[dict], policy_evals: Sequence[dict]) -> list[dict]:
    """One row per (task, seq_len, model, policy, budget), averaged over seeds (runs).

    Each row: ``task, seq_len, model, policy, mode, budget`` (as given), ``fraction`` (of the
    evaluated length), ``budget_tokens``, ``accuracy`` (mean over done evaluations; NaN if none),
    ``accuracy_min/max`` (several seeds), ``reference`` (the same runs without a policy; under a protocol
    other than agnostic, the ``full`` policy's accuracy under that protocol when it was evaluated),
    ``delta``, ``state_bytes`` (after the context), ``state_bytes_end`` (after the whole
    sequence), ``resident_bytes`` (retrieval policies), ``seeds``, ``eval_seconds``, ``skipped``,
    ``failed``, ``note`` (the first skipped/failed reason) and ``converged`` (every evaluated model's
    training converged: the policy's accuracy is measured on a trained model, not a lower bound's).
    Sorted by task, seq_len, model, then fraction descending and accuracy descending.
    """
    rows = []
    converged = {str(r.get("id")): convergence_of(r) == "converged" for r in records if r.get("status") == "done"}
    for (task, seq_len, model, policy, bkey), items in _policy_groups(records, policy_evals).items():
        done = [e for e, _ in items if e.get("status") == "done"]
        accs = [float((e.get("metrics") or {}).get("accuracy")) for e in done
                if is_finite((e.get("metrics") or {}).get("accuracy"))]
        refs = [(e.get("metrics") or {}).get("reference_accuracy") for e in done]
        first = items[0][0]
        bad = [e for e, _ in items if e.get("status") in ("skipped", "failed")]
        acc = sum(accs) / len(accs) if accs else float("nan")
        ref = _mean(refs)
        rows.append({
            "task": task, "seq_len": seq_len, "model": model, "policy": policy, "policy_name": first.get("policy"),
            "mode": first.get("mode"), "budget": first.get("budget"), "budget_key": bkey,
            "protocol": protocol_name(first.get("protocol")),
            "fraction": budget_fraction(first), "budget_tokens": first.get("budget_tokens"),
            "accuracy": acc, "accuracy_min": min(accs) if len(accs) > 1 else None,
            "accuracy_max": max(accs) if len(accs) > 1 else None, "reference": ref,
            "delta": acc - ref if math.isfinite(acc) and ref is not None else None,
            "state_bytes": _mean(e.get("state_bytes") for e in done),
            "state_bytes_end": _mean(e.get("state_bytes_end") for e in done),
            "resident_bytes": _mean(e.get("resident_bytes") for e in done),
            "resident_bytes_end": _mean(e.get("resident_bytes_end") for e in done),
            "seeds": len(done), "skipped": sum(e.get("status") == "skipped" for e in bad),
            "failed": sum(e.get("status") == "failed" for e in bad),
            "eval_seconds": _mean(e.get("eval_seconds") for e in done),
            "note": f"{bad[0].get('status')}: {first_line(bad[0].get('error'))}" if bad else "",
            "unbounded": first.get("budget") is None,
            "converged": all(converged.get(str(e.get("run_id")), False) for e in done) if done else False,
        })

    # under another protocol than agnostic, the reference is the full cache under that same protocol: the
    # stored reference is the run's own (agnostic) accuracy, and a protocol moves the full cache too (a
    # question read twice, positions shifted by a generation), which is not the policy's loss
    full = {(r["task"], r["seq_len"], r["model"], r["protocol"]): r["accuracy"] for r in rows
            if r["policy_name"] == "full" and math.isfinite(r["accuracy"])}
    for row in rows:
        same = full.get((row["task"], row["seq_len"], row["model"], row["protocol"]))
        if row["protocol"] != "agnostic" and same is not None:
            row["reference"] = same
            row["delta"] = row["accuracy"] - same if math.isfinite(row["accuracy"]) else None

    def order(row: dict) -> tuple:
        acc = row["accuracy"]
        frac = row["fraction"] if is_finite(row["fraction"]) else 0.0
        return (row["task"], _sort_int(row["seq_len"]), row["model"], -frac, not math.isfinite(acc),
                -acc if math.isfinite(acc) else 0.0, row["policy"])

    rows.sort(key=order)
    return rows


NO_BUDGET = "no budget"


def policy_pivots(records: Sequence[dict], policy_evals: Sequence[dict]) -> list[dict]:
    """Per (task, seq_len, model): a row per bounded policy with its accuracy at each budget.

    Returns ``[{"task", "seq_len", "model", "reference", "budget_labels": [...], "ranked_on": [...],
    "rows": [{"rank", "policy", "mean", "cells": {budget label: "93.8%" | "skipped" | "failed"}}]}]``;
    budgets go from the smallest fraction of the context to the largest; ``mean`` is over the
    budgets at which every ranked policy has an accuracy (``ranked_on``; empty when that is all of
    them), so a policy that rejects the small budgets is not ranked on its large ones only; rank 1
    = best mean. Policies that take no budget (``full``, and lossy
    ones that keep every token: quantised or narrower keys) follow the ranked rows, unranked, with
    their accuracy in a last ``no budget`` column. ``reference`` is the full-cache accuracy (the
    runs without a policy, or ``full`` when it was evaluated).
    """
    rows = policy_leaderboard(records, policy_evals)
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        panels[(row["task"], row["seq_len"], row["model"])].append(row)
    out = []
    for (task, seq_len, model), items in panels.items():
        bounded = [r for r in items if not r["unbounded"]]
        full = [r["accuracy"] for r in items if r["unbounded"] and math.isfinite(r["accuracy"])]
        # the title's full cache is the agnostic one (the runs' own accuracy); another protocol's
        # rows read against the full cache under that protocol, shown as its own full@protocol row
        reference = _mean(r["reference"] for r in items if r["protocol"] == "agnostic")
        if reference is None and full:
            reference = full[0]
        budgets = sorted({(r["fraction"] if is_finite(r["fraction"]) else 2.0, r["budget_key"], fmt_budget(r["budget"]))
                          for r in bounded})
        labels = list(dict.fromkeys(label for _, _, label in budgets))
        by_policy: dict[str, dict] = {}
        for r in bounded:
            entry = by_policy.setdefault(r["policy"], {"policy": r["policy"], "cells": {}, "accs": {}})
            label = fmt_budget(r["budget"])
            if math.isfinite(r["accuracy"]):
                entry["cells"][label] = fmt_pct(r["accuracy"])
                entry["accs"][label] = r["accuracy"]
            elif r["skipped"]:
                entry["cells"][label] = "skipped"
            elif r["failed"]:
                entry["cells"][label] = "failed"
        # rank on the budgets every policy has an accuracy at (a policy that cannot run at the
        # smallest budgets is not rewarded for being averaged over the large ones only)
        scored = [e for e in by_policy.values() if e["accs"]]
        common = [b for b in labels if scored and all(b in e["accs"] for e in scored)] or labels
        ranked = []
        for entry in by_policy.values():
            values = [entry["accs"][b] for b in common if b in entry["accs"]]
            mean = sum(values) / len(values) if values else float("nan")
            ranked.append({"policy": entry["policy"], "mean": mean, "cells": entry["cells"]})
        ranked.sort(key=lambda r: (not math.isfinite(r["mean"]), -r["mean"] if math.isfinite(r["mean"]) else 0.0,
                                   r["policy"]))
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
        unbounded = []
        for r in sorted((r for r in items if r["unbounded"]), key=lambda r: r["policy"]):
            cell = fmt_pct(r["accuracy"]) if math.isfinite(r["accuracy"]) else ("failed" if r["failed"] else "skipped")
            unbounded.append({"rank": "—", "policy": r["policy"], "mean": r["accuracy"], "cells": {NO_BUDGET: cell}})
        out.append({"task": task, "seq_len": seq_len, "model": model, "reference": reference,
                    "ranked_on": [] if common == labels else common,
                    "budget_labels": labels + ([NO_BUDGET] if unbounded else []), "rows": ranked + unbounded})
    out.sort(key=lambda p: (p["task"], _sort_int(p["seq_len"]), p["model"]))
    return out


def _policy_cells(row: dict) -> list[str]:
    acc = fmt_pct(row.get("accuracy"))
    if row.get("accuracy_min") is not None:
        acc += f" ({fmt_pct(row['accuracy_min'])}–{fmt_pct(row['accuracy_max'])})"
    delta = row.get("delta")
    secs = row.get("eval_seconds")
    return [
        row["task"], str(row.get("seq_len", "")), row["model"], row["policy"], fmt_budget(row.get("budget")),
        str(row.get("budget_tokens") if row.get("budget_tokens") is not None else ""),
        acc, f"{100 * delta:+.1f} pt" if is_finite(delta) else "", str(row.get("seeds", "")),
        fmt_bytes(row.get("state_bytes")), fmt_bytes(row.get("state_bytes_end")), fmt_bytes(row.get("resident_bytes")),
        f"{secs:.1f}" if is_finite(secs) else "", row.get("note") or "",
    ]


def policy_to_markdown(rows: Sequence[dict]) -> str:
    """The detailed policy leaderboard as a markdown table."""
    if not rows:
        return "_No policy evaluations._\n"
    return _md_table(POLICY_COLUMNS, [_policy_cells(r) for r in rows], _POLICY_NUMERIC)


def policy_to_html(rows: Sequence[dict]) -> str:
    if not rows:
        return "<p><em>No policy evaluations.</em></p>\n"
    return _html_table(POLICY_COLUMNS, [_policy_cells(r) for r in rows], _POLICY_NUMERIC, "policies")


def _pivot_table(pivot: dict) -> tuple[list[str], list[list[str]], set[int]]:
    headers = ["rank", "policy", "mean", *pivot["budget_labels"]]
    body = [[str(r["rank"]), r["policy"], fmt_pct(r["mean"]), *[r["cells"].get(b, "—") for b in pivot["budget_labels"]]]
            for r in pivot["rows"]]
    return headers, body, {0} | set(range(2, len(headers)))


def pivot_title(pivot: dict) -> str:
    title = (f"{pivot['task']}, seq_len={pivot['seq_len']}, {pivot['model']} "
             f"(full cache: {fmt_pct(pivot['reference']) if pivot['reference'] is not None else 'not measured'}")
    if pivot.get("ranked_on"):
        title += f"; mean and rank over {', '.join(pivot['ranked_on'])}, where every policy ran"
    return title + ")"


def titled_tables_markdown(items: Sequence[dict], table: Callable, title: Callable) -> str:
    """One markdown table per item: ``title(item)`` in bold, then ``table(item)`` -> (headers, body, right)."""
    parts = []
    for item in items:
        headers, body, right = table(item)
        parts += [f"**{_md_escape(title(item))}**", "", _md_table(headers, body, right)]
    return "\n".join(parts)


def titled_tables_html(items: Sequence[dict], table: Callable, title: Callable, cls: str) -> str:
    """One HTML table of class ``cls`` per item, under an ``<h3>`` of ``title(item)``."""
    parts = []
    for item in items:
        headers, body, right = table(item)
        parts += [f"<h3>{html.escape(title(item))}</h3>", _html_table(headers, body, right, cls)]
    return "\n".join(parts)


def pivots_to_markdown(pivots: Sequence[dict]) -> str:
    """One markdown table per (task, seq_len, model): policies x budgets (accuracy)."""
    if not pivots:
        return "_No policy evaluations._\n"
    return titled_tables_markdown(pivots, _pivot_table, pivot_title)


def pivots_to_html(pivots: Sequence[dict]) -> str:
    if not pivots:
        return "<p><em>No policy evaluations.</em></p>\n"
    return titled_tables_html(pivots, _pivot_table, pivot_title, "pivot")
