"""GQA: a policy bound to Hkv KV heads, driven by Hq = G * Hkv query heads (``docs/hf_adapter.md``).

Query head ``h * G + g`` reads KV head ``h`` (transformers' ``repeat_kv``).  ``score`` is the mean
of the G members' scores (kvpress's rule); ``observe`` / ``compress`` see the group average.
With G = 1 every call is the policy's own.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor

from ...policies.base import BoundPolicy, Observation, Policy, PolicyKVState


def repeat_heads(t: Tensor, groups: int) -> Tensor:
    """(B, Hkv, ...) -> (B, Hkv * G, ...): query head h * G + g reads KV head h."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def members(obs: Observation, groups: int) -> list[Observation]:
    """The observation of each group member g at KV-head resolution: query heads g, G + g, 2G + g, ..."""
    return [Observation(obs.q[:, g::groups], obs.q_pos, None if obs.probs is None else obs.probs[:, g::groups])
            for g in range(groups)]


def group_average(obs: Observation, groups: int) -> Observation:
    """One KV-headed observation: queries and attention probabilities averaged over each group."""
    def average(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.unflatten(1, (-1, groups)).mean(dim=2)

    return Observation(average(obs.q), obs.q_pos, average(obs.probs))


def grouped_observe(policy: Policy, state: PolicyKVState, obs: Observation, groups: int) -> PolicyKVState:
    if groups == 1 or type(policy).observe is Policy.observe:
        return policy.observe(state, obs)
    return policy.observe(state, group_average(obs, groups))


def grouped_compress(bound: BoundPolicy, state: PolicyKVState, obs: Observation | None,
                     groups: int) -> PolicyKVState:
    if groups == 1 or obs is None:
        return bound.compress(state, obs)
    policy, each = bound.policy, members(obs, groups)

    def mean_score(s: PolicyKVState, _obs) -> Tensor:  # (B, Hkv, S)
        return torch.stack([policy.score(s, member) for member in each]).mean(dim=0)

    proxy = dataclasses.replace(bound, policy=_scored_by(policy, mean_score))
    return proxy.compress(state, group_average(obs, groups))


def _scored_by(policy: Policy, score) -> Policy:
    """A shallow copy of ``policy`` whose ``score`` is ``score``; ``policy`` itself is untouched.

    The only monkeypatch in the adapter.  Every ``compress`` (``Policy``'s, SirLLM's, ...) ranks by
    ``self.score``, and ``Policy`` offers no parameter to rank by another score, so the group mean
    has to be what ``self.score`` resolves to: an instance attribute, which shadows the method.
    ``object.__setattr__`` because a frozen dataclass policy refuses plain assignment.
    """
    proxy = copy.copy(policy)
    object.__setattr__(proxy, "score", score)
    return proxy


def grouped_attend_mask(policy: Policy, state: PolicyKVState, q: Tensor, q_pos: Tensor,
                        groups: int) -> Tensor | None:
    """The policy's (B, Hq, Tq, S) restriction, evaluated per group member."""
    if type(policy).attend_mask is Policy.attend_mask:
        return None
    if groups == 1:
        return policy.attend_mask(state, q, q_pos)
    masks = [policy.attend_mask(state, q[:, g::groups], q_pos) for g in range(groups)]
    if all(m is None for m in masks):
        return None
    B, H, _ = state.pos.shape
    # the width of what the policy attends: the cache, plus any slots its attend_view adds (ShadowKV's
    # reconstructed keys), so not state.pos's
    shape = (B, H, q.shape[2], next(m for m in masks if m is not None).shape[-1])
    masks = [torch.ones(shape, dtype=torch.bool, device=q.device) if m is None else m.expand(shape) for m in masks]
    return torch.stack(masks, dim=2).flatten(1, 2)  # (B, H, G, Tq, S) -> (B, Hq, Tq, S)
