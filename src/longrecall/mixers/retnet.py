"""RetNet: multi-scale retention, decayed linear attention with a fixed decay per head."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..ops.linear_attn import IMPLS, linear_attn, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_divisor, check_positive

__all__ = ["RetNet", "RetNetState", "retnet_gammas"]


class RetNetState(NamedTuple):
    """Recurrent memory of one retention layer: S (B, H, K, V), float32 or wider; length (B,) int64,
    tokens seen so far (the next token's rotary position)."""

    memory: Tensor
    length: Tensor


def retnet_gammas(n_heads: int) -> Tensor:
    """The paper's decays ``γ_h = 1 - 2^{-5-h}``, h = 0..H-1 (float64): 0.969, 0.984, 0.992, ..."""
    return 1 - 2.0 ** (-5 - torch.arange(n_heads, dtype=torch.float64))


@register_mixer("retnet")
class RetNet(Mixer):
    """RetNet multi-scale retention (Sun et al. 2023, arXiv 2307.08621): fixed decay γ_h per head.

    "Retentive Network: A Successor to Transformer for Large Language Models", section 2.  Per head,
    with ``Θ_n = e^{i n θ}`` a rotation by absolute position (the RoPE of ``ops.rotary``)::

        parallel (eq. 5):   Q = (X W_Q) ⊙ Θ,  K = (X W_K) ⊙ Θ̄,  V = X W_V,  D_nm = γ^{n-m} (n >= m, else 0)
                            Retention(X) = (Q Kᵀ ∘ D) V
        recurrent (eq. 6):  S_n = γ S_{n-1} + K_nᵀ V_n,    Retention(X_n) = Q_n S_n
        multi-scale (eq. 8): γ = 1 - 2^{-5 - arange(0, h)},  Y = GroupNorm_h(Concat(head_1, ..., head_h))
                            MSR(X) = (swish(X W_G) ⊙ Y) W_O

    i.e. ``ops.linear_attn`` with ``log_decay = log γ``; queries are scaled by 1 / sqrt(d_k).

    Args:
        d_model: width D.
        n_heads: H heads with decays ``1 - 2^{-5-h}``; must divide d_model with an even key width
            d_k = D / H (rotary pairs) (4).
        value_factor: value width per head is ``value_factor * d_k`` (2, as the paper).
        rope_base: rotary frequency base (10,000).
        norm_eps: epsilon of the per-head GroupNorm (1e-5).
        chunk_size: chunk length of the chunked kernel (64).
        impl: "chunked" (the parallel kernel) or "naive" (the sequential spec).

    State (:class:`RetNetState`): constant in T; per batch row ``H * d_k * d_v * 4 + 8`` bytes
    (float32 memory and the int64 position counter) = ``2 D^2 / H * 4 + 8`` with the defaults.
    """

    state_growth = "constant"
    contract_kwargs = {"n_heads": 2, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 4,
        value_factor: int | float = 2,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        impl: str = "chunked",
    ):
        super().__init__(d_model)
        check_positive(value_factor=value_factor, rope_base=rope_base, norm_eps=norm_eps, chunk_size=chunk_size)
        check_choice("impl", impl, IMPLS)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        key_dim = d_model // n_heads
        if key_dim % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (the xPos rotation pairs channels)",
                                f"{d_model}/{n_heads}={key_dim}")
        value_dim = value_factor * key_dim
        if value_dim != int(value_dim):
            raise ArgumentError("value_factor", "such that value_factor * (d_model / n_heads) is an integer",
                                f"{value_factor} * {key_dim}")

        self.n_heads, self.key_dim, self.value_dim = n_heads, key_dim, int(value_dim)
        self.value_factor, self.rope_base, self.norm_eps = value_factor, float(rope_base), norm_eps
        self.chunk_size, self.impl = int(chunk_size), impl
        H, Vt = n_heads, n_heads * self.value_dim

        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, Vt, bias=False)
        self.g_proj = nn.Linear(d_model, Vt, bias=False)
        self.group_norm = nn.GroupNorm(H, Vt, eps=norm_eps)
        self.out_proj = nn.Linear(Vt, d_model, bias=False)
        # fixed decays, derived from n_heads: not in the state dict
        self.register_buffer("log_gamma", torch.log(retnet_gammas(H)), persistent=False)  # (H,)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> RetNetState:
        check_positive(batch_size=batch_size)
        device = self.q_proj.weight.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        memory = torch.zeros(batch_size, self.n_heads, self.key_dim, self.value_dim, device=device,
                             dtype=state_dtype(dtype))
        return RetNetState(memory, torch.zeros(batch_size, device=device, dtype=torch.int64))

    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """``ops.rotary``'s RoPE of x (B, H, T, K) at ``positions (B, T)``, in x's dtype (float64 runs stay exact)."""
        K = self.key_dim
        inv_freq = self.rope_base ** (-torch.arange(0, K, 2, device=x.device, dtype=x.dtype) / K)  # (K/2,)
        angles = positions.to(x.dtype)[:, None, :, None] * inv_freq  # (B, 1, T, K/2)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x[..., : K // 2], x[..., K // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def _qkv(self, x: Tensor, length: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated, scaled q (B, H, T, K), rotated k (B, H, T, K) and v (B, H, T, V), in ``dtype``."""
        positions = length[:, None] + torch.arange(x.shape[1], device=x.device)  # (B, T)
        q, k = (rearrange(p(x).to(dtype), "b t (h k) -> b h t k", h=self.n_heads) for p in (self.q_proj, self.k_proj))
        v = rearrange(self.v_proj(x).to(dtype), "b t (h v) -> b h t v", h=self.n_heads)
        q = self._rotate(q, positions) * self.key_dim**-0.5
        return q, self._rotate(k, positions), v

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head GroupNorm, swish gate, output projection: o (B, T, H*V) -> (B, T, D)."""
        shape = o.shape
        y = self.group_norm(o.reshape(-1, shape[-1]).to(x.dtype)).reshape(shape)  # GroupNorm wants (N, C)
        return self.out_proj(F.silu(self.g_proj(x)) * y)

    def _forward(self, x: Tensor, state: RetNetState) -> tuple[Tensor, RetNetState]:
        batch, T, _ = x.shape
        dtype = state.memory.dtype
        q, k, v = self._qkv(x, state.length, dtype)
        log_decay = self.log_gamma.to(dtype)[None, :, None].expand(batch, -1, T)  # (B, H, T): log γ_h
        o, memory = linear_attn(q, k, v, log_decay, state.memory, impl=self.impl, chunk_size=self.chunk_size)
        y = self._output(rearrange(o, "b h t v -> b t (h v)"), x)
        return y, RetNetState(memory, state.length + T)

    def step(self, x: Tensor, state: RetNetState) -> tuple[Tensor, RetNetState]:
        """One token ``x (B, D)``: the recurrent form (eq. 6)."""
        self.check_input(x, step=True)
        dtype = state.memory.dtype
        q, k, v = (t[:, :, 0] for t in self._qkv(x[:, None], state.length, dtype))  # (B, H, K), (B, H, V)
        gamma = torch.exp(self.log_gamma.to(dtype))[None, :, None, None]  # (1, H, 1, 1)
        memory = gamma * state.memory + k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, K, V), a new tensor
        o = torch.einsum("bhk,bhkv->bhv", q, memory)  # (B, H, V)
        y = self._output(o.flatten(1), x)
        return y, RetNetState(memory, state.length + 1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"impl={self.impl!r}, chunk_size={self.chunk_size}"
        )
