"""Causal linear attention: a kernel feature map in place of the softmax, a matrix-valued memory."""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.linear_attn import IMPLS, linear_attn, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_choice, check_divisor, check_positive

__all__ = ["LinearAttention", "LinearAttentionState", "elu_feature_map"]


class LinearAttentionState(NamedTuple):
    """Recurrent memory of one linear-attention layer: S (B, H, K, V) and z (B, H, K), float32 or wider."""

    memory: Tensor
    normalizer: Tensor


def elu_feature_map(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1 written as ``x + 1`` for x > 0 and ``exp(x)`` else: the same function, but
    ``elu(x) + 1`` rounds to 0 for x < -37 in float64 (-17 in float32), losing keys from the normaliser."""
    return torch.where(x > 0, x + 1, torch.exp(x.clamp(max=0)))


@register_mixer("linear_attention")
class LinearAttention(Mixer):
    """Causal linear attention (Katharopoulos et al. 2020, arXiv 2006.16236), φ = elu + 1, normalised.

    "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention".  With the feature
    map φ (section 3.2.1), causal attention (eq. 9) is an RNN (eq. 16-20), per head::

        S_t = S_{t-1} + φ(k_t)ᵀ v_t                    # (K, V) memory
        z_t = z_{t-1} + φ(k_t)                         # (K,)  normaliser
        o_t = φ(q_t) S_t / (φ(q_t) · z_t + eps)

    The parallel form runs ``ops.linear_attn`` (no decay) on ``[v_t, 1]``: its state is ``[S_t, z_t]``
    and its output ``[φ(q_t) S_t, φ(q_t) z_t]``, so numerator and normaliser come from one kernel.

    Args:
        d_model: width D.
        n_heads: H heads of width K = V = D / H; must divide d_model (2, as ``attention``).
        eps: added to the normaliser ``φ(q_t) · z_t`` (1e-6, as the paper's code).
        bias: whether the q/k/v and output projections have biases.
        chunk_size: chunk length of the chunked kernel (64).
        impl: "chunked" (the parallel kernel) or "naive" (the sequential spec).

    State (:class:`LinearAttentionState`): constant in T, ``H * K * (V + 1) * 4 = (D^2 / H + D) * 4``
    bytes per batch row in float32.
    """

    state_growth = "constant"
    contract_kwargs = {"n_heads": 2, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 2,
        eps: float = 1e-6,
        bias: bool = False,
        chunk_size: int = 64,
        impl: str = "chunked",
    ):
        super().__init__(d_model)
        check_positive(n_heads=n_heads, eps=eps, chunk_size=chunk_size)
        check_choice("impl", impl, IMPLS)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.eps, self.chunk_size, self.impl = float(eps), int(chunk_size), impl
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LinearAttentionState:
        check_positive(batch_size=batch_size)
        device = self.qkv.weight.device if device is None else device
        dtype = state_dtype(self.qkv.weight.dtype if dtype is None else dtype)
        H, K = self.n_heads, self.head_dim
        return LinearAttentionState(
            torch.zeros(batch_size, H, K, K, device=device, dtype=dtype),
            torch.zeros(batch_size, H, K, device=device, dtype=dtype),
        )

    def _features(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """φ(q), φ(k) (B, H, T, K) and v (B, H, T, V) in ``dtype``."""
        q, k, v = rearrange(self.qkv(x).to(dtype), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)
        return elu_feature_map(q), elu_feature_map(k), v

    def _forward(self, x: Tensor, state: LinearAttentionState) -> tuple[Tensor, LinearAttentionState]:
        dtype = state.memory.dtype
        phi_q, phi_k, v = self._features(x, dtype)
        V = v.shape[-1]
        v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # (B, H, T, V+1): [v_t, 1]
        start = torch.cat([state.memory, state.normalizer.unsqueeze(-1)], dim=-1)  # (B, H, K, V+1): [S, z]
        o, final = linear_attn(phi_q, phi_k, v1, None, start, impl=self.impl, chunk_size=self.chunk_size)
        y = o[..., :V] / (o[..., V:] + self.eps)  # (B, H, T, V)
        y = self.out_proj(rearrange(y, "b h t v -> b t (h v)").to(x.dtype))
        return y, LinearAttentionState(final[..., :V].clone(), final[..., V].clone())  # own memory, not slices

    def step(self, x: Tensor, state: LinearAttentionState) -> tuple[Tensor, LinearAttentionState]:
        """One token ``x (B, D)``: the RNN form."""
        self.check_input(x, step=True)
        dtype = state.memory.dtype
        phi_q, phi_k, v = (t[:, :, 0] for t in self._features(x[:, None], dtype))  # (B, H, K), (B, H, V)
        memory = state.memory + phi_k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, K, V), a new tensor
        normalizer = state.normalizer + phi_k  # (B, H, K)
        num = torch.einsum("bhk,bhkv->bhv", phi_q, memory)  # (B, H, V)
        den = (phi_q * normalizer).sum(-1, keepdim=True)  # (B, H, 1)
        y = self.out_proj((num / (den + self.eps)).flatten(1).to(x.dtype))
        return y, LinearAttentionState(memory, normalizer)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, eps={self.eps}, "
            f"impl={self.impl!r}, chunk_size={self.chunk_size}"
        )
