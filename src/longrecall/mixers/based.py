"""Based: Taylor-feature linear attention plus a small exact sliding-window softmax attention."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..ops.linear_attn import IMPLS, linear_attn, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_choice, check_divisor, check_int, check_positive
from .attention import KVState
from .sliding_window import SlidingWindowAttention

__all__ = ["Based", "BasedState", "taylor_feature_map", "taylor_read", "taylor_write"]


def taylor_feature_map(x: Tensor) -> Tensor:
    """``x (..., d) -> [1, x, (x ⊗ x)/sqrt(2)] (..., 1 + d + d^2)``, unscaled (Based's ``TaylorExp``)."""
    ones = x.new_ones(*x.shape[:-1], 1)
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2.0)  # (..., d*d)
    return torch.cat([ones, x, outer], dim=-1)


def taylor_write(k: Tensor, v: Tensor) -> Tensor:
    """``phi(k)^T v`` summed over time: k (..., T, d), v (..., T, V) -> (..., F, V), by the feature blocks
    (sum v; k^T v; (k ⊗ k)^T v / sqrt(2)), so the (..., T, F) features are never concatenated or scaled."""
    outer = (k.unsqueeze(-1) * k.unsqueeze(-2)).flatten(-2)  # (..., T, d*d)
    quad = (outer.transpose(-1, -2) @ v) / math.sqrt(2.0)  # (..., d*d, V)
    return torch.cat([v.sum(-2, keepdim=True), k.transpose(-1, -2) @ v, quad], dim=-2)


def taylor_read(q: Tensor, S: Tensor) -> Tensor:
    """``phi(q) S``: q (..., T, d), S (..., F, V) -> (..., T, V), by the feature blocks of S."""
    d = q.shape[-1]
    outer = (q.unsqueeze(-1) * q.unsqueeze(-2)).flatten(-2)  # (..., T, d*d)
    return S[..., :1, :] + q @ S[..., 1 : 1 + d, :] + outer @ (S[..., 1 + d :, :] / math.sqrt(2.0))


class BasedState(NamedTuple):
    """Memory of one Based layer: kv (B, H, F, V) and z (B, H, F), float32 or wider; window, the
    sliding-window branch's ``KVState`` (at most W tokens)."""

    kv: Tensor
    z: Tensor
    window: KVState


@register_mixer("based")
class Based(Mixer):
    """Based: 2nd-order Taylor linear attention + sliding-window softmax attention (Arora et al. 2024).

    "Simple linear attention language models balance the recall-throughput tradeoff", arXiv 2402.18668,
    section 4, eq. 2-3.  ``y = out_proj(linear branch) + sliding_window(x)``.  The linear branch, per
    head, with q, k projected to d = ``feature_dim`` and scaled by d^(-1/4)::

        phi(x)  = [1, x, (x ⊗ x) / sqrt(2)]                  # F = 1 + d + d^2 features (273 for d = 16)
        phi(q)·phi(k) = 1 + s + s^2 / 2 ≈ exp(s),   s = q·k / sqrt(d)
        S_t = S_{t-1} + phi(k_t)^T v_t,   z_t = z_{t-1} + phi(k_t)      # (F, V), (F,)
        o_t = phi(q_t) S_t / (phi(q_t) · z_t)

    No epsilon: 1 + s + s^2/2 = ((1 + s)^2 + 1)/2 >= 1/2, so ``phi(q_t)·z_t >= t/2``.  The chunked form
    never builds phi inside a chunk (scores from a (C, C) product over d channels, not F); features only
    read the carried state (skipped for an empty memory in one chunk) and write the new one
    (:func:`taylor_read`, :func:`taylor_write`); :meth:`linear_branch_features` is the explicit-feature
    form it is tested against.  Measured (2-core CPU, 2-layer D = 64, MQAR T = 64, batch 32): 71 ms per
    AdamW step against 121 ms with the features through ``linear_attn`` (attention: 42 ms).

    The window branch is ``sliding_window`` (exact softmax over the last W tokens, RoPE).  Deviation from
    the paper: it interleaves separate linear-attention and sliding-window layers (plus gated
    convolutions); this mixer *sums* the two branches in one layer, so one registry key carries the
    whole Based memory (compose ``linear_attention`` and ``sliding_window`` layers for the paper's stack).

    Args:
        d_model: width D.
        n_heads: heads H of both branches; must divide D (and D / H must be even, for RoPE).
        feature_dim: d, the width q and k are projected to per head before the Taylor map (16).
        window: W, tokens seen by the sliding-window branch, itself included (64).
        block_size: query block of the window branch's parallel form (speed knob, 128).
        impl: "chunked" (the kernel form above) or "naive" (the sequential spec) for the linear branch.
        chunk_size: chunk length of the chunked form (64).

    State (:class:`BasedState`), bounded, per sequence in float32: ``H * F * V * 4`` (kv, dominant) +
    ``H * F * 4`` (z) + a window of at most ``W * H * (2 K * elem + 4) + 8`` bytes; at D = 128, H = 2,
    F = 273: kv 139,776 B, z 2,184 B, a full window 66,056 B.
    """

    state_growth = "bounded"  # the window cache fills up to W tokens, then stays
    contract_kwargs = {"feature_dim": 4, "window": 4, "block_size": 3, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 2,
        feature_dim: int = 16,
        window: int = 64,
        block_size: int = 128,
        impl: str = "chunked",
        chunk_size: int = 64,
    ):
        super().__init__(d_model)
        check_int(feature_dim=feature_dim, chunk_size=chunk_size)
        check_choice("impl", impl, IMPLS)
        check_divisor("n_heads", n_heads, self.d_model, "d_model")
        self.n_heads, self.feature_dim = n_heads, feature_dim
        self.head_dim = self.d_model // n_heads
        self.n_features = 1 + feature_dim + feature_dim**2  # F
        self.impl, self.chunk_size = impl, chunk_size

        H, d = n_heads, feature_dim
        self.q_proj = nn.Linear(self.d_model, H * d, bias=False)
        self.k_proj = nn.Linear(self.d_model, H * d, bias=False)
        self.v_proj = nn.Linear(self.d_model, self.d_model, bias=False)
        self.out_proj = nn.Linear(self.d_model, self.d_model, bias=False)
        # validates window and block_size (ValueError naming them)
        self.window_attn = SlidingWindowAttention(self.d_model, window=window, n_heads=n_heads, block_size=block_size)

    @property
    def window(self) -> int:
        return self.window_attn.window

    @property
    def state_capacity(self) -> int:
        return self.window_attn.state_capacity

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> BasedState:
        check_positive(batch_size=batch_size)
        dtype = self.v_proj.weight.dtype if dtype is None else dtype
        sdtype = state_dtype(dtype)
        H, F, V = self.n_heads, self.n_features, self.head_dim
        return BasedState(
            kv=torch.zeros(batch_size, H, F, V, device=device, dtype=sdtype),
            z=torch.zeros(batch_size, H, F, device=device, dtype=sdtype),
            window=self.window_attn.init_state(batch_size, device=device, dtype=dtype),
        )

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """phi(q), phi(k) (..., H, F) and v (..., H, V) for ``x (..., D)``, in the state dtype."""
        dtype = state_dtype(x.dtype)
        scale = self.feature_dim**-0.25  # q·k / sqrt(d) is the Taylor argument
        q = rearrange(self.q_proj(x), "... (h d) -> ... h d", h=self.n_heads).to(dtype) * scale
        k = rearrange(self.k_proj(x), "... (h d) -> ... h d", h=self.n_heads).to(dtype) * scale
        v = rearrange(self.v_proj(x), "... (h v) -> ... h v", h=self.n_heads).to(dtype)
        return taylor_feature_map(q), taylor_feature_map(k), v

    def linear_branch(self, x: Tensor, kv: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Taylor linear attention over ``x (B, T, D)`` from ``(kv, z)``: o (B, H, T, V) in the state dtype
        (before the head merge and out_proj), new kv, new z."""
        if self.impl == "naive":
            return self.linear_branch_features(x, kv, z, impl="naive")
        dtype, H = state_dtype(x.dtype), self.n_heads
        scale = self.feature_dim**-0.25  # q·k / sqrt(d) is the Taylor argument
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=H).to(dtype) * scale  # (B, H, T, d)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=H).to(dtype) * scale
        v = rearrange(self.v_proj(x), "b t (h v) -> b h t v", h=H).to(dtype)  # (B, H, T, V)
        B, _, T, V = v.shape
        v1 = torch.cat([v, v.new_ones(B, H, T, 1)], dim=-1)  # (B, H, T, V+1): last column -> z
        start = torch.cat([kv.to(dtype), z.to(dtype).unsqueeze(-1)], dim=-1)  # (B, H, F, V+1)
        C = max(1, min(self.chunk_size, T))
        n = math.ceil(T / C)
        if n * C > T:  # zero k and v1 rows write nothing; their reads are dropped
            q, k, v1 = (F.pad(t, (0, 0, 0, n * C - T)) for t in (q, k, v1))
        q, k, v1 = (t.reshape(B, H, n, C, -1) for t in (q, k, v1))  # (B, H, n, C, .)

        s = q @ k.transpose(-1, -2)  # (B, H, n, C, C): q·k / sqrt(d)
        causal = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
        kernel = torch.where(causal, torch.addcmul(1 + s, s, s, value=0.5), 0.0)  # phi(q)·phi(k) = 1 + s + s^2/2
        o = kernel @ v1  # (B, H, n, C, V+1)
        if n == 1 and not start.requires_grad and not bool(start.any()):  # one chunk, empty memory: no read
            S = taylor_write(k[:, :, 0], v1[:, :, 0])  # (B, H, F, V+1)
        else:
            writes = taylor_write(k, v1)  # (B, H, n, F, V+1): each chunk's phi(k)^T v
            starts = torch.cat([start.unsqueeze(2), writes[:, :, :-1]], dim=2).cumsum(2)  # state before each chunk
            o = o + taylor_read(q, starts)
            S = starts[:, :, -1] + writes[:, :, -1]
        o = o.reshape(B, H, n * C, V + 1)[:, :, :T]
        o = o[..., :V] / o[..., V:]  # numerator / denominator, (B, H, T, V)
        new_kv = S[..., :V].clone(memory_format=torch.contiguous_format)  # copies: slices would pin all of S
        return o, new_kv, S[..., V].clone(memory_format=torch.contiguous_format)

    def linear_branch_features(self, x: Tensor, kv: Tensor, z: Tensor, impl: str = "chunked"
                               ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`linear_branch` through explicit features and ``ops.linear_attn`` with ``impl``."""
        phi_q, phi_k, v = (t.transpose(1, 2) for t in self.features(x))  # (B, H, T, F), (B, H, T, V)
        V = v.shape[-1]
        v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # (B, H, T, V+1): last column -> z
        start = torch.cat([kv.to(v.dtype), z.to(v.dtype).unsqueeze(-1)], dim=-1)  # (B, H, F, V+1)
        o, S = linear_attn(phi_q, phi_k, v1, initial_state=start, impl=impl, chunk_size=self.chunk_size)
        o = o[..., :V] / o[..., V:]  # numerator / denominator, (B, H, T, V)
        new_kv = S[..., :V].clone(memory_format=torch.contiguous_format)  # copies: slices would pin all of S
        new_z = S[..., V].clone(memory_format=torch.contiguous_format)
        return o, new_kv, new_z

    def _forward(self, x: Tensor, state: BasedState) -> tuple[Tensor, BasedState]:
        o, kv, z = self.linear_branch(x, state.kv, state.z)  # (B, H, T, V)
        y_lin = self.out_proj(rearrange(o, "b h t v -> b t (h v)").to(x.dtype))
        y_win, window = self.window_attn(x, state.window)  # (B, T, D), cache of <= W tokens
        return y_lin + y_win, BasedState(kv, z, window)

    def step(self, x: Tensor, state: BasedState) -> tuple[Tensor, BasedState]:
        """One token ``x (B, D)``: the linear branch's recurrence plus one window step."""
        self.check_input(x, step=True)
        phi_q, phi_k, v = self.features(x)  # (B, H, F), (B, H, F), (B, H, V)
        kv = state.kv + phi_k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, F, V), out of place
        z = state.z + phi_k  # (B, H, F)
        num = torch.einsum("bhf,bhfv->bhv", phi_q, kv)
        den = (phi_q * z).sum(-1, keepdim=True)  # (B, H, 1), >= t/2 > 0
        y_lin = self.out_proj(rearrange(num / den, "b h v -> b (h v)").to(x.dtype))
        y_win, window = self.window_attn.step(x, state.window)
        return y_lin + y_win, BasedState(kv, z, window)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, feature_dim={self.feature_dim}, "
            f"n_features={self.n_features}, window={self.window}, impl={self.impl!r}, chunk_size={self.chunk_size}"
        )
