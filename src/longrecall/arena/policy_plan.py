"""KV-cache policy entries of a spec: names, kwargs, modes and budgets, validated into a plan.

Policy evaluations are not runs: they never enter a run's config or id (see ``spec`` for the keys).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..config import ConfigError, TrainConfig
from ..policies.base import MODES, is_budget
from ..registry import POLICIES
from ..validation import is_int
from .checks import _blamed_arg, _close, _floatify, _plain, registry_entry
from .ids import canonical_json

__all__ = ["POLICY_ENTRY_KEYS", "build_policy_plan", "check_budget", "check_budgets", "budget_key", "policy_applies",
           "policy_pairs", "takes_budget", "check_policy_entry"]

# ----------------------------------------------------------------------------- KV-cache policies

# keys of a policy entry: policies = ["window", { name = "h2o", kwargs = {...}, mode = "prefill", budgets = [...],
# protocol = "aware" }]; protocol (policy_protocols.PROTOCOLS, "agnostic" by default) says when the question is
# read; decode_tokens (32) is the generation length of protocol "decode"
POLICY_ENTRY_KEYS = ("name", "kwargs", "mode", "budgets", "protocol", "decode_tokens")
# Policy fields an entry's kwargs may not set
_POLICY_RESERVED = {"budget": "set by budgets (or the entry's own budgets)", "mode": "set by the entry's mode key"}


def check_budget(value: Any, key: str) -> int | float | str:
    """A budget: an int >= 1 (tokens per layer per head), a float in (0, 1] (a fraction of the length) or
    bytes per sequence with a unit (``"32KiB"``, ``kv_bytes``)."""
    from ..kv_bytes import is_byte_budget

    if is_budget(value) or is_byte_budget(value):
        return value
    raise ConfigError(f"{key} must be a positive int (tokens kept per layer per head), a float in (0, 1] "
                      f"(a fraction of the evaluated sequence length) or bytes per sequence with a unit "
                      f"('32KiB', '4096B'), got {value!r}")


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
    """Whether a run's model is the plain language model with an ``attention`` layer (the layers KV-cache
    policies manage). A memory-token model (``model = "rmt"``, ``"memformer"``) is not: its attention runs
    over one segment and its memory tokens at a time, which no policy's cache describes."""
    if isinstance(config, TrainConfig):
        layers, model = config.layers, config.model
    else:
        layers, model = config.get("layers", []), config.get("model", "lm")
    return model == "lm" and "attention" in layers


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
    key = f"policies[{i}]"
    name, kwargs = registry_entry(key, entry, "name", POLICIES, "policy", extra=POLICY_ENTRY_KEYS[2:])
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
            raise ConfigError(f"{key}.kwargs.{arg} must be a plain value (number, string, bool, list, table), "
                              f"got {value!r}")
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
    for budget, bkey in zip(budgets, budget_keys, strict=True):
        try:
            obj = cls(budget=budget, mode=mode, **kwargs)
        except (TypeError, ValueError) as error:
            arg = _blamed_arg(error, [*kwargs, "budget"])
            if arg == "budget" and bkey:
                where = bkey
            elif arg:
                where = f"{key}.kwargs.{arg}"
            else:
                where = key
            raise ConfigError(f"{where}: policy {name!r} rejects it: {error}") from None
        resolved = {k: v for k, v in obj.config().items() if k not in _POLICY_RESERVED}
    if not _plain(resolved):
        resolved = {k: v for k, v in resolved.items() if _plain(v)} | kwargs
    protocol, decode_tokens = _protocol(key, entry)
    # the agnostic protocol stays out of the key and label: evaluations stored before protocols keep theirs
    how = {} if protocol == "agnostic" else {"protocol": protocol}
    if protocol == "decode":
        how["decode_tokens"] = decode_tokens
    label = _policy_label(name, kwargs, mode, default_mode)
    if how:
        label += f"@{protocol}" + (f"{decode_tokens}" if protocol == "decode" else "")
    return {
        "name": name,
        "kwargs": resolved,
        "user_kwargs": dict(kwargs),
        "mode": mode,
        "budgets": budgets,
        "protocol": protocol,
        "decode_tokens": decode_tokens,
        "key": canonical_json({"name": name, "kwargs": resolved, "mode": mode, **how}),
        "label": label,
    }


def _protocol(key: str, entry: Any) -> tuple[str, int]:
    """An entry's protocol and decode length, checked: (``"agnostic"``, 32) when not given."""
    from ..policy_protocols import PROTOCOLS

    given = entry if isinstance(entry, dict) else {}
    protocol = given.get("protocol", "agnostic")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    decode_tokens = given.get("decode_tokens", 32)
    if "decode_tokens" in given and protocol != "decode":
        raise ConfigError(f"{key}.decode_tokens applies to protocol 'decode' only (this entry's is {protocol!r})")
    if not is_int(decode_tokens) or decode_tokens < 0:
        raise ConfigError(f"{key}.decode_tokens must be an int >= 0, got {decode_tokens!r}")
    return protocol, decode_tokens


def build_policy_plan(policies: Any, budgets: Any, protocols: Any) -> list[dict]:
    """A spec's ``policies`` / ``budgets`` / ``protocols`` validated into the plan: one entry per distinct
    (policy, kwargs, mode, protocol), the budgets of repeated entries merged; each entry without its own
    protocol is crossed with every one of ``protocols`` (default: agnostic only)."""
    if isinstance(policies, str):
        if policies != "all":
            raise ConfigError(f"policies must be a list of policy names or {{ name = ..., kwargs = {{...}}, "
                              f"mode = ... }} tables, or \"all\" (every registered policy); got {policies!r}")
        policies = POLICIES.names()
    if not isinstance(policies, (list, tuple)):
        raise ConfigError("policies must be a list of policy names or "
                          f"{{ name = ..., kwargs = {{...}}, mode = ... }} tables, or \"all\"; got {policies!r}. "
                          f"Available policies: {', '.join(POLICIES.names())}")
    spec_budgets = check_budgets(budgets, "budgets")
    if not policies:
        if spec_budgets:
            raise ConfigError("budgets: given without policies; add policies = [...] (or \"all\")")
        if protocols:
            raise ConfigError("protocols: given without policies; add policies = [...] (or \"all\")")
        return []
    protocols = _spec_protocols(protocols)
    plan: dict[str, dict] = {}
    for i, given in enumerate(policies):
        own = isinstance(given, dict) and "protocol" in given
        for entry in [given] if own or protocols == ["agnostic"] else [
                {**(given if isinstance(given, dict) else {"name": given}), "protocol": p} for p in protocols]:
            checked = check_policy_entry(i, entry, spec_budgets)
            if checked["key"] in plan:  # the same policy twice: one entry, the budgets of both
                known = plan[checked["key"]]
                keys = {budget_key(b) for b in known["budgets"]}
                known["budgets"] += [b for b in checked["budgets"] if budget_key(b) not in keys]
            else:
                plan[checked["key"]] = checked
    return list(plan.values())


def _spec_protocols(protocols: Any) -> list[str]:
    """A spec's ``protocols`` (policy_protocols.PROTOCOLS), checked; ``["agnostic"]`` when empty."""
    from ..policy_protocols import PROTOCOLS

    if not isinstance(protocols, (list, tuple)):
        raise ConfigError(f"protocols must be a list of {', '.join(PROTOCOLS)}, got {protocols!r}")
    for j, p in enumerate(protocols):
        if p not in PROTOCOLS:
            raise ConfigError(f"protocols[{j}] must be one of {', '.join(PROTOCOLS)}, got {p!r}")
    return list(dict.fromkeys(protocols)) or ["agnostic"]
