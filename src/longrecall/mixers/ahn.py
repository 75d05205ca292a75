"""AHN: sliding-window attention plus a gated delta-rule memory fed by the tokens leaving the window."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules import RMSNorm, decay_init, delta_rule_step, gated_log_decay, l2norm, own
from ..ops.linear_attn import IMPLS, delta_rule, state_dtype
from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_divisor, check_int, check_positive

__all__ = ["AHN", "AHNState"]


def _merge_heads(t: Tensor) -> Tensor:
    return rearrange(t, "b h t k -> b t (h k)")


def _delay(t: Tensor, pad: int, T: int) -> Tensor:
    """The first T entries along dim 2 of t (B, H, n, ...) after ``pad`` zeros in front (pad < 0 drops)."""
    return F.pad(t, (0, 0) * (t.dim() - 3) + (pad, 0))[:, :, :T]


class AHNState(NamedTuple):
    """Window of the last S <= W tokens (keys before rotary) with their write gates, the compressor, tokens seen."""

    k: Tensor  # (B, H, S, K) activation dtype, not rotated
    v: Tensor  # (B, H, S, K)
    beta: Tensor  # (B, H, S) float32 at least: each window token's future write strength
    log_decay: Tensor  # (B, H, S) float32 at least
    memory: Tensor  # (B, H, K, K) float32 at least
    length: Tensor  # (B,) int64; window token j sits at position length - S + j


@register_mixer("ahn")
class AHN(Mixer):
    """AHN: sliding-window attention + a gated delta-rule memory absorbing the tokens that leave the window.

    Artificial Hippocampus Networks, Fang et al. 2025 (arXiv 2510.07318), the AHN-GDN instance (card B11):
    the window's exact KV cache is the short-term memory; a token leaving it is written into a fixed-size
    Gated DeltaNet memory (Yang et al. 2025, arXiv 2412.06464), the long-term memory.  Per head, with
    q, k, v = x W_qkv (K = D / H) and W the window::

        a_t = softmax attention of rot(q_t) over rot(k_s), v_s for s in (t - W, t]    # as sliding_window
        beta_s = sigmoid(x_s W_b)        g_s = -exp(A_log) softplus(x_s W_a + dt_bias)    # fixed when s enters
        S_t = exp(g_s) (I - beta_s k~_s^T k~_s) S_{t-1} + beta_s k~_s^T v_s,   s = t - W   (S_t = S_{t-1} if s < 0)
        y_t = concat_h(a_t) W_o + concat_h(RMSNorm(q~_t S_t)) W_m,    k~ = l2norm(k), q~ = l2norm(q) / sqrt(K)

    so a token is either in the window or in S, never both.  The parallel form is sliding_window's blockwise
    attention plus the chunked delta rule over the key/value stream delayed by W (carried window entries
    first, zeros before position 0, which leave S unchanged).

    Departures and uncertainties (the paper was not at hand): the paper adds AHN to a frozen LLM and trains
    only AHN by self-distillation; here everything trains end to end from scratch.  The compressor reuses the
    attention's q, k, v *before* rotary (a rotated key would make the memory position-dependent), with
    Gated DeltaNet's l2 norm, K^-1/2 query scale, gates and Mamba-2 decay init, but no short convolutions or
    output gate; its gates are computed when a token enters and kept with it in the window.  The card gives
    ``o_t = SWA(q_t) + out_proj(norm(q_t S_t))``: W_m is that out_proj (default nn.Linear init, not zero, so
    the memory learns from the first step); whether the paper adds before or after W_o we could not check.

    Args:
        d_model: width D.
        window: W, keys each query attends to exactly, itself included (64).
        n_heads: heads H; must divide ``d_model`` with an even head width (2).
        block_size: query block of the parallel attention (speed/memory only; 128).
        rope_base: rotary base (10,000).
        norm_eps: epsilon of the memory read's RMSNorm (1e-5).
        chunk_size, impl: of the delta-rule kernel (64, "chunked"; "naive" is the sequential spec).

    State (:class:`AHNState`), bounded at W tokens: ``S*H*(2K*elem + 2*f) + H*K*K*f + 8`` bytes per sequence
    (S = min(tokens seen, W), f = 4 for float32 activations, 8 for float64).
    """

    state_growth = "bounded"
    contract_kwargs = {"window": 4, "block_size": 3, "chunk_size": 4}

    def __init__(self, d_model: int, *, window: int = 64, n_heads: int = 2, block_size: int = 128,
                 rope_base: float = 10000.0, norm_eps: float = 1e-5, chunk_size: int = 64, impl: str = "chunked"):
        super().__init__(d_model)
        check_int(window=window, block_size=block_size, chunk_size=chunk_size)
        check_positive(rope_base=rope_base, norm_eps=norm_eps)
        check_choice("impl", impl, IMPLS)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (rotary embeddings rotate pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        self.window, self.n_heads, self.head_dim = window, n_heads, d_model // n_heads
        self.block_size, self.rope_base, self.chunk_size, self.impl = block_size, float(rope_base), chunk_size, impl
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.A_log, self.dt_bias = decay_init(n_heads)
        self.o_norm = RMSNorm(self.head_dim, eps=norm_eps)
        self.mem_proj = nn.Linear(d_model, d_model, bias=False)

    @property
    def state_capacity(self) -> int:
        return self.window

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> AHNState:
        check_int(batch_size=batch_size)
        device = self.qkv.weight.device if device is None else device
        dtype = self.qkv.weight.dtype if dtype is None else dtype
        H, K, sdt = self.n_heads, self.head_dim, state_dtype(dtype)
        return AHNState(
            k=torch.zeros(batch_size, H, 0, K, device=device, dtype=dtype),
            v=torch.zeros(batch_size, H, 0, K, device=device, dtype=dtype),
            beta=torch.zeros(batch_size, H, 0, device=device, dtype=sdt),
            log_decay=torch.zeros(batch_size, H, 0, device=device, dtype=sdt),
            memory=torch.zeros(batch_size, H, K, K, device=device, dtype=sdt),
            length=torch.zeros(batch_size, device=device, dtype=torch.int64),
        )

    def _tokens(self, x: Tensor, state: AHNState) -> tuple[Tensor, AHNState]:
        """x's queries (B, H, T, K) and the window extended by x (B, T, D) to S + T tokens (``memory`` untouched)."""
        q, k, v = rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)
        sdt = state.memory.dtype
        beta = torch.sigmoid(self.b_proj(x)).to(sdt).transpose(1, 2)  # (B, H, T)
        g = gated_log_decay(self.a_proj(x), self.A_log, self.dt_bias).to(sdt).transpose(1, 2)  # (B, H, T)
        new = [torch.cat([old, t.to(old.dtype)], dim=2) for old, t in zip(state[:4], (k, v, beta, g), strict=True)]
        full = AHNState(*new, state.memory, state.length + x.shape[1])
        return q, full

    def _rotate(self, t: Tensor, positions: Tensor) -> Tensor:
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)  # (B, n, K/2)
        return apply_rotary(t, cos[:, None], sin[:, None])

    def _read(self, q: Tensor) -> Tensor:
        """The compressor's query: (..., K) -> l2-normalised, scaled by K^-1/2 (Gated DeltaNet's)."""
        return l2norm(q) * self.head_dim**-0.5

    def _output(self, attn: Tensor, recalled: Tensor) -> Tensor:
        """attn, recalled (B, H, T, K) -> y (B, T, D): W_o of the window read plus W_m of the normalised recall."""
        recalled = self.o_norm(recalled.to(attn.dtype))
        return self.out_proj(_merge_heads(attn)) + self.mem_proj(_merge_heads(recalled))

    def _keep_last(self, full: AHNState, memory: Tensor) -> AHNState:
        """The last W window tokens, cloned so dropped tokens are really released."""
        S, W = full.k.shape[2], self.window
        window = [t[:, :, max(0, S - W):].clone() if S > W else t for t in full[:4]]
        return AHNState(*window, own(memory), full.length)

    def _forward(self, x: Tensor, state: AHNState) -> tuple[Tensor, AHNState]:
        T, W, S = x.shape[1], self.window, state.k.shape[2]
        q, full = self._tokens(x, state)  # q (B, H, T, K); full.k (B, H, S + T, K)
        stream_pos = state.length[:, None] - S + torch.arange(S + T, device=x.device)  # (B, S + T)
        q_rot, k_rot = self._rotate(q, stream_pos[:, S:]), self._rotate(full.k, stream_pos)
        outputs = []
        for start in range(0, T, self.block_size):
            stop = min(start + self.block_size, T)
            lo, hi = max(0, S + start - (W - 1)), S + stop
            delta = (S + torch.arange(start, stop, device=x.device))[:, None] - torch.arange(lo, hi, device=x.device)
            outputs.append(F.scaled_dot_product_attention(
                q_rot[:, :, start:stop], k_rot[:, :, lo:hi], full.v[:, :, lo:hi], attn_mask=(delta >= 0) & (delta < W)))
        # query i (stream index S + i) writes stream index S + i - W: pad W - S zeros in front, take T
        k_d, v_d, beta_d, g_d = (_delay(t, W - S, T) for t in (l2norm(full.k), full.v, full.beta, full.log_decay))
        recalled, memory = delta_rule(self._read(q), k_d, v_d, beta_d, g_d, state.memory,
                                      impl=self.impl, chunk_size=self.chunk_size)  # (B, H, T, K)
        return self._output(torch.cat(outputs, dim=2), recalled), self._keep_last(full, memory)

    def step(self, x: Tensor, state: AHNState) -> tuple[Tensor, AHNState]:
        self.check_input(x, step=True)
        q, full = self._tokens(x[:, None], state)  # q (B, H, 1, K); full holds S + 1 tokens
        W, n = self.window, full.k.shape[2]
        gone = max(0, n - W)  # 1 once the window is full: its oldest token leaves now
        positions = state.length[:, None] + torch.arange(gone - n + 1, 1, device=x.device)  # (B, n - gone)
        attn = F.scaled_dot_product_attention(
            self._rotate(q, positions[:, -1:]), self._rotate(full.k[:, :, gone:], positions), full.v[:, :, gone:])
        qc = self._read(q[:, :, 0])  # (B, H, K)
        if gone:
            k0, v0, b0, g0 = (t[:, :, 0] for t in full[:4])
            recalled, memory = delta_rule_step(qc, l2norm(k0), v0, b0, g0, state.memory)
        else:
            memory = state.memory
            recalled = torch.einsum("bhk,bhkv->bhv", qc.to(memory.dtype), memory)
        return self._output(attn, recalled[:, :, None])[:, 0], self._keep_last(full, memory)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, window={self.window}, impl={self.impl!r}, "
                f"chunk_size={self.chunk_size}, state_growth='bounded'")
