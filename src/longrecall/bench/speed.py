"""Speed and memory of mixers: parallel forward vs step loop, per-token decode, training step.

Each (mixer, T, batch) cell runs in a fresh subprocess so its peak resident memory is its own:
``peak_rss_mb`` is the process's high-water mark minus its resident size just before the timed
work (imports, the module and the inputs are excluded).  Timings are medians over repeats after a
warm-up; the machine's load average is recorded next to them because a second busy process makes
2-thread CPU timings meaningless (../shared/reference/cpu_performance_notes.md section 6).

Quote ratios measured in one run (parallel / step loop, ours / mambapy), not absolute times.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

MODES = ("forward", "step_loop", "step_latency", "train")


@dataclass
class BenchSpec:
    mixers: list[str]
    lengths: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    d_model: int = 128
    modes: list[str] = field(default_factory=lambda: list(MODES))
    repeats: int = 3
    threads: int = 2
    step_loop_max_tokens: int = 65536  # B * T above which the full step loop is not run
    train_max_tokens: int = 65536  # B * T above which the training step is not run
    latency_steps: int = 64
    compare_mambapy: bool = True
    compare_max_tokens: int = 65536  # mambapy's parallel scan holds several (B, T, E, N) tensors
    mixer_kwargs: dict = field(default_factory=dict)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _median_time(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()  # warm-up (allocations, kernel caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(name: str, d_model: int, kwargs: dict):
    import longrecall.mixers  # noqa: F401 - registers every mixer
    from longrecall.registry import MIXERS

    cls = MIXERS.get(name)
    return cls(d_model, **kwargs.get(name, {}))


def _cell(name: str, mode: str, T: int, B: int, spec: dict, queue) -> None:
    """Runs in a subprocess; puts one result dict on ``queue``."""
    try:
        torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        mixer = _build(name, spec["d_model"], spec["mixer_kwargs"])
        x = torch.randn(B, T, spec["d_model"])
        result: dict = {"mixer": name, "mode": mode, "T": T, "batch": B}
        base = _rss_mb()
        if mode == "forward":
            mixer.eval()
            with torch.inference_mode():
                seconds = _median_time(lambda: mixer(x), spec["repeats"])
            result.update(seconds=seconds, tokens_per_s=B * T / seconds)
        elif mode == "step_loop":
            mixer.eval()
            with torch.inference_mode():
                state = mixer.init_state(B)
                # one timed pass, warmed up only when short: a long loop amortises first-call costs,
                # and attention's loop is O(T^2) (every step reads the whole cache)
                seconds = _median_time(lambda: mixer.step_loop(x, state), 1, warmup=B * T < 8192)
            result.update(seconds=seconds, tokens_per_s=B * T / seconds)
        elif mode == "step_latency":
            mixer.eval()
            with torch.inference_mode():
                _, state = mixer(x)  # prefill T tokens, then time single steps at that context
                tokens = torch.randn(spec["latency_steps"], B, spec["d_model"]).unbind(0)

                def decode():
                    s = state
                    for token in tokens:
                        _, s = mixer.step(token, s)

                seconds = _median_time(decode, spec["repeats"])
            result.update(ms_per_token=1000 * seconds / spec["latency_steps"], state_bytes=mixer.state_bytes(state))
        elif mode == "train":
            mixer.train()
            optimizer = torch.optim.SGD(mixer.parameters(), lr=0.0)

            def step():
                y, _ = mixer(x)
                y.square().mean().backward()
                optimizer.zero_grad(set_to_none=True)

            seconds = _median_time(step, spec["repeats"])
            result.update(seconds=seconds, tokens_per_s=B * T / seconds)
        elif mode == "mambapy":
            result.update(_mambapy(mixer, x, spec["repeats"]))
        result["peak_rss_mb"] = max(0.0, _peak_mb() - base)
        queue.put(result)
    except Exception as error:  # report, don't crash the whole bench
        queue.put({"mixer": name, "mode": mode, "T": T, "batch": B, "error": f"{type(error).__name__}: {error}"})


def _mambapy(mixer, x, repeats: int) -> dict:
    """Time mambapy's parallel-scan MambaBlock on the same weights and check it computes the same."""
    from mambapy.mamba import MambaBlock, MambaConfig

    config = MambaConfig(
        d_model=mixer.d_model, n_layers=1, d_state=mixer.d_state, expand_factor=mixer.d_inner // mixer.d_model,
        d_conv=mixer.d_conv, dt_rank=mixer.dt_rank, pscan=True,
    )
    theirs = MambaBlock(config)
    theirs.load_state_dict(mixer.state_dict(), strict=True)
    mixer.eval()
    theirs.eval()
    with torch.inference_mode():
        ours_y, _ = mixer(x)
        their_y = theirs(x)
        max_diff = (ours_y - their_y).abs().max().item()
        ours = _median_time(lambda: mixer(x), repeats)
        their = _median_time(lambda: theirs(x), repeats)
    B, T = x.shape[:2]
    return {"ours_tokens_per_s": B * T / ours, "mambapy_tokens_per_s": B * T / their,
            "speedup_vs_mambapy": their / ours, "max_abs_diff": max_diff}


def _run_in_subprocess(name: str, mode: str, T: int, B: int, spec: dict, timeout: float = 1800) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_cell, args=(name, mode, T, B, spec, queue))
    process.start()
    deadline = time.monotonic() + timeout
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except Exception:  # queue.Empty: check the child is still alive (the OOM killer may have struck)
            if not process.is_alive() and queue.empty():
                code = process.exitcode
                why = "killed (out of memory?)" if code is not None and code < 0 else f"exited with code {code}"
                result = {"mixer": name, "mode": mode, "T": T, "batch": B, "error": f"worker {why} without a result"}
            elif time.monotonic() > deadline:
                result = {"mixer": name, "mode": mode, "T": T, "batch": B, "error": f"no result within {timeout}s"}
    process.join(10)
    if process.is_alive():
        process.kill()
    result["load_average"] = os.getloadavg()[0]
    return result


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import longrecall

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "longrecall": longrecall.__version__, "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def cells(spec: BenchSpec) -> list[tuple[str, str, int, int]]:
    out = []
    for name in spec.mixers:
        for B in spec.batch_sizes:
            for T in spec.lengths:
                for mode in spec.modes:
                    if mode == "step_loop" and B * T > spec.step_loop_max_tokens:
                        continue
                    if mode == "train" and B * T > spec.train_max_tokens:
                        continue
                    out.append((name, mode, T, B))
                if name == "mamba" and spec.compare_mambapy and B * T <= spec.compare_max_tokens and _has_mambapy():
                    out.append((name, "mambapy", T, B))
    return out


def _has_mambapy() -> bool:
    try:
        import mambapy  # noqa: F401 - a probe

        return True
    except ImportError:
        return False


def run_bench(spec: BenchSpec, on_result=None) -> dict:
    """Run every cell; returns ``{"machine", "spec", "results", "skipped"}``.

    ``on_result(result, report_so_far)`` is called after every cell (the CLI rewrites its JSON and
    markdown then, so an interrupted bench keeps what it measured).
    """
    from longrecall.contract import run_contract

    skipped = {}
    passing = []
    for name in spec.mixers:  # DESIGN section 8: never time a mixer that breaks its contract
        failed = [r for r in run_contract(name) if r.passed is False]
        if failed:
            skipped[name] = "contract check failed: " + "; ".join(f"{r.check}: {r.message}" for r in failed)
        else:
            passing.append(name)
    spec_for_run = BenchSpec(**{**asdict(spec), "mixers": passing})
    raw = asdict(spec_for_run)
    report = {"machine": machine_info(spec.threads), "spec": asdict(spec), "results": [], "skipped": skipped}
    for name, mode, T, B in cells(spec_for_run):
        result = _run_in_subprocess(name, mode, T, B, raw)
        report["results"].append(result)
        if on_result:
            on_result(result, report)
    return report


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# longrecall bench",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads; Python {m['python']}, "
        f"torch {m['torch']}, longrecall {m['longrecall']}; {m['time']}.",
        f"Width D={report['spec']['d_model']}, float32, CPU. "
        f"Medians of {report['spec']['repeats']} repeats after a warm-up.",
        "",
        "| mixer | batch | T | forward tok/s | step loop tok/s | forward / step loop | step ms/token at T | "
        "train tok/s | peak RSS fwd MB | peak RSS train MB | state bytes at T | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table: dict = {}
    for r in report["results"]:
        table.setdefault((r["mixer"], r["batch"], r["T"]), {})[r["mode"]] = r
    for (name, B, T), modes in table.items():
        fwd, loop, lat, train = (modes.get(k, {}) for k in ("forward", "step_loop", "step_latency", "train"))
        ratio = fwd["tokens_per_s"] / loop["tokens_per_s"] if "tokens_per_s" in fwd and "tokens_per_s" in loop else None
        load = max((r.get("load_average", 0) for r in modes.values()), default=0)
        errors = "; ".join(r["error"] for r in modes.values() if "error" in r)
        lines.append(
            f"| {name} | {B} | {T} | {_fmt(fwd.get('tokens_per_s'))} | {_fmt(loop.get('tokens_per_s'))} | "
            f"{_fmt(ratio, 1)}{'x' if ratio else ''} | {_fmt(lat.get('ms_per_token'), 3)} | "
            f"{_fmt(train.get('tokens_per_s'))} | {_fmt(fwd.get('peak_rss_mb'))} | {_fmt(train.get('peak_rss_mb'))} | "
            f"{_fmt(lat.get('state_bytes'))} | {load:.1f} |"
            + (f" error: {errors}" if errors else "")
        )
    compare = [r for r in report["results"] if r["mode"] == "mambapy"]
    if compare:
        lines += ["", "## mamba vs mambapy (parallel scan), same weights, same run", "",
                  "| batch | T | ours tok/s | mambapy tok/s | ours / mambapy speed | max abs output diff |",
                  "|---|---|---|---|---|---|"]
        for r in compare:
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['T']} | error: {r['error']} | | | |")
                continue
            lines.append(f"| {r['batch']} | {r['T']} | {_fmt(r['ours_tokens_per_s'])} | "
                         f"{_fmt(r['mambapy_tokens_per_s'])} | {r['speedup_vs_mambapy']:.2f}x | "
                         f"{r['max_abs_diff']:.2e} |")
    flat = _latency_flatness(report["results"])
    if flat:
        lines += ["", "## decode latency flatness (ms/token at the longest T / at T=1024)", ""]
        lines += [f"- {name}, batch {B}: {ratio:.2f}" for (name, B), ratio in flat.items()]
    if report["skipped"]:
        lines += ["", "## not timed", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def _latency_flatness(results: list[dict]) -> dict:
    lat = {(r["mixer"], r["batch"], r["T"]): r["ms_per_token"] for r in results
           if r["mode"] == "step_latency" and "ms_per_token" in r}
    out = {}
    for (name, B, T) in lat:
        longest = max(t for (n, b, t) in lat if n == name and b == B)
        if T == 1024 and longest > 1024:
            out[(name, B)] = lat[(name, B, longest)] / lat[(name, B, 1024)]
    return out
