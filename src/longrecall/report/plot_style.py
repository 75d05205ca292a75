"""The figures' shared style and layout: colours and markers per mixer, line styles per width, and the
helpers every plot uses (figure grid, atomic PNG save, legends, the chance line, hollow markers).

matplotlib is the optional extra ``plot``; only the Agg canvas is used (``matplotlib.figure.Figure``,
never pyplot), so no global backend is touched.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..checkpoint import atomic_write_bytes
from .tables import fmt_bytes, is_finite, labels_of, metrics_of, mixer_name

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
