"""Gated DeltaNet: the delta rule with a Mamba-2-style data-dependent decay of the whole memory.

Yang, Kautz, Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv 2412.06464 (ICLR 2025).  The layer is fla's ``fla/layers/gated_deltanet.py`` ``GatedDeltaNet``
(the authors' reference; ``use_gate=True``, ``use_short_conv=True``, ``conv_size=4``) with its
parameter names and shapes, and its per-head key width ``0.75 * d_model / n_heads`` and
``expand_v=2`` as defaults (its parameter budget, ~6 D^2 like Mamba-2).

Per head (row vectors; K key, V value width), the DeltaNet front end of ``deltanet.py`` and
the gated delta rule::

    alpha_t = exp(g_t),   g_t = -exp(A_log) * softplus(x_t W_a + dt_bias)   (per head, in (0, 1))
    S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t = RMSNorm(q_t S_t) * SiLU(x_t W_g)          y_t = concat_h(o_t) W_o

alpha_t is Mamba-2's discretised decay exp(dt_t * A) with dt_t = softplus(x W_a + dt_bias) and
A = -exp(A_log): it lets the memory forget everything quickly (alpha -> 0) while the delta rule
edits single associations precisely.  Initialisation as the reference: A uniform in (0, 16), dt
log-uniform in [0.001, 0.1] (floored at 1e-4) stored through the inverse softplus in ``dt_bias``.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..modules import decay_init, gated_log_decay
from ..registry import register_mixer
from ..validation import check_int
from .deltanet import DeltaRuleBlock

__all__ = ["GatedDeltaNet", "GatedDeltaNetState"]


class GatedDeltaNetState(NamedTuple):
    """Recurrent memory of one Gated DeltaNet layer.

    conv_q, conv_k: the last ``conv_size - 1`` inputs of the q / k convolutions, (B, H*K, conv_size-1).
    conv_v: the same for v, (B, H*V, conv_size-1).  Activation dtype.
    memory: the fast-weight matrix per head, (B, H, K, V), float32 at least.
    """

    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor
    memory: Tensor


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaRuleBlock):
    """Gated DeltaNet: delta rule plus Mamba-2 decay (Yang, Kautz, Hatamizadeh 2025, arXiv 2412.06464).

    See the module docstring for the equations.

    Args:
        d_model: width D.
        n_heads: heads H (2).
        head_dim: key width K per head; None is ``int(0.75 * d_model) // n_heads`` (the reference's
            ``num_heads * head_dim = 0.75 * hidden_size``).
        expand_v: value width V = expand_v * K (2, the reference's default).
        use_gate: SiLU output gate with the gated RMSNorm (True, as the reference).
        conv_size: width of the causal depthwise convolutions on q, k, v (4).
        conv_bias: whether those convolutions have a bias (False).
        norm_eps: epsilon of the per-head RMSNorm (1e-5).
        chunk_size: chunk length of the chunked kernel (64).
        impl: "chunked" (parallel over chunks) or "naive" (the sequential spec).

    State (:class:`GatedDeltaNetState`), constant in T; per batch row
    ``H*K*V*4 + (2*H*K + H*V) * (conv_size - 1) * elem_bytes`` bytes (float32 memory; the conv
    buffers are in the activation dtype).
    """

    State = GatedDeltaNetState
    state_growth = "constant"
    contract_kwargs = {"chunk_size": 4}  # 13-token contract sequences cross several chunks

    def __init__(self, d_model: int, *, n_heads: int = 2, head_dim: int | None = None, expand_v: int | float = 2,
                 use_gate: bool = True, conv_size: int = 4, conv_bias: bool = False, norm_eps: float = 1e-5,
                 chunk_size: int = 64, impl: str = "chunked"):
        check_int(n_heads=n_heads)
        default_head_dim = int(0.75 * d_model) // n_heads if isinstance(d_model, int) else 0
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, expand_v=expand_v, use_gate=use_gate,
                         conv_size=conv_size, conv_bias=conv_bias, norm_eps=norm_eps, chunk_size=chunk_size,
                         impl=impl, default_head_dim=default_head_dim)
        self.a_proj = nn.Linear(self.d_model, n_heads, bias=False)  # dt_t = softplus(x W_a + dt_bias)
        self.A_log, self.dt_bias = decay_init(n_heads)

    def log_decay(self, x: Tensor) -> Tensor:
        """log alpha_t = g_t per head: x (..., D) -> (..., H), float32 at least, in (-inf, 0)."""
        return gated_log_decay(self.a_proj(x), self.A_log, self.dt_bias)
