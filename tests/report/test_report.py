import base64
import math
import random
import re
import struct
import sys

import pytest

from longrecall.report import (
    PlotDependencyError,
    distance_curves,
    failed_runs,
    leaderboard,
    pareto_front,
    style_for,
    to_html,
    to_markdown,
    write_report,
)

MIXERS = ("attention", "sliding_window", "s4d", "mamba")
LENGTHS = (64, 128, 256)
WIDTHS = (32, 64)
SEEDS = (0, 1)
WINDOW = 32


def _buckets(seq_len):
    labels, low = ["1"], 2
    while low < seq_len:
        labels.append(f"{low}-{2 * low - 1}")
        low *= 2
    return labels


def _state_bytes(mixer, seq_len, d):
    layers = 2
    return {
        "attention": layers * 2 * seq_len * d * 4,
        "sliding_window": layers * 2 * min(seq_len, WINDOW) * d * 4,
        "s4d": layers * d * 64 * 8,
        "mamba": layers * (2 * d * 16 + 2 * d * 3) * 4,
    }[mixer]


def _accuracy_at(mixer, distance, d):
    if mixer == "attention":
        return 0.99
    if mixer == "sliding_window":
        return 0.98 if distance < WINDOW else 0.04
    if mixer == "s4d":
        return max(0.05, 0.9 - 0.12 * math.log2(distance + 1)) * (0.8 + d / 320)
    return max(0.1, 0.97 - 0.05 * math.log2(distance + 1)) * (0.85 + d / 430)


def make_record(mixer, seq_len, d, seed, rng, status="done", error=None):
    labels = {"mixer": mixer, "mixer_kwargs": {"window": WINDOW} if mixer == "sliding_window" else {},
              "task": "mqar", "seq_len": seq_len, "d_model": d, "seed": seed, "spec": "quick"}
    rid = f"{mixer[:3]}{seq_len}d{d}s{seed}{status[0]}"
    base = {"id": rid, "status": status, "labels": labels, "code_version": "v0.1-3-gabc",
            "torch_version": "2.13.0+cpu", "device": "cpu", "error": error}
    if status != "done":
        return {**base, "metrics": None, "history": [], "evals": []}
    by_distance, correct, scored = {}, 0.0, 0
    for label in _buckets(seq_len):
        low = int(label.split("-")[0])
        n = 8 * (low + 1)
        acc = min(1.0, max(0.0, _accuracy_at(mixer, low, d) + rng.uniform(-0.03, 0.03)))
        by_distance[label] = {"accuracy": acc, "scored": n}
        correct, scored = correct + acc * n, scored + n
    state = {str(seq_len): _state_bytes(mixer, seq_len, d)}
    final = correct / scored
    history = [{"step": s, "loss": 6.0 * math.exp(-s / 60) + 0.3 * (1 - final) + rng.uniform(0, 0.1),
                "accuracy": final * (1 - math.exp(-s / 60)), "lr": 3e-4, "seconds": 0.1} for s in range(1, 301)]
    evals = [{"step": s, "accuracy": final * (1 - math.exp(-s / 60))} for s in range(50, 301, 50)]
    record = {**base, "metrics": {"accuracy": final, "loss": 0.2, "scored": scored,
                                  "by_slice": {"num_kv_pairs": {"16": {"accuracy": final, "scored": scored}}},
                                  "by_distance": by_distance, "state_bytes": state},
              "state_bytes": state, "history": history, "evals": evals, "params": 1000 * d + 7,
              "train_seconds": 10.0 + seed, "eval_seconds": 1.0, "tokens_per_s": 15000.0 + 1000 * seed}
    if seed % 2:  # the results store's layout: by_distance and state_bytes in their own columns only
        record["by_distance"] = record["metrics"].pop("by_distance")
        del record["metrics"]["state_bytes"]
    return record


def synthetic_records():
    rng = random.Random(0)
    records = [make_record(m, L, d, s, rng) for m in MIXERS for L in LENGTHS for d in WIDTHS for s in SEEDS]
    records.append(make_record("mamba", 256, 64, 2, rng, status="failed",
                               error="RuntimeError: CUDA out of memory | tried 2 GiB\nTraceback ..."))
    records.append(make_record("s4d", 256, 64, 2, rng, status="pending"))
    return records


@pytest.fixture(scope="module")
def records():
    return synthetic_records()


# ---------------------------------------------------------------------------------------------- tables


def test_leaderboard_aggregates_over_seeds(records):
    rows = leaderboard(records)
    assert len(rows) == len(MIXERS) * len(LENGTHS) * len(WIDTHS)
    row = next(r for r in rows if r["mixer"] == "mamba" and r["seq_len"] == 128 and r["d_model"] == 64)
    runs = [r for r in records if r["status"] == "done" and r["labels"]["mixer"] == "mamba"
            and r["labels"]["seq_len"] == 128 and r["labels"]["d_model"] == 64]
    accs = [r["metrics"]["accuracy"] for r in runs]
    assert row["seeds"] == 2 and row["nan_seeds"] == 0
    assert row["accuracy"] == pytest.approx(sum(accs) / 2)
    assert (row["accuracy_min"], row["accuracy_max"]) == (min(accs), max(accs))
    assert row["state_bytes"] == _state_bytes("mamba", 128, 64)
    assert row["params"] == 64_007 and row["tokens_per_s"] == 15500.0 and row["train_seconds"] == 10.5
    assert {r["mixer"] for r in rows} == {"attention", "sliding_window(window=32)", "s4d", "mamba"}


def test_leaderboard_sorts_by_task_length_then_accuracy(records):
    rows = leaderboard(records)
    keys = [(r["task"], r["seq_len"]) for r in rows]
    assert keys == sorted(keys)
    for L in LENGTHS:
        accs = [r["accuracy"] for r in rows if r["seq_len"] == L]
        assert accs == sorted(accs, reverse=True)
        assert [r["rank"] for r in rows if r["seq_len"] == L] == list(range(1, len(accs) + 1))


def test_leaderboard_single_seed_nan_and_non_done():
    rng = random.Random(1)
    good = make_record("mamba", 64, 32, 0, rng)
    nan = make_record("s4d", 64, 32, 0, rng)
    nan["metrics"]["accuracy"] = float("nan")
    rows = leaderboard([good, nan, make_record("s4d", 64, 32, 1, rng, status="running")])
    assert [r["mixer"] for r in rows] == ["mamba", "s4d"]  # NaN sorts last
    assert rows[0]["accuracy_min"] is None and rows[0]["seeds"] == 1
    assert math.isnan(rows[1]["accuracy"]) and rows[1]["nan_seeds"] == 1
    assert "NaN" in to_markdown(rows)
    assert leaderboard([]) == [] and "No finished runs" in to_markdown([])


def test_failed_runs_keep_the_first_error_line(records):
    failed = failed_runs(records)
    assert len(failed) == 1
    assert failed[0]["error"] == "RuntimeError: CUDA out of memory | tried 2 GiB"
    assert failed[0]["mixer"] == "mamba" and failed[0]["seed"] == 2


def test_markdown_and_html_tables_escape_text(records):
    rows = leaderboard(records)
    md = to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and md.startswith("| rank | task |")
    evil = [{**rows[0], "mixer": "<b>x|y</b>", "task": "a&b"}]
    assert "x\\|y" in to_markdown(evil)
    out = to_html(evil)
    assert "&lt;b&gt;x|y&lt;/b&gt;" in out and "a&amp;b" in out and "<b>" not in out


def test_pareto_front_on_a_hand_made_example():
    points = [(100, 0.5), (50, 0.2), (400, 0.9), (200, 0.4), (100, 0.6), (800, 0.9), (300, float("nan")),
              (25, 0.2), (1000, 0.95)]
    assert pareto_front(points) == [(25, 0.2), (100, 0.6), (400, 0.9), (1000, 0.95)]
    assert pareto_front([]) == []
    assert pareto_front([(10, 0.3)]) == [(10, 0.3)]


def test_distance_curves_pool_seeds_from_either_layout(records):
    curves = distance_curves(records)
    assert len(curves) == len(MIXERS) * len(LENGTHS) * len(WIDTHS)
    runs = [r for r in records if r["status"] == "done" and r["labels"]["mixer"] == "s4d"
            and r["labels"]["seq_len"] == 64 and r["labels"]["d_model"] == 32]
    tables = [r.get("by_distance") or r["metrics"]["by_distance"] for r in runs]
    assert len(tables) == 2 and "by_distance" in runs[1] and "by_distance" not in runs[1]["metrics"]
    curve = curves[("mqar", 64, "s4d", 32)]
    assert [low for low, _, _ in curve] == [1, 2, 4, 8, 16, 32]
    low, acc, n = curve[2]  # bucket "4-7"
    assert n == sum(t["4-7"]["scored"] for t in tables)
    assert acc == pytest.approx(sum(t["4-7"]["accuracy"] for t in tables) / 2)


def test_style_is_consistent_per_mixer(records):
    style = style_for(records)
    assert len(set(style.colors.values())) == len(MIXERS)
    assert style.color("attention") == style_for(records[:2]).color("attention")


def test_every_registered_mixer_gets_its_own_colour_and_marker():
    """The frontier preset plots 15 mixers on one figure: no two may share a (colour, marker)."""
    from longrecall.registry import MIXERS as REGISTRY
    from longrecall.report.plot_style import PALETTE

    names = list(REGISTRY.names()) + [f"extra{i}" for i in range(12)]
    records = [{"labels": {"mixer": n, "mixer_kwargs": {}, "d_model": 32}} for n in names]
    style = style_for(records)
    pairs = [(style.colors[m], style.markers[m]) for m in style.colors]
    assert len(pairs) == len(names) and len(set(pairs)) == len(pairs)
    # up to len(PALETTE) mixers on one figure, colours alone differ
    first = list(REGISTRY.names())[: len(PALETTE)]
    alone = style_for([{"labels": {"mixer": n, "mixer_kwargs": {}, "d_model": 32}} for n in first])
    assert len(set(alone.colors.values())) == len(first)


# ---------------------------------------------------------------------------------------------- report


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(records, tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("report")
    return out, write_report(records, out, title="Test <report>")


def test_report_files_and_pngs(report):
    out, paths = report
    pngs = {k: p for k, p in paths.items() if k not in ("markdown", "html")}
    assert set(pngs) == {"accuracy_vs_length", "accuracy_vs_state_bytes", "accuracy_vs_distance", "training_curves"}
    for p in [paths["markdown"], paths["html"], *pngs.values()]:
        assert p.exists() and p.parent == out
    for p in pngs.values():
        data = p.read_bytes()
        w, h = _png_size(data)
        assert 500 <= w <= 4000 and 300 <= h <= 4000 and len(data) > 10_000, (p.name, w, h, len(data))
        import matplotlib.image

        assert matplotlib.image.imread(p).shape[:2] == (h, w)
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in out.iterdir())  # not mkstemp's private 0o600


def test_markdown_report_contents(report, records):
    _, paths = report
    md = paths["markdown"].read_text()
    for name in ("accuracy_vs_length", "accuracy_vs_state_bytes", "accuracy_vs_distance", "training_curves"):
        assert f"]({name}.png)" in md
    assert md.count("*How to read:*") == 4
    assert "## Failed runs (1)" in md and "CUDA out of memory" in md and "Traceback" not in md
    assert "v0.1-3-gabc (50 runs)" in md and "2.13.0+cpu" in md and "cpu (50 runs)" in md
    assert "48 done, 1 failed, 0 running, 1 pending" in md
    assert to_markdown(leaderboard(records)) in md


def test_html_report_is_self_contained(report):
    _, paths = report
    text = paths["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "<link" not in text and "@import" not in text and "url(" not in text and "<script" not in text
    assert "Test &lt;report&gt;" in text
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    pngs = [p for k, p in paths.items() if k not in ("markdown", "html")]
    assert len(embedded) == len(pngs)
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in pngs}


def test_edge_cases_single_run_nan_and_no_distance(tmp_path):
    pytest.importorskip("matplotlib")
    rng = random.Random(2)
    single = make_record("mamba", 128, 64, 0, rng)
    del single["metrics"]["by_distance"]
    nan = make_record("s4d", 128, 64, 0, rng)
    nan["metrics"]["accuracy"] = float("nan")
    for case, recs in {"single": [single], "nan": [single, nan]}.items():
        paths = write_report(recs, tmp_path / case)
        assert len(paths) == 6
        for key, p in paths.items():
            if key not in ("markdown", "html"):
                assert _png_size(p.read_bytes())[0] > 300


def test_empty_input_says_no_finished_runs(tmp_path):
    pytest.importorskip("matplotlib")
    stale = tmp_path / "training_curves.png"
    stale.write_bytes(b"old")
    pending = make_record("mamba", 64, 32, 0, random.Random(0), status="pending")
    for recs in ([], [pending]):
        paths = write_report(recs, tmp_path)
        assert set(paths) == {"markdown", "html"}
        assert "no finished runs" in paths["markdown"].read_text().lower()
        assert "no finished runs" in paths["html"].read_text().lower()
        assert not list(tmp_path.glob("*.png"))


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(PlotDependencyError, match=re.escape("pip install 'longrecall[plot]'")):
        write_report([], tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- recipe: lr sweeps, convergence


def _with(record, **changes):
    out = {**record, "labels": {**record["labels"], **changes.pop("labels", {})},
           "metrics": {**(record["metrics"] or {}), **changes.pop("metrics", {})}}
    out.update(changes)
    return out


def _sweep_records():
    """mamba at three learning rates (two seeds each) and attention at one; statuses set by hand."""
    rng = random.Random(3)
    recs = []
    for lr, accs, status in ((1e-3, (0.40, 0.50), "learning"), (3e-3, (0.90, 0.70), "plateau"),
                             (1e-2, (0.01, 0.02), "plateau")):
        for seed, acc in enumerate(accs):
            base = make_record("mamba", 64, 64, seed, rng)
            recs.append(_with(base, id=f"m{lr}s{seed}", labels={"lr": lr}, metrics={"accuracy": acc},
                              convergence=status))
    for seed in (0, 1):
        base = make_record("attention", 64, 64, seed, rng)
        recs.append(_with(base, id=f"a{seed}", labels={"lr": 3e-3}, metrics={"accuracy": 0.995},
                          convergence="converged"))
    return recs


def test_best_over_lr_takes_the_best_seed_mean_and_names_the_rates():
    rows = leaderboard(_sweep_records())
    mamba = next(r for r in rows if r["mixer"] == "mamba")
    assert mamba["lr"] == 3e-3 and mamba["lrs"] == [1e-3, 3e-3, 1e-2]
    assert mamba["accuracy"] == pytest.approx(0.8) and mamba["seeds"] == 2
    assert mamba["convergence"] == "plateau" and not mamba["converged"]
    assert sorted(mamba["ids"]) == ["m0.003s0", "m0.003s1"]
    attention = next(r for r in rows if r["mixer"] == "attention")
    assert attention["converged"] and attention["lrs"] == [3e-3]
    assert "3e-03 (best of 3)" in to_markdown(rows)
    assert len(leaderboard(_sweep_records(), all_lrs=True)) == 4


def test_best_over_lr_ties_prefer_converged_then_the_smaller_rate():
    rng = random.Random(4)
    recs = [_with(make_record("mamba", 64, 64, 0, rng), id=f"m{lr}", labels={"lr": lr}, metrics={"accuracy": 0.5},
                  convergence=status) for lr, status in ((1e-2, "converged"), (3e-3, "plateau"), (1e-3, "converged"))]
    assert leaderboard(recs)[0]["lr"] == 1e-3


def test_convergence_from_history_when_the_store_has_none_and_mixed_seeds():
    from longrecall.report import convergence_of

    rng = random.Random(5)
    rec = make_record("s4d", 64, 32, 0, rng)
    assert "convergence" not in rec
    assert convergence_of(rec) in ("converged", "learning", "plateau")
    a = _with(rec, id="x0", convergence="converged")
    b = _with(make_record("s4d", 64, 32, 1, rng), id="x1", convergence="plateau")
    row = leaderboard([a, b])[0]
    assert row["convergence"] == "mixed (1 converged, 1 plateau)" and not row["converged"]


def test_report_lists_the_lower_bounds_and_all_lrs_shows_every_rate(tmp_path):
    pytest.importorskip("matplotlib")
    recs = _sweep_records()
    md = write_report(recs, tmp_path / "best")["markdown"].read_text()
    assert "## Convergence" in md and "1 of 2 leaderboard points converged; 1 is a lower bound:" in md
    assert md.split("## Recipes compared")[0].count("| mamba |") == 2  # the leaderboard row and the lower bound
    assert "8 runs: 8 done" in md
    md_all = write_report(recs, tmp_path / "all", all_lrs=True)["markdown"].read_text()
    assert "1 of 4 leaderboard points converged; 3 are lower bounds:" in md_all


def test_frontier_front_runs_through_converged_points_only(monkeypatch, tmp_path):
    """The Pareto front is drawn from converged points; a better but unconverged point is not on it."""
    pytest.importorskip("matplotlib")
    import longrecall.report.plots as plots

    seen = []
    real = plots.pareto_front
    monkeypatch.setattr(plots, "pareto_front", lambda pts: seen.append(list(pts)) or real(seen[-1]))
    plots.plot_accuracy_vs_state_bytes(plots_records := _sweep_records(), tmp_path / "f.png")
    converged_bytes = {plots.state_bytes_at(r) for r in plots_records if r["convergence"] == "converged"}
    assert seen and all(x in converged_bytes for x, _ in seen[0])


def test_recipe_section_when_runs_compare_learning_rates(tmp_path):
    pytest.importorskip("matplotlib")
    from longrecall.report.tables import recipe_table, recipe_varies

    recs = _sweep_records()
    assert recipe_varies(recs) and not recipe_varies(synthetic_records())
    rows = recipe_table(recs)
    mamba = [r for r in rows if r["mixer"] == "mamba"]
    assert [r["lr"] for r in mamba] == [1e-3, 3e-3, 1e-2] and all(r["loss_on"] == "answers" for r in rows)
    paths = write_report(recs, tmp_path)
    md = paths["markdown"].read_text()
    assert "## Recipes compared" in md and "](learning_curves.png)" in md and paths["learning_curves"].exists()
    # a report of a single recipe has no such section, and a stale figure is removed
    paths = write_report(synthetic_records(), tmp_path)
    assert "learning_curves" not in paths and not (tmp_path / "learning_curves.png").exists()


def test_steps_to_threshold():
    from longrecall.report.tables import steps_to

    rec = {"evals": [{"step": 100, "accuracy": 0.5}, {"step": 200, "accuracy": 0.92}, {"step": 300, "accuracy": 0.99}]}
    assert steps_to(rec, 0.9) == 200 and steps_to(rec, 0.995) is None
