"""The Memorizing Transformer layer: sliding-window attention plus exact top-k retrieval from a store of old keys."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..modules import l2norm
from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_divisor, check_int, check_positive


class MemorizingState(NamedTuple):
    k: Tensor  # (B, H, S, K) window keys, unit norm, not rotated; S <= W - 1
    v: Tensor  # (B, H, S, K)
    mem_k: Tensor  # (B, H, M, K) the store, oldest first, detached
    mem_v: Tensor  # (B, H, M, K)
    length: Tensor  # (B,) int64, tokens seen


def retrieve(q: Tensor, mem_k: Tensor, mem_v: Tensor, top_k: int, scale: Tensor, visible: Tensor | None = None):
    """Softmax over each query's exact top-k keys by dot product; 0 where no key is visible.

    q (B, H, Tq, K), mem_k / mem_v (B, H, N, K), scale (H, 1, 1), visible (Tq, N) bool or None (all).
    """
    B, H, Tq, K = q.shape
    N = mem_k.shape[2]
    if N == 0:
        return q.new_zeros(B, H, Tq, mem_v.shape[-1])
    scores = q @ mem_k.transpose(-1, -2)  # (B, H, Tq, N)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    top, idx = scores.topk(min(top_k, N), dim=-1)  # (B, H, Tq, k), exact
    valid = torch.isfinite(top)
    top = scale * top.masked_fill(~valid, 0.0)
    peak = top.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)).detach()
    w = torch.exp(top - peak) * valid
    total = w.sum(-1, keepdim=True)
    w = w / torch.where(total > 0, total, torch.ones_like(total))  # (B, H, Tq, k)
    V = mem_v.shape[-1]
    picked = mem_v.gather(2, idx.reshape(B, H, -1, 1).expand(-1, -1, -1, V)).reshape(B, H, Tq, -1, V)  # (B,H,Tq,k,V)
    return (w[..., None] * picked).sum(-2)  # (B, H, Tq, V)


@register_mixer("memorizing")
class Memorizing(Mixer):
    """Memorizing Transformer layer: sliding-window attention plus exact kNN retrieval from a store of old (k, v).

    Wu, Rabe, Hutchins, Szegedy 2022, "Memorizing Transformers" (arXiv 2203.08913).  Per head h, with unit-norm
    q_t = l2norm(W_q x_t), k_t = l2norm(W_k x_t) (the paper normalises keys to limit staleness), v_t = W_v x_t:

        local_t = sum_{j = t-W+1..t} softmax_j(tau_h <R_t q_t, R_j k_j>) v_j        (R: rotary phase)
        mem_t   = sum_{j in topk_k(q_t . k_j : j in store_t)} softmax_j(tau_h q_t . k_j) v_j
        y_t     = W_o concat_h[ g_h mem_t + (1 - g_h) local_t ],   g_h = sigmoid(b_h)

    store_t holds the tokens that have left the window, positions <= t - W (the last ``memory_size`` of them
    when capped), with ``stop_gradient`` on their keys and values, as in the paper.  Retrieval is exact top-k
    (the paper also allows approximate kNN) with no positional encoding on memory keys.

    Departures and uncertainties (said here once): the paper's local context is the current 512-token segment
    plus a Transformer-XL cache and its memory is written per segment; here the local context is a token-level
    sliding window of W and a token enters the store the moment it leaves the window (chunk-invariant by
    construction, store and window disjoint).  The paper's local attention uses T5 relative position biases;
    here rotary embeddings.  With unit q and k the logits need a temperature: a learned per-head tau_h =
    exp(s_h), initialised to 20 as in lucidrains' memorizing-transformers-pytorch (the paper's exact scale
    was not available to me).  The gate bias b_h starts at 0 (g = 1/2); the paper says only "learned scalar".

    Args:
        d_model: width D.
        n_heads: heads H; must divide ``d_model`` with an even head width (2).
        window: W, tokens each query attends to locally, itself included (64).
        top_k: keys retrieved per query and head (32, the paper's k).
        memory_size: store cap in tokens, FIFO (oldest evicted first); None: unbounded (None).
        block_size: query block of the parallel form (speed knob only; 128).
        rope_base: rotary base for the local attention (10,000).

    State (:class:`MemorizingState`): the last W - 1 keys/values, the store, tokens seen.  Unbounded store:
    ``state_growth = "linear"`` (class default); with ``memory_size`` the instance declares "bounded" with
    ``state_capacity = W - 1 + memory_size``.  Bytes per sequence: ``2 * H * K * elem * tokens_held + 8``.
    """

    state_growth = "linear"
    contract_kwargs = {"window": 4, "top_k": 2, "block_size": 3}

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 2,
        window: int = 64,
        top_k: int = 32,
        memory_size: int | None = None,
        block_size: int = 128,
        rope_base: float = 10000.0,
    ):
        super().__init__(d_model)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (rotary embeddings rotate pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        check_int(window=window, top_k=top_k, block_size=block_size)
        check_int(memory_size=memory_size, allow_none=True)
        check_positive(rope_base=rope_base)
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.window, self.top_k, self.block_size = window, top_k, block_size
        self.memory_size, self.rope_base = memory_size, float(rope_base)
        if memory_size is not None:
            self.state_growth = "bounded"
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.log_tau = nn.Parameter(torch.full((n_heads,), math.log(20.0)))
        self.gate_bias = nn.Parameter(torch.zeros(n_heads))

    @property
    def state_capacity(self) -> int | None:
        return None if self.memory_size is None else self.window - 1 + self.memory_size

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MemorizingState:
        check_positive(batch_size=batch_size)
        dtype = dtype or self.qkv.weight.dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        length = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return MemorizingState(empty, empty.clone(), empty.clone(), empty.clone(), length)

    def _qkv(self, x: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)
        return l2norm(q).to(dtype), l2norm(k).to(dtype), v.to(dtype)  # (B, H, T, K)

    def _rotate(self, t: Tensor, positions: Tensor) -> Tensor:
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)  # (B, T, K/2)
        return apply_rotary(t, cos[:, None], sin[:, None])

    def _mix(self, local: Tensor, mem: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate_bias)[:, None, None]  # (H, 1, 1)
        return self.out_proj(rearrange(g * mem + (1 - g) * local, "b h t k -> b t (h k)"))

    def _next_state(self, k: Tensor, v: Tensor, mem_k: Tensor, mem_v: Tensor, length: Tensor) -> MemorizingState:
        """Keep the last W - 1 tokens in the window; the rest join the store (detached), capped FIFO."""
        S, keep = k.shape[2], self.window - 1
        out = max(S - keep, 0)
        mem_k = torch.cat([mem_k, k[:, :, :out].detach()], 2)
        mem_v = torch.cat([mem_v, v[:, :, :out].detach()], 2)
        if self.memory_size is not None:
            mem_k, mem_v = mem_k[:, :, -self.memory_size :], mem_v[:, :, -self.memory_size :]
        return MemorizingState(k[:, :, out:].clone(), v[:, :, out:].clone(), mem_k.clone(), mem_v.clone(), length)

    def _forward(self, x: Tensor, state: MemorizingState) -> tuple[Tensor, MemorizingState]:
        B, T, _ = x.shape
        q, k, v = self._qkv(x, state.k.dtype)  # (B, H, T, K)
        S, M = state.k.shape[2], state.mem_k.shape[2]
        positions = state.length[:, None] + torch.arange(T, device=x.device)  # (B, T)
        all_k = torch.cat([state.mem_k, state.k.detach(), k.detach()], 2)  # every token in order, detached
        all_v = torch.cat([state.mem_v, state.v.detach(), v.detach()], 2)  # (B, H, M + S + T, K)
        win_k, win_v = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)  # (B, H, S + T, K)
        win_pos = state.length[:, None] - S + torch.arange(S + T, device=x.device)  # (B, S + T)
        q_rot, win_rot = self._rotate(q, positions), self._rotate(win_k, win_pos)
        tau = self.log_tau.exp()[:, None, None].to(q.dtype)  # (H, 1, 1)
        W, cap = self.window, self.memory_size
        ar = torch.arange(M + S + T, device=x.device)  # index i holds relative position i - (M + S)
        local, mem = [], []
        for a in range(0, T, self.block_size):
            b = min(a + self.block_size, T)
            rel_q = torch.arange(a, b, device=x.device)[:, None]  # (Tb, 1) query positions relative to the call
            lo, hi = max(S + a - W + 1, 0), S + b  # window slice in win_*
            rel = torch.arange(lo, hi, device=x.device) - S  # (Sb,)
            seen = (rel <= rel_q) & (rel > rel_q - W)  # (Tb, Sb)
            logits = tau * (q_rot[:, :, a:b] @ win_rot[:, :, lo:hi].transpose(-1, -2))
            local.append(torch.softmax(logits.masked_fill(~seen, float("-inf")), -1) @ win_v[:, :, lo:hi])
            m_hi = max(M + S + b - W, 0)  # store candidates: relative position <= query - W
            m_lo = 0 if cap is None else max(M + S + a - W - cap + 1, 0)
            rel_m = ar[m_lo:m_hi] - (M + S)
            ok = rel_m <= rel_q - W
            if cap is not None:
                ok = ok & (rel_m > rel_q - W - cap)
            mem.append(retrieve(q[:, :, a:b], all_k[:, :, m_lo:m_hi], all_v[:, :, m_lo:m_hi], self.top_k, tau, ok))
        y = self._mix(torch.cat(local, 2), torch.cat(mem, 2))
        return y, self._next_state(win_k, win_v, state.mem_k, state.mem_v, state.length + T)

    def step(self, x: Tensor, state: MemorizingState) -> tuple[Tensor, MemorizingState]:
        self.check_input(x, step=True)
        q, k, v = self._qkv(x[:, None], state.k.dtype)  # (B, H, 1, K)
        S = state.k.shape[2]
        win_k, win_v = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)  # (B, H, S + 1, K)
        win_pos = state.length[:, None] - S + torch.arange(S + 1, device=x.device)  # (B, S + 1)
        tau = self.log_tau.exp()[:, None, None].to(q.dtype)
        logits = tau * (self._rotate(q, state.length[:, None]) @ self._rotate(win_k, win_pos).transpose(-1, -2))
        local = torch.softmax(logits, -1) @ win_v  # (B, H, 1, K)
        mem = retrieve(q, state.mem_k, state.mem_v, self.top_k, tau)
        y = self._mix(local, mem)[:, 0]
        return y, self._next_state(win_k, win_v, state.mem_k, state.mem_v, state.length + 1)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, window={self.window}, top_k={self.top_k}, "
                f"memory_size={self.memory_size}, state_growth={self.state_growth!r}")
