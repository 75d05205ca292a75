"""Arena specs: a grid of mixers x tasks x lengths x widths x seeds that expands into run configs.

A spec is written in TOML (or Python, or given as a dict)::

    name = "demo"
    mixers = ["attention", { name = "sliding_window", kwargs = { window = 32 } }]
    # a mixer entry may also name the model around its layers (models.MODELS), e.g.
    # { name = "attention", model = "rmt", model_kwargs = { segment_len = 64, num_memory = 8 } },
    # and override train keys for itself: { name = "mamba2", train = { short_conv = 0 } }
    # and set constructor arguments to each run's length: { name = "s4", seq_len_kwargs = ["l_max"] }
    tasks = [{ task = "mqar", kwargs = { vocab_size = 256, num_kv_pairs = 8 } }]
    lengths = [64, 128]          # each sets the task's seq_len (a task entry may set its own lengths)
    widths = [32, 64]            # d_model
    seeds = [0]
    n_layers = 2                 # a model is n_layers copies of the mixer
    [train]                      # any TrainConfig key except the ones the grid sets
    steps = 250
    batch_size = 32

``load_spec`` validates everything before anything runs: unknown keys (with close matches), unknown
mixers and tasks, keyword arguments a mixer's constructor or a task does not accept, values they
reject (each mixer is built once per width and each task once per length), wrong types and empty
grids all raise ``ConfigError`` naming the offending key as a dotted path (``mixers[1].kwargs.window``,
``train.stpes``) and the accepted values.

``ArenaSpec.expand()`` returns one ``RunSpec`` per distinct run: a validated ``TrainConfig`` with
every default filled in (the task's and the mixer constructor's too), labels for reports, and an id
``run_id(config)`` = the first 16 hex digits of the sha256 of the config's canonical JSON, without
``out_dir`` and ``threads`` (they do not change results). Two grid points that resolve to the same
config (e.g. a mixer listed twice) are one run.

Layering of a run's config: TrainConfig defaults < ``train`` < the grid point. The task's keyword
arguments start from ``TrainConfig().task_kwargs`` (the CPU-scale MQAR) when the task is the default
task, else from the task's own defaults; the spec's ``kwargs`` override them and ``lengths`` sets
``seq_len``. A task entry may carry its own ``lengths`` (``{ task = "mqar", kwargs = {...},
lengths = [64] }``); that task then runs at those lengths instead of the spec's, which is how a
sweep ties a difficulty knob to the length (Zoology's MQAR uses 4 kv pairs at T=64, 8 at 128, ...).
The spec's ``lengths`` may then be left out when every task sets its own.

Learning rates: ``lrs = [3e-4, 1e-3, 3e-3]`` runs every grid point at each rate (each run's labels
carry its ``lr``; reports show each point at its best rate, Zoology's protocol). A mixer entry may
carry its own ``lrs`` (``{ name = "mamba", lrs = [1e-3] }``), e.g. the rates a recipe study found
for it; ``train.lr`` cannot be combined with either.

KV-cache policies ("train once, evaluate many")::

    policies = ["window", { name = "h2o", kwargs = { recent_ratio = 0.5 }, mode = "prefill" }, "full"]
    budgets = [0.5, 0.25, 16]    # floats in (0, 1]: fractions of the sequence length; ints: tokens

Every run whose model has a plain ``attention`` layer is evaluated, after training, under each
(policy, budget) pair (``evaluate.evaluate_policy``, from the run's final checkpoint); runs
without one get no policy evaluations (a spec where no run has one is an error). An entry is a
policy name or a table with ``name``, ``kwargs`` (the policy dataclass's fields, defaults
resolved; ``budget`` and ``mode`` are not kwargs), ``mode`` (``step`` or ``prefill``; default: the
policy's own), its own ``budgets`` (instead of the spec's), and ``protocol`` (``agnostic``, the
default, ``aware``, ``reuse`` or ``decode`` with ``decode_tokens``; ``policy_protocols``: when the
question is read; each protocol is its own entry, labelled ``window@aware``). ``policies = "all"`` lists every
registered policy. Policies that take no budget (``full``; ``kivi`` and ``think``, which keep every
token in a compressed form) are evaluated once, without one; retrieval policies (``quest``,
``infllm``) keep every token but take budgets (what a query reads).
Errors name the key path (``policies[1].name``, ``policies[0].kwargs.recnt``, ``budgets[2]``).
Policies never enter a run's config or id: adding them to a spec retrains nothing.

Modules: ``ids`` (run ids and queue order), ``checks`` (mixer, task and train-section validation),
``policy_plan`` (KV-cache policy entries); this one expands the grid and loads spec files.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..config import ConfigError, TrainConfig
from ..registry import MIXERS, TASKS
from .checks import (
    GRID_KEYS,
    _close,
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
from .ids import (  # noqa: F401 - re-exported for callers of arena.spec
    ID_OMITTED_DEFAULTS,
    RESULT_NEUTRAL_KEYS,
    RunSpec,
    canonical_json,
    estimated_work,
    longest_first,
    run_id,
)
from .policy_plan import POLICY_ENTRY_KEYS, budget_key, build_policy_plan, policy_applies, policy_pairs

__all__ = ["ArenaSpec", "RunSpec", "load_spec", "run_id", "GRID_KEYS", "SPEC_KEYS", "RESULT_NEUTRAL_KEYS",
           "POLICY_ENTRY_KEYS", "policy_applies", "policy_pairs", "budget_key"]

# keys of a spec (TOML top level / dict / ArenaSpec fields)
SPEC_KEYS = ("name", "mixers", "tasks", "lengths", "widths", "seeds", "lrs", "n_layers", "train", "policies", "budgets",
             "protocols", "configs")


# ----------------------------------------------------------------------------- the spec


@dataclass
class ArenaSpec:
    """A grid of runs: ``mixers x tasks x lengths x widths x seeds`` (see the module docstring).

    ``configs`` is the alternative to a grid (a Python spec exporting ``configs``): a list of
    ``TrainConfig`` (or dicts of its keys), each its own run; the grid keys must then be empty.
    ``policies`` and ``budgets`` name KV-cache policy evaluations of the trained runs (see
    ``policy_plan``); they never change the runs themselves.
    """

    name: str
    mixers: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    lengths: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])
    lrs: list = field(default_factory=list)
    n_layers: int = 2
    train: dict = field(default_factory=dict)
    policies: list = field(default_factory=list)
    budgets: list = field(default_factory=list)
    protocols: list = field(default_factory=list)  # each policy entry without its own protocol, under each
    configs: list = field(default_factory=list)

    def __post_init__(self):
        self._runs: list[RunSpec] | None = None
        self._runs = self._resolve()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict, *, default_name: str | None = None) -> "ArenaSpec":
        if isinstance(data, ArenaSpec):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"a spec must be a table/dict of {', '.join(SPEC_KEYS)}; got {type(data).__name__}")
        for key in data:
            if key not in SPEC_KEYS:
                raise ConfigError(f"{key}: unknown spec key.{_close(key, SPEC_KEYS)} "
                                  f"Accepted keys: {', '.join(SPEC_KEYS)}")
        data = dict(data)
        if "name" not in data:
            if default_name is None:
                raise ConfigError("name: a spec needs a name (a non-empty string)")
            data["name"] = default_name
        return cls(**data)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["configs"] = [c.to_dict() if isinstance(c, TrainConfig) else c for c in self.configs]
        return json.loads(json.dumps(data))

    # -- expansion -------------------------------------------------------------------------

    def expand(self) -> list[RunSpec]:
        """One RunSpec per distinct run, in grid order (mixers outermost, seeds innermost)."""
        return list(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def _resolve(self) -> list[RunSpec]:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}")
        plan = self._policy_plan_unchecked()
        if not isinstance(self.configs, (list, tuple)):
            raise ConfigError(f"configs must be a list of TrainConfig, got {self.configs!r}")
        runs = self._from_configs() if self.configs else self._from_grid()
        unique: dict[str, RunSpec] = {}
        for run in runs:
            unique.setdefault(run.id, run)
        if not unique:
            raise ConfigError("the spec expands to no runs (empty grid)")
        if plan and not any(policy_applies(run.config) for run in unique.values()):
            layers = sorted({"+".join(run.config.layers) for run in unique.values()})
            raise ConfigError(f"policies: KV-cache policies manage `attention` layers and no run of this spec has one "
                              f"(models: {', '.join(layers)}); add an attention mixer or remove policies")
        self._plan = plan
        return list(unique.values())

    @property
    def policy_plan(self) -> list[dict]:
        """The validated KV-cache policy evaluations, one dict per distinct policy entry: ``name``,
        ``kwargs`` (every field but budget and mode, defaults resolved), ``user_kwargs``, ``mode``,
        ``budgets`` (``[None]`` for ``full``), ``key`` (canonical JSON of name, kwargs and mode)
        and ``label``. Each run with an ``attention`` layer is evaluated under every (entry,
        budget) pair; the plan never changes a run's id."""
        return [dict(entry, budgets=list(entry["budgets"])) for entry in self._plan]

    def _policy_plan_unchecked(self) -> list[dict]:
        return build_policy_plan(self.policies, self.budgets, self.protocols)

    def _from_grid(self) -> list[RunSpec]:
        if not _is_int(self.n_layers) or self.n_layers <= 0:
            raise ConfigError(f"n_layers must be a positive int, got {self.n_layers!r}")
        if not isinstance(self.mixers, (list, tuple)) or not self.mixers:
            raise ConfigError(f"mixers must be a non-empty list of mixer names or {{ name = ..., kwargs = {{...}} }} "
                              f"tables (empty grid); available mixers: {', '.join(MIXERS.names())}")
        if not isinstance(self.tasks, (list, tuple)) or not self.tasks:
            raise ConfigError(f"tasks must be a non-empty list of task names or {{ task = ..., kwargs = {{...}} }} "
                              f"tables (empty grid); available tasks: {', '.join(TASKS.names())}")
        task_entries = [self._task(i, entry) for i, entry in enumerate(self.tasks)]
        if all(own is not None for _, _, own in task_entries) and not self.lengths:
            lengths = []
        else:
            lengths = _int_list(self.lengths, "lengths", minimum=1)
        widths = _int_list(self.widths, "widths", minimum=1)
        seeds = _int_list(self.seeds, "seeds", minimum=0)
        train = check_train(self.train)
        lrs = self._lrs(self.lrs, "lrs")
        own_lrs = [isinstance(e, dict) and "lrs" in e for e in self.mixers]
        if (lrs != [None] or any(own_lrs)) and "lr" in train:
            raise ConfigError("train.lr cannot be set together with lrs: lrs sweeps the learning rate; "
                              "remove one of them")
        base = make_config(train, "train")  # train's own values checked once (e.g. steps > 0)

        mixers = [self._mixer(i, entry) for i, entry in enumerate(self.mixers)]
        mixer_lrs = [self._lrs(entry["lrs"], f"mixers[{i}].lrs") if own else lrs
                     for i, (entry, own) in enumerate(zip(self.mixers, own_lrs, strict=True))]
        longest = max([*lengths, *(max(own) for _, _, own in task_entries if own)], default=None)
        length_keys = [self._seq_len_kwargs(i, entry, kwargs) for i, (entry, (_, kwargs))
                       in enumerate(zip(self.mixers, mixers, strict=True))]
        for i, ((name, kwargs), keys) in enumerate(zip(mixers, length_keys, strict=True)):
            for j, width in enumerate(widths):  # length-set arguments checked at the longest length
                build_mixer_check(name, {**kwargs, **dict.fromkeys(keys, longest)}, width, f"mixers[{i}].kwargs",
                                  f"widths[{j}]")

        tasks = []  # (task, user kwargs, {length: resolved kwargs})
        for i, (entry, (task, kwargs, own_lengths)) in enumerate(zip(self.tasks, task_entries, strict=True)):
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
        for i, e in enumerate(self.mixers):
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
                "layers": [mixer] * self.n_layers,
                "mixer_kwargs": resolve_mixer_kwargs(mixer, {**mkwargs, **dict.fromkeys(keys, length)}),
                "d_model": width,
                "task": task,
                "task_kwargs": per_length[length],
                "seed": seed,
            }
            config = make_config(values, f"run (mixer={mixer}, task={task}, seq_len={length}, d_model={width}, "
                                         f"seed={seed})")
            # the label names a length-set argument "seq_len", so one mixer reads as one row across lengths
            labels = {"spec": self.name, "mixer": _model_label(config, mixer),
                      "mixer_kwargs": {**mkwargs, **dict.fromkeys(keys, "seq_len")},
                      "task": task, "task_kwargs": dict(tkwargs), "seq_len": length, "d_model": width,
                      "n_layers": self.n_layers, "seed": seed, "lr": config.lr, "loss_on": config.loss_on}
            runs.append(RunSpec(run_id(config), config, labels, self.name))
        return runs

    _entry = staticmethod(registry_entry)

    def _mixer(self, i: int, entry: Any) -> tuple[str, dict]:
        name, kwargs = self._entry(f"mixers[{i}]", entry, "name", MIXERS, "mixer",
                                   extra=("lrs", "model", "model_kwargs", "train", "seq_len_kwargs"))
        placeholder = dict.fromkeys(self._seq_len_kwargs(i, entry, kwargs), 1)  # values set per run
        check_mixer_kwargs(name, placeholder, f"mixers[{i}].seq_len_kwargs")
        checked = check_mixer_kwargs(name, {**kwargs, **placeholder}, f"mixers[{i}].kwargs")
        return name, {k: v for k, v in checked.items() if k not in placeholder}

    @staticmethod
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

    def _task(self, i: int, entry: Any) -> tuple[str, dict, list[int] | None]:
        """(task, kwargs, its own lengths or None when it runs at the spec's lengths)."""
        task, kwargs = self._entry(f"tasks[{i}]", entry, "task", TASKS, "task", extra=("lengths",))
        own = None
        if isinstance(entry, dict) and "lengths" in entry:
            own = _int_list(entry["lengths"], f"tasks[{i}].lengths", minimum=1)
        return task, check_task_kwargs(task, kwargs, f"tasks[{i}].kwargs", allow_seq_len=False), own

    @staticmethod
    def _lrs(value: Any, key: str) -> list:
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

    def _from_configs(self) -> list[RunSpec]:
        for key in ("mixers", "tasks", "lengths", "widths", "train", "lrs"):
            if getattr(self, key):
                raise ConfigError(f"{key}: a spec with configs lists its runs explicitly; leave the grid keys empty")
        runs = []
        for i, entry in enumerate(self.configs):
            key = f"configs[{i}]"
            if isinstance(entry, TrainConfig):
                values = entry.to_dict()
            elif isinstance(entry, dict):
                values = entry
            else:
                raise ConfigError(f"{key} must be a TrainConfig or a dict of its keys, got {type(entry).__name__}")
            values = check_train(values, key, forbidden={})
            config = make_config(values, key)
            runs.append(self._config_run(config, key))
        return runs

    def _config_run(self, config: TrainConfig, key: str) -> RunSpec:
        """Validate one explicit config like a grid point (task and mixer kwargs) and label it (the labels
        keep the mixer and task kwargs as given, as a grid's do; the config holds them resolved)."""
        given_mixer_kwargs, given_task_kwargs = dict(config.mixer_kwargs), dict(config.task_kwargs)
        task_kwargs = check_task_kwargs(config.task, config.task_kwargs, f"{key}.task_kwargs")
        obj = instantiate_task(config.task, task_kwargs, f"{key}.task_kwargs")
        resolved_task = resolve_task_kwargs(obj, task_kwargs)
        for k, override in enumerate(config.eval_task_kwargs):
            okey = f"{key}.eval_task_kwargs[{k}]"
            check_task_kwargs(config.task, override, okey)
            instantiate_task(config.task, {**resolved_task, **override}, okey)
        layers = list(dict.fromkeys(config.layers))
        per_mixer = any(name in MIXERS for name in config.mixer_kwargs)
        resolved_mixers = dict(config.mixer_kwargs) if per_mixer else {}
        for name in layers:
            kwargs = config.mixer_kwargs.get(name, {}) if per_mixer else config.mixer_kwargs
            mkey = f"{key}.mixer_kwargs.{name}" if per_mixer else f"{key}.mixer_kwargs"
            kwargs = check_mixer_kwargs(name, kwargs, mkey)
            build_mixer_check(name, kwargs, config.d_model, mkey, f"{key}.d_model")
            if per_mixer:
                resolved_mixers[name] = resolve_mixer_kwargs(name, kwargs)
            elif len(layers) == 1:  # plain kwargs of a hybrid apply to every mixer: leave them as given
                resolved_mixers = resolve_mixer_kwargs(name, kwargs)
            else:
                resolved_mixers = dict(config.mixer_kwargs)
        config = make_config({**config.to_dict(), "task_kwargs": resolved_task, "mixer_kwargs": resolved_mixers}, key)
        stack = layers[0] if len(layers) == 1 else "+".join(config.layers)
        labels = {"spec": self.name, "mixer": _model_label(config, stack),
                  "mixer_kwargs": given_mixer_kwargs, "task": config.task,
                  "task_kwargs": given_task_kwargs, "seq_len": getattr(obj, "seq_len", None),
                  "d_model": config.d_model, "n_layers": len(config.layers), "seed": config.seed, "lr": config.lr,
                  "loss_on": config.loss_on}
        return RunSpec(run_id(config), config, labels, self.name)


def _model_label(config: TrainConfig, layers: str) -> str:
    """A run's mixer label: its layers, inside the model's name when a wrapper holds them (``rmt(attention)``)."""
    return layers if config.model == "lm" else f"{config.model}({layers})"


# ----------------------------------------------------------------------------- loading


def load_spec(source: str | Path | dict | ArenaSpec) -> ArenaSpec:
    """A validated ArenaSpec from a TOML file, a Python file (``spec`` or ``configs``), a dict or a spec.

    A file's spec is named after the file (its stem) unless it sets ``name``.
    """
    if isinstance(source, ArenaSpec):
        return source
    if isinstance(source, dict):
        return ArenaSpec.from_dict(source)
    if not isinstance(source, (str, Path)):
        raise ConfigError("a spec is a path to a .toml or .py file, a dict or an ArenaSpec; "
                          f"got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"spec file {str(path)!r} does not exist")
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        return ArenaSpec.from_dict(data, default_name=path.stem)
    if path.suffix == ".py":
        namespace = runpy.run_path(str(path))
        has_spec, has_configs = "spec" in namespace, "configs" in namespace
        if has_spec and has_configs:
            raise ConfigError(f"{path}: export either spec or configs, not both")
        if has_spec:
            spec = namespace["spec"]
            if isinstance(spec, ArenaSpec):
                return spec
            if isinstance(spec, dict):
                return ArenaSpec.from_dict(spec, default_name=path.stem)
            raise ConfigError(f"{path}: spec must be an ArenaSpec or a dict, got {type(spec).__name__}")
        if has_configs:
            configs = namespace["configs"]
            if not isinstance(configs, (list, tuple)):
                raise ConfigError(f"{path}: configs must be a list of TrainConfig, got {type(configs).__name__}")
            name = namespace.get("name", path.stem)
            return ArenaSpec(name=name, configs=list(configs), seeds=[])
        raise ConfigError(f"{path}: a Python spec must define `spec` (an ArenaSpec or dict) "
                          "or `configs` (a list of TrainConfig)")
    raise ConfigError(f"spec file {str(path)!r} must end in .toml or .py")
