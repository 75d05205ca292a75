"""Validation of a spec's parts: mixer and task entries, their keyword arguments, the train section.

Every error is a ``ConfigError`` naming the offending key as a dotted path (``mixers[1].kwargs.window``,
``train.stpes``) and, where there is a closed set, the accepted values.  A constructor's error names its
argument when it is an ``ArgumentError`` (``error.arg``); any other error names the whole entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

from ..config import ConfigError, TrainConfig, _type_ok, apply_overrides
from ..registry import MIXERS, TASKS
from ..validation import ArgumentError
from ..validation import is_int as _is_int  # spec.py imports it from here

__all__ = ["GRID_KEYS", "check_mixer_kwargs", "resolve_mixer_kwargs", "build_mixer_check", "check_task_kwargs",
           "base_task_kwargs", "instantiate_task", "resolve_task_kwargs", "registry_entry", "check_train",
           "make_config"]

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

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


# ----------------------------------------------------------------------------- small checks


def _close(name: str, accepted) -> str:
    close = difflib.get_close_matches(str(name), list(accepted), n=3)
    return f" Did you mean: {', '.join(close)}?" if close else ""


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


def _blamed_arg(error: Exception, names) -> str | None:
    """The argument an error names, if it is one of ``names``; None for errors that name none."""
    arg = error.arg if isinstance(error, ArgumentError) else None
    return arg if arg in names else None


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
    """Build the mixer once at this width so values it rejects surface before anything runs.

    It is built on the ``meta`` device: the constructor's checks run, but no parameter memory is
    allocated and no random number is drawn, so validating a wide spec costs nothing. A mixer whose
    construction cannot run on ``meta`` is built on the CPU instead.
    """
    import torch

    cls = MIXERS.get(name)
    try:
        try:
            with torch.no_grad(), torch.device("meta"):
                cls(d_model, **kwargs)
        except (TypeError, ValueError):
            raise
        except Exception:  # an operation without a meta kernel: build it for real
            with torch.no_grad():
                cls(d_model, **kwargs)
    except (TypeError, ValueError) as error:
        arg = _blamed_arg(error, kwargs)
        where = f"{key}.{arg}" if arg else key
        raise ConfigError(f"{where} (with {width_key}={d_model}): mixer {name!r} rejects it: {error}") from None


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
        arg = _blamed_arg(error, _task_params(cls))
        if arg == "seq_len" and seq_len_key:
            where = seq_len_key
        elif arg:
            where = f"{key}.{arg}"
        else:
            where = key
        extra = f" ({context})" if context and where != seq_len_key else ""
        raise ConfigError(f"{where}{extra}: task {task!r} rejects it: {error}") from None


def resolve_task_kwargs(task_obj, kwargs: dict) -> dict:
    if dataclasses.is_dataclass(task_obj):
        resolved = {f.name: getattr(task_obj, f.name) for f in dataclasses.fields(task_obj) if f.init}
        return {k: v for k, v in resolved.items() if _plain(v)} | {k: v for k, v in kwargs.items() if k not in resolved}
    return dict(kwargs)


def registry_entry(key: str, entry: Any, field_name: str, registry, kind: str, extra: tuple = ()) -> tuple[str, dict]:
    """``"name"`` or ``{<field_name> = "name", kwargs = {...}}``, validated; returns (name, kwargs)."""
    accepted = [field_name, "kwargs", *extra]
    if isinstance(entry, str):
        name, kwargs, name_key = entry, {}, key
    elif isinstance(entry, dict):
        for k in entry:
            if k not in accepted:
                raise ConfigError(f"{key}.{k}: unknown {kind} key.{_close(k, accepted)} "
                                  f"Accepted keys: {', '.join(accepted)}")
        if field_name not in entry:
            raise ConfigError(f"{key}.{field_name} is missing; available {kind}s: {', '.join(registry.names())}")
        name, kwargs, name_key = entry[field_name], entry.get("kwargs", {}), f"{key}.{field_name}"
    else:
        raise ConfigError(f"{key} must be a {kind} name or a {{ {field_name} = ..., kwargs = {{...}} }} table, "
                          f"got {entry!r}")
    try:
        registry.get(name)
    except KeyError as error:
        raise ConfigError(f"{name_key}: {error.args[0]}") from None
    return name, kwargs


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
        arg = _blamed_arg(error, _TRAIN_FIELDS)
        raise ConfigError(f"{key}.{arg}: {error}" if arg else f"{key}: {error}") from None
