"""Sliding-window attention: softmax attention over the most recent W tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_mixer
from ..validation import ArgumentError, check_positive, is_int
from .attention import Attention, KVState


@register_mixer("sliding_window")
class SlidingWindowAttention(Attention):
    """Causal softmax attention restricted to a window of the last ``window`` tokens.

    The local mixer of Longformer / Mistral-style models and the "window" baseline of StreamingLLM
    (Xiao et al. 2023, arXiv 2309.17453) and Based (Arora et al. 2024, arXiv 2402.18668).  Each query
    attends to itself and the W - 1 tokens before it.  The parallel form takes queries in blocks, each
    attending to keys in [block start - W + 1, block end]: O(T * (block + W)) memory, not O(T^2).

    Args:
        d_model: width D.
        window: W, the number of keys each query sees, itself included (W >= 1; 64).
        n_heads: number of heads; must divide ``d_model`` (2).
        block_size: query block of the parallel form (a speed/memory knob, not a semantic one; 128).
        rope_base, bias: as in ``attention``.

    State: ``attention``'s :class:`KVState` with S <= W tokens: bounded.
    """

    state_growth = "bounded"
    contract_kwargs = {"window": 4, "block_size": 3}

    def __init__(
        self,
        d_model: int,
        *,
        window: int = 64,
        n_heads: int = 2,
        block_size: int = 128,
        rope_base: float = 10000.0,
        bias: bool = False,
    ):
        super().__init__(d_model, n_heads=n_heads, rope_base=rope_base, bias=bias)
        if not is_int(window) or window <= 0:
            raise ArgumentError("window", "a positive int (the number of tokens each query sees)", repr(window))
        check_positive(block_size=block_size)
        self.window = window
        self.block_size = int(block_size)

    @property
    def state_capacity(self) -> int:
        return self.window

    def keep_last(self, state: KVState, n: int) -> KVState:
        """A new state holding only the last ``n`` cached tokens.

        The slices are cloned so the dropped tokens' memory is really released: a view would keep
        the whole old buffer alive while ``state_bytes`` counted only the window.
        """
        S = state.k.shape[2]
        if S <= n:
            return state
        return KVState(*(t[:, :, S - n :].clone() for t in state[:3]), state.length)

    def _forward(self, x: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        q, k, v, positions = self.project(x, state.length)  # q: (B, H, T, K)
        full = self.append(state, k, v, positions)  # cache (<= W) + T new tokens
        cached = state.k.shape[2]
        T, W = x.shape[1], self.window
        outputs = []
        for start in range(0, T, self.block_size):
            stop = min(start + self.block_size, T)
            lo, hi = max(0, cached + start - (W - 1)), cached + stop
            key_pos = full.pos[:, :, lo:hi]  # (B, H, S_blk)
            query_pos = positions[:, None, start:stop, None]  # (B, 1, T_blk, 1)
            delta = query_pos - key_pos[:, :, None, :]  # (B, H, T_blk, S_blk)
            visible = (delta >= 0) & (delta < W)
            outputs.append(
                F.scaled_dot_product_attention(
                    q[:, :, start:stop], full.k[:, :, lo:hi], full.v[:, :, lo:hi], attn_mask=visible
                )
            )
        return self.merge_heads(torch.cat(outputs, dim=2)), self.keep_last(full, W)

    def step(self, x: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        return super().step(x, self.keep_last(state, self.window - 1))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, window={self.window}, state_growth='bounded'"
