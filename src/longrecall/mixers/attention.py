"""Causal multi-head softmax attention with rotary positions; its memory is the KV cache."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..ops.rotary import apply_rotary, rotary_angles
from ..policies.base import BoundPolicy, Observation, Policy, PolicyKVState, attention_probs
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_divisor, check_positive


class KVState(NamedTuple):
    k: Tensor  # (B, H, S, K)
    v: Tensor  # (B, H, S, K)
    pos: Tensor  # (B, H, S) int32
    length: Tensor  # (B,) int64


@register_mixer("attention")
class Attention(Mixer):
    """Causal softmax attention with RoPE and a growing KV cache.

    Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762), with the rotary position
    embeddings of Su et al. 2021 (RoFormer, arXiv 2104.09864); H heads of width K = D / H.  The state is
    the whole KV cache, growing linearly with the tokens seen: the reference every bounded or
    constant-size memory is compared against.

    Args:
        d_model: width D.
        n_heads: number of heads H; must divide ``d_model`` and give an even head width (2).
        rope_base: rotary frequency base (10,000 as in RoFormer / Llama).
        bias: whether the q/k/v and output projections have biases (False).

    State (:class:`KVState`): k, v (B, H, S, K), keys already rotated, for the S cached tokens; pos
    (B, H, S) int32, each token's absolute position (kept so rotary phases and recency stay right when
    a policy evicts from the middle); length (B,) int64, tokens seen.  ``S * H * (2K * elem + 4) + 8``
    bytes per sequence.

    KV-cache policies (``longrecall.policies``): ``set_policy(policy, layer=i, n_layers=L,
    context_len=T)`` (or ``LanguageModel.set_kv_policy``) makes the cache a ``PolicyKVState`` managed by
    the policy: step mode appends, attends over the cache plus the new token, updates the policy's
    statistics and evicts back to the budget; prefill mode compresses once at the end of each
    ``forward``.  Without a policy (the default) nothing changes.  See ``policies/base.py``.
    """

    state_growth = "linear"
    kv_policy: BoundPolicy | None = None  # set with set_policy(); configuration, not a parameter

    def __init__(self, d_model: int, *, n_heads: int = 2, rope_base: float = 10000.0, bias: bool = False):
        super().__init__(d_model)
        check_positive(rope_base=rope_base)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (rotary embeddings rotate pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = float(rope_base)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> KVState:
        check_positive(batch_size=batch_size)
        dtype = dtype or self.qkv.weight.dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        state = KVState(
            k=empty,
            v=empty.clone(),
            pos=torch.zeros(batch_size, self.n_heads, 0, device=device, dtype=torch.int32),
            length=torch.zeros(batch_size, device=device, dtype=torch.int64),
        )
        if self.kv_policy is not None:
            return self.kv_policy.policy.adopt(state)
        return state

    def project(self, x: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, v (B, H, T, K) with rotary applied at absolute positions, and positions (B, T)."""
        T = x.shape[1]
        positions = length[:, None] + torch.arange(T, device=x.device)  # (B, T)
        q, k, v = rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)  # (B, T, K/2)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, K/2): shared by the heads
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, positions

    def append(self, state: KVState, k: Tensor, v: Tensor, positions: Tensor) -> KVState:
        """A new state with T tokens appended (torch.cat copies: the input state is untouched)."""
        pos = positions.to(torch.int32)[:, None].expand(-1, self.n_heads, -1)  # (B, H, T)
        return KVState(
            k=torch.cat([state.k, k.to(state.k.dtype)], dim=2),
            v=torch.cat([state.v, v.to(state.v.dtype)], dim=2),
            pos=torch.cat([state.pos, pos], dim=2),
            length=state.length + positions.shape[1],
        )

    def merge_heads(self, y: Tensor) -> Tensor:
        return self.out_proj(rearrange(y, "b h t k -> b t (h k)"))

    def forward(self, x: Tensor, state: KVState | None = None) -> tuple[Tensor, KVState]:
        if self.kv_policy is None:
            self._check_plain(state)
            return super().forward(x, state)
        self.check_input(x)
        return self._policy_forward(x, state)  # the policy adopts a given state first, even for T = 0

    def _forward(self, x: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        q, k, v, positions = self.project(x, state.length)
        new_state = self.append(state, k, v, positions)
        if state.k.shape[2] == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash-style kernel on CPU
        else:
            # cached tokens precede every new one; new tokens see each other causally
            visible = new_state.pos[:, :, None, :] <= positions[:, None, :, None]  # (B, H, T, S+T)
            y = F.scaled_dot_product_attention(q, new_state.k, new_state.v, attn_mask=visible)
        return self.merge_heads(y), new_state

    def step(self, x: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        self.check_input(x, step=True)
        if self.kv_policy is not None:
            return self._policy_step(x, state)
        self._check_plain(state)
        q, k, v, positions = self.project(x[:, None], state.length)  # (B, H, 1, K)
        new_state = self.append(state, k, v, positions)
        y = F.scaled_dot_product_attention(q, new_state.k, new_state.v)  # one query sees all cached
        return self.merge_heads(y)[:, 0], new_state

    # -- KV-cache policies (policies/base.py) ------------------------------------------------

    @property
    def supports_policy(self) -> bool:
        """Policies drive this class's forward/step; subclasses that override them opt out."""
        return all(getattr(type(self), name) is getattr(Attention, name) for name in ("forward", "_forward", "step"))

    def set_policy(
        self, policy: Policy | None, *, layer: int = 0, n_layers: int = 1, context_len: int | None = None
    ) -> None:
        """Manage this layer's cache with ``policy`` (None: plain attention again).

        ``layer`` / ``n_layers`` place the layer among the model's attention layers (per-layer
        budgets); ``context_len`` resolves ratio budgets.  Stored as ``kv_policy`` (a
        ``BoundPolicy``), outside the parameters and the state dict.
        """
        if policy is None:
            self.kv_policy = None
            return
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a longrecall Policy instance or None, got {type(policy).__name__}")
        if not self.supports_policy:
            raise TypeError(
                f"{type(self).__name__} overrides attention's forward/step; "
                "KV-cache policies apply to `attention` layers"
            )
        self.kv_policy = policy.bind(n_heads=self.n_heads, layer=layer, n_layers=n_layers, context_len=context_len)

    def _check_plain(self, state) -> None:
        if isinstance(state, PolicyKVState):
            raise ValueError("state is a PolicyKVState (built under a KV-cache policy) but this layer has no policy; "
                             "set the policy again or start from init_state()")

    def _policy_state(self, state, x: Tensor) -> PolicyKVState:
        if state is None:
            return self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        return self.kv_policy.policy.adopt(state)

    def _policy_append(self, state: PolicyKVState, k: Tensor, v: Tensor, positions: Tensor) -> PolicyKVState:
        return self.kv_policy.policy.append(state, self.append(state, k, v, positions))

    def _policy_attend(
        self, q: Tensor, q_pos: Tensor, state: PolicyKVState, fresh: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of queries q (B, H, Tq, K) over the cache; probabilities when the policy needs them.

        ``fresh``: the cache holds exactly these Tq tokens (nothing carried), so a plain causal
        kernel applies when the policy neither restricts attention nor needs its probabilities.
        """
        policy = self.kv_policy.policy
        k, v, pos = policy.attend_view(state)
        mask = policy.attend_mask(state, q, q_pos)
        if policy.needs_attention:
            probs = attention_probs(q, q_pos, k, pos, mask)
            return probs @ v.to(probs.dtype), probs
        if fresh and mask is None and k.shape[2] == q.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True), None
        visible = (pos >= 0)[:, :, None, :] & (pos[:, :, None, :] <= q_pos[:, None, :, None])  # (B, H, Tq, S)
        if mask is not None:
            visible = visible & mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible), None

    def _policy_step(self, x: Tensor, state) -> tuple[Tensor, PolicyKVState]:
        bound = self.kv_policy
        state = self._policy_state(state, x)
        q, k, v, positions = self.project(x[:, None], state.length)  # (B, H, 1, K)
        state = self._policy_append(state, k, v, positions)
        y, probs = self._policy_attend(q, positions, state)  # the new token sees the cache and itself
        obs = Observation(q, positions, probs)
        state = bound.policy.observe(state, obs)
        if bound.policy.mode == "step":
            state = bound.compress(state, obs)  # back to at most budget tokens per head
        return self.merge_heads(y)[:, 0], state

    def _policy_forward(self, x: Tensor, state) -> tuple[Tensor, PolicyKVState]:
        bound = self.kv_policy
        policy = bound.policy
        state = self._policy_state(state, x)
        if policy.mode == "step" and not (policy.closed_form and bound.within_rule(state)):
            return self.step_loop(x, state)  # score-based eviction: the step loop is the exact form
        q, k, v, positions = self.project(x, state.length)
        full = self._policy_append(state, k, v, positions)
        if policy.mode == "prefill":
            # the whole prompt with full causal attention, then one compression
            y, probs = self._policy_attend(q, positions, full, fresh=state.pos.shape[2] == 0)
            obs = Observation(q, positions, probs)
            return self.merge_heads(y), bound.compress(policy.observe(full, obs), obs)
        # step mode, position-only rule: query t sees itself and what the rule keeps at length t
        if bound.budgets is None:
            y, _ = self._policy_attend(q, positions, full, fresh=state.pos.shape[2] == 0)
            return self.merge_heads(y), full
        key_pos, query_pos = full.pos[:, :, None, :], positions[:, None, :, None]  # (B,H,1,S), (B,1,T,1)
        budget = bound.budget_tensor(x.device)[..., None]  # (1, H, 1, 1)
        kept = policy.keep_position(key_pos, query_pos, budget)
        visible = (key_pos >= 0) & ((key_pos == query_pos) | ((key_pos < query_pos) & kept))
        mask = policy.attend_mask(full, q, positions)
        if mask is not None:
            visible = visible & mask
        y = F.scaled_dot_product_attention(q, full.k, full.v, attn_mask=visible)
        return self.merge_heads(y), bound.compress(full, None)

    def extra_repr(self) -> str:
        if self.kv_policy is not None:
            return f"d_model={self.d_model}, n_heads={self.n_heads}, kv_policy={self.kv_policy.policy!r}"
        return f"d_model={self.d_model}, n_heads={self.n_heads}, state_growth='linear'"
