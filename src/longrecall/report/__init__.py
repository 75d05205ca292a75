"""Leaderboards and paper-ready figures from run records (rows of the results store).

    from longrecall.report import leaderboard, to_markdown, write_report
    rows = leaderboard(records)            # one row per (mixer, task, seq_len, d_model), best learning rate
    paths = write_report(records, "out/")  # report.md, self-contained report.html, PNGs
    write_report(store.runs(), "out/", policy_evals=store.policy_evals())  # + KV-cache policy section

The tables need nothing beyond the standard library; the figures (and ``write_report``) need
matplotlib: ``pip install 'longrecall[plot]'``.
"""

from .build import write_report
from .plots import (
    PLOTS,
    PlotDependencyError,
    Style,
    distance_curves,
    plot_accuracy_vs_budget,
    plot_accuracy_vs_distance,
    plot_accuracy_vs_length,
    plot_accuracy_vs_state_bytes,
    plot_training_curves,
    require_matplotlib,
    style_for,
)
from .tables import (
    best_lr_records,
    budget_fraction,
    convergence_of,
    failed_runs,
    failed_to_html,
    failed_to_markdown,
    leaderboard,
    lower_bounds,
    mixer_name,
    pareto_front,
    policy_leaderboard,
    policy_pivots,
    provenance,
    state_bytes_at,
    status_counts,
    to_html,
    to_markdown,
)

__all__ = [
    "PLOTS", "PlotDependencyError", "Style", "best_lr_records", "budget_fraction", "convergence_of", "distance_curves",
    "failed_runs", "failed_to_html",
    "failed_to_markdown", "leaderboard", "lower_bounds", "mixer_name", "pareto_front", "plot_accuracy_vs_budget",
    "plot_accuracy_vs_distance", "plot_accuracy_vs_length", "plot_accuracy_vs_state_bytes", "plot_training_curves",
    "policy_leaderboard", "policy_pivots", "provenance",
    "require_matplotlib", "state_bytes_at", "status_counts", "style_for", "to_html", "to_markdown",
    "write_report",
]
