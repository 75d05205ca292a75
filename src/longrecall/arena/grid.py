"""The grid of an arena spec expanded into runs: ``mixers x tasks x lengths x widths x seeds x lrs``.

Each grid point becomes a validated ``TrainConfig`` with every default resolved (the mixer's and the
task's constructor arguments too) and its labels; the layering of a run's config, the mixer and task
entries' own keys (``lrs``, ``train``, ``model``, ``seq_len_kwargs``; a task's ``lengths``) and the
errors are those the ``spec`` module documents.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..config import ConfigError, TrainConfig
from ..registry import MIXERS, TASKS
from .checks import (
    _int_list,
    _is_int,
    base_task_kwargs,
    build_mixer_check,
    check_mixer_kwargs,
    check_task_kwargs,
    check_train,
    instantiate_task,
    make_config,
    registry_entry,
    resolve_mixer_kwargs,
    resolve_task_kwargs,
)
from .ids import RunSpec, run_id

__all__ = ["expand_grid", "swept_lrs", "model_label"]


def expand_grid(spec) -> list[RunSpec]:
    """The runs of a grid spec (an ``ArenaSpec`` with ``mixers``, ``tasks``, ``lengths``, ...), validated,
    in grid order (mixers outermost, seeds innermost)."""
    if not _is_int(spec.n_layers) or spec.n_layers <= 0:
        raise ConfigError(f"n_layers must be a positive int, got {spec.n_layers!r}")
    if not isinstance(spec.mixers, (list, tuple)) or not spec.mixers:
        raise ConfigError(f"mixers must be a non-empty list of mixer names or {{ name = ..., kwargs = {{...}} }} "
                          f"tables (empty grid); available mixers: {', '.join(MIXERS.names())}")
    if not isinstance(spec.tasks, (list, tuple)) or not spec.tasks:
        raise ConfigError(f"tasks must be a non-empty list of task names or {{ task = ..., kwargs = {{...}} }} "
                          f"tables (empty grid); available tasks: {', '.join(TASKS.names())}")
    task_entries = [_task_entry(i, entry) for i, entry in enumerate(spec.tasks)]
    if all(own is not None for _, _, own in task_entries) and not spec.lengths:
        lengths = []
    else:
        lengths = _int_list(spec.lengths, "lengths", minimum=1)
    widths = _int_list(spec.widths, "widths", minimum=1)
    seeds = _int_list(spec.seeds, "seeds", minimum=0)
    train = check_train(spec.train)
    lrs = swept_lrs(spec.lrs, "lrs")
    own_lrs = [isinstance(e, dict) and "lrs" in e for e in spec.mixers]
    if (lrs != [None] or any(own_lrs)) and "lr" in train:
        raise ConfigError("train.lr cannot be set together with lrs: lrs sweeps the learning rate; "
                          "remove one of them")
    base = make_config(train, "train")  # train's own values checked once (e.g. steps > 0)

    mixers = [_mixer_entry(i, entry) for i, entry in enumerate(spec.mixers)]
    mixer_lrs = [swept_lrs(entry["lrs"], f"mixers[{i}].lrs") if own else lrs
                 for i, (entry, own) in enumerate(zip(spec.mixers, own_lrs, strict=True))]
    longest = max([*lengths, *(max(own) for _, _, own in task_entries if own)], default=None)
    length_keys = [_seq_len_kwargs(i, entry, kwargs) for i, (entry, (_, kwargs))
                   in enumerate(zip(spec.mixers, mixers, strict=True))]
    for i, ((name, kwargs), keys) in enumerate(zip(mixers, length_keys, strict=True)):
        for j, width in enumerate(widths):  # length-set arguments checked at the longest length
            build_mixer_check(name, {**kwargs, **dict.fromkeys(keys, longest)}, width, f"mixers[{i}].kwargs",
                              f"widths[{j}]")

    tasks = []  # (task, user kwargs, {length: resolved kwargs})
    for i, (entry, (task, kwargs, own_lengths)) in enumerate(zip(spec.tasks, task_entries, strict=True)):
        key = f"tasks[{i}].kwargs" if isinstance(entry, dict) else f"tasks[{i}]"
        task_lengths = own_lengths if own_lengths is not None else lengths
        lengths_key = f"tasks[{i}].lengths" if own_lengths is not None else "lengths"
        per_length = {}
        for j, length in enumerate(task_lengths):
            merged = {**base_task_kwargs(task), **kwargs}
            try:  # most tasks take seq_len; copy-like tasks derive another argument from it
                by_length = TASKS.get(task).length_kwargs(length, merged)
            except ValueError as error:
                raise ConfigError(f"{lengths_key}[{j}]={length}: task {task!r} rejects it: {error}") from None
            clash = sorted(set(by_length) & set(kwargs))
            if clash:
                raise ConfigError(f"{key}.{clash[0]} is set by lengths for task {task!r}; "
                                  "remove it from the task's kwargs")
            full = {**merged, **by_length}
            obj = instantiate_task(task, full, key, seq_len_key=f"{lengths_key}[{j}]={length}",
                                   context=f"with seq_len={length}")
            per_length[length] = resolve_task_kwargs(obj, full)
            for k, override in enumerate(base.eval_task_kwargs):
                okey = f"train.eval_task_kwargs[{k}]"
                check_task_kwargs(task, override, okey)
                instantiate_task(task, {**per_length[length], **override}, okey,
                                 seq_len_key=(f"{okey}.seq_len" if "seq_len" in override
                                              else f"{lengths_key}[{j}]={length}"),
                                 context=f"evaluating {key} at seq_len={length}")
        tasks.append((task, kwargs, per_length))

    runs = []
    # a mixer entry may name the model around its layers (models.MODELS: "rmt", "memformer") and
    # override train keys for that mixer only (e.g. a per-mixer short_conv measured by a study)
    models = []
    for i, e in enumerate(spec.mixers):
        own = {k: e[k] for k in ("model", "model_kwargs") if k in e} if isinstance(e, dict) else {}
        if isinstance(e, dict) and "train" in e:
            own_train = check_train(e["train"], f"mixers[{i}].train")
            if "lr" in own_train:
                raise ConfigError(f"mixers[{i}].train.lr: set a mixer's rates with mixers[{i}].lrs")
            own = {**own_train, **own}
        models.append(own)
    grid = ((m, keys, mod, t, length, w, s, lr)
            for m, keys, mod, m_lrs in zip(mixers, length_keys, models, mixer_lrs, strict=True)
            for t in tasks for length in t[2] for w, s, lr in itertools.product(widths, seeds, m_lrs))
    for (mixer, mkwargs), keys, model, (task, tkwargs, per_length), length, width, seed, lr in grid:
        values = {
            **({"lr": lr} if lr is not None else {}),
            **train,
            **model,
            "layers": [mixer] * spec.n_layers,
            "mixer_kwargs": resolve_mixer_kwargs(mixer, {**mkwargs, **dict.fromkeys(keys, length)}),
            "d_model": width,
            "task": task,
            "task_kwargs": per_length[length],
            "seed": seed,
        }
        config = make_config(values, f"run (mixer={mixer}, task={task}, seq_len={length}, d_model={width}, "
                                     f"seed={seed})")
        # the label names a length-set argument "seq_len", so one mixer reads as one row across lengths
        labels = {"spec": spec.name, "mixer": model_label(config, mixer),
                  "mixer_kwargs": {**mkwargs, **dict.fromkeys(keys, "seq_len")},
                  "task": task, "task_kwargs": dict(tkwargs), "seq_len": length, "d_model": width,
                  "n_layers": spec.n_layers, "seed": seed, "lr": config.lr, "loss_on": config.loss_on}
        runs.append(RunSpec(run_id(config), config, labels, spec.name))
    return runs

def _mixer_entry(i: int, entry: Any) -> tuple[str, dict]:
    name, kwargs = registry_entry(f"mixers[{i}]", entry, "name", MIXERS, "mixer",
                               extra=("lrs", "model", "model_kwargs", "train", "seq_len_kwargs"))
    placeholder = dict.fromkeys(_seq_len_kwargs(i, entry, kwargs), 1)  # values set per run
    check_mixer_kwargs(name, placeholder, f"mixers[{i}].seq_len_kwargs")
    checked = check_mixer_kwargs(name, {**kwargs, **placeholder}, f"mixers[{i}].kwargs")
    return name, {k: v for k, v in checked.items() if k not in placeholder}

def _seq_len_kwargs(i: int, entry: Any, kwargs: dict) -> list[str]:
    """The constructor arguments a mixer entry sets to each run's sequence length (``seq_len_kwargs``):
    e.g. S4's ``l_max`` or a long convolution's filter length, so that every length trains the
    mechanism as its paper does at its own training length."""
    keys = entry.get("seq_len_kwargs", []) if isinstance(entry, dict) else []
    key = f"mixers[{i}].seq_len_kwargs"
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"{key} must be a list of the mixer's argument names, got {keys!r}")
    clash = sorted(set(keys) & set(kwargs))
    if clash:
        raise ConfigError(f"mixers[{i}].kwargs.{clash[0]} is set by {key}; remove it from the kwargs")
    return list(keys)

def _task_entry(i: int, entry: Any) -> tuple[str, dict, list[int] | None]:
    """(task, kwargs, its own lengths or None when it runs at the spec's lengths)."""
    task, kwargs = registry_entry(f"tasks[{i}]", entry, "task", TASKS, "task", extra=("lengths",))
    own = None
    if isinstance(entry, dict) and "lengths" in entry:
        own = _int_list(entry["lengths"], f"tasks[{i}].lengths", minimum=1)
    return task, check_task_kwargs(task, kwargs, f"tasks[{i}].kwargs", allow_seq_len=False), own

def swept_lrs(value: Any, key: str) -> list:
    """The swept learning rates, or ``[None]`` (each run takes ``train.lr`` or the default)."""
    if value is None or (isinstance(value, (list, tuple)) and not value and key == "lrs"):
        return [None]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} must be a non-empty list of positive learning rates (e.g. [1e-3, 3e-3, 1e-2]), "
                          f"got {value!r}")
    out = []
    for i, lr in enumerate(value):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or lr != lr or lr == float("inf"):
            raise ConfigError(f"{key}[{i}] must be a positive finite number, got {lr!r}")
        out.append(float(lr))
    return list(dict.fromkeys(out))


def model_label(config: TrainConfig, layers: str) -> str:
    """A run's mixer label: its layers, inside the model's name when a wrapper holds them (``rmt(attention)``)."""
    return layers if config.model == "lm" else f"{config.model}({layers})"
