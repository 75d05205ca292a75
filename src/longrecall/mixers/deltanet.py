"""DeltaNet: linear attention whose matrix memory is written with the delta rule."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..modules import RMSNorm, ShortConvolution, delta_rule_step, head_dims, l2norm, own
from ..ops.linear_attn import IMPLS, delta_rule, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_bool, check_choice, check_int, check_positive

__all__ = ["DeltaNet", "DeltaNetState", "DeltaRuleBlock"]


class DeltaNetState(NamedTuple):
    """Recurrent memory of one DeltaNet layer: the last inputs of the q, k, v convolutions (B, H*K | H*K |
    H*V, conv_size-1), activation dtype; memory (B, H, K, V), float32 at least."""

    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor
    memory: Tensor


class DeltaRuleBlock(Mixer):
    """Shared body of DeltaNet and Gated DeltaNet; subclasses set ``State`` and may override ``log_decay``."""

    State: ClassVar[type] = DeltaNetState

    def __init__(self, d_model: int, *, n_heads: int, head_dim: int | None, expand_v: int | float, use_gate: bool,
                 conv_size: int, conv_bias: bool, norm_eps: float, chunk_size: int, impl: str,
                 default_head_dim: int):
        super().__init__(d_model)
        check_int(n_heads=n_heads, conv_size=conv_size, chunk_size=chunk_size)
        check_positive(expand_v=expand_v, norm_eps=norm_eps)
        check_bool(use_gate=use_gate, conv_bias=conv_bias)
        check_choice("impl", impl, IMPLS)
        head_dim, head_v = head_dims(d_model, n_heads, head_dim, default_head_dim, expand_v)
        self.n_heads, self.head_k_dim, self.head_v_dim = n_heads, head_dim, head_v
        self.expand_v, self.use_gate, self.conv_size = expand_v, use_gate, conv_size
        self.chunk_size, self.impl = chunk_size, impl
        H, K, V = n_heads, head_dim, self.head_v_dim

        self.q_proj = nn.Linear(self.d_model, H * K, bias=False)
        self.k_proj = nn.Linear(self.d_model, H * K, bias=False)
        self.v_proj = nn.Linear(self.d_model, H * V, bias=False)
        self.b_proj = nn.Linear(self.d_model, H, bias=False)
        self.q_conv1d = ShortConvolution(H * K, conv_size, bias=conv_bias)
        self.k_conv1d = ShortConvolution(H * K, conv_size, bias=conv_bias)
        self.v_conv1d = ShortConvolution(H * V, conv_size, bias=conv_bias)
        if use_gate:
            self.g_proj = nn.Linear(self.d_model, H * V, bias=False)
        self.o_norm = RMSNorm(V, eps=norm_eps)
        self.o_proj = nn.Linear(H * V, self.d_model, bias=False)

    def init_state(self, batch_size: int, *, device=None, dtype=None):
        check_int(batch_size=batch_size)
        device = self.q_proj.weight.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        convs = [conv.init_state(batch_size, device=device, dtype=dtype)
                 for conv in (self.q_conv1d, self.k_conv1d, self.v_conv1d)]
        memory = torch.zeros(batch_size, H, K, V, device=device, dtype=state_dtype(dtype))
        return self.State(*convs, memory)

    def log_decay(self, x: Tensor) -> Tensor | None:
        """log alpha_t per head, (..., H) <= 0; None for DeltaNet (no decay)."""
        return None

    def read_out(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head norm (gated when ``use_gate``) and output projection: o (..., H, V), x (..., D) -> (..., D)."""
        gate = self.g_proj(x).unflatten(-1, (self.n_heads, self.head_v_dim)) if self.use_gate else None
        return self.o_proj(self.o_norm(o, gate).flatten(-2))

    def _heads(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., H*K), (..., H*K), (..., H*V) -> normalised per-head q (scaled by K^-1/2), k and v."""
        H, K = self.n_heads, self.head_k_dim
        q = l2norm(q.unflatten(-1, (H, K))) * K**-0.5  # fla's default scale, inside its kernel
        k = l2norm(k.unflatten(-1, (H, K)))
        return q, k, v.unflatten(-1, (H, self.head_v_dim))

    def _forward(self, x: Tensor, state):
        q, conv_q = self.q_conv1d(self.q_proj(x), state.conv_q)  # (B, T, H*K)
        k, conv_k = self.k_conv1d(self.k_proj(x), state.conv_k)  # (B, T, H*K)
        v, conv_v = self.v_conv1d(self.v_proj(x), state.conv_v)  # (B, T, H*V)
        q, k, v = (t.transpose(1, 2) for t in self._heads(q, k, v))  # (B, H, T, K|V)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)  # (B, H, T)
        g = self.log_decay(x)  # (B, T, H) or None
        g = g.transpose(1, 2) if g is not None else None
        o, memory = delta_rule(q, k, v, beta, g, state.memory, impl=self.impl, chunk_size=self.chunk_size)
        y = self.read_out(o.transpose(1, 2), x)  # o (B, T, H, V) -> (B, T, D)
        return y, self.State(conv_q, conv_k, conv_v, own(memory))

    def step(self, x: Tensor, state):
        """One token ``x (B, D)``: the convolutions as dot products with their buffers, one delta-rule write."""
        self.check_input(x, step=True)
        q, conv_q = self.q_conv1d.step(self.q_proj(x), state.conv_q)  # (B, H*K)
        k, conv_k = self.k_conv1d.step(self.k_proj(x), state.conv_k)
        v, conv_v = self.v_conv1d.step(self.v_proj(x), state.conv_v)
        q, k, v = self._heads(q, k, v)  # (B, H, K|V)
        beta = torch.sigmoid(self.b_proj(x))  # (B, H)
        o, memory = delta_rule_step(q, k, v, beta, self.log_decay(x), state.memory)  # (B, H, V)
        return self.read_out(o.to(x.dtype), x), self.State(conv_q, conv_k, conv_v, memory)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, head_k_dim={self.head_k_dim}, "
                f"head_v_dim={self.head_v_dim}, use_gate={self.use_gate}, conv_size={self.conv_size}, "
                f"impl={self.impl!r}, chunk_size={self.chunk_size}")


@register_mixer("deltanet")
class DeltaNet(DeltaRuleBlock):
    """DeltaNet: linear attention with delta-rule writes (Yang et al. 2024, arXiv 2406.06484).

    Schlag et al. 2021, "Linear Transformers Are Secretly Fast Weight Programmers" (arXiv 2102.11174,
    the rule); Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
    Length" (the architecture, chunked WY form).  Names, shapes and defaults are fla's
    ``fla/layers/delta_net.py`` (``qk_activation="silu"``, ``qk_norm="l2"``, ``use_beta=True``)::

        q_t = l2norm(SiLU(conv_q(x W_q))) / sqrt(K)      k_t = l2norm(SiLU(conv_k(x W_k)))
        v_t = SiLU(conv_v(x W_v))                        beta_t = sigmoid(x_t W_beta) in (0, 1)
        S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t        # S: (K, V)
        o_t = RMSNorm(q_t S_t) [* SiLU(x_t W_g) when use_gate]         y_t = concat_h(o_t) W_o

    conv is causal depthwise over time; ``/ sqrt(K)`` is fla's kernel scale (a no-op after the RMSNorm,
    up to its epsilon).  With beta_t = 1 and a unit key a write *replaces* that key's value.

    Args:
        d_model: width D.
        n_heads: heads H (2).
        head_dim: key width K per head; None is ``d_model // n_heads`` (fla's ``expand_k=1``).
        expand_v: value width V = expand_v * K (1, fla's ``expand_v=1``).
        use_gate: SiLU output gate ``x W_g`` on the normalised read-out (False, as fla's default).
        conv_size: width of the causal depthwise convolutions on q, k, v (4).
        conv_bias: whether those convolutions have a bias (False).
        norm_eps: epsilon of the per-head RMSNorm (1e-5).
        chunk_size: chunk length of the chunked kernel (64).
        impl: "chunked" (parallel over chunks) or "naive" (the sequential spec).

    State (:class:`DeltaNetState`), constant in T: ``H*K*V*4 + (2*H*K + H*V) * (conv_size - 1) *
    elem_bytes`` bytes per batch row (float32 memory, conv buffers in the activation dtype).
    """

    state_growth = "constant"
    contract_kwargs = {"chunk_size": 4}  # 13-token contract sequences cross several chunks

    def __init__(self, d_model: int, *, n_heads: int = 2, head_dim: int | None = None, expand_v: int | float = 1,
                 use_gate: bool = False, conv_size: int = 4, conv_bias: bool = False, norm_eps: float = 1e-5,
                 chunk_size: int = 64, impl: str = "chunked"):
        check_int(n_heads=n_heads)
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, expand_v=expand_v, use_gate=use_gate,
                         conv_size=conv_size, conv_bias=conv_bias, norm_eps=norm_eps, chunk_size=chunk_size,
                         impl=impl, default_head_dim=int(d_model) // n_heads if isinstance(d_model, int) else 0)
