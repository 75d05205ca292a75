"""Gated Linear Attention (GLA): linear attention with a data-dependent decay per key channel."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear_attn import IMPLS, linear_attn, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_int, check_positive

__all__ = ["GLA", "GLAState"]


class GLAState(NamedTuple):
    """Recurrent memory of one GLA layer: S (B, H, K, V) per head, float32 (float64 in float64 models)."""

    S: Tensor


@register_mixer("gla")
class GLA(Mixer):
    """Gated Linear Attention (Yang et al. 2024, arXiv 2312.06635): a per-channel, data-dependent decay.

    "Gated Linear Attention Transformers with Hardware-Efficient Training" (ICML 2024), section 4.
    Per token, with H heads, key width K = expand_k * D / H and value width V = expand_v * D / H::

        q, k, v = q_proj(x), k_proj(x), v_proj(x)       # (H, K), (H, K), (H, V)
        log_a   = logsigmoid(gk_proj(x)) / tau           # (H, K) <= 0, eq. 6; gk_proj = Linear(D, r) Linear(r, HK)
        S_t     = diag(exp(log_a)) S_{t-1} + k^T v       # (H, K, V), eq. 5
        y       = o_proj(RMSNorm((q / sqrt(K)) S_t) * silu(g_proj(x)))  # eq. 7; RMSNorm over V, shared by heads

    Layout and init (names, tau = 16, rank 16, Xavier gain 2^-2.5) follow the authors' reference,
    flash-linear-attention's ``fla/layers/gla.py``.

    Args:
        d_model: width D.
        n_heads: number of heads H; must divide both the key and the value width (4).
        expand_k: key width = int(expand_k * D) over all heads (0.5).
        expand_v: value width = int(expand_v * D) over all heads (1.0).
        gate_low_rank_dim: rank r of the decay projection (16).
        gate_logit_normalizer: tau, the decay is sigmoid(.)^(1/tau) (16).
        norm_eps: epsilon of the per-head RMSNorm (1e-5).
        impl: "chunked" (parallel form) or "naive" (the sequential kernel) for ``forward``.
        chunk_size: chunk length of the chunked kernel (64).

    State (:class:`GLAState`): constant in T, ``H * K * V * 4`` bytes per sequence in float32, i.e.
    ``expand_k * expand_v * D^2 / H * 4`` (2 KiB at D = 64 with the defaults).
    """

    state_growth = "constant"
    # small chunks so the contract's short sequences (T ~ 13) cross several chunk boundaries
    contract_kwargs = {"n_heads": 2, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        impl: str = "chunked",
        chunk_size: int = 64,
    ):
        super().__init__(d_model)
        check_int(n_heads=n_heads)
        check_positive(expand_k=expand_k, expand_v=expand_v, gate_low_rank_dim=gate_low_rank_dim)
        check_positive(gate_logit_normalizer=gate_logit_normalizer, norm_eps=norm_eps, chunk_size=chunk_size)
        check_choice("impl", impl, IMPLS)
        key_dim, value_dim = int(expand_k * self.d_model), int(expand_v * self.d_model)
        for name, expand, width, dim in (("expand_k", expand_k, key_dim, "key_dim"),
                                         ("expand_v", expand_v, value_dim, "value_dim")):
            if width < 1:  # a small expand can round to 0
                accepted = f"large enough that {dim} = int({name} * d_model) >= 1 (d_model={self.d_model})"
                raise ArgumentError(name, accepted, repr(expand))
        if key_dim % n_heads or value_dim % n_heads:
            raise ArgumentError("n_heads", f"an int dividing the key width {key_dim} and the value width {value_dim} "
                                "(expand_k * d_model, expand_v * d_model)", repr(n_heads))
        self.n_heads, self.key_dim, self.value_dim = int(n_heads), key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // n_heads, value_dim // n_heads
        self.gate_low_rank_dim, self.gate_logit_normalizer = int(gate_low_rank_dim), float(gate_logit_normalizer)
        self.impl, self.chunk_size = impl, int(chunk_size)
        D, r = self.d_model, self.gate_low_rank_dim

        self.q_proj = nn.Linear(D, key_dim, bias=False)
        self.k_proj = nn.Linear(D, key_dim, bias=False)
        self.v_proj = nn.Linear(D, value_dim, bias=False)
        self.g_proj = nn.Linear(D, value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(D, r, bias=False), nn.Linear(r, key_dim, bias=True))
        self.g_norm = nn.RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, D, bias=False)
        for module in self.modules():  # fla's GLA init: small Xavier weights, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=2**-2.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> GLAState:
        device = self.q_proj.weight.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        return GLAState(torch.zeros(batch_size, H, K, V, device=device, dtype=state_dtype(dtype)))

    def _heads(self, t: Tensor) -> Tensor:
        """(..., H * d) -> (..., H, d)."""
        return t.unflatten(-1, (self.n_heads, -1))

    def _projections(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q (scaled), k, v and the log decay for x (..., D): (..., H, K), (..., H, K), (..., H, V), (..., H, K)."""
        q = self._heads(self.q_proj(x)) * self.head_k_dim**-0.5
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        # log alpha = log(sigmoid(z)^(1/tau)) = logsigmoid(z) / tau: finite for any z, <= 0
        log_decay = F.logsigmoid(self._heads(self.gk_proj(x)).to(dtype)) / self.gate_logit_normalizer
        return q, k, v, log_decay

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head RMSNorm of o (..., H, V), swish output gate from x (..., D), out projection."""
        o = self.g_norm(o.to(x.dtype)).flatten(-2)  # (..., H * V)
        return self.o_proj(o * F.silu(self.g_proj(x)))

    def _forward(self, x: Tensor, state: GLAState) -> tuple[Tensor, GLAState]:
        q, k, v, log_decay = self._projections(x, state.S.dtype)  # (B, T, H, K|V)
        q, k, v, log_decay = (t.transpose(1, 2) for t in (q, k, v, log_decay))  # (B, H, T, K|V)
        o, S = linear_attn(q, k, v, log_decay, state.S, impl=self.impl, chunk_size=self.chunk_size)
        return self._output(o.transpose(1, 2), x), GLAState(S)  # o: (B, T, H, V)

    def step(self, x: Tensor, state: GLAState) -> tuple[Tensor, GLAState]:
        """One token ``x (B, D)``: decay the memory per key channel, write k^T v, read with q."""
        self.check_input(x, step=True)
        dtype = state.S.dtype  # float32 state even for low-precision activations
        q, k, v, log_decay = self._projections(x, dtype)  # (B, H, K), (B, H, K), (B, H, V), (B, H, K)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        S = log_decay.exp().unsqueeze(-1) * state.S + k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, K, V), new tensor
        o = torch.einsum("bhk,bhkv->bhv", q, S)  # (B, H, V)
        return self._output(o, x), GLAState(S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"gate_low_rank_dim={self.gate_low_rank_dim}, tau={self.gate_logit_normalizer:g}, impl={self.impl!r}, "
            f"chunk_size={self.chunk_size}"
        )
