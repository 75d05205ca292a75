"""A run is one dataclass; configuration layers as defaults < file < command line.

    cfg = load_config(TrainConfig, "run.toml", ["--d_model=128", "--mixer_kwargs.n_heads=4"])

Values from the command line are parsed with ``ast.literal_eval`` (falling back to the raw string)
and type-checked against the field's declared type; unknown keys fail at load time with the
accepted names listed (nanoGPT's configurator, kvpress's layering).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .registry import MIXERS, TASKS
from .tasks.mqar import CPU_SCALE
from .validation import (
    ArgumentError,
    check_bool,
    check_choice,
    check_int,
    check_positive,
    check_ratio,
    is_int,
    is_number,
)


class ConfigError(ValueError):
    pass


class ConfigArgumentError(ConfigError, ArgumentError):
    """A config field with a bad value: a ``ConfigError`` whose ``arg`` names the field."""


LOSS_ON = ("answers", "all")


@dataclass
class TrainConfig:
    """Everything that determines a training run (with the code version and seed)."""

    # model
    layers: list[str] = field(default_factory=lambda: ["attention", "attention"])
    d_model: int = 64
    mixer_kwargs: dict = field(default_factory=dict)
    # the model around the layer list (models.MODELS): "lm", the plain stack, or a wrapper whose memory
    # crosses all layers ("rmt", "memformer") with its own arguments (segment_len, num_memory, ...)
    model: str = "lm"
    model_kwargs: dict = field(default_factory=dict)
    mlp: bool = True
    short_conv: int = 0  # causal depthwise conv width before each mixer (H3/Based shift conv); 0 = none
    tie_embeddings: bool = False
    # task: training examples come from task(**task_kwargs); evaluation also covers each entry
    # of eval_task_kwargs (overrides of task_kwargs, e.g. more pairs or longer sequences)
    task: str = "mqar"
    task_kwargs: dict | None = None  # None: the CPU-scale MQAR for "mqar", the task's own defaults otherwise
    eval_task_kwargs: list = field(default_factory=list)
    # the recipe (README "Training recipe"): what the loss reads, and how long a run may train
    # "answers": cross-entropy at the scored positions (Zoology); "all": next-token at every position (MAD)
    loss_on: str = "answers"
    max_steps: int | None = None  # a run still "learning" at `steps` continues, one eval interval at a time, up to this
    target_accuracy: float | None = 0.99  # held-out accuracy that counts as converged (convergence.py); None: never
    # weight of the mixers' auxiliary losses (LanguageModel.auxiliary_loss: compressive's attention
    # reconstruction, Rae et al. 2020) added to the task loss; 0: none
    aux_loss_weight: float = 0.0
    compile: bool = False  # torch.compile the training step (falls back to eager, with a warning, where it fails)
    # training across segments: read each sequence segment_len tokens at a time, carrying the model
    # state; backpropagate through bptt_segments segments before the carried state is detached
    segment_len: int | None = None  # None: the whole sequence in one call
    bptt_segments: int | None = None  # None: through every segment (equals whole-sequence training)
    # optimisation: AdamW, linear warm-up then cosine decay to min_lr_ratio * lr over max_steps (or steps)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # evaluation and bookkeeping
    eval_every: int = 100
    eval_examples: int = 512
    early_stop_accuracy: float | None = None  # stop once held-out accuracy reaches this
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    out_dir: str | None = None
    checkpoint_every: int = 0  # 0: only at eval points and at the end

    def __post_init__(self):
        if self.task_kwargs is None:
            self.task_kwargs = default_task_kwargs(self.task)
        try:
            self._check_values()
        except ArgumentError as error:  # raised as a ConfigError, which loaders and the CLI report
            raise ConfigArgumentError(error.arg, error.accepted, error.got) from None
        for name in self.layers:
            try:
                MIXERS.get(name)
            except KeyError as error:
                raise ConfigError(f"layers: {error.args[0]}") from None
        try:
            TASKS.get(self.task)
        except KeyError as error:
            raise ConfigError(f"task: {error.args[0]}") from None

    def _check_values(self) -> None:
        check_int(d_model=self.d_model, steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every,
                  eval_examples=self.eval_examples)
        check_int(warmup_steps=self.warmup_steps, checkpoint_every=self.checkpoint_every, minimum=0)
        check_positive(lr=self.lr, grad_clip=self.grad_clip)
        check_ratio("min_lr_ratio", self.min_lr_ratio)
        check_choice("loss_on", self.loss_on, LOSS_ON)
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < self.steps):
            raise ArgumentError("max_steps", f"None or an int >= steps ({self.steps})", repr(self.max_steps))
        check_ratio("target_accuracy", self.target_accuracy, low_open=True, allow_none=True)
        check_ratio("early_stop_accuracy", self.early_stop_accuracy, low_open=True, allow_none=True)
        check_bool(compile=self.compile)
        if not is_number(self.aux_loss_weight) or self.aux_loss_weight < 0:
            raise ArgumentError("aux_loss_weight", "a number >= 0", repr(self.aux_loss_weight))
        check_int(segment_len=self.segment_len, bptt_segments=self.bptt_segments, allow_none=True)
        if self.bptt_segments is not None and self.segment_len is None:
            raise ArgumentError("bptt_segments", "None unless segment_len is set", repr(self.bptt_segments))
        if self.compile and self.segment_len is not None:
            raise ArgumentError("compile", "false when segment_len is set (segments train eagerly)", "True")
        check_int(threads=self.threads, allow_none=True)
        self._check_model()
        if isinstance(self.layers, str) or not self.layers:
            raise ArgumentError("layers", "a non-empty list of mixer names", repr(self.layers))
        if not isinstance(self.eval_task_kwargs, list) or not all(isinstance(d, dict) for d in self.eval_task_kwargs):
            raise ArgumentError("eval_task_kwargs", "a list of dicts", repr(self.eval_task_kwargs))

    def _check_model(self) -> None:
        from .models import MODELS  # here, not at the top: the models import the mixers' registry

        check_choice("model", self.model, tuple(MODELS))
        if not isinstance(self.model_kwargs, dict):
            raise ArgumentError("model_kwargs", "a dict of the model's arguments", repr(self.model_kwargs))
        accepted = MODELS[self.model].extra_arguments()
        for key, value in self.model_kwargs.items():
            if key not in accepted:
                names = ", ".join(accepted) if accepted else f"none (model {self.model!r} takes no extra arguments)"
                raise ArgumentError(f"model_kwargs.{key}", f"one of: {names}", repr(key))
            check_int(**{f"model_kwargs.{key}": value})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_task_kwargs(task: str) -> dict:
    """MQAR defaults to its CPU-scale configuration (Zoology's vocabulary of 8192 does not train in
    minutes on a CPU); every other task to its own constructor defaults."""
    return dict(CPU_SCALE) if task == "mqar" else {}


# ----------------------------------------------------------------------------- loading


def _type_ok(value: Any, annotation: Any) -> bool:
    """A small runtime check of ``value`` against a field annotation (int/float/str/bool/list/dict/Optional)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"list": list, "dict": dict, "int": int, "float": float, "str": str,
                                       "bool": bool})
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is not None:
        annotation = origin
    if annotation is float:
        return is_number(value)
    if annotation is int:
        return is_int(value)
    return isinstance(value, annotation)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text  # a bare word is a string


def apply_overrides(base: dict, overrides: dict, fields: dict) -> dict:
    """Merge ``overrides`` (dotted keys allowed for dict fields) into ``base``, checking names and types."""
    merged = json.loads(json.dumps(base))  # deep copy of plain data
    for key, value in overrides.items():
        top, _, rest = key.partition(".")
        if top not in fields:
            close = difflib.get_close_matches(top, list(fields), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {top!r}.{hint} Accepted keys: {', '.join(fields)}")
        if rest:  # --mixer_kwargs.n_heads=4 reaches into a dict field
            target = merged.setdefault(top, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{top!r} is not a dict, so {key!r} cannot set a sub-key")
            parts = rest.split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = value
            continue
        if not _type_ok(value, fields[top].type):
            raise ConfigArgumentError(top, f"of type {fields[top].type}", f"{value!r} ({type(value).__name__})")
        merged[top] = value
    return merged


def load_config(cls=TrainConfig, path: str | Path | None = None, argv: list[str] | None = None, **kwargs):
    """defaults < file (TOML or JSON) < ``--key=value`` arguments < keyword arguments."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    config = dataclasses.asdict(cls())
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    cli = {}
    for arg in argv or []:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"config overrides look like --key=value, got {arg!r}")
        key, _, text = arg[2:].partition("=")
        cli[key.replace("-", "_") if "." not in key else key] = _parse_value(text)
    if cls is TrainConfig:
        # another task starts from its own defaults, not from MQAR's CPU-scale arguments
        task = next((layer["task"] for layer in (kwargs, cli, data) if "task" in layer), config["task"])
        if isinstance(task, str) and task != config["task"]:
            config["task_kwargs"] = default_task_kwargs(task)
    config = apply_overrides(config, data, fields)
    config = apply_overrides(config, cli, fields)
    config = apply_overrides(config, kwargs, fields)
    return cls(**config)
