"""Training-step speed of whole small models: the currency of every verdict the arena gives.

A recipe study or a preset is a few thousand steps per run, so what decides which mechanisms can
be trained to convergence on a CPU is the time of one optimisation step of the models the presets
train (2 layers, widths 32-128, T 64-256, batch 32): forward, backward and AdamW, as ``train.py``
runs it.  At these sizes a step is dominated by per-operation dispatch and memory traffic, not by
the arithmetic a FLOP count would predict, so it has to be measured.

Every model is built once and timed in the same process, in interleaved rounds (round 1: every
mixer, round 2: every mixer, ...), so a change of machine load during the run affects all mixers
alike; the reported time is the median over rounds of each round's median step.  Ratios to the
``reference`` mixer (attention) are measured in the same run.  The load average before and after is
recorded: quote numbers only from runs with nothing else on the machine.

    from longrecall.bench.train_step import TrainStepSpec, run_train_steps
    report = run_train_steps(TrainStepSpec(mixers=["attention", "mamba"], widths=[64], lengths=[64]))
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["TrainStepSpec", "run_train_steps", "to_markdown"]


@dataclass
class TrainStepSpec:
    mixers: list[str]
    widths: list[int] = field(default_factory=lambda: [64])
    lengths: list[int] = field(default_factory=lambda: [64])
    batch_size: int = 32
    n_layers: int = 2
    vocab_size: int = 256
    num_kv_pairs: int = 4
    short_conv: int = 4
    steps: int = 10  # timed steps per round
    rounds: int = 3
    warmup: int = 3
    threads: int = 1
    reference: str = "attention"
    mixer_kwargs: dict = field(default_factory=dict)
    compile: bool = False  # time each model's loss under torch.compile too (the `compile` training option)


def _model_and_step(name: str, width: int, length: int, spec: TrainStepSpec, compiled: bool = False):
    from ..models import LanguageModel
    from ..tasks.mqar import MQAR
    from ..train import param_groups

    torch.manual_seed(0)
    task = MQAR(vocab_size=spec.vocab_size, seq_len=length, num_kv_pairs=spec.num_kv_pairs)
    batch = task.build(spec.batch_size, 0)
    model = LanguageModel(spec.vocab_size, width, [name] * spec.n_layers, short_conv=spec.short_conv,
                          mixer_kwargs=spec.mixer_kwargs.get(name, {}))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.98))
    model.train()
    if compiled:  # a fresh dynamo per model: past its recompile limit (8 per function) it would time eager code
        torch._dynamo.reset()
    loss_fn = torch.compile(model.loss, dynamic=False) if compiled else model.loss

    def step() -> None:
        loss, _, _ = loss_fn(batch.inputs, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return model, step


def run_train_steps(spec: TrainStepSpec, on_round=None) -> dict:
    """Time every (mixer, width, length); returns ``{"machine", "spec", "results", "load_average"}``.

    Each result: ``mixer, d_model, T, batch, ms_per_step`` (median over rounds of the round medians),
    ``steps_per_s``, ``rounds_ms`` (each round's median), ``ratio_to_reference`` and ``parameters``.
    """
    from ..ops.cpp import kernel_status
    from .speed import machine_info

    torch.set_num_threads(spec.threads)
    load_before = os.getloadavg()
    modes = [False, True] if spec.compile else [False]
    cells = [(m, w, t, c) for t in spec.lengths for w in spec.widths for m in spec.mixers for c in modes]
    steps, params, warmup_seconds = {}, {}, {}
    for cell in cells:
        model, step = _model_and_step(*cell[:3], spec, compiled=cell[3])
        tick = time.perf_counter()
        for _ in range(spec.warmup):  # first-call allocations, kernel builds and caches, compiling
            step()
        warmup_seconds[cell] = time.perf_counter() - tick
        steps[cell], params[cell] = step, sum(p.numel() for p in model.parameters())
    rounds: dict[tuple, list[float]] = {cell: [] for cell in cells}
    for r in range(spec.rounds):
        for cell in cells:
            times = []
            for _ in range(spec.steps):
                tick = time.perf_counter()
                steps[cell]()
                times.append(time.perf_counter() - tick)
            rounds[cell].append(statistics.median(times))
        if on_round is not None:
            on_round(r + 1, spec.rounds)
    results = []
    for cell in cells:
        name, width, length, compiled = cell
        seconds = statistics.median(rounds[cell])
        reference = rounds.get((spec.reference, width, length, False))
        ratio = seconds / statistics.median(reference) if reference else None
        results.append({"mixer": name, "d_model": width, "T": length, "batch": spec.batch_size, "compiled": compiled,
                        "ms_per_step": 1000 * seconds, "steps_per_s": 1 / seconds,
                        "rounds_ms": [1000 * s for s in rounds[cell]], "ratio_to_reference": ratio,
                        "warmup_seconds": warmup_seconds[cell], "parameters": params[cell]})
    return {"machine": machine_info(spec.threads), "spec": asdict(spec), "results": results,
            "load_average": {"before": load_before[0], "after": os.getloadavg()[0]}, "kernels": kernel_status()}


def to_markdown(report: dict) -> str:
    spec, load = report["spec"], report["load_average"]
    m = report["machine"]
    lines = [
        "# longrecall bench --train-steps",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {spec['threads']} torch thread(s); torch {m['torch']}; {m['time']}; "
        f"load average {load['before']:.2f} before, {load['after']:.2f} after.",
        f"Model: {spec['n_layers']} layers of the mixer with SwiGLU MLPs and a width-{spec['short_conv']} short conv; "
        f"MQAR vocabulary {spec['vocab_size']}, {spec['num_kv_pairs']} pairs, batch {spec['batch_size']}. One step = "
        f"forward + backward + clipping + AdamW. Median over {spec['rounds']} interleaved rounds of the median of "
        f"{spec['steps']} steps, after {spec['warmup']} warm-up steps (the warm-up column includes compiling "
        f"where a model is compiled). C++ kernels: "
        f"{', '.join(f'{k} {v}' for k, v in report.get('kernels', {}).items()) or 'none used'}.",
        "",
        f"| mixer | D | T | ms/step | steps/s | x {spec['reference']} (eager) | warm-up s | parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(report["results"], key=lambda r: (r["T"], r["d_model"], r["ms_per_step"])):
        ratio = f"{r['ratio_to_reference']:.2f}" if r["ratio_to_reference"] is not None else "—"
        name = r["mixer"] + (" (compiled)" if r.get("compiled") else "")
        lines.append(f"| {name} | {r['d_model']} | {r['T']} | {r['ms_per_step']:.1f} | {r['steps_per_s']:.1f} | "
                     f"{ratio} | {r.get('warmup_seconds', 0):.1f} | {r['parameters']:,} |")
    return "\n".join(lines) + "\n"
