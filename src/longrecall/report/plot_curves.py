"""Training and learning curves: loss and held-out accuracy against steps."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .plot_style import (
    Style,
    _done,
    _empty,
    _figure,
    _hide_unused,
    _legend,
    _note,
    _percent_y,
    _save,
    _sorted_values,
    _suptitle,
    style_for,
)
from .tables import is_finite, labels_of, lr_of, mixer_name

# ----------------------------------------------------------------------------------------------
# 4. training curves
# ----------------------------------------------------------------------------------------------


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out, acc, q = [], 0.0, []
    for v in values:
        q.append(v)
        acc += v
        if len(q) > window:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def plot_training_curves(records: Sequence[dict], path, style: Style | None = None, max_groups: int = 6) -> Path:
    """Training loss vs step (left; running mean when long) and eval accuracy vs step (right) for
    every finished run; one row per (task, seq_len), colour per mixer, line style per width."""
    title = "Training curves"
    style = style or style_for(records)
    runs = [r for r in _done(records) if r.get("history") or r.get("evals")]
    if not runs:
        return _empty(path, title, "no finished runs with a training history")
    groups = sorted({(str(labels_of(r).get("task") or "?"), labels_of(r).get("seq_len")) for r in runs},
                    key=lambda g: (g[0], g[1] if is_finite(g[1]) else -1))
    shown = groups[-max_groups:]
    fig, axes = _figure(len(shown), 2, 5.0, 3.0)
    mixers = sorted({mixer_name(r) for r in runs})
    widths = _sorted_values(labels_of(r).get("d_model") for r in runs)
    smoothed = False
    for i, (task, seq_len) in enumerate(shown):
        ax_loss, ax_acc = axes[i]
        mine = [r for r in runs
                if (str(labels_of(r).get("task") or "?"), labels_of(r).get("seq_len")) == (task, seq_len)]
        mine.sort(key=lambda r: (mixer_name(r), str(labels_of(r).get("d_model")), str(labels_of(r).get("seed"))))
        any_loss = any_eval = False
        all_positive = True
        for r in mine:
            m, w = mixer_name(r), labels_of(r).get("d_model")
            hist = [h for h in (r.get("history") or []) if is_finite(h.get("step")) and is_finite(h.get("loss"))]
            if hist:
                steps, losses = [h["step"] for h in hist], [h["loss"] for h in hist]
                window = max(1, len(losses) // 50)
                smoothed |= window > 1
                all_positive &= all(v > 0 for v in losses)
                ax_loss.plot(steps, _smooth(losses, window), color=style.color(m), linestyle=style.linestyle(w),
                             linewidth=1.2, alpha=0.85)
                any_loss = True
            evals = [e for e in (r.get("evals") or []) if is_finite(e.get("step")) and is_finite(e.get("accuracy"))]
            if evals:
                ax_acc.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], color=style.color(m),
                            linestyle=style.linestyle(w), marker=style.marker(m), markersize=3, linewidth=1.2,
                            alpha=0.85)
                any_eval = True
        if any_loss and all_positive:
            ax_loss.set_yscale("log")
        if not any_loss:
            _note(ax_loss, "no training history")
        if not any_eval:
            _note(ax_acc, "no evaluations recorded")
        ax_loss.set_title(f"{task}, seq_len={seq_len}: training loss", fontsize=10)
        ax_acc.set_title(f"{task}, seq_len={seq_len}: eval accuracy", fontsize=10)
        log_loss = any_loss and all_positive
        ax_loss.set_ylabel("cross-entropy loss (nats, log scale)" if log_loss else "cross-entropy loss (nats)")
        ax_loss.grid(True, alpha=0.3)
        _percent_y(ax_acc, "eval accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("training step")
    note = "one line per run" + ("; loss is a running mean" if smoothed else "")
    if len(shown) < len(groups):
        note += f"; last {len(shown)} of {len(groups)} (task, length) groups"
    _suptitle(fig, title, note)
    _legend(fig, style, mixers, widths)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 5. accuracy vs KV-cache budget
# ----------------------------------------------------------------------------------------------


def plot_learning_curves(records: Sequence[dict], path, style: Style | None = None, max_panels: int = 30) -> Path:
    """Held-out accuracy vs step, one panel per mixer (and task, length, width), one line per recipe:
    colour per learning rate, solid for the loss on answers, dashed for the loss on every position.
    Drawn when the runs compare recipes (``tables.recipe_varies``)."""
    title = "Learning curves by recipe"
    from matplotlib import colormaps

    runs = [r for r in _done(records) if r.get("evals")]
    if not runs:
        return _empty(path, title, "no finished runs with evaluations")
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        lab = labels_of(r)
        panels[(mixer_name(r).split(" [loss on ")[0], str(lab.get("task") or "?"), lab.get("seq_len"),
                lab.get("d_model"))].append(r)
    keys = sorted(panels, key=lambda k: (k[1], _sort_key(k[2]), _sort_key(k[3]), k[0]))[:max_panels]
    lrs = _sorted_values(lr_of(r) for r in runs)
    cmap = colormaps["viridis"]
    colour = {lr: cmap(0.1 + 0.75 * i / max(1, len(lrs) - 1)) for i, lr in enumerate(lrs)}
    ncols = min(5, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _figure(nrows, ncols, 3.2, 2.5)
    for k, key in enumerate(keys):
        ax = axes[k // ncols][k % ncols]
        for r in sorted(panels[key], key=lambda r: (str(labels_of(r).get("loss_on")), lr_of(r) or 0)):
            evals = [e for e in r["evals"] if is_finite(e.get("accuracy"))]
            loss_on = labels_of(r).get("loss_on") or (r.get("config") or {}).get("loss_on") or "answers"
            ax.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], color=colour.get(lr_of(r), "#333333"),
                    linestyle="-" if loss_on == "answers" else "--", linewidth=1.3)
        mixer, task, seq_len, d_model = key
        ax.set_title(f"{mixer}" + (f" ({task}, T={seq_len}, d={d_model})" if len(set(k[1:] for k in keys)) > 1 else ""),
                     fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        _percent_y(ax, "held-out accuracy" if k % ncols == 0 else None)
    _hide_unused(axes, len(keys))
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour[lr], label=f"lr {lr:g}") for lr in lrs]
    handles += [Line2D([], [], linestyle="", label=""),
                Line2D([], [], color="#444444", linestyle="-", label="loss on answers"),
                Line2D([], [], color="#444444", linestyle="--", label="loss on every\nposition")]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9, title="recipe")
    group = keys[0][1:]
    _suptitle(fig, title, f"{group[0]}, T={group[1]}, d_model={group[2]}" if len(set(k[1:] for k in keys)) == 1 else "")
    return _save(fig, path)


def _sort_key(value):
    return (not is_finite(value), value if is_finite(value) else 0, str(value))
