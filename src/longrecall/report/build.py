"""One call from run records to ``report.md``, a self-contained ``report.html`` and the PNGs."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import Sequence

from ..checkpoint import atomic_write_bytes
from . import plots as _plots
from .evaluations import (
    EVALUATIONS_HOW_TO_READ,
    FRONTIER_EVALUATIONS_NOTE,
    evaluation_points,
    evaluations_to_html,
    evaluations_to_markdown,
)
from .protocol_tables import PROTOCOLS_HOW_TO_READ, protocol_pivots, protocols_to_html, protocols_to_markdown
from .tables import (
    _html_table,
    _md_table,
    best_lr_records,
    failed_runs,
    failed_to_html,
    failed_to_markdown,
    fmt_lr,
    fmt_pct,
    labels_of,
    leaderboard,
    lower_bounds,
    mixer_name,
    pivots_to_html,
    pivots_to_markdown,
    policy_leaderboard,
    policy_pivots,
    policy_to_html,
    policy_to_markdown,
    provenance,
    recipe_table,
    recipe_to_html,
    recipe_to_markdown,
    recipe_varies,
    status_counts,
    to_html,
    to_markdown,
)

FIGURES = (
    ("accuracy_vs_length", "Accuracy vs sequence length",
     "Each line follows one mixer across sequence lengths at a fixed width (one panel per width): a line "
     "that stays high as the length doubles is recall that scales; bars span the worst and best seed. Hollow "
     "markers did not converge (a lower bound); the dotted line is the task's chance accuracy."),
    ("accuracy_vs_state_bytes", "Accuracy vs state bytes (the memory frontier)",
     "Each point is one run: further left is less state carried per sequence, higher is better recall. "
     "Filled points converged; hollow ones did not, and their accuracy is a lower bound, not the memory's "
     "capacity. The dashed step line is the Pareto front of the converged runs, the best accuracy reachable "
     "with at most that many bytes; circled runs are on it. The dotted line is the task's chance accuracy."),
    ("accuracy_vs_distance", "Accuracy vs key–query distance",
     "Accuracy of the recalls grouped by how far back the key appeared (power-of-two buckets, pooled over "
     "seeds): a curve that falls at large distances shows where a mixer's memory runs out, e.g. past a "
     "sliding window."),
    ("training_curves", "Training curves",
     "Left, the training loss of every run (lower is better); right, accuracy at the periodic evaluations. "
     "A run that plateaus or spikes points to an optimisation problem rather than a memory limit."),
)
# drawn only when the runs compare recipes (learning rates or losses)
RECIPE_FIGURE = ("learning_curves", "Learning curves by recipe",
                 "Held-out accuracy at each evaluation, one panel per mixer, one line per recipe: colour per learning "
                 "rate, solid for the loss on the answers, dashed for the next-token loss on every position. A line "
                 "still rising at its right end was stopped by its step budget; a flat one has plateaued.")
RECIPE_HOW_TO_READ = (
    "Every recipe the runs compare (learning rate x loss), before the best learning rate is chosen: final and "
    "best held-out accuracy, the first evaluation step at which accuracy reached the threshold ('—': never), "
    "the steps trained, the seconds it took (training + evaluation) and the convergence status."
)
# drawn only when the report has KV-cache policy evaluations
POLICY_FIGURES = (
    ("accuracy_vs_budget", "Accuracy vs KV-cache budget",
     "Each line follows one KV-cache policy applied to a trained attention model, from the smallest cache "
     "budget (left, a fraction of the context on a log2 axis) to the largest; the dashed line is the same "
     "model with its full cache. Retrieval accuracy typically stays flat and then falls off a cliff: the "
     "further left a policy's knee, the better it chooses what to keep. Evaluation is query-agnostic: the "
     "context is compressed before the question is read."),
)
FRONTIER_POLICY_NOTE = (
    " Translucent markers are trained attention models evaluated under a KV-cache policy (labelled "
    "attention+policy), one point per budget, at the bytes held after the whole sequence; on a converged "
    "model they take part in the Pareto front. Retrieval policies (quest, infllm, em_llm) keep every token "
    "and sit near the full cache's bytes: the part they need on the device (resident bytes) is in the policy "
    "detail table."
)
POLICY_HOW_TO_READ = (
    "Trained attention models re-evaluated under each KV-cache policy and budget, without retraining. "
    "Protocol (query-agnostic, as kvpress): each example's context, the tokens before its first scored "
    "position, is prefilled with the policy active (prefill mode: full attention, then one compression; step "
    "mode: eviction at every token); the rest is decoded token by token and scored like the normal evaluation. "
    "A budget is a fraction of the sequence length (1/8) or a number of tokens per layer and head. One table "
    "per task, length and model: a row per policy, a column per budget, ranked by the mean accuracy over "
    "the budgets where every policy ran; 'skipped' marks a budget the policy rejects at that length (e.g. "
    "fewer tokens than its sinks); policies that take no budget (full, and lossy ones that keep every token) "
    "come last, unranked. A row labelled policy@protocol was evaluated under another protocol (aware, reuse, "
    "decode: see 'Protocols compared'); its Δ vs full reads against the full cache under the same protocol."
)
POLICY_DETAIL_HOW_TO_READ = (
    "Every (policy, budget) evaluation, averaged over seeds: tokens is the resolved budget per layer and head; "
    "Δ vs full is the change from the same runs without a policy; bytes after context is what the model holds "
    "when the question starts, bytes at end after the whole sequence (what the frontier plots); resident bytes "
    "is shown for retrieval policies that keep part of the cache off the device."
)

LEADERBOARD_HOW_TO_READ = (
    "One row per mixer, task, sequence length and width, averaged over seeds (min-max: the spread "
    "across seeds); when the runs sweep learning rates, the row is the best rate's ('best of n': "
    "Zoology's protocol). Convergence says whether the number is a measurement: 'converged' reached the "
    "target accuracy; 'learning' was still improving when its step budget ended and 'plateau' had stopped "
    "improving without reaching it (both are lower bounds: more steps or another learning rate may raise "
    "them); 'diverged' blew up (its last good evaluation is shown). Rank is within each task and sequence "
    "length; steps is the steps trained; state bytes is the state the model carries per sequence at that "
    "length (KV cache or recurrent state); tokens/s and train s are training throughput and time, averaged "
    "over seeds."
)
CONVERGENCE_HOW_TO_READ = (
    "A run converged when its final held-out accuracy reached its target (train.target_accuracy). Every other "
    "point is a lower bound on what the memory can do at that size: it is drawn hollow in the figures, and "
    "the memory frontier's Pareto front runs through converged points only. 'plateau' may be the memory's "
    "capacity or a training plateau (MQAR is learned in an abrupt transition after a long plateau); telling "
    "them apart needs a longer run or another learning rate. A run whose accuracy never left chance (every "
    "evaluation below 5x the task's chance accuracy and below chance + 0.05, or three standard errors on few "
    "answers) is not stopped on a plateau before its step cap (convergence rule version 3), so its plateau "
    "is the whole budget's."
)

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: 0.88em; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
table.failed td:last-child { font-family: monospace; color: #a00; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .howto { color: #555; font-size: 0.92em; }
.muted { color: #777; }
code { background: #f4f4f4; padding: 0 .25em; }
"""


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _summary(records: Sequence[dict]) -> dict:
    done = [r for r in records if r.get("status") == "done"]

    def values(key):
        vals = {labels_of(r).get(key) for r in done} - {None}
        return sorted(vals, key=lambda v: (str(type(v)), v))

    return {
        "counts": status_counts(records),
        "total": len(records),
        "mixers": sorted({mixer_name(r) for r in done}),
        "tasks": [str(t) for t in values("task")],
        "seq_lens": [str(v) for v in values("seq_len")],
        "widths": [str(v) for v in values("d_model")],
        "seeds": [str(v) for v in values("seed")],
    }


def _summary_lines(s: dict) -> list[str]:
    counts = ", ".join(f"{n} {status}" for status, n in s["counts"].items())
    lines = [f"{s['total']} runs: {counts}."]
    if s["mixers"]:
        lines += [
            f"Mixers: {', '.join(s['mixers'])}.",
            f"Tasks: {', '.join(s['tasks'])}; sequence lengths: {', '.join(s['seq_lens'])}; "
            f"widths (d_model): {', '.join(s['widths'])}; seeds: {', '.join(s['seeds'])}.",
        ]
    else:
        lines.append("There are no finished runs yet, so there is no leaderboard and no figure of runs.")
    return lines


def _provenance_lines(prov: dict) -> list[tuple[str, str]]:
    names = {"code_version": "code versions", "torch_version": "torch versions", "device": "devices"}
    out = []
    for key, label in names.items():
        items = prov.get(key) or {}
        text = ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in items.items()) or "not recorded"
        out.append((label, text))
    return out


def _lower_bound_lines(rows: Sequence[dict]) -> tuple[str, list[list[str]]]:
    """The sentence counting the lower bounds, and one table row per lower-bound point."""
    bounds = lower_bounds(rows)
    head = (f"{len(rows) - len(bounds)} of {len(rows)} leaderboard points converged; "
            f"{len(bounds)} {'is a lower bound' if len(bounds) == 1 else 'are lower bounds'}"
            + (":" if bounds else "."))
    body = [[str(r["task"]), str(r["seq_len"]), str(r["d_model"]), str(r["mixer"]), fmt_pct(r["accuracy"]),
             str(r["convergence"]), f"{r['steps']:.0f}" if r.get("steps") is not None else "", fmt_lr(r)]
            for r in bounds]
    return head, body


LOWER_BOUND_COLUMNS = ("task", "seq_len", "d_model", "mixer", "accuracy", "convergence", "steps", "lr")


def write_report(records: Sequence[dict], out_dir, title: str = "longrecall report",
                 policy_evals: Sequence[dict] | None = None, *, all_lrs: bool = False,
                 evaluations: Sequence[dict] | None = None) -> dict[str, Path]:
    """Write ``report.md``, a self-contained ``report.html`` and one PNG per figure to ``out_dir``.

    Returns ``{"markdown": path, "html": path, <figure name>: path, ...}``; the figures are
    ``accuracy_vs_length``, ``accuracy_vs_state_bytes``, ``accuracy_vs_distance`` and
    ``training_curves`` (left out, and stale copies removed, when no run has finished), and
    ``accuracy_vs_budget`` when ``policy_evals`` (rows of the store's ``policy_evals`` table) hold
    an evaluation of one of ``records``; those also add their points to the frontier and a "KV-cache
    policies" section (one policy x budget table per task, length and model, and the detail). Every
    file is written to a temporary file in ``out_dir`` and then renamed into place. Raises
    ``PlotDependencyError`` (an ``ImportError``) naming ``pip install 'longrecall[plot]'`` when
    matplotlib is missing.

    ``evaluations`` (rows of the store's ``evaluations`` table, written by ``kv-eval`` and ``memory-eval``)
    add a section of their own and their points to the frontier, which is drawn for them even when no run
    has finished.

    Learning-rate sweeps: the leaderboard and the figures show each (mixer, task, length, width) at its
    best learning rate (``tables.leaderboard``); ``all_lrs=True`` shows every rate. A "Convergence"
    section lists the points whose accuracy is a lower bound (not converged); figures draw them hollow.
    """
    _plots.require_matplotlib()
    records = list(records)
    known = {str(r.get("id")) for r in records}
    policy_evals = [e for e in (policy_evals or []) if str(e.get("run_id")) in known]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows = leaderboard(records, all_lrs=all_lrs)
    failed = failed_runs(records)
    bound_head, bound_body = _lower_bound_lines(rows)
    all_records = records
    records = records if all_lrs else best_lr_records(records)  # what the figures draw
    summary = _summary(all_records)
    prov = _provenance_lines(provenance(all_records))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    policy_rows = policy_leaderboard(all_records, policy_evals)
    pivots = policy_pivots(all_records, policy_evals)
    by_protocol = protocol_pivots(policy_rows)

    evaluations = list(evaluations or [])
    paths: dict[str, Path] = {}
    figures = []
    frontier_only = not rows and evaluation_points(evaluations)
    if rows or frontier_only:
        style = _plots.style_for(records, policy_evals)
        for name, caption, howto in FIGURES:
            if frontier_only and name != "accuracy_vs_state_bytes":
                (out / f"{name}.png").unlink(missing_ok=True)
                continue
            kwargs = {"policy_evals": policy_evals} if name in _plots.POLICY_PLOTS and policy_evals else {}
            if name == "accuracy_vs_state_bytes" and evaluations:
                kwargs["evaluations"] = evaluations
            path = _plots.PLOTS[name](records, out / f"{name}.png", style=style, **kwargs)
            if kwargs.get("policy_evals") and name == "accuracy_vs_state_bytes":
                howto += FRONTIER_POLICY_NOTE
            if kwargs.get("evaluations") and name == "accuracy_vs_state_bytes":
                howto += FRONTIER_EVALUATIONS_NOTE
            paths[name] = path
            figures.append((name, caption, howto, path))
    else:
        for name, *_ in FIGURES:
            (out / f"{name}.png").unlink(missing_ok=True)
    recipe_rows = recipe_table(all_records) if recipe_varies(all_records) else []
    recipe_figure = None
    if recipe_rows:
        name, caption, howto = RECIPE_FIGURE
        path = _plots.PLOTS[name](all_records, out / f"{name}.png")
        paths[name] = path
        recipe_figure = (name, caption, howto, path)
    else:
        (out / f"{RECIPE_FIGURE[0]}.png").unlink(missing_ok=True)
    policy_figures = []
    if rows and policy_rows:
        for name, caption, howto in POLICY_FIGURES:
            path = _plots.PLOTS[name](records, out / f"{name}.png", style=style, policy_evals=policy_evals)
            paths[name] = path
            policy_figures.append((name, caption, howto, path))
    else:
        for name, *_ in POLICY_FIGURES:
            (out / f"{name}.png").unlink(missing_ok=True)

    # ---- markdown
    md = [f"# {title}", "", f"_Generated {stamp}._", ""]
    md += ["## Runs", ""] + [line + "  " for line in _summary_lines(summary)] + [""]
    md += ["## Leaderboard", ""]
    if rows:
        md += [LEADERBOARD_HOW_TO_READ, "", to_markdown(rows)]
        md += ["## Convergence", "", CONVERGENCE_HOW_TO_READ, "", bound_head, ""]
        if bound_body:
            md += [_md_table(LOWER_BOUND_COLUMNS, bound_body, {1, 2, 4, 6})]
    else:
        md += ["No finished runs.", ""]
    if figures:
        md += ["## Figures", ""]
        for _name, caption, howto, path in figures:
            md += [f"### {caption}", "", f"![{caption}]({path.name})", "", f"*How to read:* {howto}", ""]
    if recipe_rows:
        name, caption, howto, path = recipe_figure
        md += ["## Recipes compared", "", RECIPE_HOW_TO_READ, "", recipe_to_markdown(recipe_rows),
               f"### {caption}", "", f"![{caption}]({path.name})", "", f"*How to read:* {howto}", ""]
    if policy_rows:
        md += ["## KV-cache policies", "", POLICY_HOW_TO_READ, "", pivots_to_markdown(pivots)]
        for _name, caption, howto, path in policy_figures:
            md += [f"### {caption}", "", f"![{caption}]({path.name})", "", f"*How to read:* {howto}", ""]
        if by_protocol:
            md += ["### Protocols compared", "", PROTOCOLS_HOW_TO_READ, "", protocols_to_markdown(by_protocol)]
        md += ["### Policy evaluations (detail)", "", POLICY_DETAIL_HOW_TO_READ, "", policy_to_markdown(policy_rows)]
    if evaluations:
        md += ["## Memories measured outside the arena", "", EVALUATIONS_HOW_TO_READ, "",
               evaluations_to_markdown(evaluations)]
    md += [f"## Failed runs ({len(failed)})", "", failed_to_markdown(failed)]
    md += ["## Provenance", ""] + [f"- {label}: {text}" for label, text in prov] + [""]
    md_path = out / "report.md"
    _atomic_write_text(md_path, "\n".join(md))

    # ---- html (self-contained: inline CSS, figures as data URIs, no external resources)
    e = html.escape
    h = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
         f"<h1>{e(title)}</h1>", f'<p class="muted">Generated {e(stamp)}.</p>',
         "<h2>Runs</h2>"]
    h += [f"<p>{e(line)}</p>" for line in _summary_lines(summary)]
    h.append("<h2>Leaderboard</h2>")
    if rows:
        h += [f'<p class="howto">{e(LEADERBOARD_HOW_TO_READ)}</p>', to_html(rows)]
        h += ['<h2 id="convergence">Convergence</h2>', f'<p class="howto">{e(CONVERGENCE_HOW_TO_READ)}</p>',
              f"<p>{e(bound_head)}</p>"]
        if bound_body:
            h.append(_html_table(LOWER_BOUND_COLUMNS, bound_body, {1, 2, 4, 6}, "lower-bounds"))
    else:
        h.append("<p><em>No finished runs.</em></p>")
    if figures:
        h.append("<h2>Figures</h2>")
        for name, caption, howto, path in figures:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            h += [f'<figure id="{e(name)}">', f"<h3>{e(caption)}</h3>",
                  f'<img alt="{e(caption)}" src="data:image/png;base64,{data}">',
                  f"<figcaption><strong>How to read:</strong> {e(howto)}</figcaption>", "</figure>"]
    if recipe_rows:
        name, caption, howto, path = recipe_figure
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        h += ['<h2 id="recipes">Recipes compared</h2>', f'<p class="howto">{e(RECIPE_HOW_TO_READ)}</p>',
              recipe_to_html(recipe_rows), f'<figure id="{e(name)}">', f"<h3>{e(caption)}</h3>",
              f'<img alt="{e(caption)}" src="data:image/png;base64,{data}">',
              f"<figcaption><strong>How to read:</strong> {e(howto)}</figcaption>", "</figure>"]
    if policy_rows:
        h += ['<h2 id="kv-cache-policies">KV-cache policies</h2>', f'<p class="howto">{e(POLICY_HOW_TO_READ)}</p>',
              pivots_to_html(pivots)]
        for name, caption, howto, path in policy_figures:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            h += [f'<figure id="{e(name)}">', f"<h3>{e(caption)}</h3>",
                  f'<img alt="{e(caption)}" src="data:image/png;base64,{data}">',
                  f"<figcaption><strong>How to read:</strong> {e(howto)}</figcaption>", "</figure>"]
        if by_protocol:
            h += ['<h3 id="protocols">Protocols compared</h3>', f'<p class="howto">{e(PROTOCOLS_HOW_TO_READ)}</p>',
                  protocols_to_html(by_protocol)]
        h += ["<details><summary>Policy evaluations (detail)</summary>",
              f'<p class="howto">{e(POLICY_DETAIL_HOW_TO_READ)}</p>', policy_to_html(policy_rows), "</details>"]
    if evaluations:
        h += ['<h2 id="evaluations">Memories measured outside the arena</h2>',
              f'<p class="howto">{e(EVALUATIONS_HOW_TO_READ)}</p>', evaluations_to_html(evaluations)]
    h += [f"<h2>Failed runs ({len(failed)})</h2>", failed_to_html(failed), "<h2>Provenance</h2>", "<ul>"]
    h += [f"<li>{e(label)}: {e(text)}</li>" for label, text in prov]
    h += ["</ul>", "</body>", "</html>", ""]
    html_path = out / "report.html"
    _atomic_write_text(html_path, "\n".join(h))

    return {"markdown": md_path, "html": html_path, **paths}
