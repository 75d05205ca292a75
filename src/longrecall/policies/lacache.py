"""``lacache``: LaCache's ladder, each layer keeping a differently shifted share of the older tokens."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..registry import register_policy
from ..validation import ArgumentError, check_int
from .base import BoundPolicy, Observation, Policy, PolicyKVState, keep_mask


class Ladder(NamedTuple):
    """One layer's rung geometry (slot counts, not positions)."""

    group: int  # P: consecutive cache slots compacted together into one rung
    keep: int  # A: how many of them this layer keeps (A consecutive slots)
    offset: int  # r: where this layer's A slots start inside the group
    n_layers: int  # L: the reference leaves the L newest slots out of every sweep
    sinks: int  # n_sink, or fewer when the budget leaves no room for a rung otherwise


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@register_policy("lacache")
@dataclass
class LaCache(Policy):
    """LaCache (Shi et al. 2025): sinks + older tokens laid out as a ladder across layers + recent tokens.

    "LaCache: Ladder-Shaped KV Caching for Efficient Long-Context Modeling of Large Language Models"
    (arXiv 2507.14204, ICML 2025); reference ``GATECH-EIC/LaCache:LongBench/lacache/kv_cache.py``
    (``LaCache(cache_size, start_size, span, overlap)``; the same class in ``niah/`` and ``ppl/``).
    Score-free: the rule depends on cache slots and the layer index only.  With L layers, span s and
    overlap o: ``P = 1 + ceil((L - s) / (s - o))``, ``A = min(ceil(s / (s - o)), P)``, ``R = P - A``.
    A cursor sweeps the cache slots after the sinks; a rung compacts the P slots at the cursor to the
    A consecutive ones at offset ``r = layer mod (R + 1)`` (neighbouring layers keep neighbouring
    slots, so together the layers keep what each one drops), then the cursor moves A slots on.  When
    fewer than A slots remain before the last L (``budget - cursor - L < A``) the sweep starts over at
    the sinks, compacting already compacted rungs again: the older a token, the sparser it is kept.
    Everything after the cursor stays dense (the recent tokens).

    Here a cache over budget drops one token at a time, the R of a rung oldest first (the r before the
    kept block at the cursor, then those after it), and the count of drops so far, ``length - held``,
    locates the next one: rung ``k = drops // R``, cursor ``n_s + A (k mod m)`` with ``m = (budget - L -
    n_s) // A`` rungs per sweep and ``n_s = min(n_sink, budget - L - A)`` sinks (the reference's
    LongBench driver clamps ``start_size`` so that a rung fits).  Departures from the reference: it
    drops a rung's R tokens at once when the cache overflows (so it runs below its size between rungs
    and adds ``floor(R / 2)`` slots to compensate); here the cache holds exactly ``budget`` tokens and
    equals the reference's whenever the reference is full (tested).  A prompt longer than the budget is
    compacted as the step loop would have (the drops replayed in order), where the reference compacts
    a long prompt in one pass with wider, strided rungs.  Keys stay rotated at their absolute positions
    (the reference re-rotates them at their cache index, as StreamingLLM's ``pos_shift``).  No ladder
    when ``span >= L`` (e.g. one layer; P <= 1, where the reference divides by zero), ``R = 0`` or
    ``budget < L + A``: the rule is then StreamingLLM's, ``n_sink`` sinks + the most recent tokens.

    Args:
        budget: tokens kept per layer per head, sinks included; None: unlimited.  Without a ladder it
            must hold the sinks (``>= n_sink``).
        mode: "step" (drop at every token, the paper's streaming use; default) or "prefill" (compact
            the prompt once, then decode by appending).
        n_sink: initial tokens always kept (the reference's ``start_size``: 4 in ``ppl/``, up to 128
            on LongBench).
        span: layers an old token survives in; None: ``n_layers // 2`` (the reference's runs use 16
            of 32 layers and 14 of 28).
        overlap: the ladder's overlap o (0, the reference's default), 0 <= o < span.
    """

    n_sink: int = 4
    span: int | None = None
    overlap: int = 0

    def validate(self) -> None:
        super().validate()
        check_int(n_sink=self.n_sink, overlap=self.overlap, minimum=0)
        check_int(span=self.span, allow_none=True)
        if self.span is not None and self.overlap >= self.span:
            raise ArgumentError("overlap", f"< span={self.span}", repr(self.overlap))

    def bind(self, **kwargs) -> BoundPolicy:
        # compress sees only the state, so the bound policy is a copy that knows its layer
        bound = super().bind(**kwargs)
        span = self.layer_span(bound.n_layers)
        if self.overlap >= span:
            raise ArgumentError("overlap", f"< span={span} (n_layers // 2 = {span} when span is None)",
                                repr(self.overlap))
        applied = dataclasses.replace(self)
        applied._layer, applied._n_layers = bound.layer, bound.n_layers  # not fields: config and repr unchanged
        for budget in set(bound.budgets or ()):
            if applied.ladder(budget) is None and budget < self.n_sink:
                raise ArgumentError("budget", f">= n_sink={self.n_sink} (the sinks are part of the budget; "
                                    "without a ladder the rule is StreamingLLM's)", repr(budget))
        return dataclasses.replace(bound, policy=applied)

    def layer_span(self, n_layers: int) -> int:
        return self.span if self.span is not None else max(1, n_layers // 2)

    def ladder(self, budget: int) -> Ladder | None:
        """This layer's rungs under ``budget`` (layer from ``bind``; unbound: layer 0 of 1); None: no ladder."""
        layer, n_layers = getattr(self, "_layer", 0), getattr(self, "_n_layers", 1)
        span = self.layer_span(n_layers)
        if n_layers <= span:
            return None
        group = 1 + ceil_div(n_layers - span, span - self.overlap)
        keep = min(ceil_div(span, span - self.overlap), group)
        if group == keep or budget < n_layers + keep:  # nothing to drop in a rung, or no room for one
            return None
        sinks = min(self.n_sink, budget - n_layers - keep)  # the reference's LongBench driver clamps start_size
        return Ladder(group, keep, layer % (group - keep + 1), n_layers, sinks)

    def drop_rank(self, drops: int, budget: int, ladder: Ladder | None) -> int:
        """Cache index (among the held tokens, in position order) of the next token to drop, after ``drops``."""
        if ladder is None:
            return self.n_sink  # StreamingLLM: the oldest token after the sinks
        rung, done = divmod(drops, ladder.group - ladder.keep)
        per_sweep = (budget - ladder.n_layers - ladder.sinks) // ladder.keep  # >= 1
        cursor = ladder.sinks + ladder.keep * (rung % per_sweep)
        return cursor if done < ladder.offset else cursor + ladder.keep

    def dropped_ranks(self, held: int, drops: int, budget: int) -> list[int]:
        """Indices into the current cache of the ``held - budget`` tokens to drop, in order (replayed)."""
        ladder = self.ladder(budget)
        alive = list(range(held))
        dropped = []
        for j in range(held - budget):
            dropped.append(alive.pop(min(self.drop_rank(drops + j, budget, ladder), len(alive) - 1)))
        return dropped

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: torch.Tensor) -> PolicyKVState:
        valid = state.pos >= 0  # (B, H, S)
        B, H, S = valid.shape
        held = valid.sum(-1)  # (B, H)
        limit = budget.expand(B, H, 1)[..., 0]  # (B, H)
        if not bool((held > limit).any()):
            return state
        drops = (state.length[:, None] - held).clamp_min(0)  # (B, H): every token seen and not held was dropped
        memo: dict[tuple[int, int, int], list[int]] = {}  # heads and rows in the same situation drop alike
        rows, heads, ranks = [], [], []
        for b, row in enumerate(zip(held.tolist(), drops.tolist(), limit.tolist(), strict=True)):
            for h, (n, d, c) in enumerate(zip(*row, strict=True)):
                if n > c:
                    key = (n, d, c)
                    if key not in memo:
                        memo[key] = self.dropped_ranks(n, d, c)
                    rows += [b] * len(memo[key])
                    heads += [h] * len(memo[key])
                    ranks += memo[key]
        by_rank = torch.zeros(B, H, S, dtype=torch.bool)  # (B, H, S) True: the token at that cache index goes
        by_rank[rows, heads, ranks] = True
        rank = (valid.cumsum(-1) - 1).clamp_min(0)  # (B, H, S) index among the held tokens (empty slots: any)
        dropped = by_rank.to(valid.device).gather(-1, rank) & valid
        return keep_mask(state, valid & ~dropped)
