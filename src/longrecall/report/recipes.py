"""How each recipe trained: one row per (mixer, task, length, width, loss, learning rate).

Shown by the report when the runs compare recipes (``recipe_varies``): the recipe study's table.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from .records import (
    _convergence_summary,
    _html_table,
    _md_table,
    _mean,
    _sort_int,
    accuracy_of,
    convergence_of,
    fmt_lr,
    fmt_pct,
    is_finite,
    labels_of,
    lr_of,
    mixer_name,
)

__all__ = ["steps_to", "recipe_varies", "recipe_table", "recipe_to_markdown", "recipe_to_html", "RECIPE_COLUMNS"]


def steps_to(record: dict, threshold: float) -> int | None:
    """The first evaluation step at which held-out accuracy reached ``threshold`` (None: never)."""
    for e in record.get("evals") or []:
        if is_finite(e.get("accuracy")) and e["accuracy"] >= threshold:
            return int(e.get("step", 0))
    return None


def recipe_varies(records: Sequence[dict]) -> bool:
    """Whether the finished runs compare recipes: more than one learning rate or loss in a group."""
    seen: dict[tuple, set] = defaultdict(set)
    for r in records:
        if r.get("status") == "done":
            lab = labels_of(r)
            base = (str(lab.get("mixer")), str(lab.get("task")), lab.get("seq_len"), lab.get("d_model"))
            seen[base].add((lr_of(r), lab.get("loss_on") or (r.get("config") or {}).get("loss_on")))
    return any(len(v) > 1 for v in seen.values())


def recipe_table(records: Sequence[dict], threshold: float = 0.9) -> list[dict]:
    """One row per (mixer, task, seq_len, d_model, loss, lr), seeds pooled: how each recipe trained.

    Each row: ``mixer`` (with ``[loss on all]`` where it applies), ``task, seq_len, d_model, loss_on,
    lr``, ``accuracy`` (final, seed mean), ``best`` (highest held-out accuracy seen), ``steps_to``
    (first evaluation step at ``threshold``, seed mean over the seeds that reached it; None if none
    did), ``reached`` (seeds that did), ``steps`` (trained), ``seconds`` (train + eval, seed mean),
    ``convergence``. Sorted by task, length, width, mixer, loss, lr.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") == "done":
            lab = labels_of(r)
            loss_on = lab.get("loss_on") or (r.get("config") or {}).get("loss_on") or "answers"
            mixer = mixer_name(r).split(" [loss on ")[0]  # the loss has its own column
            groups[(mixer, str(lab.get("task") or "?"), lab.get("seq_len"), lab.get("d_model"), loss_on,
                    lr_of(r))].append(r)
    rows = []
    for (mixer, task, seq_len, d_model, loss_on, lr), runs in groups.items():
        reached = [s for s in (steps_to(r, threshold) for r in runs) if s is not None]
        best = [max((e["accuracy"] for e in r.get("evals") or [] if is_finite(e.get("accuracy"))), default=float("nan"))
                for r in runs]
        rows.append({
            "mixer": mixer, "task": task, "seq_len": seq_len, "d_model": d_model, "loss_on": loss_on, "lr": lr,
            "accuracy": _mean(accuracy_of(r) for r in runs), "best": _mean(best),
            "steps_to": _mean(reached) if reached else None, "reached": len(reached), "seeds": len(runs),
            "steps": _mean(r.get("steps") for r in runs),
            "seconds": _mean((r.get("train_seconds") or 0) + (r.get("eval_seconds") or 0) for r in runs),
            "convergence": _convergence_summary([convergence_of(r) for r in runs]),
            "threshold": threshold,
        })
    rows.sort(key=lambda r: (r["task"], _sort_int(r["seq_len"]), _sort_int(r["d_model"]), r["mixer"], r["loss_on"],
                             r["lr"] if r["lr"] is not None else 0.0))
    return rows


RECIPE_COLUMNS = ("task", "seq_len", "d_model", "mixer", "loss", "lr", "accuracy", "best", "steps to {t}", "steps",
                  "seconds", "convergence")


def _recipe_cells(row: dict) -> list[str]:
    reached = ""
    if row["steps_to"] is not None:
        reached = f"{row['steps_to']:.0f}" + (f" ({row['reached']}/{row['seeds']} seeds)" if row["seeds"] > 1 else "")
    return [row["task"], str(row["seq_len"]), str(row["d_model"]), row["mixer"], row["loss_on"], fmt_lr(row),
            fmt_pct(row["accuracy"]), fmt_pct(row["best"]), reached or "—",
            f"{row['steps']:.0f}" if row["steps"] is not None else "",
            f"{row['seconds']:.0f}" if row["seconds"] else "",
            row["convergence"]]


def recipe_to_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return "_No finished runs._\n"
    headers = [c.format(t=rows[0]["threshold"]) for c in RECIPE_COLUMNS]
    return _md_table(headers, [_recipe_cells(r) for r in rows], {1, 2, 6, 7, 8, 9, 10})


def recipe_to_html(rows: Sequence[dict]) -> str:
    if not rows:
        return "<p><em>No finished runs.</em></p>\n"
    headers = [c.format(t=rows[0]["threshold"]) for c in RECIPE_COLUMNS]
    return _html_table(headers, [_recipe_cells(r) for r in rows], {1, 2, 6, 7, 8, 9, 10}, "recipe")
