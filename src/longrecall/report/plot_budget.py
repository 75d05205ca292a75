"""Accuracy vs KV-cache budget: one line per policy applied to a trained attention model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .plot_style import Style, _empty, _figure, _hide_unused, _percent_y, _save, _suptitle, style_for
from .tables import fmt_budget, is_finite, policy_leaderboard


def _fraction_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: fmt_budget(float(v)) if v < 1 else "1")


def plot_accuracy_vs_budget(records: Sequence[dict], path, style: Style | None = None,
                            policy_evals: Sequence[dict] = ()) -> Path:
    """Accuracy vs KV-cache budget as a fraction of the context (log2 x), one line per policy
    (mean over seeds), the full-cache accuracy of the same runs as a dashed line, and policies that
    take no budget (lossy ones that keep every token, e.g. quantised) as dotted levels; one panel
    per (task, seq_len, model). Token budgets are placed at tokens / length; budgets a policy
    rejected (skipped) or failed leave gaps. Evaluations under another protocol than agnostic are left
    out when agnostic ones exist (the report's protocol table compares them)."""
    title = "Accuracy vs KV-cache budget"
    style = style or style_for(records, policy_evals)
    rows = [r for r in policy_leaderboard(records, policy_evals) if is_finite(r["fraction"])]
    # one protocol per figure: the agnostic one (kvpress's); the others are compared in a table, and
    # 4 protocols x 21 policies in one panel are not readable
    others = sorted({r["protocol"] for r in rows} - {"agnostic"})
    if others and any(r["protocol"] == "agnostic" for r in rows):
        rows = [r for r in rows if r["protocol"] == "agnostic"]
    else:
        others = []
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
    detail = "query-agnostic: context compressed before the question; mean over seeds"
    if others:
        detail += f" (also evaluated under {', '.join(others)}: see the 'Protocols compared' table)"
    _suptitle(fig, title, detail)
    return _save(fig, path)
