"""Byte budgets for KV-cache policies: a budget in bytes per sequence, converted to what a policy keeps.

Budgets as ratios or tokens confuse comparisons across methods that store a token differently
(kvpress #102, #228): a token of a policy that keeps per-token statistics costs more than a plain
cached token, and a recurrent memory has no tokens at all.  A byte budget puts them on one axis.  It
is written as a string with a unit, ``"4096B"``, ``"32KiB"``, ``"1.5MiB"`` (binary units; ``KB`` and
``MB`` are decimal), and means the bytes the model's attention caches may hold for one sequence.

A policy converts it to tokens per layer and head: one token costs, in one layer,
``n_heads * (2 * head_dim * elem_bytes + 4)`` (key, value and its int32 position per head) plus the
policy's per-token statistics (``Policy.new_extra`` for one token: H2O's accumulated attention,
SirLLM's surprisal, ...); the budget is spread evenly over the attention layers, so

    tokens = floor((budget_bytes - 8 * layers) / sum over attention layers of token_bytes(layer))

(each layer's cache also holds its int64 token count), and the policy then allocates those tokens
as it would an int budget (PyramidKV's per-layer pyramid keeps the average).  Policies that keep
every token in a compressed form (``kivi``, ``think``) take no budget and reject a byte budget.  For
retrieval policies (``quest``, ``infllm``), which store every token and bound what a query reads,
the byte budget bounds the bytes read.
The measured bytes (``state_bytes``) are always reported beside the budget: the conversion sets
the budget, the measurement is the result.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from .validation import ArgumentError

COUNTER_BYTES = 8  # every attention cache also holds its int64 token count per sequence
UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*$")

__all__ = ["UNITS", "is_byte_budget", "parse_byte_budget", "token_bytes", "tokens_for_bytes", "resolve_byte_budget"]


def parse_byte_budget(value) -> int | None:
    """Bytes of a byte-budget string (``"32KiB"`` -> 32768), None when ``value`` is not one."""
    if not isinstance(value, str):
        return None
    match = _PATTERN.match(value)
    if match is None:
        return None
    return int(float(match.group(1)) * UNITS[match.group(2)])


def is_byte_budget(value) -> bool:
    """A string with a unit naming at least one byte (``"4096B"``, ``"32KiB"``)."""
    parsed = parse_byte_budget(value)
    return parsed is not None and parsed >= 1


def token_bytes(policy, n_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes one cached token costs in one attention layer under ``policy``: key, value and position
    per head, plus the policy's per-token statistics."""
    elem = torch.empty((), dtype=dtype).element_size()
    extra = policy.new_extra(1, n_heads, 1, dtype=dtype)
    return n_heads * (2 * head_dim * elem + 4) + sum(t.numel() * t.element_size() for t in extra)


def tokens_for_bytes(policy, budget_bytes: int, layers: list[tuple[int, int, torch.dtype]]) -> int:
    """Tokens per layer and head that ``budget_bytes`` per sequence buys across ``layers``
    ((n_heads, head_dim, dtype) of each attention layer)."""
    if not layers:
        raise ArgumentError("budget", "a token or ratio budget (a byte budget needs attention layers to convert)",
                            repr(policy.budget))
    per_token = sum(token_bytes(policy, *layer) for layer in layers)
    tokens = math.floor((budget_bytes - COUNTER_BYTES * len(layers)) / per_token)
    if tokens < 1:
        raise ArgumentError("budget", f"at least one token's bytes ({per_token} B across {len(layers)} attention "
                            f"layers under {type(policy).__name__})", repr(policy.budget))
    return tokens


def resolve_byte_budget(policy, layers: list[tuple[int, int, torch.dtype]]):
    """``policy`` itself, or a copy with its byte budget replaced by the tokens it buys."""
    if policy is None or not is_byte_budget(policy.budget):
        return policy
    return dataclasses.replace(policy, budget=tokens_for_bytes(policy, parse_byte_budget(policy.budget), layers))
