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
``grid`` (the grid's expansion), ``policy_plan`` (KV-cache policy entries); this one holds the spec, its
explicit ``configs`` and the loading of spec files.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..config import ConfigError, TrainConfig
from ..registry import MIXERS
from .checks import (
    GRID_KEYS,
    _close,
    build_mixer_check,
    check_mixer_kwargs,
    check_task_kwargs,
    check_train,
    instantiate_task,
    make_config,
    resolve_mixer_kwargs,
    resolve_task_kwargs,
)
from .grid import expand_grid, model_label
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
        return expand_grid(self)

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
        labels = {"spec": self.name, "mixer": model_label(config, stack),
                  "mixer_kwargs": given_mixer_kwargs, "task": config.task,
                  "task_kwargs": given_task_kwargs, "seq_len": getattr(obj, "seq_len", None),
                  "d_model": config.d_model, "n_layers": len(config.layers), "seed": config.seed, "lr": config.lr,
                  "loss_on": config.loss_on}
        return RunSpec(run_id(config), config, labels, self.name)


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
