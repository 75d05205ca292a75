"""Leaderboard tables from run records (rows of the results store).

Pure Python (no torch, no matplotlib): a record is a dict with ``status``, ``labels`` (mixer,
mixer_kwargs, task, seq_len, d_model, seed, ...), ``metrics``, ``state_bytes``, ``params`` and
timing fields. ``by_distance`` and ``state_bytes`` are read from the record's own column (as the
results store splits them out) or else from inside ``metrics``. Anything missing is tolerated and
shown as blank.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

# Column headers shared by the markdown and HTML leaderboards.
LEADERBOARD_COLUMNS = (
    "rank", "task", "seq_len", "d_model", "mixer", "accuracy", "convergence", "lr", "min-max", "seeds",
    "steps", "state bytes", "params", "tokens/s", "train s",
)


# ----------------------------------------------------------------------------------------------
# reading one record
# ----------------------------------------------------------------------------------------------


def labels_of(record: dict) -> dict:
    return record.get("labels") or {}


def metrics_of(record: dict) -> dict:
    return record.get("metrics") or {}


def mixer_name(record_or_labels: dict) -> str:
    """The mixer plus its non-default kwargs, e.g. ``sliding_window(window=64)``; a run trained with
    the next-token loss on every position is marked ``[loss on all]`` (it is another recipe)."""
    labels = record_or_labels.get("labels", record_or_labels) or {}
    name = str(labels.get("mixer") or "?")
    kwargs = labels.get("mixer_kwargs") or {}
    if kwargs:
        name += "(" + ", ".join(f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
    loss_on = labels.get("loss_on")
    if loss_on is None and "labels" in record_or_labels:
        loss_on = (record_or_labels.get("config") or {}).get("loss_on")
    if loss_on not in (None, "answers"):
        name += f" [loss on {loss_on}]"
    return name


def by_distance_of(record: dict) -> dict:
    """``{bucket label: {"accuracy", "scored"}}``: the store's own column, else inside metrics."""
    return record.get("by_distance") or metrics_of(record).get("by_distance") or {}


def accuracy_of(record: dict) -> float:
    """Final accuracy as a float; NaN when missing or not a number."""
    value = metrics_of(record).get("accuracy")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def lr_of(record: dict) -> float | None:
    """The run's learning rate: its label (arena runs), else its config."""
    value = labels_of(record).get("lr")
    if value is None:
        value = (record.get("config") or {}).get("lr")
    return float(value) if is_finite(value) else None


def convergence_of(record: dict) -> str:
    """The run's convergence status (``longrecall.convergence``): the store's column, else computed
    from the run's stored loss and held-out histories (records written before statuses existed)."""
    value = record.get("convergence") or metrics_of(record).get("convergence")
    if value:
        return str(value)
    from ..convergence import status

    target = (record.get("config") or {}).get("target_accuracy", 0.99)
    return status(record.get("history") or [], record.get("evals") or [], target)


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def state_bytes_at(record: dict, seq_len: int | None = None) -> int | None:
    """Bytes of model state per sequence at ``seq_len`` (default: the run's own seq_len)."""
    if seq_len is None:
        seq_len = labels_of(record).get("seq_len")
    table = record.get("state_bytes") or metrics_of(record).get("state_bytes") or {}
    if not table:
        return None
    value = table.get(str(seq_len), table.get(seq_len)) if seq_len is not None else None
    if value is None and len(table) == 1:  # evaluated at a single length only
        value = next(iter(table.values()))
    return int(value) if is_finite(value) else None


def first_line(text: Any) -> str:
    text = "" if text is None else str(text).strip()
    return text.splitlines()[0] if text else "(no error message)"


def bucket_low(label: str) -> int:
    """Lower bound of a distance bucket label: '0' -> 0, '4-7' -> 4."""
    return int(str(label).split("-")[0])


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------


def _sort_int(x: Any) -> int:
    return int(x) if is_finite(x) else -1


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if is_finite(v)]
    return sum(vals) / len(vals) if vals else None


def _convergence_summary(statuses: list[str]) -> str:
    """One status when every seed agrees, else ``mixed (2 converged, 1 plateau)``."""
    counts = Counter(statuses)
    if len(counts) == 1:
        return statuses[0]
    return "mixed (" + ", ".join(f"{n} {st}" for st, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"


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
            f"{row['steps']:.0f}" if row["steps"] is not None else "", f"{row['seconds']:.0f}" if row["seconds"] else "",
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


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if is_finite(x) else "NaN"


def fmt_bytes(n: Any) -> str:
    if not is_finite(n):
        return ""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def fmt_count(n: Any) -> str:
    if not is_finite(n):
        return ""
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.3g}M"
    if abs(n) >= 1e4:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


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


def fmt_lr(row: dict) -> str:
    """``3e-03``, or ``1e-03 (best of 3)`` when the group swept learning rates."""
    lr = row.get("lr")
    if not is_finite(lr):
        return ""
    text = f"{lr:.0e}" if f"{lr:.0e}" == f"{lr:.1e}".replace(".0e", "e") else f"{lr:.1e}"
    n = len(row.get("lrs") or [])
    return f"{text} (best of {n})" if n > 1 else text


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], body: list[list[str]], right: set[int]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


_NUMERIC = {0, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14}


def to_markdown(rows: Sequence[dict]) -> str:
    """The leaderboard as a GitHub-flavoured markdown table ('' rows -> a one-line note)."""
    if not rows:
        return "_No finished runs._\n"
    return _md_table(LEADERBOARD_COLUMNS, [_cells(r) for r in rows], _NUMERIC)


def _html_table(headers: Sequence[str], body: list[list[str]], right: set[int], cls: str) -> str:
    out = [f'<table class="{cls}">', "<thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in headers]
    out.append("</tr></thead>\n<tbody>")
    for cells in body:
        tds = "".join(
            f'<td class="num">{html.escape(c)}</td>' if i in right else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        out.append(f"<tr>{tds}</tr>")
    out.append("</tbody></table>\n")
    return "\n".join(out)


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


# ----------------------------------------------------------------------------------------------
# KV-cache policy evaluations (rows of the store's policy_evals table)
# ----------------------------------------------------------------------------------------------

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
    if isinstance(budget, float):
        inverse = 1.0 / budget if budget > 0 else 0.0
        if budget == 1.0:
            return "1"
        if inverse and abs(inverse - round(inverse)) < 1e-9:
            return f"1/{int(round(inverse))}"
        return f"{budget:g}"
    return f"{budget} tok"


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
    ``accuracy_min/max`` (several seeds), ``reference`` (the same runs without a policy),
    ``delta``, ``state_bytes`` (after the context), ``state_bytes_end`` (after the whole
    sequence), ``resident_bytes`` (retrieval policies), ``seeds``, ``eval_seconds``, ``skipped``,
    ``failed``, ``note`` (the first skipped/failed reason) and ``converged`` (every evaluated model's
    training converged: the policy's accuracy is measured on a trained model, not a lower bound's). Sorted by task, seq_len, model, then
    fraction descending and accuracy descending.
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
        reference = _mean(r["reference"] for r in items)
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


def pivots_to_markdown(pivots: Sequence[dict]) -> str:
    """One markdown table per (task, seq_len, model): policies x budgets (accuracy)."""
    if not pivots:
        return "_No policy evaluations._\n"
    parts = []
    for pivot in pivots:
        headers, body, right = _pivot_table(pivot)
        parts += [f"**{_md_escape(pivot_title(pivot))}**", "", _md_table(headers, body, right)]
    return "\n".join(parts)


def pivots_to_html(pivots: Sequence[dict]) -> str:
    if not pivots:
        return "<p><em>No policy evaluations.</em></p>\n"
    parts = []
    for pivot in pivots:
        headers, body, right = _pivot_table(pivot)
        parts += [f"<h3>{html.escape(pivot_title(pivot))}</h3>", _html_table(headers, body, right, "pivot")]
    return "\n".join(parts)
