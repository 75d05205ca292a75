"""The leaderboard from run records (rows of the results store): best learning rate, convergence,
lower bounds, failed runs, the Pareto front, markdown and HTML.

Pure Python (no torch, no matplotlib). Reading a record's fields and formatting values:
``records``; the recipe comparison: ``recipes``; KV-cache policy tables: ``policy_tables``. Their
names are re-exported here.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from .policy_tables import (  # noqa: F401 - re-exported
    NO_BUDGET,
    POLICY_COLUMNS,
    budget_fraction,
    fmt_budget,
    model_name,
    pivot_title,
    pivots_to_html,
    pivots_to_markdown,
    policy_leaderboard,
    policy_pivots,
    policy_to_html,
    policy_to_markdown,
)
from .recipes import RECIPE_COLUMNS, recipe_table, recipe_to_html, recipe_to_markdown, recipe_varies, steps_to  # noqa: F401 - re-exported
from .records import (  # noqa: F401 - re-exported
    _convergence_summary,
    _html_table,
    _md_escape,
    _md_table,
    _mean,
    _sort_int,
    accuracy_of,
    bucket_low,
    by_distance_of,
    convergence_of,
    first_line,
    fmt_bytes,
    fmt_count,
    fmt_lr,
    fmt_pct,
    is_finite,
    labels_of,
    lr_of,
    metrics_of,
    mixer_name,
    state_bytes_at,
)

# Column headers shared by the markdown and HTML leaderboards.
LEADERBOARD_COLUMNS = (
    "rank", "task", "seq_len", "d_model", "mixer", "accuracy", "convergence", "lr", "min-max", "seeds",
    "steps", "state bytes", "params", "tokens/s", "train s",
)


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------


def _group_key(record: dict) -> tuple:
    lab = labels_of(record)
    return (mixer_name(lab), str(lab.get("task") or "?"), lab.get("seq_len"), lab.get("d_model"))


def _per_lr_rows(records: Sequence[dict]) -> list[dict]:
    """One row per (mixer, task, seq_len, d_model, lr) over the finished runs, averaged over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") != "done":
            continue
        groups[(*_group_key(r), lr_of(r))].append(r)

    rows = []
    for (mixer, task, seq_len, d_model, lr), runs in groups.items():
        accs = [accuracy_of(r) for r in runs]
        finite = [a for a in accs if math.isfinite(a)]
        several = len(finite) > 1
        state = [s for s in (state_bytes_at(r) for r in runs) if s is not None]
        params = [r.get("params") for r in runs if is_finite(r.get("params"))]
        statuses = [convergence_of(r) for r in runs]
        rows.append({
            "mixer": mixer,
            "task": task,
            "seq_len": seq_len,
            "d_model": d_model,
            "lr": lr,
            "accuracy": sum(finite) / len(finite) if finite else float("nan"),
            "accuracy_min": min(finite) if several else None,
            "accuracy_max": max(finite) if several else None,
            "seeds": len(runs),
            "nan_seeds": len(accs) - len(finite),
            "convergence": _convergence_summary(statuses),
            "converged": all(st == "converged" for st in statuses),
            "steps": _mean(r.get("steps") for r in runs),
            "state_bytes": max(state) if state else None,
            "params": int(max(params)) if params else None,
            "tokens_per_s": _mean(r.get("tokens_per_s") for r in runs),
            "train_seconds": _mean(r.get("train_seconds") for r in runs),
            "ids": sorted(str(r.get("id", "")) for r in runs),
        })
    return rows


def _better(a: dict, b: dict) -> bool:
    """Whether per-lr row ``a`` beats ``b`` within a group: higher accuracy, then converged, then the
    smaller learning rate (a stable choice when two rates tie)."""
    acc_a = a["accuracy"] if math.isfinite(a["accuracy"]) else -1.0
    acc_b = b["accuracy"] if math.isfinite(b["accuracy"]) else -1.0
    if acc_a != acc_b:
        return acc_a > acc_b
    if a["converged"] != b["converged"]:
        return a["converged"]
    return (a["lr"] if a["lr"] is not None else math.inf) < (b["lr"] if b["lr"] is not None else math.inf)


def leaderboard(records: Sequence[dict], *, all_lrs: bool = False) -> list[dict]:
    """One row per (mixer, task, seq_len, d_model): the best learning rate's seed mean.

    Zoology's protocol: when the runs sweep learning rates, each group shows the rate whose mean
    accuracy over seeds is highest (ties: the converged one, then the smaller rate), with ``lr`` the
    chosen rate and ``lrs`` every rate tried; ``all_lrs=True`` keeps one row per rate instead.

    Each row: ``mixer, task, seq_len, d_model, lr, lrs, accuracy`` (mean over seeds with a finite
    accuracy, NaN when none), ``accuracy_min``/``accuracy_max`` (only when more than one finite
    seed, else None), ``seeds`` (runs), ``nan_seeds``, ``convergence`` (the seeds' status, or
    ``mixed (...)``), ``converged`` (every seed converged: the accuracy is a measurement, not a lower
    bound), ``steps`` (mean steps trained), ``state_bytes`` (at the run's seq_len), ``params``,
    ``tokens_per_s`` and ``train_seconds`` (means), ``rank`` (1 = best within task and seq_len) and
    ``ids``. Sorted by task, seq_len, then accuracy descending (NaN last).
    """
    per_lr = _per_lr_rows(records)
    tried: dict[tuple, list] = defaultdict(list)
    for row in per_lr:
        tried[(row["mixer"], row["task"], row["seq_len"], row["d_model"])].append(row["lr"])
    if all_lrs:
        rows = per_lr
    else:
        best: dict[tuple, dict] = {}
        for row in per_lr:
            key = (row["mixer"], row["task"], row["seq_len"], row["d_model"])
            if key not in best or _better(row, best[key]):
                best[key] = row
        rows = list(best.values())
    for row in rows:
        row["lrs"] = sorted(lr for lr in tried[(row["mixer"], row["task"], row["seq_len"], row["d_model"])]
                            if lr is not None)

    def order(row: dict) -> tuple:
        acc = row["accuracy"]
        return (row["task"], _sort_int(row["seq_len"]), not math.isfinite(acc),
                -acc if math.isfinite(acc) else 0.0, row["mixer"], _sort_int(row["d_model"]),
                row["lr"] if row["lr"] is not None else 0.0)

    rows.sort(key=order)
    rank: Counter = Counter()
    for row in rows:
        rank[(row["task"], row["seq_len"])] += 1
        row["rank"] = rank[(row["task"], row["seq_len"])]
    return rows


def best_lr_records(records: Sequence[dict]) -> list[dict]:
    """The finished runs at each group's chosen learning rate (``leaderboard``'s choice): what the
    plots draw unless every rate is asked for. Unfinished runs are kept (they are not drawn)."""
    chosen = {rid for row in leaderboard(records) for rid in row["ids"]}
    return [r for r in records if r.get("status") != "done" or str(r.get("id", "")) in chosen]


def lower_bounds(rows: Sequence[dict]) -> list[dict]:
    """The leaderboard rows whose accuracy is a lower bound: not every seed converged."""
    return [row for row in rows if not row.get("converged")]


def failed_runs(records: Sequence[dict]) -> list[dict]:
    """The failed runs: id, mixer, task, seq_len, d_model, seed and the error's first line."""
    out = []
    for r in records:
        if r.get("status") != "failed":
            continue
        lab = labels_of(r)
        out.append({
            "id": str(r.get("id", "")), "mixer": mixer_name(lab), "task": str(lab.get("task") or "?"),
            "seq_len": lab.get("seq_len"), "d_model": lab.get("d_model"), "seed": lab.get("seed"),
            "error": first_line(r.get("error")),
        })
    out.sort(key=lambda f: (f["task"], _sort_int(f["seq_len"]), f["mixer"], _sort_int(f["d_model"]),
                            _sort_int(f["seed"])))
    return out


def status_counts(records: Sequence[dict]) -> dict[str, int]:
    """Runs per status, in the order done, failed, running, pending, then any other."""
    counts = Counter(str(r.get("status") or "unknown") for r in records)
    order = ["done", "failed", "running", "pending"]
    return {s: counts[s] for s in order + sorted(set(counts) - set(order)) if counts[s] or s in order}


def provenance(records: Sequence[dict]) -> dict[str, dict[str, int]]:
    """How many runs carry each code version, torch version and device."""
    out = {}
    for field in ("code_version", "torch_version", "device"):
        c = Counter(str(r.get(field)) for r in records if r.get(field) not in (None, ""))
        out[field] = dict(sorted(c.items()))
    return out


def pareto_front(points: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """The memory frontier: the points that no cheaper-or-equal point beats or equals.

    ``points`` are ``(state_bytes, accuracy)`` pairs; pairs with a non-finite coordinate are
    ignored. Returns the front sorted by bytes ascending with strictly increasing accuracy: for
    every budget ``b``, the best accuracy reachable with at most ``b`` bytes is the accuracy of
    the last front point with bytes <= b (a step function).
    """
    clean = sorted(
        ((float(x), float(y)) for x, y in points if is_finite(x) and is_finite(y)),
        key=lambda p: (p[0], -p[1]),
    )
    front: list[tuple[float, float]] = []
    for x, y in clean:
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------


def _cells(row: dict) -> list[str]:
    spread = ""
    if row.get("accuracy_min") is not None:
        spread = f"{fmt_pct(row['accuracy_min'])}–{fmt_pct(row['accuracy_max'])}"
    seeds = str(row.get("seeds", ""))
    if row.get("nan_seeds"):
        seeds += f" ({row['nan_seeds']} NaN)"
    secs = row.get("train_seconds")
    steps = row.get("steps")
    return [
        str(row.get("rank", "")), str(row.get("task", "")), str(row.get("seq_len", "")),
        str(row.get("d_model", "")), str(row.get("mixer", "")), fmt_pct(row.get("accuracy")),
        str(row.get("convergence", "")), fmt_lr(row), spread,
        seeds, fmt_count(steps), fmt_bytes(row.get("state_bytes")), fmt_count(row.get("params")),
        fmt_count(row.get("tokens_per_s")), f"{secs:.1f}" if is_finite(secs) else "",
    ]


_NUMERIC = {0, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14}


def to_markdown(rows: Sequence[dict]) -> str:
    """The leaderboard as a GitHub-flavoured markdown table ('' rows -> a one-line note)."""
    if not rows:
        return "_No finished runs._\n"
    return _md_table(LEADERBOARD_COLUMNS, [_cells(r) for r in rows], _NUMERIC)


def to_html(rows: Sequence[dict]) -> str:
    """The leaderboard as an HTML ``<table>`` (text escaped); no rows -> a paragraph."""
    if not rows:
        return "<p><em>No finished runs.</em></p>\n"
    return _html_table(LEADERBOARD_COLUMNS, [_cells(r) for r in rows], _NUMERIC, "leaderboard")


FAILED_COLUMNS = ("id", "task", "seq_len", "d_model", "mixer", "seed", "error")


def _failed_cells(f: dict) -> list[str]:
    return [f["id"][:12], f["task"], str(f.get("seq_len", "")), str(f.get("d_model", "")), f["mixer"],
            str(f.get("seed", "")), f["error"]]


def failed_to_markdown(failed: Sequence[dict]) -> str:
    if not failed:
        return "_No failed runs._\n"
    return _md_table(FAILED_COLUMNS, [_failed_cells(f) for f in failed], {2, 3, 5})


def failed_to_html(failed: Sequence[dict]) -> str:
    if not failed:
        return "<p><em>No failed runs.</em></p>\n"
    return _html_table(FAILED_COLUMNS, [_failed_cells(f) for f in failed], {2, 3, 5}, "failed")


