"""Causal multi-head softmax attention with rotary positions; its memory is the KV cache.

Vaswani et al. 2017 ("Attention Is All You Need"), with rotary position embeddings (Su et al.
2021).  The state is the whole KV cache, so it grows linearly with the number of tokens seen: the
reference point every bounded or constant-size memory is compared against.

Shapes: x (B, T, D) -> y (B, T, D); H heads of width K = D / H.

State (``KVState``):
    k, v:   (B, H, S, K) keys (already rotated) and values of the S cached tokens
    pos:    (B, H, S) int32 absolute position of each cached token; eviction policies keep it
            so that rotary phases and recency stay right after tokens leave the middle
    length: (B,) int64 number of tokens seen so far (the next token's position)

``state_bytes`` therefore counts ``S * H * (2K * elem + 4) + 8`` bytes per sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer, check_positive
from ..registry import register_mixer


class KVState(NamedTuple):
    k: Tensor  # (B, H, S, K)
    v: Tensor  # (B, H, S, K)
    pos: Tensor  # (B, H, S) int32
    length: Tensor  # (B,) int64


@register_mixer("attention")
class Attention(Mixer):
    """Causal softmax attention with RoPE and a growing KV cache.

    Args:
        d_model: width D.
        n_heads: number of heads H; must divide ``d_model`` and give an even head width.
        rope_base: rotary frequency base (10,000 as in RoFormer / Llama).
        bias: whether the q/k/v and output projections have biases.
    """

    state_growth = "linear"

    def __init__(self, d_model: int, *, n_heads: int = 2, rope_base: float = 10000.0, bias: bool = False):
        super().__init__(d_model)
        check_positive(n_heads=n_heads, rope_base=rope_base)
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model={d_model}, got n_heads={n_heads}")
        if (d_model // n_heads) % 2:
            raise ValueError(
                f"d_model / n_heads must be even for rotary embeddings, got {d_model}/{n_heads}={d_model // n_heads}"
            )
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = float(rope_base)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    # -- state ------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> KVState:
        check_positive(batch_size=batch_size)
        dtype = dtype or self.qkv.weight.dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVState(
            k=empty,
            v=empty.clone(),
            pos=torch.zeros(batch_size, self.n_heads, 0, device=device, dtype=torch.int32),
            length=torch.zeros(batch_size, device=device, dtype=torch.int64),
        )

    # -- shared pieces ----------------------------------------------------------------------

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

    # -- the two forms ----------------------------------------------------------------------

    def forward(self, x: Tensor, state: KVState | None = None) -> tuple[Tensor, KVState]:
        self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        q, k, v, positions = self.project(x, state.length)
        new_state = self.append(state, k, v, positions)
        if state.k.shape[2] == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash-style kernel on CPU
        else:
            # Every cached token precedes every new one; new tokens see each other causally.
            visible = new_state.pos[:, :, None, :] <= positions[:, None, :, None]  # (B, H, T, S+T)
            y = F.scaled_dot_product_attention(q, new_state.k, new_state.v, attn_mask=visible)
        return self.merge_heads(y), new_state

    def step(self, x: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        self.check_input(x, step=True)
        q, k, v, positions = self.project(x[:, None], state.length)  # (B, H, 1, K)
        new_state = self.append(state, k, v, positions)
        y = F.scaled_dot_product_attention(q, new_state.k, new_state.v)  # one query sees all cached
        return self.merge_heads(y)[:, 0], new_state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, state_growth='linear'"
