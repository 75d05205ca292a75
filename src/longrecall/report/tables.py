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
    "rank", "task", "seq_len", "d_model", "mixer", "accuracy", "min-max", "seeds",
    "state bytes", "params", "tokens/s", "train s",
)


# ----------------------------------------------------------------------------------------------
# reading one record
# ----------------------------------------------------------------------------------------------


def labels_of(record: dict) -> dict:
    return record.get("labels") or {}


def metrics_of(record: dict) -> dict:
    return record.get("metrics") or {}


def mixer_name(record_or_labels: dict) -> str:
    """The mixer plus its non-default kwargs, e.g. ``sliding_window(window=64)``."""
    labels = record_or_labels.get("labels", record_or_labels) or {}
    name = str(labels.get("mixer") or "?")
    kwargs = labels.get("mixer_kwargs") or {}
    if kwargs:
        name += "(" + ", ".join(f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
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


def leaderboard(records: Sequence[dict]) -> list[dict]:
    """One row per (mixer, task, seq_len, d_model) over the finished runs, averaged over seeds.

    Each row: ``mixer, task, seq_len, d_model, accuracy`` (mean over seeds with a finite accuracy,
    NaN when none), ``accuracy_min``/``accuracy_max`` (only when more than one finite seed, else
    None), ``seeds`` (runs), ``nan_seeds``, ``state_bytes`` (at the run's seq_len), ``params``,
    ``tokens_per_s`` and ``train_seconds`` (means), ``rank`` (1 = best within task and seq_len)
    and ``ids``. Sorted by task, seq_len, then accuracy descending (NaN last).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") != "done":
            continue
        lab = labels_of(r)
        key = (mixer_name(lab), str(lab.get("task") or "?"), lab.get("seq_len"), lab.get("d_model"))
        groups[key].append(r)

    rows = []
    for (mixer, task, seq_len, d_model), runs in groups.items():
        accs = [accuracy_of(r) for r in runs]
        finite = [a for a in accs if math.isfinite(a)]
        several = len(finite) > 1
        state = [s for s in (state_bytes_at(r) for r in runs) if s is not None]
        params = [r.get("params") for r in runs if is_finite(r.get("params"))]
        rows.append({
            "mixer": mixer,
            "task": task,
            "seq_len": seq_len,
            "d_model": d_model,
            "accuracy": sum(finite) / len(finite) if finite else float("nan"),
            "accuracy_min": min(finite) if several else None,
            "accuracy_max": max(finite) if several else None,
            "seeds": len(runs),
            "nan_seeds": len(accs) - len(finite),
            "state_bytes": max(state) if state else None,
            "params": int(max(params)) if params else None,
            "tokens_per_s": _mean(r.get("tokens_per_s") for r in runs),
            "train_seconds": _mean(r.get("train_seconds") for r in runs),
            "ids": sorted(str(r.get("id", "")) for r in runs),
        })

    def order(row: dict) -> tuple:
        acc = row["accuracy"]
        return (row["task"], _sort_int(row["seq_len"]), not math.isfinite(acc),
                -acc if math.isfinite(acc) else 0.0, row["mixer"], _sort_int(row["d_model"]))

    rows.sort(key=order)
    rank: Counter = Counter()
    for row in rows:
        rank[(row["task"], row["seq_len"])] += 1
        row["rank"] = rank[(row["task"], row["seq_len"])]
    return rows


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
    return [
        str(row.get("rank", "")), str(row.get("task", "")), str(row.get("seq_len", "")),
        str(row.get("d_model", "")), str(row.get("mixer", "")), fmt_pct(row.get("accuracy")), spread,
        seeds, fmt_bytes(row.get("state_bytes")), fmt_count(row.get("params")),
        fmt_count(row.get("tokens_per_s")), f"{secs:.1f}" if is_finite(secs) else "",
    ]


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], body: list[list[str]], right: set[int]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


_NUMERIC = {0, 2, 3, 5, 6, 7, 8, 9, 10, 11}


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
