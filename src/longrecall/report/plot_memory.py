"""Evidence recall against the bytes a text memory keeps (``longrecall memory-eval``'s figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .plot_style import MARKERS, PALETTE, _bytes_ticks, _figure, _percent_y, _save, _suptitle

# (unit, builder) -> (marker, filled, line style, legend noun); builder is None for turns and sessions
UNIT_STYLES = {
    ("turn", None): (MARKERS[0], True, "-", "turns"),
    ("session", None): (MARKERS[1], False, "--", "sessions"),
    ("fact", "extractive"): (MARKERS[2], True, ":", "extracted facts"),
    ("summary", "extractive"): (MARKERS[3], False, "-.", "extractive summaries"),
    ("fact", "llm"): (MARKERS[5], True, ":", "LLM facts"),
    ("summary", "llm"): (MARKERS[6], False, "-.", "LLM summaries"),
}


def plot_recall_vs_bytes(rows: Sequence[dict], path, k: int, source: str = "") -> Path:
    """Recall@k (overall) against the memory's bytes per conversation (text plus index, log x): one
    colour per retriever, one marker and line style per unit (``UNIT_STYLES``: turns filled circles, sessions
    hollow squares, facts filled triangles, summaries hollow diamonds; LLM-built ones other shapes), a line
    through the budgets of each (retriever, unit, builder), the largest point being the whole memory."""
    fig, axes = _figure(1, 1, 6.4, 4.4, extra_w=2.4)
    ax = axes[0][0]
    retrievers = list(dict.fromkeys(r["retriever"] for r in rows))
    for i, retriever in enumerate(retrievers):
        color = PALETTE[i % len(PALETTE)]
        for (unit, builder), (marker, filled, linestyle, noun) in UNIT_STYLES.items():
            points = sorted((r for r in rows if r["retriever"] == retriever and r["unit"] == unit
                             and r.get("builder") == builder), key=lambda r: r["total_bytes"])
            if not points:
                continue
            metric = "recall" if f"recall@{k}" in points[0]["scores"]["overall"] else "recall_any"
            xs = [r["total_bytes"] for r in points]
            ys = [r["scores"]["overall"][f"{metric}@{k}"] for r in points]
            ax.plot(xs, ys, color=color, linestyle=linestyle, linewidth=1.2, alpha=0.8)
            ax.scatter(xs, ys, color=color if filled else "white", edgecolors=color, marker=marker, s=36,
                       linewidths=1.4, zorder=3, label=f"{retriever} ({noun})")
    ax.set_xscale("log", base=2)
    sizes = [r["total_bytes"] for r in rows if r["total_bytes"] > 0]
    if sizes:  # KiB / MiB labels at powers of two, as on the memory frontier
        lo, hi = min(sizes) / 1.4, max(sizes) * 1.4
        ax.set_xlim(lo, hi)
        _bytes_ticks(ax, lo, hi)
    ax.set_xlabel("bytes kept per conversation (text + index)")
    _percent_y(ax, f"evidence recall@{k}")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    _suptitle(fig, f"Text memory: evidence recall@{k} against bytes", source)
    return _save(fig, path)
