"""Paper-ready figures from run records (matplotlib, Agg canvas, PNG).

Each ``plot_*`` function takes the records, writes one PNG (atomically) and returns its path.
Colours and markers are per mixer and line styles per width; pass one ``Style`` (from
``style_for(all_records)``) to every plot to keep them consistent across figures. Empty input, a
single run, NaN accuracies and missing ``by_distance`` all give a readable figure (with a note)
instead of an error.

matplotlib is the optional extra ``plot``: ``pip install 'longrecall[plot]'``. Only the Agg
canvas is used (``matplotlib.figure.Figure``, never pyplot), so no global backend is touched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .evaluations import evaluation_points
from .plot_budget import plot_accuracy_vs_budget
from .plot_curves import plot_learning_curves, plot_training_curves
from .plot_style import (  # noqa: F401 - re-exported
    DPI,
    INSTALL_HINT,
    KNOWN_MIXERS,
    LINESTYLES,
    MARKERS,
    PALETTE,
    POLICY_MARKERS,
    POLICY_PALETTE,
    PlotDependencyError,
    Style,
    _bytes_ticks,
    _chance_handle,
    _chance_line,
    _done,
    _empty,
    _figure,
    _hide_unused,
    _hollow_handle,
    _legend,
    _log2_ticks,
    _note,
    _percent_y,
    _save,
    _sorted_values,
    _suptitle,
    require_matplotlib,
    style_for,
)
from .tables import (
    accuracy_of,
    bucket_low,
    by_distance_of,
    convergence_of,
    is_finite,
    labels_of,
    leaderboard,
    mixer_name,
    pareto_front,
    policy_leaderboard,
    state_bytes_at,
)

# ----------------------------------------------------------------------------------------------
# 1. accuracy vs sequence length
# ----------------------------------------------------------------------------------------------


def plot_accuracy_vs_length(records: Sequence[dict], path, style: Style | None = None) -> Path:
    """Mean accuracy over seeds vs sequence length (log2 x), one line per mixer, error bars from
    the min to the max seed; one panel per (task, width)."""
    title = "Accuracy vs sequence length"
    style = style or style_for(records)
    rows = [r for r in leaderboard(records) if r["seq_len"] is not None]
    if not any(math.isfinite(r["accuracy"]) for r in rows):
        return _empty(path, title, "no finished runs with an accuracy")
    tasks = sorted({r["task"] for r in rows})
    widths = _sorted_values(r["d_model"] for r in rows)
    fig, axes = _figure(len(tasks), len(widths))
    mixers = sorted({r["mixer"] for r in rows if math.isfinite(r["accuracy"])})
    for i, task in enumerate(tasks):
        for j, width in enumerate(widths):
            ax = axes[i][j]
            panel = [r for r in rows if r["task"] == task and r["d_model"] == width]
            _chance_line(ax, [r for r in _done(records) if str(labels_of(r).get("task") or "?") == task
                              and labels_of(r).get("d_model") == width])
            ax.set_title(f"{task}, d_model={width}", fontsize=10)
            if not panel:
                _note(ax, "no runs")
            for m in mixers:
                pts = sorted((r for r in panel if r["mixer"] == m), key=lambda r: r["seq_len"])
                if not pts:
                    continue
                xs = [r["seq_len"] for r in pts]
                ys = [r["accuracy"] for r in pts]
                lo = [r["accuracy"] - r["accuracy_min"] if r["accuracy_min"] is not None else 0 for r in pts]
                hi = [r["accuracy_max"] - r["accuracy"] if r["accuracy_max"] is not None else 0 for r in pts]
                ax.errorbar(xs, ys, yerr=[lo, hi], color=style.color(m), capsize=3, linewidth=1.6, label=m)
                for r, x, y in zip(pts, xs, ys, strict=True):  # filled: converged; hollow: a lower bound
                    ax.plot([x], [y], linestyle="", marker=style.marker(m), markersize=6, color=style.color(m),
                            markerfacecolor=style.color(m) if r.get("converged") else "white", zorder=3)
            ax.set_xscale("log", base=2)
            lens = [r["seq_len"] for r in panel]
            _log2_ticks(ax, lens)
            if len(set(lens)) == 1:
                ax.set_xlim(lens[0] / 1.5, lens[0] * 1.5)
            ax.set_xlabel("sequence length (tokens, log2 scale)")
            _percent_y(ax, "accuracy (% of scored tokens)" if j == 0 else None)
    _suptitle(fig, title, "mean over seeds (best learning rate); bars span the min–max seed; hollow: not converged")
    _legend(fig, style, mixers, extra=[_hollow_handle(), _chance_handle()])
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 2. accuracy vs state bytes: the memory frontier
# ----------------------------------------------------------------------------------------------


def _policy_points(records: Sequence[dict], policy_evals: Sequence[dict]) -> list[dict]:
    """Frontier points of policy evaluations: seed means of accuracy and of the bytes held at the
    end of the sequence, one per (task, seq_len, model, policy, budget)."""
    pts = []
    for row in policy_leaderboard(records, policy_evals):
        nbytes = row.get("state_bytes_end")
        if math.isfinite(row["accuracy"]) and is_finite(nbytes) and nbytes > 0:
            mixer = row["model"].rsplit(" d=", 1)[0]
            pts.append({"task": row["task"], "seq_len": row["seq_len"], "mixer": f"{mixer}+{row['policy']}",
                        "policy": row["policy"], "d_model": None, "acc": row["accuracy"], "bytes": nbytes,
                        "converged": row["converged"],
                        "budget": row["budget"]})
    return pts


def plot_accuracy_vs_state_bytes(records: Sequence[dict], path, style: Style | None = None,
                                 policy_evals: Sequence[dict] = (), evaluations: Sequence[dict] = ()) -> Path:
    """The memory frontier: accuracy vs state bytes per sequence (log x), one point per run
    (marker and colour per mixer, annotated with its width), and the Pareto front (best accuracy
    for at most that many bytes) as a step line; one panel per (task, seq_len).

    ``policy_evals`` add a translucent point per (model, KV-cache policy, budget), labelled
    ``attention+<policy>``, at the bytes its model held after the whole sequence (the same length
    the mixers' state is measured at); on a converged model they take part in the Pareto front.
    Translucent, not hollow: hollow marks a run that did not converge."""
    title = "Accuracy vs state bytes per sequence: the memory frontier"
    style = style or style_for(records, policy_evals)
    pts = []
    for r in _done(records):
        lab = labels_of(r)
        acc, nbytes = accuracy_of(r), state_bytes_at(r)
        if math.isfinite(acc) and nbytes is not None and nbytes > 0:
            pts.append({"task": str(lab.get("task") or "?"), "seq_len": lab.get("seq_len"), "mixer": mixer_name(lab),
                        "d_model": lab.get("d_model"), "acc": acc, "bytes": nbytes,
                        "converged": convergence_of(r) == "converged"})
    ppts = _policy_points(records, policy_evals) if policy_evals else []
    epts = evaluation_points(evaluations)
    pts_all = pts + ppts + epts
    if not pts_all:
        return _empty(path, title, "no finished runs with both an accuracy and state bytes")
    from matplotlib.colors import to_rgba

    groups = sorted({(p["task"], p["seq_len"]) for p in pts_all}, key=lambda g: (g[0], g[1] if is_finite(g[1]) else -1))
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    mixers = sorted({p["mixer"] for p in pts})
    policy_labels = sorted({p["mixer"] for p in ppts})
    systems = list(dict.fromkeys(p["mixer"] for p in epts))
    system_color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(systems)}
    legend_rows = (len(mixers) + (len(policy_labels) + 2 if policy_labels else 0) + (len(systems) + 2 if systems else 0)
                   + 6)  # + the front's entry
    fig, axes = _figure(nrows, ncols, 4.8, max(3.7, 0.2 * legend_rows / nrows))
    for k, (task, seq_len) in enumerate(groups):
        ax = axes[k // ncols][k % ncols]
        panel = [p for p in pts if p["task"] == task and p["seq_len"] == seq_len]
        ppanel = [p for p in ppts if p["task"] == task and p["seq_len"] == seq_len]
        epanel = [p for p in epts if p["task"] == task and p["seq_len"] == seq_len]
        _chance_line(ax, [r for r in _done(records) if str(labels_of(r).get("task") or "?") == task
                          and labels_of(r).get("seq_len") == seq_len])
        for m in mixers:
            for converged in (True, False):  # filled: converged; hollow: the accuracy is a lower bound
                mine = [p for p in panel if p["mixer"] == m and p["converged"] == converged]
                if mine:
                    ax.scatter([p["bytes"] for p in mine], [p["acc"] for p in mine], marker=style.marker(m), s=36,
                               facecolors=style.color(m) if converged else "white", edgecolors=style.color(m),
                               linewidths=0.5 if converged else 1.2, alpha=0.9, zorder=3)
        for m in policy_labels:
            mine = [p for p in ppanel if p["mixer"] == m]
            if mine:
                policy = mine[0]["policy"]
                color = style.policy_color(policy)
                ax.scatter([p["bytes"] for p in mine], [p["acc"] for p in mine], facecolors=[to_rgba(color, 0.3)],
                           edgecolors=[to_rgba(color, 0.9)], marker=style.policy_marker(policy), s=26,
                           linewidths=0.9, zorder=3)
        for m in systems:
            mine = [p for p in epanel if p["mixer"] == m]
            if mine:
                ax.scatter([p["bytes"] for p in mine], [p["acc"] for p in mine], color=system_color[m], marker="D",
                           s=30, edgecolors="black", linewidths=0.4, alpha=0.9, zorder=3)
        # label each (mixer, width) once, at its best seed; alternate offsets to limit overlaps
        best: dict = {}
        for p in panel:
            key = (p["mixer"], p["d_model"])
            if key not in best or p["acc"] > best[key]["acc"]:
                best[key] = p
        for n, p in enumerate(sorted(best.values(), key=lambda p: (p["bytes"], p["acc"]))):
            ax.annotate(f"d={p['d_model']}", (p["bytes"], p["acc"]), xytext=(5, 4 if n % 2 == 0 else -10),
                        textcoords="offset points", fontsize=7, color=style.color(p["mixer"]))
        drawn = panel + ppanel + epanel
        lo, hi = min(p["bytes"] for p in drawn), max(p["bytes"] for p in drawn)
        lo, hi = lo / 1.6, hi * 2.2
        # the front runs through converged points only: a lower bound is not a trade-off
        front = pareto_front((p["bytes"], p["acc"]) for p in drawn if p.get("converged", True))
        if front:
            xs = [x for x, _ in front] + [hi]
            ys = [y for _, y in front] + [front[-1][1]]
            ax.step(xs, ys, where="post", color="black", linewidth=1.2, linestyle="--", alpha=0.8, zorder=2)
            ax.scatter([x for x, _ in front], [y for _, y in front], s=90, facecolors="none", edgecolors="black",
                       linewidths=0.9, zorder=4)
        else:
            _note(ax, "no converged run: no front")
        ax.set_xscale("log", base=2)
        ax.set_xlim(lo, hi)
        _bytes_ticks(ax, lo, hi)
        ax.set_xlabel("state per sequence (bytes, log scale)")
        ax.set_title(f"{task}, seq_len={seq_len}", fontsize=10)
        metrics = {p["metric"] for p in epanel}
        if metrics and not panel:  # a panel of evaluations only: say what its y axis measures
            _percent_y(ax, " / ".join(sorted(metrics)))
        else:
            _percent_y(ax, "accuracy (% of scored tokens)" if k % ncols == 0 else None)
    _hide_unused(axes, len(groups))
    from matplotlib.lines import Line2D

    front_handle = Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
                          label="Pareto front of\nconverged runs\n(best accuracy\nwithin a budget)")
    extra = []
    if policy_labels:
        extra += [Line2D([], [], linestyle="", label=""), Line2D([], [], linestyle="", label="KV-cache policies:")]
        extra += [Line2D([], [], linestyle="", marker=style.policy_marker(p.split("+", 1)[1]),
                         markerfacecolor=to_rgba(style.policy_color(p.split("+", 1)[1]), 0.3),
                         markeredgecolor=style.policy_color(p.split("+", 1)[1]), label=p) for p in policy_labels]
    if systems:
        extra += [Line2D([], [], linestyle="", label=""), Line2D([], [], linestyle="", label="kv-eval / memory-eval:")]
        extra += [Line2D([], [], linestyle="", marker="D", color=system_color[m], markeredgecolor="black",
                         label=m) for m in systems]
    extra += [Line2D([], [], linestyle="", label=""), front_handle, _hollow_handle(), _chance_handle()]
    detail = "one point per run (best learning rate), labelled with its width; hollow: not converged"
    if policy_labels:
        detail = ("filled: a converged run (its width labelled); hollow: not converged; translucent: attention + "
                  "a KV policy, one per budget")
    if systems:
        detail += "; diamonds: kv-eval / memory-eval, one per system and budget"
    _suptitle(fig, title, detail)
    _legend(fig, style, mixers, lines=False, extra=extra)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 3. accuracy vs key-query distance
# ----------------------------------------------------------------------------------------------


def distance_curves(records: Sequence[dict]) -> dict[tuple, list[tuple[int, float, int]]]:
    """Per (task, seq_len, mixer, d_model): ``[(bucket_low, accuracy, scored), ...]`` pooled over
    seeds (weighted by scored positions), sorted by distance; runs without by_distance skipped."""
    pooled: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for r in _done(records):
        by_distance = by_distance_of(r)
        lab = labels_of(r)
        key = (str(lab.get("task") or "?"), lab.get("seq_len"), mixer_name(lab), lab.get("d_model"))
        for label, cell in by_distance.items():
            try:
                low = bucket_low(label)
            except ValueError:
                continue
            acc, scored = (cell or {}).get("accuracy"), (cell or {}).get("scored") or 0
            if is_finite(acc) and is_finite(scored) and scored > 0:
                slot = pooled[key][low]
                slot[0] += acc * scored
                slot[1] += int(scored)
    return {
        key: [(low, c / n, n) for low, (c, n) in sorted(buckets.items())]
        for key, buckets in pooled.items() if buckets
    }


def plot_accuracy_vs_distance(records: Sequence[dict], path, style: Style | None = None,
                              max_lengths: int = 4) -> Path:
    """Accuracy vs key-query distance (bucket lower bound, log2 x), one line per mixer (line style
    per width), pooled over seeds; one panel per sequence length (the ``max_lengths`` longest) and
    task."""
    title = "Accuracy vs key–query distance"
    style = style or style_for(records)
    curves = distance_curves(records)
    if not curves:
        return _empty(path, title, "no finished runs with accuracy by distance")
    unconverged = {(str(labels_of(r).get("task") or "?"), labels_of(r).get("seq_len"), mixer_name(r),
                    labels_of(r).get("d_model")) for r in _done(records) if convergence_of(r) != "converged"}
    tasks = sorted({k[0] for k in curves})
    lens_by_task = {t: _sorted_values(k[1] for k in curves if k[0] == t)[-max_lengths:] for t in tasks}
    ncols = max(len(v) for v in lens_by_task.values())
    fig, axes = _figure(len(tasks), ncols, 4.6, 3.4)
    mixers = sorted({k[2] for k in curves})
    widths = _sorted_values(k[3] for k in curves)
    for i, task in enumerate(tasks):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(lens_by_task[task]):
                ax.set_axis_off()
                continue
            seq_len = lens_by_task[task][j]
            lows = set()
            for (t, L, m, w), pts in sorted(curves.items(), key=lambda kv: (kv[0][2], str(kv[0][3]))):
                if t != task or L != seq_len:
                    continue
                lows.update(p[0] for p in pts)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style.color(m), marker=style.marker(m),
                        markersize=4, linestyle=style.linestyle(w), linewidth=1.5,
                        markerfacecolor="white" if (t, L, m, w) in unconverged else style.color(m))
            ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
            ticks = sorted(lows)
            if len(ticks) > 9:  # keep every other tick, always the last
                ticks = ticks[::-2][::-1]
            _log2_ticks(ax, ticks)
            ax.set_xlabel("key–query distance (tokens, bucket start, log2)")
            ax.set_title(f"{task}, seq_len={seq_len}", fontsize=10)
            _percent_y(ax, "accuracy (% of scored tokens)" if j == 0 else None)
    detail = "pooled over seeds"
    dropped = {t: len(_sorted_values(k[1] for k in curves if k[0] == t)) - len(lens_by_task[t]) for t in tasks}
    if any(dropped.values()):
        detail += f"; the {max_lengths} longest sequence lengths per task"
    _suptitle(fig, title, detail + "; hollow markers: not converged")
    _legend(fig, style, mixers, widths, extra=[_hollow_handle()])
    return _save(fig, path)


PLOTS = {
    "accuracy_vs_length": plot_accuracy_vs_length,
    "accuracy_vs_state_bytes": plot_accuracy_vs_state_bytes,
    "accuracy_vs_distance": plot_accuracy_vs_distance,
    "training_curves": plot_training_curves,
    "accuracy_vs_budget": plot_accuracy_vs_budget,
    "learning_curves": plot_learning_curves,
}
# the plots that also draw KV-cache policy evaluations (``policy_evals=``)
POLICY_PLOTS = ("accuracy_vs_state_bytes", "accuracy_vs_budget")
