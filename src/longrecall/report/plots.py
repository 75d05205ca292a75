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

import io
import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..checkpoint import atomic_write_bytes
from .tables import (
    accuracy_of, bucket_low, by_distance_of, convergence_of, fmt_budget, fmt_bytes, is_finite, labels_of, leaderboard,
    lr_of, metrics_of, mixer_name, pareto_front, policy_leaderboard, state_bytes_at,
)

DPI = 130
INSTALL_HINT = "pip install 'longrecall[plot]'"

# tab10, in order; well-known mixers always get the same slot.
# tab10, then 10 more distinct colours so a frontier of ~20 mixers needs no repeated colour
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#000075", "#808000", "#800000", "#469990", "#f032e6",
           "#9a6324", "#ffb000", "#00cc96", "#911eb4", "#aaaa00")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
KNOWN_MIXERS = ("attention", "sliding_window", "s4d", "mamba")
# KV-cache policies get their own 16 distinct colours (dark enough for hollow markers), and are drawn
# with hollow markers wherever they share a figure with the mixers' filled ones
POLICY_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#17becf", "#f032e6", "#9a6324",
                  "#469990", "#000075", "#808000", "#800000", "#ffb000", "#7f7f7f", "#e377c2", "#00cc96")
POLICY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">", "p", "*")


class PlotDependencyError(ImportError):
    """matplotlib is not installed."""


def require_matplotlib():
    """Import matplotlib's Figure and Agg canvas, or raise a clear ``PlotDependencyError``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotDependencyError(
            f"longrecall's report needs matplotlib for its plots; install it with: {INSTALL_HINT}"
        ) from exc
    return Figure, FigureCanvasAgg


# ----------------------------------------------------------------------------------------------
# consistent style
# ----------------------------------------------------------------------------------------------


@dataclass
class Style:
    colors: dict = field(default_factory=dict)
    markers: dict = field(default_factory=dict)
    linestyles: dict = field(default_factory=dict)
    policy_colors: dict = field(default_factory=dict)
    policy_markers: dict = field(default_factory=dict)

    def policy_color(self, policy: str) -> str:
        return self.policy_colors.get(policy, "#333333")

    def policy_marker(self, policy: str) -> str:
        return self.policy_markers.get(policy, "o")

    def color(self, mixer: str) -> str:
        return self.colors.get(mixer, "#333333")

    def marker(self, mixer: str) -> str:
        return self.markers.get(mixer, "o")

    def linestyle(self, width) -> object:
        return self.linestyles.get(width, "-")


def style_for(records: Sequence[dict], policy_evals: Sequence[dict] = ()) -> Style:
    """One colour and marker per mixer (attention, sliding_window, s4d, mamba keep fixed ones),
    one line style per width, for every mixer and width in ``records``; one colour and marker per
    KV-cache policy label in ``policy_evals``."""
    mixers = sorted({mixer_name(r) for r in records if r.get("labels")})
    style = Style()
    used: set[int] = set()
    for m in mixers:  # well-known mixers without kwargs first, at their fixed slot
        base = m.split("(")[0]
        if base in KNOWN_MIXERS and KNOWN_MIXERS.index(base) not in used:
            slot = KNOWN_MIXERS.index(base)
            used.add(slot)
            style.colors[m], style.markers[m] = PALETTE[slot], MARKERS[slot]
    free = [i for i in range(len(PALETTE)) if i not in used]
    taken = {(PALETTE[i], MARKERS[i]) for i in used}
    for k, m in enumerate(m for m in mixers if m not in style.colors):
        # a unique (colour, marker) pair per mixer: free colours first; past the palette the
        # colours repeat with a shifted marker, never reusing a pair
        i = free[k] if k < len(free) else k
        shift = 0
        while True:
            pair = (PALETTE[i % len(PALETTE)], MARKERS[(i + shift + i // len(PALETTE)) % len(MARKERS)])
            if pair not in taken or shift >= len(MARKERS):
                break
            shift += 1
        taken.add(pair)
        style.colors[m], style.markers[m] = pair
    widths = sorted({w for w in (labels_of(r).get("d_model") for r in records) if w is not None},
                    key=lambda w: (not is_finite(w), w if is_finite(w) else 0, str(w)))
    for i, w in enumerate(widths):
        style.linestyles[w] = LINESTYLES[i % len(LINESTYLES)]
    for i, label in enumerate(sorted({str(e.get("policy_label")) for e in policy_evals})):
        style.policy_colors[label] = POLICY_PALETTE[i % len(POLICY_PALETTE)]
        style.policy_markers[label] = POLICY_MARKERS[(i + i // len(POLICY_PALETTE)) % len(POLICY_MARKERS)]
    return style


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _figure(nrows: int, ncols: int, panel_w: float = 4.6, panel_h: float = 3.4, extra_w: float = 1.8):
    Figure, FigureCanvasAgg = require_matplotlib()
    width = max(ncols * panel_w + extra_w, 8.0 if extra_w else 0.0)
    fig = Figure(figsize=(width, nrows * panel_h + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _empty(path, title: str, message: str) -> Path:
    fig, axes = _figure(1, 1, 6.0, 3.0, 0.0)
    ax = axes[0][0]
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#555555", transform=ax.transAxes)
    return _save(fig, path)


def _suptitle(fig, title: str, detail: str = "") -> None:
    """Figure title, with ``detail`` on the same line when it fits beside the legend, else wrapped
    below it (a long title on a one-panel figure would run into the legend)."""
    avail_chars = max(30, int((fig.get_figwidth() - 2.6) * 10.5))  # ~10.5 chars per inch at 12 pt
    one_line = f"{title} ({detail})" if detail else title
    if len(one_line) <= avail_chars:
        text = one_line
    else:
        text = "\n".join(textwrap.wrap(title, avail_chars) + textwrap.wrap(detail, avail_chars))
    fig.suptitle(text, fontsize=12, x=0.01, ha="left")  # left: clear of the legend at the top right


def _note(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, color="#777777", transform=ax.transAxes)


def _percent_y(ax, label: str | None = "accuracy (% of scored tokens)") -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(-0.03, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if label:
        ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)


def _hide_unused(axes, used: int) -> None:
    flat = [ax for row in axes for ax in row]
    for ax in flat[used:]:
        ax.set_axis_off()


def _legend(fig, style: Style, mixers: Sequence[str], widths: Sequence = (), *, lines: bool = True,
            extra: Sequence = ()) -> None:
    """Figure legend on the right: one entry per mixer (colour + marker), then per width (style)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=style.color(m), marker=style.marker(m), linestyle="-" if lines else "",
                      label=m) for m in mixers]
    if len(widths) > 1 and lines:
        handles.append(Line2D([], [], linestyle="", label=""))
        handles += [Line2D([], [], color="#444444", linestyle=style.linestyle(w), label=f"d_model={w}")
                    for w in widths]
    handles += list(extra)
    if handles:
        fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9,
                   title="mixer" if not (len(widths) > 1 and lines) else "mixer / width")


def _chance_line(ax, records: Sequence[dict]) -> bool:
    """A dotted line at the task's chance accuracy, when every run of the panel reports the same one."""
    values = {metrics_of(r).get("chance") for r in records}
    if len(values) != 1 or not is_finite(next(iter(values))):
        return False
    ax.axhline(next(iter(values)), color="#888888", linestyle=":", linewidth=1.0, zorder=1)
    return True


def _chance_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], color="#888888", linestyle=":", label="chance")


def _hollow_handle():
    """Legend entry explaining hollow markers: the run did not converge, its accuracy is a lower bound."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="#444444", marker="o", markerfacecolor="white", linestyle="",
                  label="hollow: not converged\n(accuracy is a lower bound)")


def _sorted_values(values) -> list:
    return sorted({v for v in values if v is not None},
                  key=lambda v: (not is_finite(v), v if is_finite(v) else 0, str(v)))


def _log2_ticks(ax, values, axis: str = "x") -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    values = [v for v in _sorted_values(values) if is_finite(v)]
    if not values:
        return
    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(FixedLocator(values))
    a.set_major_formatter(_int_formatter())
    a.set_minor_locator(NullLocator())


def _int_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{int(round(v))}" if v >= 1 or v == 0 else f"{v:g}")


def _done(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "done"]


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
                for r, x, y in zip(pts, xs, ys):  # filled: converged; hollow: a lower bound
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


def _bytes_ticks(ax, lo: float, hi: float) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo_e, hi_e = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = 1
    while (hi_e - lo_e) / step > 7:
        step *= 2
    ticks = [2.0 ** e for e in range(lo_e - lo_e % step, hi_e + step, step)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_bytes(v)))


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
                                 policy_evals: Sequence[dict] = ()) -> Path:
    """The memory frontier: accuracy vs state bytes per sequence (log x), one point per run
    (marker and colour per mixer, annotated with its width), and the Pareto front (best accuracy
    for at most that many bytes) as a step line; one panel per (task, seq_len).

    ``policy_evals`` add a hollow point per (model, KV-cache policy, budget), labelled
    ``attention+<policy>``, at the bytes its model held after the whole sequence (the same length
    the mixers' state is measured at); they take part in the Pareto front."""
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
    pts_all = pts + ppts
    if not pts_all:
        return _empty(path, title, "no finished runs with both an accuracy and state bytes")
    groups = sorted({(p["task"], p["seq_len"]) for p in pts_all}, key=lambda g: (g[0], g[1] if is_finite(g[1]) else -1))
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    mixers = sorted({p["mixer"] for p in pts})
    policy_labels = sorted({p["mixer"] for p in ppts})
    legend_rows = len(mixers) + (len(policy_labels) + 2 if policy_labels else 0) + 6  # + the front's entry
    fig, axes = _figure(nrows, ncols, 4.8, max(3.7, 0.2 * legend_rows / nrows))
    for k, (task, seq_len) in enumerate(groups):
        ax = axes[k // ncols][k % ncols]
        panel = [p for p in pts if p["task"] == task and p["seq_len"] == seq_len]
        ppanel = [p for p in ppts if p["task"] == task and p["seq_len"] == seq_len]
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
                ax.scatter([p["bytes"] for p in mine], [p["acc"] for p in mine], facecolors="none",
                           edgecolors=style.policy_color(policy), marker=style.policy_marker(policy), s=30,
                           linewidths=1.1, alpha=0.9, zorder=3)
        # label each (mixer, width) once, at its best seed; alternate offsets to limit overlaps
        best: dict = {}
        for p in panel:
            key = (p["mixer"], p["d_model"])
            if key not in best or p["acc"] > best[key]["acc"]:
                best[key] = p
        for n, p in enumerate(sorted(best.values(), key=lambda p: (p["bytes"], p["acc"]))):
            ax.annotate(f"d={p['d_model']}", (p["bytes"], p["acc"]), xytext=(5, 4 if n % 2 == 0 else -10),
                        textcoords="offset points", fontsize=7, color=style.color(p["mixer"]))
        lo, hi = min(p["bytes"] for p in panel + ppanel), max(p["bytes"] for p in panel + ppanel)
        lo, hi = lo / 1.6, hi * 2.2
        # the front runs through converged points only: a lower bound is not a trade-off
        front = pareto_front((p["bytes"], p["acc"]) for p in panel + ppanel if p.get("converged", True))
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
        _percent_y(ax, "accuracy (% of scored tokens)" if k % ncols == 0 else None)
    _hide_unused(axes, len(groups))
    from matplotlib.lines import Line2D

    front_handle = Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
                          label="Pareto front of\nconverged runs\n(best accuracy\nwithin a budget)")
    extra = []
    if policy_labels:
        extra += [Line2D([], [], linestyle="", label=""), Line2D([], [], linestyle="", label="KV-cache policies:")]
        extra += [Line2D([], [], linestyle="", marker=style.policy_marker(p.split("+", 1)[1]), markerfacecolor="none",
                         markeredgecolor=style.policy_color(p.split("+", 1)[1]), label=p) for p in policy_labels]
    extra += [Line2D([], [], linestyle="", label=""), front_handle, _hollow_handle(), _chance_handle()]
    detail = "one point per run (best learning rate), labelled with its width; hollow: not converged"
    if policy_labels:
        detail = "filled: one point per run (its width labelled); hollow: attention + KV policy, one per budget"
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


def _fraction_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: fmt_budget(float(v)) if v < 1 else "1")


def plot_accuracy_vs_budget(records: Sequence[dict], path, style: Style | None = None,
                            policy_evals: Sequence[dict] = ()) -> Path:
    """Accuracy vs KV-cache budget as a fraction of the context (log2 x), one line per policy
    (mean over seeds), the full-cache accuracy of the same runs as a dashed line, and policies that
    take no budget (lossy ones that keep every token, e.g. quantised) as dotted levels; one panel
    per (task, seq_len, model). Token budgets are placed at tokens / length; budgets a policy
    rejected (skipped) or failed leave gaps."""
    title = "Accuracy vs KV-cache budget"
    style = style or style_for(records, policy_evals)
    rows = [r for r in policy_leaderboard(records, policy_evals) if is_finite(r["fraction"])]
    bounded = [r for r in rows if not r["unbounded"]]
    if not any(math.isfinite(r["accuracy"]) for r in bounded):
        return _empty(path, title, "no KV-cache policy evaluations with a budget")
    panels = sorted({(r["task"], r["seq_len"], r["model"]) for r in bounded},
                    key=lambda g: (g[0], g[1] if is_finite(g[1]) else -1, g[2]))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    policies = sorted({r["policy"] for r in bounded if math.isfinite(r["accuracy"])})  # all skipped: no line
    n_levels = len({r["policy"] for r in rows if r["unbounded"]})
    fig, axes = _figure(nrows, ncols, 4.8, max(3.6, 0.2 * (len(policies) + n_levels + 5) / nrows))
    for k, (task, seq_len, model) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        mine = [r for r in rows if (r["task"], r["seq_len"], r["model"]) == (task, seq_len, model)]
        fractions = sorted({r["fraction"] for r in mine if not r["unbounded"]})
        for p in policies:
            pts = sorted((r for r in mine if r["policy"] == p and not r["unbounded"]), key=lambda r: r["fraction"])
            if not pts:
                continue
            xs = [r["fraction"] for r in pts]
            ys = [r["accuracy"] if math.isfinite(r["accuracy"]) else float("nan") for r in pts]
            ax.plot(xs, ys, color=style.policy_color(p), marker=style.policy_marker(p), markersize=4.5,
                    linewidth=1.5, alpha=0.9)
        for r in mine:  # policies without a budget (lossy ones keep every token): a dotted level
            if r["unbounded"] and r["policy_name"] != "full" and math.isfinite(r["accuracy"]):
                ax.axhline(r["accuracy"], color=style.policy_color(r["policy"]), linestyle=":", linewidth=1.4,
                           alpha=0.9, zorder=1)
        refs = [r["reference"] for r in mine if r["reference"] is not None]
        full = [r["accuracy"] for r in mine if r["unbounded"] and math.isfinite(r["accuracy"])]
        reference = sum(refs) / len(refs) if refs else (full[0] if full else None)
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=1.1, alpha=0.8, zorder=1)
        ax.set_xscale("log", base=2)
        if fractions:
            from matplotlib.ticker import FixedLocator, NullLocator

            ticks = fractions if len(fractions) <= 8 else fractions[::2]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(_fraction_formatter())
            ax.set_xlim(fractions[0] / 1.4, min(1.0, fractions[-1]) * 1.4)
        ax.set_xlabel("KV budget (fraction of the context, log2)")
        ax.set_title(f"{task}, seq_len={seq_len}, {model}", fontsize=10)
        _percent_y(ax, "accuracy (% of scored tokens)" if k % ncols == 0 else None)
    _hide_unused(axes, len(panels))
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=style.policy_color(p), marker=style.policy_marker(p), label=p) for p in policies]
    levels = sorted({r["policy"] for r in rows if r["unbounded"] and r["policy_name"] != "full"
                     and math.isfinite(r["accuracy"])})
    handles += [Line2D([], [], color=style.policy_color(p), linestyle=":", label=f"{p} (no budget)") for p in levels]
    handles += [Line2D([], [], linestyle="", label=""),
                Line2D([], [], color="black", linestyle="--", label="full cache\n(no policy)")]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9, title="policy")
    _suptitle(fig, title, "query-agnostic: context compressed before the question; mean over seeds")
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
