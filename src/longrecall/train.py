"""Train a LanguageModel on a task: AdamW, warm-up + cosine, clipping, atomic checkpoints.

    from longrecall.config import TrainConfig
    from longrecall.train import train
    result = train(TrainConfig(layers=["attention", "attention"], steps=500))
    result["final_eval"]["accuracy"]

Data is generated on the fly: the batch at step s comes from ``task.build(batch_size, seed=f(seed, s))``,
so a run is a pure function of its config and the code, resumes exactly from a checkpoint, and
never sees the held-out evaluation examples (drawn from a disjoint seed stream).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from . import __version__, convergence
from .checkpoint import atomic_write_json, load_checkpoint, read_manifest, save_checkpoint
from .config import TrainConfig
from .evaluate import evaluate
from .models import MODELS, LanguageModel
from .protocol import state_detach
from .registry import TASKS
from .tasks.base import IGNORE_INDEX, Batch, Task

EVAL_SEED_BASE = 2**40  # eval examples come from seeds far from any training step's seed


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept.

    ``metrics``: the run's metrics up to the last good step (convergence ``diverged``), as written
    to ``metrics.json``, so the arena can store the run with its status instead of as a failure.
    """

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


def make_task(config: TrainConfig, **overrides) -> Task:
    cls = TASKS.get(config.task)
    kwargs = {**config.task_kwargs, **overrides}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"bad task_kwargs for task {config.task!r}: {error}") from None


def make_model(config: TrainConfig, vocab_size: int) -> LanguageModel:
    """The run's model: ``config.model`` (models.MODELS) around its layer list."""
    return MODELS[config.model](
        vocab_size,
        config.d_model,
        config.layers,
        mixer_kwargs=config.mixer_kwargs,
        mlp=config.mlp,
        short_conv=config.short_conv,
        tie_embeddings=config.tie_embeddings,
        **config.model_kwargs,
    )


def eval_batches(config: TrainConfig) -> list[Batch]:
    """The held-out set: the training task plus every ``eval_task_kwargs`` variant."""
    variants = [{}] + list(config.eval_task_kwargs)
    return [
        make_task(config, **overrides).build(config.eval_examples, EVAL_SEED_BASE + 1000 * config.seed + i)
        for i, overrides in enumerate(variants)
    ]


def train_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def horizon(config: TrainConfig) -> int:
    """The last step a run may reach: ``max_steps`` when set, else ``steps``."""
    return config.max_steps if config.max_steps is not None else config.steps


def lr_lambda(config: TrainConfig):
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at the horizon (``max_steps`` or ``steps``).

    The schedule never depends on where a run stops, so a run that stops at ``steps`` (converged or
    on a plateau) is step for step the prefix of the same run extended towards ``max_steps``.
    """
    last = horizon(config)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, last - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def training_targets(batch: Batch, loss_on: str) -> Tensor:
    """What the loss reads: the task's answers (``"answers"``), or next-token targets at every
    position (``"all"``, MAD's protocol): ``inputs[t + 1]`` at t, the task's own target wherever it
    scores one (a classification answer need not be the next input), nothing after the last token."""
    if loss_on == "answers":
        return batch.targets
    targets = torch.full_like(batch.inputs, IGNORE_INDEX)
    targets[:, :-1] = batch.inputs[:, 1:]
    scored = batch.targets != IGNORE_INDEX
    return torch.where(scored, batch.targets, targets)


def segmented_backward(model: LanguageModel, inputs: Tensor, targets: Tensor, segment_len: int,
                       bptt_segments: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Training across segments: read ``inputs (B, T)`` ``segment_len`` tokens at a time carrying the
    model state, and backpropagate every ``bptt_segments`` segments (truncated BPTT), detaching the
    carried state there. Gradients accumulate into ``.grad``; the loss is the mean over every scored
    position of the sequence, as whole-sequence training computes it, so with ``bptt_segments=None``
    the gradients equal whole-sequence training's (the contract's chunked carry). Returns the loss
    (detached), and the logits (P, V) and labels (P,) at the scored positions, in order.
    """
    total = int((targets != IGNORE_INDEX).sum())
    if total == 0:
        raise ValueError("targets score no position (all are -100)")
    state, window, loss_value = None, None, 0.0
    all_logits, all_labels, where = [], [], []
    T = inputs.shape[1]
    flat = torch.arange(inputs.numel(), device=inputs.device).view_as(inputs)  # (B, T): b * T + t
    starts = range(0, T, segment_len)
    for k, t0 in enumerate(starts):
        seg = slice(t0, t0 + segment_len)
        part, state = model.loss_sum(inputs[:, seg], targets[:, seg], state)
        window = part[0] / total if window is None else window + part[0] / total
        all_logits.append(part[1].detach())
        all_labels.append(part[2])
        where.append(flat[:, seg][targets[:, seg] != IGNORE_INDEX])
        last = k == len(starts) - 1
        if last or (bptt_segments is not None and (k + 1) % bptt_segments == 0):
            if window.requires_grad:
                window.backward()
            loss_value = window.detach() + loss_value
            window = None
            if not last:
                state = state_detach(state)  # the truncation boundary: no gradient into earlier segments
    order = torch.cat(where).argsort()  # the whole sequence's (b, t) order, as whole-sequence training returns
    return loss_value, torch.cat(all_logits)[order], torch.cat(all_labels)[order]


def stop_reason(config: TrainConfig, step: int, history: list, evals: list, chance: float | None = None) -> str | None:
    """Why training stops after ``step`` (an evaluation was just made there), or None to go on.

    ``early_stop``: held-out accuracy reached ``early_stop_accuracy``. At ``steps`` and after:
    ``budget`` without ``max_steps``; with it, the run goes on only while it is ``learning``
    (convergence.py) and stops as ``converged``, ``plateau`` or ``diverged``, or at ``max_steps``. A
    plateau whose accuracy never left ``chance`` (the task's) goes on too (``convergence.stops_on_plateau``).
    """
    accuracy = evals[-1]["accuracy"] if evals and evals[-1]["step"] == step else None
    if accuracy is not None and config.early_stop_accuracy is not None and accuracy >= config.early_stop_accuracy:
        return "early_stop"
    if step < config.steps:
        return None
    if config.max_steps is None or step >= config.max_steps:
        return "budget" if config.max_steps is None else "max_steps"
    verdict = convergence.status(history, evals, config.target_accuracy)
    if verdict == "plateau" and not convergence.stops_on_plateau(evals, chance):
        return None
    return None if verdict == "learning" else verdict


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: not norms, biases, embeddings' tied copies twice, or SSM dynamics
    (parameters flagged ``_no_weight_decay``, as mamba_ssm flags A_log and D; S4 advises the same)."""
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        (decay if param.dim() >= 2 and not getattr(param, "_no_weight_decay", False) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def progress_columns() -> list:
    return [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]


def _saved_config(manifest: dict) -> dict | None:
    """The checkpoint's config with the keys added since it was written at their defaults."""
    try:
        return TrainConfig(**manifest.get("config", {})).to_dict()
    except (TypeError, ValueError):
        return manifest.get("config")


def train(config: TrainConfig, *, progress: bool | Progress = True, resume: bool = True, log=print,
          until_step: int | None = None) -> dict:
    """Run training; returns the metrics dict (also written to ``out_dir/metrics.json``).

    ``progress``: show a progress bar (True), none (False), or add this run's bar to an existing
    ``rich.progress.Progress`` (the arena shows its grid bar and the current run's bar together).
    ``until_step``: stop after this step whatever the run would do next, as if interrupted there (the
    schedule is the config's, so the history is the prefix of the whole run's; ``longrecall reproduce``).
    """
    if until_step is not None and (isinstance(until_step, bool) or not isinstance(until_step, int)
                                   or until_step < 1):
        raise ValueError(f"until_step must be None or a positive int, got {until_step!r}")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    out_dir = Path(config.out_dir) if config.out_dir else None

    task = make_task(config)
    held_out = eval_batches(config)
    torch.manual_seed(config.seed)  # parameter initialisation
    model = make_model(config, task.vocab_size).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))

    history: list[dict] = []
    evals: list[dict] = []
    start_step, last_checkpoint, manifest = 0, None, None
    if out_dir is not None and resume and (manifest := read_manifest(out_dir)) is not None:
        if _saved_config(manifest) != config.to_dict():
            raise ValueError(
                f"{out_dir} holds a checkpoint of a different config; use another out_dir or resume=False"
            )
        load_checkpoint(out_dir, model, optimizer, scheduler)
        start_step, last_checkpoint = manifest["step"], manifest["step"]
        history, evals = manifest.get("history", []), manifest.get("evals", [])
        log(f"resuming from the checkpoint at step {start_step} in {out_dir}")

    if config.aux_loss_weight and not any(hasattr(b.mixer, "auxiliary_loss") for b in model.blocks):
        raise ValueError(f"aux_loss_weight={config.aux_loss_weight}: no mixer of {config.layers} has an auxiliary "
                         "loss (compressive has one); set it to 0")
    n_params = model.num_parameters()
    chance = task.chance_accuracy()  # the convergence rule's near-chance test asks at every evaluation
    tokens_per_step = config.batch_size * task.seq_len
    train_seconds = sum(h.get("seconds", 0.0) for h in history)

    def checkpoint(step: int, stopped: str | None) -> None:
        nonlocal last_checkpoint
        if out_dir is not None:
            extra = {"history": history, "evals": evals}
            if stopped:
                extra["stopped"] = stopped  # a resume after a kill must not train on
            save_checkpoint(out_dir, model, optimizer, scheduler, step, config.to_dict(), extra)
            last_checkpoint = step

    def run_eval(step: int) -> dict:
        tick = time.perf_counter()
        result = evaluate(model, held_out, batch_size=max(config.batch_size, 64), device=device)
        result["step"], result["seconds"] = step, time.perf_counter() - tick
        evals.append(result)
        return result

    status, stopped = "done", (manifest or {}).get("stopped") if out_dir is not None and resume else None
    if stopped == "plateau" and stop_reason(config, start_step, history, evals, chance) is None:
        # stopped on a plateau under an earlier convergence rule that the current one would not stop there
        # (still learning, or near chance; convergence.RULE_VERSION): the run goes on from its checkpoint,
        # exactly as it would have
        log(f"step {start_step}: the current convergence rule would not stop this run here; continuing")
        stopped = None
    if stopped:  # killed after deciding to stop, before writing metrics: nothing left to train
        status = "early_stopped" if stopped == "early_stop" else "done"
    loss_fn = compiled_loss(model, log) if config.compile else model.loss
    last = horizon(config) if until_step is None else min(horizon(config), until_step)
    shared = isinstance(progress, Progress)
    with (contextlib.nullcontext(progress) if shared else Progress(*progress_columns(), disable=not progress)) as bar:
        job = bar.add_task("train", total=last, completed=start_step, info="")
        model.train()
        step = start_step
        while step < last and not stopped:
            tick = time.perf_counter()
            batch = task.build(config.batch_size, train_seed(config.seed, step)).to(device)
            targets = training_targets(batch, config.loss_on)
            if config.segment_len is None:
                loss, logits, labels = loss_fn(batch.inputs, targets)
            else:  # gradients are taken segment by segment here; the step below applies them
                optimizer.zero_grad(set_to_none=True)
                loss, logits, labels = segmented_backward(model, batch.inputs, targets, config.segment_len,
                                                          config.bptt_segments)
            if not torch.isfinite(loss):
                where = (f"the last good checkpoint (step {last_checkpoint}) in {out_dir} is kept"
                         if last_checkpoint is not None else "no checkpoint was written")
                status = "diverged"
                metrics = _write_metrics(out_dir, config, history, evals, status, n_params, train_seconds,
                                         tokens_per_step, task, diverged=True)
                message = f"loss is {loss.item()} at step {step} (lr {scheduler.get_last_lr()[0]:.3g}); {where}"
                metrics["error"] = message
                raise TrainingDiverged(message, metrics)
            if config.segment_len is None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            aux = None
            if config.aux_loss_weight:
                aux = model.auxiliary_loss(batch.inputs)
                (config.aux_loss_weight * aux).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            seconds = time.perf_counter() - tick
            train_seconds += seconds
            step += 1
            # training accuracy on the task's answers, whatever the loss reads
            answers = batch.targets[targets != IGNORE_INDEX] != IGNORE_INDEX  # (P,) among the loss positions
            accuracy = (logits[answers].argmax(-1) == labels[answers]).float().mean().item()
            history.append({"step": step, "loss": loss.item(), "accuracy": accuracy,
                            **({"aux_loss": aux.item()} if aux is not None else {}),
                            "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(), "seconds": seconds})
            info = f"loss {loss.item():.3f} acc {accuracy:.3f}"
            if step % config.eval_every == 0 or step == config.steps or step == last:
                result = run_eval(step)
                info += f" eval {result['accuracy']:.3f}"
                stopped = stop_reason(config, step, history, evals, chance)
                if stopped == "early_stop":
                    status = "early_stopped"
                checkpoint(step, stopped)
            elif config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint(step, None)
            bar.update(job, advance=1, info=info)
        if shared:
            bar.remove_task(job)
    if not evals or evals[-1]["step"] != (history[-1]["step"] if history else 0):
        run_eval(history[-1]["step"] if history else 0)
    return _write_metrics(out_dir, config, history, evals, status, n_params, train_seconds, tokens_per_step, task,
                          stop=stopped)


def compiled_loss(model: LanguageModel, log=print):
    """``model.loss`` under ``torch.compile`` (the ``compile`` option), or eager where compiling fails.

    The first call compiles (tens of seconds on a CPU); a failure then, or an unavailable compiler,
    falls back to eager for the rest of the run with one message: the same function, slower.
    Dynamo's state is reset first: every run compiles ``LanguageModel.loss`` for its own model, and a
    process that trains many runs (an arena worker) would otherwise reach dynamo's recompile limit (8
    per function) and silently train every later run eagerly.
    """
    try:
        torch._dynamo.reset()
        compiled = torch.compile(model.loss, dynamic=False)
    except Exception as error:  # torch.compile unsupported here
        log(f"compile: torch.compile is unavailable ({error}); training eagerly")
        return model.loss
    state = {"fn": compiled}

    def loss(inputs, targets):
        try:
            return state["fn"](inputs, targets)
        except Exception as error:  # a backend failure: same maths, eager
            if state["fn"] is model.loss:
                raise
            log(f"compile: torch.compile failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); "
                "training eagerly")
            state["fn"] = model.loss
            return model.loss(inputs, targets)

    return loss


def _write_metrics(out_dir, config, history, evals, status, n_params, train_seconds, tokens_per_step, task,
                   *, diverged: bool = False, stop: str | None = None) -> dict:
    from .ops.cpp import kernel_status

    steps_done = history[-1]["step"] if history else 0
    verdict = convergence.assess(history, evals, config.target_accuracy, diverged=diverged,
                                 chance=task.chance_accuracy())
    metrics = {
        "status": status,
        "convergence": verdict["status"],
        "convergence_detail": verdict,
        "stop_reason": "diverged" if diverged else stop,
        "kernels": kernel_status(),
        "config": config.to_dict(),
        "task": task.config(),
        "steps": steps_done,
        "parameters": n_params,
        "train_seconds": train_seconds,
        "eval_seconds": sum(e.get("seconds", 0.0) for e in evals),
        "train_tokens_per_second": steps_done * tokens_per_step / train_seconds if train_seconds else None,
        "final_eval": {**evals[-1], "chance": task.chance_accuracy()} if evals else None,
        "evals": evals,
        "history": history,
        "versions": {"longrecall": __version__, "torch": torch.__version__},
    }
    if out_dir is not None:
        atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
