"""One attention call's policy cycle on a ``PolicyKVState``, as ``mixers/attention.py`` runs it.

step mode: each token appends, attends, observes and evicts back to the budget (position-only rules:
the closed-form mask, then one eviction).  prefill mode: full causal attention over the call,
observe, and compress once per prompt call (T > 1 or the first call).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...mixers.attention import KVState
from ...policies.base import BoundPolicy, Observation, Policy, PolicyKVState, attention_probs
from .gqa import grouped_attend_mask, grouped_compress, grouped_observe, repeat_heads


class Pending(NamedTuple):
    """What the cache's ``update`` leaves for the attention call of the same layer."""

    prev: PolicyKVState  # the state before this call
    k: Tensor  # (B, Hkv, T, K) this call's keys and values
    v: Tensor
    positions: Tensor  # (B, T) int64
    surprisal: Tensor | None  # (B, T) handed by the model hooks (surprisal policies), else None
    keys: Tensor  # the keys update() returned: the attention call must receive these


def append_tokens(policy: Policy, state: PolicyKVState, k: Tensor, v: Tensor, positions: Tensor) -> PolicyKVState:
    """``state`` with T tokens appended (positions (B, T)), statistics extended by the policy."""
    pos = positions.to(torch.int32)[:, None].expand(-1, state.pos.shape[1], -1)  # (B, H, T)
    kv = KVState(
        k=torch.cat([state.k, k.to(state.k.dtype)], dim=2),
        v=torch.cat([state.v, v.to(state.v.dtype)], dim=2),
        pos=torch.cat([state.pos, pos], dim=2),
        length=state.length + positions.shape[1],
    )
    return policy.append(state, kv)


def run(bound: BoundPolicy, pending: Pending, full: PolicyKVState, query: Tensor,
        scaling: float) -> tuple[Tensor, PolicyKVState]:
    """The cycle for queries (B, Hq, T, K) over ``full`` (the state with the call's tokens appended).

    Returns the output (B, Hq, T, K) and the new state."""
    policy = bound.policy
    Hq, H = query.shape[1], full.pos.shape[1]
    if Hq % H:
        raise ValueError(f"layer {bound.layer}: {Hq} query heads are not a multiple of {H} KV heads")
    groups = Hq // H
    factor = scaling * math.sqrt(query.shape[-1])
    q = query if abs(factor - 1.0) < 1e-12 else query * factor  # attention_probs uses 1/sqrt(K)
    T = q.shape[2]
    first_call = int(pending.prev.length.max()) == 0
    if policy.mode == "step":
        if T > 1 and policy.closed_form and bound.within_rule(pending.prev):
            return _closed_form(bound, q, pending.positions, full, groups, fresh=first_call)
        return _step_loop(bound, q, pending, full, groups)
    y, probs = _attend(policy, q, pending.positions, full, groups, fresh=first_call)
    obs = Observation(q, pending.positions, probs)
    state = grouped_observe(policy, full, obs, groups)
    if T > 1 or first_call:
        state = grouped_compress(bound, state, obs, groups)
    return y, state


def _attend(policy: Policy, q: Tensor, q_pos: Tensor, state: PolicyKVState, groups: int,
            fresh: bool = False) -> tuple[Tensor, Tensor | None]:
    """Attention of q (B, Hq, Tq, K) over the cache, probabilities when the policy needs them."""
    k, v, pos = policy.attend_view(state)
    mask = grouped_attend_mask(policy, state, q, q_pos, groups)
    if not policy.needs_attention and mask is None and q.shape[2] == 1 and bool(
            ((pos >= 0) & (pos <= q_pos.min())).all()):
        # decoding over a cache the query sees whole (no empty slot, nothing later): no mask to build
        # and no copy of the cache per query head (SDPA groups the heads itself, as repeat_heads does)
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=groups > 1), None
    if not policy.needs_attention and mask is None and not (fresh and k.shape[2] == q.shape[2]) and bool(
            (pos == pos[:, :1]).all()):
        # every head holds the same positions (no per-head eviction): one mask for all heads, and no copy
        # of the cache per query head, which at 32k tokens and a 1,024-token prompt chunk is what the
        # prefill's peak memory was made of
        visible = (pos[:, :1] >= 0)[:, :, None, :] & (pos[:, :1, None, :] <= q_pos[:, None, :, None])  # (B,1,Tq,S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=groups > 1), None
    k, v, pos = repeat_heads(k, groups), repeat_heads(v, groups), repeat_heads(pos, groups)
    if policy.needs_attention:
        probs = attention_probs(q, q_pos, k, pos, mask)
        return probs @ v.to(probs.dtype), probs
    if fresh and mask is None and k.shape[2] == q.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True), None
    visible = (pos >= 0)[:, :, None, :] & (pos[:, :, None, :] <= q_pos[:, None, :, None])  # (B, Hq, Tq, S)
    if mask is not None:
        visible = visible & mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible), None


def _step_loop(bound: BoundPolicy, q: Tensor, pending: Pending, full: PolicyKVState,
               groups: int) -> tuple[Tensor, PolicyKVState]:
    """Token by token: append, attend, observe, evict (exact step-mode semantics)."""
    policy, (prev, k_new, v_new, positions, surprisal, _) = bound.policy, pending
    T = q.shape[2]
    state, ys = prev, []
    for t in range(T):
        q_t, pos_t = q[:, :, t : t + 1], positions[:, t : t + 1]
        if T == 1:
            state = full
        else:
            start = state if surprisal is None else policy.with_surprisal(state, surprisal[:, t : t + 1])
            state = append_tokens(policy, start, k_new[:, :, t : t + 1], v_new[:, :, t : t + 1], pos_t)
        y_t, probs = _attend(policy, q_t, pos_t, state, groups)
        obs = Observation(q_t, pos_t, probs)
        state = grouped_compress(bound, grouped_observe(policy, state, obs, groups), obs, groups)
        ys.append(y_t)
    return torch.cat(ys, dim=2), state


def _closed_form(bound: BoundPolicy, q: Tensor, positions: Tensor, full: PolicyKVState, groups: int,
                 fresh: bool) -> tuple[Tensor, PolicyKVState]:
    """Position-only rules: query t sees itself and what the rule keeps at length t (as the mixer)."""
    policy = bound.policy
    if bound.budgets is None:
        y, _ = _attend(policy, q, positions, full, groups, fresh=fresh)
        return y, full
    key_pos, query_pos = full.pos[:, :, None, :], positions[:, None, :, None]  # (B,H,1,S), (B,1,T,1)
    budget = bound.budget_tensor(q.device)[..., None]  # (1, H, 1, 1)
    kept = policy.keep_position(key_pos, query_pos, budget)
    visible = (key_pos >= 0) & ((key_pos == query_pos) | ((key_pos < query_pos) & kept))
    visible = repeat_heads(visible, groups)
    mask = grouped_attend_mask(policy, full, q, positions, groups)
    if mask is not None:
        visible = visible & mask
    y = F.scaled_dot_product_attention(q, repeat_heads(full.k, groups), repeat_heads(full.v, groups),
                                       attn_mask=visible)
    return y, bound.compress(full, None)
