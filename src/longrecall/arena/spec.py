"""Arena specs: a grid of mixers x tasks x lengths x widths x seeds that expands into run configs.

A spec is written in TOML (or Python, or given as a dict)::

    name = "demo"
    mixers = ["attention", { name = "sliding_window", kwargs = { window = 32 } }]
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
policy's own) and its own ``budgets`` (instead of the spec's). ``policies = "all"`` lists every
registered policy. Policies that take no budget (``full``; ``kivi`` and ``think``, which keep every
token in a compressed form) are evaluated once, without one; retrieval policies (``quest``,
``infllm``) keep every token but take budgets (what a query reads).
Errors name the key path (``policies[1].name``, ``policies[0].kwargs.recnt``, ``budgets[2]``).
Policies never enter a run's config or id: adding them to a spec retrains nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
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

from ..config import ConfigError, TrainConfig, _type_ok, apply_overrides
from ..registry import MIXERS, POLICIES, TASKS

__all__ = ["ArenaSpec", "RunSpec", "load_spec", "run_id", "GRID_KEYS", "SPEC_KEYS", "RESULT_NEUTRAL_KEYS",
           "POLICY_ENTRY_KEYS", "policy_applies", "policy_pairs", "budget_key"]

# keys of a spec (TOML top level / dict / ArenaSpec fields)
SPEC_KEYS = ("name", "mixers", "tasks", "lengths", "widths", "seeds", "lrs", "n_layers", "train", "policies", "budgets",
             "configs")
# TrainConfig keys the grid sets; ``train`` may not set them
GRID_KEYS = {
    "layers": "set by mixers and n_layers",
    "mixer_kwargs": "set per mixer: mixers = [{ name = ..., kwargs = {...} }]",
    "d_model": "set by widths",
    "task": "set by tasks",
    "task_kwargs": "set per task: tasks = [{ task = ..., kwargs = {...} }]",
    "seed": "set by seeds",
    "out_dir": "chosen per run by the executor",
}
# TrainConfig keys that do not change a run's results, so they are left out of its id
RESULT_NEUTRAL_KEYS = ("out_dir", "threads")
# keys added after stores existed: left out of the id while at these defaults, so a run configured
# before they existed keeps its id (and its stored result)
ID_OMITTED_DEFAULTS = {"loss_on": "answers", "max_steps": None, "target_accuracy": 0.99, "compile": False}

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


# ----------------------------------------------------------------------------- ids


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(config: TrainConfig | dict) -> str:
    """Stable id of a fully resolved config: sha256 of its canonical JSON without out_dir/threads."""
    data = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    for key in RESULT_NEUTRAL_KEYS:
        data.pop(key, None)
    for key, default in ID_OMITTED_DEFAULTS.items():
        if key in data and data[key] == default:
            del data[key]
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its id, its resolved and validated config, and labels for reports."""

    id: str
    config: TrainConfig
    labels: dict
    spec_name: str

    @property
    def config_dict(self) -> dict:
        return self.config.to_dict()


def estimated_work(config: TrainConfig) -> int:
    """A mixer-agnostic size of a run, for ordering: training tokens x layers x width.

    Only the order matters (``longest_first``); it ignores early stopping and the mixers' different
    per-token costs, which a spec cannot know before running.
    """
    seq_len = (config.task_kwargs or {}).get("seq_len", 1)
    steps = config.max_steps if config.max_steps is not None else config.steps
    return steps * config.batch_size * int(seq_len) * len(config.layers) * config.d_model


def longest_first(runs: list[RunSpec]) -> list[RunSpec]:
    """Runs by decreasing ``estimated_work``, grid order among equals.

    Workers claim pending runs in insertion order, so a store filled in grid order starts the
    largest runs (longest sequence, widest model) last, and one worker finishes them alone while the
    others idle. With exact run times, longest-first list scheduling on m workers ends within
    4/3 - 1/(3m) of the optimal wall time, against 2 - 1/m for an arbitrary order (Graham 1969);
    this estimate is rougher than exact times but orders a sweep's lengths and widths correctly.
    """
    return sorted(runs, key=lambda run: -estimated_work(run.config))


# ----------------------------------------------------------------------------- small checks


def _close(name: str, accepted) -> str:
    close = difflib.get_close_matches(str(name), list(accepted), n=3)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(value: Any, key: str, *, minimum: int) -> list[int]:
    what = "positive ints" if minimum == 1 else "non-negative ints"
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} must be a non-empty list of {what}, got {value!r}")
    for i, item in enumerate(value):
        if not _is_int(item) or item < minimum:
            raise ConfigError(f"{key}[{i}] must be one of the {what}, got {item!r}")
    return list(dict.fromkeys(value))  # duplicates collapse, order kept


def _plain(value: Any) -> bool:
    """JSON scalars (and lists/dicts of them): safe to put in a config and hash."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _floatify(value: Any, annotation: Any) -> Any:
    """An int given for a float-only parameter becomes a float, so 1 and 1.0 give one id."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if _is_int(value) and "float" in text and "int" not in text:
        return float(value)
    return value


def _error_key(message: str, names) -> str | None:
    """The argument a constructor's error message starts with (``"window must be ..."``), if known."""
    first = message.split(" ", 1)[0].strip(":,'\"")
    return first if first in names else None


# ----------------------------------------------------------------------------- mixers


def _mixer_params(cls) -> tuple[dict, bool]:
    """Keyword parameters of a mixer's constructor (without d_model) and whether it takes **kwargs."""
    params = dict(inspect.signature(cls).parameters)
    params.pop("d_model", None)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named, var_kw


def check_mixer_kwargs(name: str, kwargs: dict, key: str) -> dict:
    """Names and binding of a mixer's kwargs; returns them with float-only values normalised."""
    cls = MIXERS.get(name)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{key} must be a table of {name!r}'s constructor arguments, got {kwargs!r}")
    params, var_kw = _mixer_params(cls)
    accepted = ", ".join(params) or "(none)"
    for arg in kwargs:
        if arg == "d_model":
            raise ConfigError(f"{key}.d_model is set by widths, not by the mixer's kwargs")
        if arg not in params and not var_kw:
            raise ConfigError(f"{key}.{arg}: mixer {name!r} does not accept {arg!r}.{_close(arg, params)} "
                              f"Accepted arguments: {accepted}")
    try:
        inspect.signature(cls).bind(1, **kwargs)
    except TypeError as error:
        raise ConfigError(f"{key}: {error}. Accepted arguments of {name!r}: {accepted}") from None
    return {arg: _floatify(v, params[arg].annotation) if arg in params else v for arg, v in kwargs.items()}


def resolve_mixer_kwargs(name: str, kwargs: dict) -> dict:
    """Every keyword argument of the mixer's constructor: its defaults overlaid with ``kwargs``."""
    params, _ = _mixer_params(MIXERS.get(name))
    resolved = {n: p.default for n, p in params.items() if p.default is not p.empty and _plain(p.default)}
    resolved.update(kwargs)
    return resolved


def build_mixer_check(name: str, kwargs: dict, d_model: int, key: str, width_key: str) -> None:
    """Build the mixer once at this width so values it rejects surface before anything runs."""
    import torch

    cls = MIXERS.get(name)
    try:
        with torch.no_grad():
            cls(d_model, **kwargs)
    except (TypeError, ValueError) as error:
        message = str(error)
        arg = _error_key(message, kwargs)
        where = f"{key}.{arg}" if arg else key
        raise ConfigError(f"{where} (with {width_key}={d_model}): mixer {name!r} rejects it: {message}") from None


# ----------------------------------------------------------------------------- tasks


def _task_params(cls) -> dict:
    return {n: p for n, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_task_kwargs(task: str, kwargs: dict, key: str, *, allow_seq_len: bool = True) -> dict:
    cls = TASKS.get(task)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{key} must be a table of task {task!r}'s arguments, got {kwargs!r}")
    params = _task_params(cls)
    for arg in kwargs:
        if arg == "seq_len" and not allow_seq_len:
            raise ConfigError(f"{key}.seq_len is set by lengths; remove it from the task's kwargs")
        if arg not in params:
            raise ConfigError(f"{key}.{arg}: task {task!r} does not accept {arg!r}.{_close(arg, params)} "
                              f"Accepted arguments: {', '.join(params)}")
    return {arg: _floatify(v, params[arg].annotation) for arg, v in kwargs.items()}


def base_task_kwargs(task: str) -> dict:
    default = TrainConfig()
    return dict(default.task_kwargs) if task == default.task else {}


def instantiate_task(task: str, kwargs: dict, key: str, *, seq_len_key: str | None = None, context: str = ""):
    """Build the task; a ValueError it raises becomes a ConfigError naming the argument at fault.

    ``seq_len_key`` is blamed when the message is about ``seq_len`` (e.g. ``lengths[1]``).
    """
    cls = TASKS.get(task)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        message = str(error)
        arg = _error_key(message, _task_params(cls))
        if arg == "seq_len" and seq_len_key:
            where = seq_len_key
        elif arg:
            where = f"{key}.{arg}"
        else:
            where = key
        extra = f" ({context})" if context and where != seq_len_key else ""
        raise ConfigError(f"{where}{extra}: task {task!r} rejects it: {message}") from None


def resolve_task_kwargs(task_obj, kwargs: dict) -> dict:
    if dataclasses.is_dataclass(task_obj):
        resolved = {f.name: getattr(task_obj, f.name) for f in dataclasses.fields(task_obj) if f.init}
        return {k: v for k, v in resolved.items() if _plain(v)} | {k: v for k, v in kwargs.items() if k not in resolved}
    return dict(kwargs)


# ----------------------------------------------------------------------------- KV-cache policies

# keys of a policy entry: policies = ["window", { name = "h2o", kwargs = {...}, mode = "prefill", budgets = [...] }]
POLICY_ENTRY_KEYS = ("name", "kwargs", "mode", "budgets")
# Policy fields an entry's kwargs may not set
_POLICY_RESERVED = {"budget": "set by budgets (or the entry's own budgets)", "mode": "set by the entry's mode key"}


def check_budget(value: Any, key: str) -> int | float:
    """A budget: an int >= 1 (tokens per layer per head) or a float in (0, 1] (a fraction of the length)."""
    if (_is_int(value) and value >= 1) or (isinstance(value, float) and 0.0 < value <= 1.0):
        return value
    raise ConfigError(f"{key} must be a positive int (tokens kept per layer per head) or a float in (0, 1] "
                      f"(a fraction of the evaluated sequence length), got {value!r}")


def check_budgets(value: Any, key: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list of budgets (positive ints: tokens; floats in (0, 1]: fractions of "
                          f"the sequence length), got {value!r}")
    checked = [check_budget(b, f"{key}[{i}]") for i, b in enumerate(value)]
    out, seen = [], set()
    for b in checked:  # duplicates collapse (16 and 16.0 are not duplicates: tokens vs a fraction)
        if budget_key(b) not in seen:
            seen.add(budget_key(b))
            out.append(b)
    return out


def budget_key(budget: int | float | None) -> str:
    """The stored key of a budget: ``"16"`` (tokens), ``"0.25"`` (a fraction), ``"null"`` (unlimited)."""
    return json.dumps(budget)


def policy_applies(config: TrainConfig | dict) -> bool:
    """Whether a run's model has a plain ``attention`` layer (the layers KV-cache policies manage)."""
    layers = config.layers if isinstance(config, TrainConfig) else config.get("layers", [])
    return "attention" in layers


def policy_pairs(plan: list[dict]) -> list[tuple[dict, int | float | None]]:
    """Every (policy entry, budget) of a policy plan, in plan order."""
    return [(entry, budget) for entry in plan for budget in entry["budgets"]]


def _policy_fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in _POLICY_RESERVED}


def _policy_label(name: str, kwargs: dict, mode: str, default_mode: str) -> str:
    label = name
    if kwargs:
        label += "(" + ", ".join(f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
    return label if mode == default_mode else f"{label}/{mode}"


def takes_budget(cls, mode: str, kwargs: dict) -> bool:
    """Whether a policy takes a budget. False for the policies that keep every token and accept only
    ``budget=None`` (``full``; lossy ones like ``kivi`` and ``think`` compress the representation);
    True for evicting policies and for retrieval policies (``quest``, ``infllm``), which store every
    token but take a budget on what a query reads (``bounded`` is False for both kinds, so it
    cannot tell them apart: a fraction-of-the-context budget of 1.0 is tried instead)."""
    try:
        cls(budget=1.0, mode=mode, **kwargs)
        return True
    except (TypeError, ValueError):
        pass
    try:
        cls(budget=None, mode=mode, **kwargs)
    except (TypeError, ValueError):
        return True  # the kwargs are at fault: the checks below name them
    return False


def check_policy_entry(i: int, entry: Any, spec_budgets: list) -> dict:
    """One validated entry of ``policies``: name, resolved kwargs, mode, budgets, key and label."""
    from ..policies.base import MODES

    key = f"policies[{i}]"
    name, kwargs = ArenaSpec._entry(key, entry, "name", POLICIES, "policy", extra=("mode", "budgets"))
    cls = POLICIES.get(name)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{key}.kwargs must be a table of policy {name!r}'s fields, got {kwargs!r}")
    params = _policy_fields(cls)
    accepted = ", ".join(params) or "(none)"
    for arg, value in kwargs.items():
        if arg in _POLICY_RESERVED:
            raise ConfigError(f"{key}.kwargs.{arg} is {_POLICY_RESERVED[arg]}, not by the policy's kwargs")
        if arg not in params:
            raise ConfigError(f"{key}.kwargs.{arg}: policy {name!r} does not accept {arg!r}.{_close(arg, params)} "
                              f"Accepted arguments: {accepted}")
        if not _plain(value):
            raise ConfigError(f"{key}.kwargs.{arg} must be a plain value (number, string, bool, list, table), got {value!r}")
    kwargs = {arg: _floatify(v, params[arg].type) for arg, v in kwargs.items()}
    mode_field = next(f for f in dataclasses.fields(cls) if f.name == "mode")
    default_mode = mode_field.default
    mode = entry.get("mode", default_mode) if isinstance(entry, dict) else default_mode
    if mode not in MODES:
        raise ConfigError(f"{key}.mode must be one of {', '.join(MODES)}, got {mode!r}")
    own = isinstance(entry, dict) and "budgets" in entry
    if not takes_budget(cls, mode, kwargs):  # `full`, `kivi`, `think`: evaluated once, without a budget
        if own:
            raise ConfigError(f"{key}.budgets: policy {name!r} keeps every token and takes no budget; remove them")
        budgets, budget_keys = [None], [None]
    elif own:
        budgets = check_budgets(entry["budgets"], f"{key}.budgets")
        if not budgets:
            raise ConfigError(f"{key}.budgets must be a non-empty list of budgets")
        budget_keys = [f"{key}.budgets[{j}]" for j in range(len(budgets))]
    else:
        if not spec_budgets:
            raise ConfigError(f"budgets: policy {name!r} ({key}) needs budgets; give budgets = [0.5, 0.25, 64] "
                              f"(fractions of the sequence length or tokens) or {key}.budgets")
        budgets, budget_keys = list(spec_budgets), [f"budgets[{j}]" for j in range(len(spec_budgets))]
    resolved = None
    for budget, bkey in zip(budgets, budget_keys):
        try:
            obj = cls(budget=budget, mode=mode, **kwargs)
        except (TypeError, ValueError) as error:
            message = str(error)
            arg = _error_key(message, list(kwargs) + ["budget"])
            if arg == "budget" and bkey:
                where = bkey
            elif arg:
                where = f"{key}.kwargs.{arg}"
            else:
                where = key
            raise ConfigError(f"{where}: policy {name!r} rejects it: {message}") from None
        resolved = {k: v for k, v in obj.config().items() if k not in _POLICY_RESERVED}
    if not _plain(resolved):
        resolved = {k: v for k, v in resolved.items() if _plain(v)} | kwargs
    return {
        "name": name,
        "kwargs": resolved,
        "user_kwargs": dict(kwargs),
        "mode": mode,
        "budgets": budgets,
        "key": canonical_json({"name": name, "kwargs": resolved, "mode": mode}),
        "label": _policy_label(name, kwargs, mode, default_mode),
    }


# ----------------------------------------------------------------------------- train section


def check_train(train: Any, key: str = "train", *, forbidden: dict | None = None) -> dict:
    """Names and types of TrainConfig keys in ``train``; returns the checked dict."""
    if not isinstance(train, dict):
        raise ConfigError(f"{key} must be a table of TrainConfig keys, got {train!r}")
    forbidden = GRID_KEYS if forbidden is None else forbidden
    accepted = [name for name in _TRAIN_FIELDS if name not in forbidden]
    checked = {}
    for name, value in train.items():
        if name in forbidden:
            raise ConfigError(f"{key}.{name} cannot be set here: {forbidden[name]}")
        if name not in _TRAIN_FIELDS:
            raise ConfigError(f"{key}.{name}: unknown TrainConfig key.{_close(name, accepted)} "
                              f"Accepted keys: {', '.join(accepted)}")
        annotation = _TRAIN_FIELDS[name].type
        if not _type_ok(value, annotation):
            raise ConfigError(f"{key}.{name} must be of type {annotation}, got {value!r} ({type(value).__name__})")
        checked[name] = _floatify(value, annotation)
    return checked


def make_config(values: dict, key: str) -> TrainConfig:
    """TrainConfig defaults < ``values``; its own checks re-raised naming ``key.<field>``."""
    try:
        merged = apply_overrides(dataclasses.asdict(TrainConfig()), values, _TRAIN_FIELDS)
        return TrainConfig(**merged)
    except ConfigError as error:
        message = str(error)
        arg = _error_key(message, _TRAIN_FIELDS)
        raise ConfigError(f"{key}.{arg}: {message}" if arg else f"{key}: {message}") from None


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
                raise ConfigError(f"{key}: unknown spec key.{_close(key, SPEC_KEYS)} Accepted keys: {', '.join(SPEC_KEYS)}")
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
        policies, budgets = self.policies, self.budgets
        if isinstance(policies, str):
            if policies != "all":
                raise ConfigError(f"policies must be a list of policy names or {{ name = ..., kwargs = {{...}}, "
                                  f"mode = ... }} tables, or \"all\" (every registered policy); got {policies!r}")
            policies = POLICIES.names()
        if not isinstance(policies, (list, tuple)):
            raise ConfigError(f"policies must be a list of policy names or {{ name = ..., kwargs = {{...}}, mode = ... }} "
                              f"tables, or \"all\"; got {policies!r}. Available policies: {', '.join(POLICIES.names())}")
        spec_budgets = check_budgets(budgets, "budgets")
        if not policies:
            if spec_budgets:
                raise ConfigError("budgets: given without policies; add policies = [...] (or \"all\")")
            return []
        plan: dict[str, dict] = {}
        for i, entry in enumerate(policies):
            checked = check_policy_entry(i, entry, spec_budgets)
            if checked["key"] in plan:  # the same policy twice: one entry, the budgets of both
                known = plan[checked["key"]]
                keys = {budget_key(b) for b in known["budgets"]}
                known["budgets"] += [b for b in checked["budgets"] if budget_key(b) not in keys]
            else:
                plan[checked["key"]] = checked
        return list(plan.values())

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
            raise ConfigError("train.lr cannot be set together with lrs: lrs sweeps the learning rate; remove one of them")
        base = make_config(train, "train")  # train's own values checked once (e.g. steps > 0)

        mixers = [self._mixer(i, entry) for i, entry in enumerate(self.mixers)]
        mixer_lrs = [self._lrs(entry["lrs"], f"mixers[{i}].lrs") if own else lrs
                     for i, (entry, own) in enumerate(zip(self.mixers, own_lrs))]
        for i, (name, kwargs) in enumerate(mixers):
            for j, width in enumerate(widths):
                build_mixer_check(name, kwargs, width, f"mixers[{i}].kwargs", f"widths[{j}]")

        tasks = []  # (task, user kwargs, {length: resolved kwargs})
        for i, (entry, (task, kwargs, own_lengths)) in enumerate(zip(self.tasks, task_entries)):
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
                    raise ConfigError(f"{key}.{clash[0]} is set by lengths for task {task!r}; remove it from the task's kwargs")
                full = {**merged, **by_length}
                obj = instantiate_task(task, full, key, seq_len_key=f"{lengths_key}[{j}]={length}", context=f"with seq_len={length}")
                per_length[length] = resolve_task_kwargs(obj, full)
                for k, override in enumerate(base.eval_task_kwargs):
                    okey = f"train.eval_task_kwargs[{k}]"
                    check_task_kwargs(task, override, okey)
                    instantiate_task(task, {**per_length[length], **override}, okey,
                                     seq_len_key=f"{okey}.seq_len" if "seq_len" in override else f"{lengths_key}[{j}]={length}",
                                     context=f"evaluating {key} at seq_len={length}")
            tasks.append((task, kwargs, per_length))

        runs = []
        grid = ((m, t, length, w, s, lr) for m, m_lrs in zip(mixers, mixer_lrs) for t in tasks for length in t[2]
                for w, s, lr in itertools.product(widths, seeds, m_lrs))
        for (mixer, mkwargs), (task, tkwargs, per_length), length, width, seed, lr in grid:
            values = {
                **({"lr": lr} if lr is not None else {}),
                **train,
                "layers": [mixer] * self.n_layers,
                "mixer_kwargs": resolve_mixer_kwargs(mixer, mkwargs),
                "d_model": width,
                "task": task,
                "task_kwargs": per_length[length],
                "seed": seed,
            }
            config = make_config(values, f"run (mixer={mixer}, task={task}, seq_len={length}, d_model={width}, seed={seed})")
            labels = {"spec": self.name, "mixer": mixer, "mixer_kwargs": dict(mkwargs), "task": task,
                      "task_kwargs": dict(tkwargs), "seq_len": length, "d_model": width, "n_layers": self.n_layers,
                      "seed": seed, "lr": config.lr, "loss_on": config.loss_on}
            runs.append(RunSpec(run_id(config), config, labels, self.name))
        return runs

    @staticmethod
    def _entry(key: str, entry: Any, field_name: str, registry, kind: str, extra: tuple = ()) -> tuple[str, dict]:
        """``"name"`` or ``{<field_name> = "name", kwargs = {...}}``, validated; returns (name, kwargs)."""
        accepted = [field_name, "kwargs", *extra]
        if isinstance(entry, str):
            name, kwargs, name_key = entry, {}, key
        elif isinstance(entry, dict):
            for k in entry:
                if k not in accepted:
                    raise ConfigError(f"{key}.{k}: unknown {kind} key.{_close(k, accepted)} Accepted keys: {', '.join(accepted)}")
            if field_name not in entry:
                raise ConfigError(f"{key}.{field_name} is missing; available {kind}s: {', '.join(registry.names())}")
            name, kwargs, name_key = entry[field_name], entry.get("kwargs", {}), f"{key}.{field_name}"
        else:
            raise ConfigError(f"{key} must be a {kind} name or a {{ {field_name} = ..., kwargs = {{...}} }} table, got {entry!r}")
        try:
            registry.get(name)
        except KeyError as error:
            raise ConfigError(f"{name_key}: {error.args[0]}") from None
        return name, kwargs

    def _mixer(self, i: int, entry: Any) -> tuple[str, dict]:
        name, kwargs = self._entry(f"mixers[{i}]", entry, "name", MIXERS, "mixer", extra=("lrs",))
        return name, check_mixer_kwargs(name, kwargs, f"mixers[{i}].kwargs")

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
        labels = {"spec": self.name, "mixer": layers[0] if len(layers) == 1 else "+".join(config.layers),
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
        raise ConfigError(f"a spec is a path to a .toml or .py file, a dict or an ArenaSpec; got {type(source).__name__}")
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
        raise ConfigError(f"{path}: a Python spec must define `spec` (an ArenaSpec or dict) or `configs` (a list of TrainConfig)")
    raise ConfigError(f"spec file {str(path)!r} must end in .toml or .py")
