"""KV-cache policies: what an attention layer's cache keeps, and for how many bytes.

A policy is a ``@register_policy("key")`` dataclass subclassing :class:`Policy` (fields: its
configuration, ``budget`` and ``mode`` included).  ``mixers/attention.py`` runs the cycle: append the
new tokens, attend over the view, ``observe``, and in step mode ``compress`` back to the budget.  A
policy overrides only the hooks it decides; a score-based one is a single
``score(state, obs) -> (B, H, S)`` (higher = keep), as ``knorm.py``.  :class:`PolicyKVState` adds
``extra`` (per-token statistics, (B, H, S, ...), gathered with their tokens on eviction) and ``aux``
(policy tensors not aligned with tokens, leading dim B) to ``KVState``'s fields.  Empty slots
(``pos = -1``) pad heads or rows holding fewer tokens and are counted by ``state_bytes``;
:func:`keep_mask`, the one gather, allocates exactly the kept size, so evicted memory is released.
Design decisions (budgets, modes, chunked prompts, surprisal): ``docs/architecture.md``, "KV-cache
policies".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..protocol import state_nbytes
from ..validation import ArgumentError, check_choice, check_int, is_int

MODES: tuple[str, ...] = ("step", "prefill")

__all__ = [
    "MODES",
    "BoundPolicy",
    "Observation",
    "Policy",
    "PolicyKVState",
    "attention_probs",
    "cat_states",
    "is_budget",
    "keep_mask",
    "keep_topk",
    "kept_positions",
    "pad_state",
    "recent_mask",
    "sink_mask",
]


class PolicyKVState(NamedTuple):
    """The attention cache under a policy: ``KVState``'s fields, then ``extra`` and ``aux``."""

    k: Tensor  # (B, H, S, K)
    v: Tensor  # (B, H, S, K)
    pos: Tensor  # (B, H, S) int32, -1 = empty slot
    length: Tensor  # (B,) int64
    extra: tuple = ()  # per-token statistics, each (B, H, S, ...)
    aux: tuple = ()  # policy-managed, not aligned with the token axis, leading dim B


class Observation(NamedTuple):
    """What the policy may look at after attention: this call's queries and, if asked, attention."""

    q: Tensor  # (B, H, Tq, K) rotated queries of this call (Tq = 1 in step, T in a prefill forward)
    q_pos: Tensor  # (B, Tq) their absolute positions
    probs: Tensor | None  # (B, H, Tq, S) attention over the state's slots; only when needs_attention


def _expand_index(index: Tensor, like: Tensor) -> Tensor:
    """(B, H, S') slot index broadcast over the trailing dims of a (B, H, S, ...) tensor."""
    return index.reshape(*index.shape, *([1] * (like.dim() - 3))).expand(*index.shape, *like.shape[3:])


def _gather(t: Tensor, index: Tensor, ok: Tensor, fill: int = 0) -> Tensor:
    out = torch.gather(t, 2, _expand_index(index, t))  # a new tensor of exactly the kept size
    return out.masked_fill(~_expand_index(ok, t), fill)


def keep_mask(state: PolicyKVState, keep: Tensor) -> PolicyKVState:
    """A new state with the slots where ``keep`` (B, H, S) is True, in cache (= position) order.

    The token axis becomes the largest kept count; (row, head) pairs keeping fewer are padded with
    empty slots (pos -1, zeros).  ``aux`` and ``length`` pass through.
    """
    keep = keep & (state.pos >= 0)
    counts = keep.sum(-1)  # (B, H)
    n = int(counts.max()) if counts.numel() else 0
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[..., :n]  # kept first
    ok = torch.arange(n, device=keep.device) < counts[..., None]  # (B, H, n)
    return PolicyKVState(
        k=_gather(state.k, order, ok),
        v=_gather(state.v, order, ok),
        pos=_gather(state.pos, order, ok, fill=-1),
        length=state.length,
        extra=tuple(_gather(t, order, ok) for t in state.extra),
        aux=state.aux,
    )


def keep_topk(
    state: PolicyKVState, scores: Tensor, budget: Tensor | int, protected: Tensor | None = None
) -> PolicyKVState:
    """Keep, per (row, head), the ``budget`` (int or (B, H, 1)) highest ``scores`` (B, H, S); ``protected``
    ones first; ties go to the earlier slot (a stable sort)."""
    valid = state.pos >= 0
    scores = scores.masked_fill(~valid, -math.inf)
    if protected is not None:
        scores = scores.masked_fill(protected & valid, math.inf)
    rank = torch.sort(scores, dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    return keep_mask(state, valid & (rank < budget))


def sink_mask(state: PolicyKVState, n_sink: int | Tensor) -> Tensor:
    """(B, H, S) True for the first ``n_sink`` positions of the sequence (attention sinks)."""
    return (state.pos >= 0) & (state.pos < n_sink)


def recent_mask(state: PolicyKVState, n_recent: int | Tensor) -> Tensor:
    """(B, H, S) True for the ``n_recent`` most recent positions (``n_recent`` may be (1, H, 1))."""
    return (state.pos >= 0) & (state.pos >= state.length[:, None, None] - n_recent)


def attention_probs(q: Tensor, q_pos: Tensor, k: Tensor, pos: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention (B, H, Tq, S) of queries at ``q_pos`` over cached keys: causal by position, scale
    1/sqrt(K) as SDPA, float32 softmax for half inputs; ``mask`` (B, H, Tq, S) restricts further."""
    visible = (pos >= 0)[:, :, None, :] & (pos[:, :, None, :] <= q_pos[:, None, :, None])
    if mask is not None:
        visible = visible & mask
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    return torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1).to(q.dtype)


def pad_state(state: PolicyKVState, n_slots: int) -> PolicyKVState:
    """The same cache with empty slots appended up to ``n_slots`` on the token axis."""
    missing = n_slots - state.pos.shape[2]
    if missing < 0:
        raise ValueError(f"n_slots={n_slots} is smaller than the state's {state.pos.shape[2]} slots")
    if missing == 0:
        return state

    def pad(t: Tensor, fill: int = 0) -> Tensor:
        filler = torch.full((*t.shape[:2], missing, *t.shape[3:]), fill, dtype=t.dtype, device=t.device)
        return torch.cat([t, filler], dim=2)

    return PolicyKVState(pad(state.k), pad(state.v), pad(state.pos, -1), state.length,
                         tuple(pad(t) for t in state.extra), state.aux)


def cat_states(states: list[PolicyKVState]) -> PolicyKVState:
    """Stack caches of separate sequences (possibly of different lengths) into one batch.

    ``aux`` tensors of 3+ dims whose dim 2 (a slot axis: KIVI's groups, ThinK's pruned tokens) differs
    are padded at its end like the token axis: -1 for signed integer tensors (positions), 0 otherwise.
    """
    if not states:
        raise ValueError("states must be a non-empty list of PolicyKVState")
    n = max(s.pos.shape[2] for s in states)
    padded = [pad_state(s, n) for s in states]

    def cat(items):
        if isinstance(items[0], tuple):
            return tuple(cat(list(group)) for group in zip(*items, strict=True))
        if items[0].dim() >= 3 and len({t.shape[2] for t in items}) > 1:
            m = max(t.shape[2] for t in items)
            fill = -1 if items[0].dtype in (torch.int8, torch.int16, torch.int32, torch.int64) else 0
            items = [torch.cat([t, t.new_full((*t.shape[:2], m - t.shape[2], *t.shape[3:]), fill)], dim=2)
                     for t in items]
        return torch.cat(items, dim=0)

    return PolicyKVState(*(cat([p[i] for p in padded]) for i in range(len(PolicyKVState._fields))))


def is_budget(value) -> bool:
    """A finite budget: an int >= 1 (tokens per layer per head) or a float in (0, 1] (a ratio of the context)."""
    return (is_int(value) and value >= 1) or (isinstance(value, float) and 0.0 < value <= 1.0)


def kept_positions(state: PolicyKVState, row: int = 0, head: int = 0) -> list[int]:
    """The absolute positions a (row, head) holds, in cache order (empty slots skipped)."""
    pos = state.pos[row, head]
    return pos[pos >= 0].tolist()


@dataclass
class Policy:
    """Base class of KV-cache policies (see the module docstring).

    Args:
        budget: None (unlimited), an int >= 1 (tokens kept per layer per head), a float in (0, 1]
            (a ratio of the context length given when the policy is applied), or bytes per sequence
            as a string with a unit (``"32KiB"``; ``kv_bytes``: the model converts it to tokens).
        mode: "step" (evict whenever the cache exceeds its budget: ``forward`` equals the step loop) or
            "prefill" (compress once at the end of each forward pass, then decode by appending).
    """

    budget: int | float | str | None = None
    mode: str = "step"

    needs_attention: ClassVar[bool] = False  # obs.probs is materialised for observe/score
    position_only: ClassVar[bool] = False  # keep_position defines the rule: closed-form forward
    bounded: ClassVar[bool] = True  # False for policies that keep every token (full; ThinK, KIVI)
    compress_unbounded: ClassVar[bool] = False  # compress also without a budget (ThinK's channel pruning)
    # the model hands the per-token surprisal -log p(x_t | x_<t) via with_surprisal before each call and
    # fill_surprisal after a prompt pass (models/lm.py, adapters/hf/; SirLLM and EM-LLM)
    needs_surprisal: ClassVar[bool] = False

    def __post_init__(self):
        self.validate()

    @property
    def closed_form(self) -> bool:
        """Whether step-mode ``forward`` may use the closed-form mask instead of the step loop:
        a position-only rule with no statistics to update."""
        return self.position_only and not self.needs_attention and type(self).observe is Policy.observe

    # -- configuration ---------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``ArgumentError`` naming the field and its accepted values; subclasses extend it."""
        from ..kv_bytes import is_byte_budget

        if not (self.budget is None or is_budget(self.budget) or is_byte_budget(self.budget)):
            raise ArgumentError("budget", "None (unlimited), an int >= 1 (tokens per layer per head), a float "
                                "in (0, 1] (a ratio of the context length) or bytes per sequence with a unit "
                                "('32KiB', '4096B')", repr(self.budget))
        check_choice("mode", self.mode, MODES)

    def resolve_budget(self, context_len: int | None = None) -> int | None:
        """Tokens per layer per head before layer/head allocation (None: unlimited)."""
        if self.budget is None or is_int(self.budget):
            return self.budget
        if isinstance(self.budget, str):  # bytes: only the model knows what a token costs (kv_bytes)
            raise ArgumentError("budget", "resolved by the model for a byte budget (LanguageModel.set_kv_policy, "
                                "kv_bytes.resolve_byte_budget)", repr(self.budget))
        if not is_int(context_len) or context_len < 1:
            raise ArgumentError("context_len", f"a positive int to resolve the ratio budget={self.budget!r}",
                                repr(context_len))
        return max(1, math.floor(self.budget * context_len + 1e-9))

    def layer_budget(self, budget: int, layer: int, n_layers: int) -> int:
        """This layer's budget (PyramidKV overrides this); the average over layers should stay ``budget``."""
        return budget

    def head_budgets(self, budget: int, n_heads: int, layer: int, n_layers: int) -> tuple[int, ...]:
        """Per-head budgets of a layer (static head-wise allocations override this)."""
        return (budget,) * n_heads

    def check_budget(self, budget: int) -> None:
        """Raise ``ArgumentError`` when a resolved budget cannot hold the protected tokens (sinks, window)."""

    def bind(self, *, n_heads: int, layer: int = 0, n_layers: int = 1, context_len: int | None = None) -> "BoundPolicy":
        """Resolve the budget for one layer: what ``Attention.set_policy`` stores."""
        check_int(n_layers=n_layers)
        check_int(layer=layer, minimum=0, maximum=n_layers - 1)
        budget = self.resolve_budget(context_len)
        budgets = None
        if budget is not None:
            per_layer = self.layer_budget(budget, layer, n_layers)
            budgets = tuple(int(b) for b in self.head_budgets(per_layer, n_heads, layer, n_layers))
            if len(budgets) != n_heads or min(budgets) < 1:
                raise ValueError(f"head budgets must be {n_heads} ints >= 1, got {budgets}")
            for b in set(budgets):
                self.check_budget(b)
        return BoundPolicy(self, n_heads, layer, n_layers, context_len, budgets)

    # -- state -----------------------------------------------------------------------------

    def new_extra(self, batch: int, n_heads: int, n_tokens: int, *, device=None, dtype=None) -> tuple:
        """Per-token statistics of ``n_tokens`` new tokens, each (B, H, n_tokens, ...); none by default."""
        return ()

    def adopt(self, state) -> PolicyKVState:
        """A ``PolicyKVState`` from a state (a plain ``KVState`` gets fresh statistics: zeros)."""
        if isinstance(state, PolicyKVState):
            B, H, S = state.pos.shape
            if len(state.extra) != len(self.new_extra(B, H, 0, device=state.pos.device, dtype=state.k.dtype)):
                raise ValueError(f"this state holds {len(state.extra)} per-token statistics, not the ones of {self!r}")
            return state
        B, H, S = state.pos.shape
        extra = self.new_extra(B, H, S, device=state.pos.device, dtype=state.k.dtype)
        return PolicyKVState(state.k, state.v, state.pos, state.length, tuple(extra), ())

    def append(self, state: PolicyKVState, kv) -> PolicyKVState:
        """``kv`` is the ``KVState`` of ``state`` with T tokens appended; extend the statistics."""
        T = kv.pos.shape[2] - state.pos.shape[2]
        B, H = kv.pos.shape[:2]
        new = self.new_extra(B, H, T, device=kv.pos.device, dtype=kv.k.dtype)
        extra = tuple(torch.cat([old, fresh], dim=2) for old, fresh in zip(state.extra, new, strict=True))
        return PolicyKVState(kv.k, kv.v, kv.pos, kv.length, extra, state.aux)

    def observe(self, state: PolicyKVState, obs: Observation) -> PolicyKVState:
        """Update per-token statistics after attention (H2O accumulates ``obs.probs``)."""
        return state

    def attend_view(self, state: PolicyKVState) -> tuple[Tensor, Tensor, Tensor]:
        """The (k, v, pos) attention reads; compressed representations dequantise here."""
        return state.k, state.v, state.pos

    def attend_mask(self, state: PolicyKVState, q: Tensor, q_pos: Tensor) -> Tensor | None:
        """Optional (B, H, Tq, S) restriction of what each query attends to (Quest pages)."""
        return None

    # -- selection -------------------------------------------------------------------------

    def keep_position(self, pos: Tensor, length: Tensor, budget: Tensor) -> Tensor:
        """Position-only policies: is the token at ``pos`` cached once ``length`` tokens were seen?

        Elementwise over broadcastable tensors.  Must keep at most ``budget`` tokens and never
        re-admit an evicted one, so that the closed-form parallel mask equals the step loop.
        """
        raise NotImplementedError

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        """(B, H, S) importance of each cached token, higher = keep."""
        raise NotImplementedError(f"{type(self).__name__} must define score() or keep_position()")

    def protected(self, state: PolicyKVState, budget: Tensor) -> Tensor | None:
        """(B, H, S) tokens that are always kept (sinks, recent window); None: none."""
        return None

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: Tensor) -> PolicyKVState:
        """Bring every head back to at most ``budget`` tokens (``budget``: (1, H, 1) int64; None
        only for ``compress_unbounded`` policies under an unlimited budget)."""
        if state.pos.shape[2] <= int(budget.min()):
            return state
        if self.position_only:
            return keep_mask(state, self.keep_position(state.pos, state.length[:, None, None], budget))
        return keep_topk(state, self.score(state, obs), budget, self.protected(state, budget))

    # -- accounting ------------------------------------------------------------------------

    def resident_bytes(self, state: PolicyKVState) -> int:
        """Bytes an attention step needs on device; retrieval policies (offloading) override it."""
        return state_nbytes(state)

    def with_surprisal(self, state, surprisal: Tensor) -> PolicyKVState:
        """Hand the (B, T) surprisal of the next T tokens to the state (NaN: known only after the pass)."""
        raise NotImplementedError(f"{type(self).__name__} does not read surprisal (needs_surprisal is False)")

    def fill_surprisal(self, state: PolicyKVState, surprisal: Tensor) -> PolicyKVState:
        """Set the surprisal of the last T positions read, once a prompt pass has produced it."""
        raise NotImplementedError(f"{type(self).__name__} does not read surprisal (needs_surprisal is False)")

    def config(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BoundPolicy:
    """A policy applied to one attention layer: its resolved per-head budgets."""

    policy: Policy
    n_heads: int
    layer: int
    n_layers: int
    context_len: int | None
    budgets: tuple[int, ...] | None  # per head; None = unlimited

    @property
    def budget(self) -> int | None:
        """The largest head budget: the token axis of the state never exceeds it between steps."""
        return None if self.budgets is None else max(self.budgets)

    def budget_tensor(self, device=None) -> Tensor:
        """(1, H, 1) int64 per-head budgets, broadcastable against (B, H, S)."""
        return torch.tensor(self.budgets, dtype=torch.int64, device=device)[None, :, None]

    def compress(self, state: PolicyKVState, obs: Observation | None) -> PolicyKVState:
        if self.budgets is None:
            return self.policy.compress(state, obs, None) if self.policy.compress_unbounded else state
        return self.policy.compress(state, obs, self.budget_tensor(state.pos.device))

    def within_rule(self, state: PolicyKVState) -> bool:
        """Position-only policies: does the cache hold only what the rule keeps at its length?"""
        if self.budgets is None:
            return True
        budget = self.budget_tensor(state.pos.device)
        keep = self.policy.keep_position(state.pos, state.length[:, None, None], budget)
        return bool((keep | (state.pos < 0)).all())
