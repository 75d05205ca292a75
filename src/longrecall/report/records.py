"""Reading run records (rows of the results store) and formatting their values.

Pure Python (no torch, no matplotlib): a record is a dict with ``status``, ``labels`` (mixer,
mixer_kwargs, task, seq_len, d_model, seed, lr, loss_on, ...), ``metrics``, ``state_bytes``,
``params``, ``convergence`` and timing fields. ``by_distance`` and ``state_bytes`` are read from the
record's own column (as the results store splits them out) or else from inside ``metrics``.
Anything missing is tolerated and shown as blank.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from typing import Any, Iterable, Sequence

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
    if kwargs and all(isinstance(v, dict) for v in kwargs.values()):
        # a stack's kwargs are keyed by mixer: name only those of the mixers the stack holds
        kwargs = {k: v for k, v in kwargs.items() if k in name.split("+")}
        if set(kwargs) == {name}:  # one mixer in every layer: its own kwargs, as a single mixer's read
            kwargs = kwargs[name]
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
