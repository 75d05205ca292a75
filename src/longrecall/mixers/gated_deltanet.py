"""Gated DeltaNet: the delta rule with a Mamba-2-style data-dependent decay of the whole memory."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..modules import decay_init, gated_log_decay
from ..registry import register_mixer
from ..validation import check_int
from .deltanet import DeltaRuleBlock

__all__ = ["GatedDeltaNet", "GatedDeltaNetState"]


class GatedDeltaNetState(NamedTuple):
    """Recurrent memory of one Gated DeltaNet layer: the fields of :class:`DeltaNetState`."""

    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor
    memory: Tensor


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaRuleBlock):
    """Gated DeltaNet: delta rule plus Mamba-2 decay (Yang, Kautz, Hatamizadeh 2025, arXiv 2412.06464).

    "Gated Delta Networks: Improving Mamba2 with Delta Rule" (ICLR 2025).  The layer is the authors'
    ``fla/layers/gated_deltanet.py`` (``use_gate=True``, ``use_short_conv=True``) with its names,
    shapes and defaults (parameters ~6 D^2, like Mamba-2).  DeltaNet's front end (``deltanet.py``),
    then per head::

        g_t = -exp(A_log) * softplus(x_t W_a + dt_bias)            # log alpha_t, Mamba-2's dt_t * A
        S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
        o_t = RMSNorm(q_t S_t) * SiLU(x_t W_g)          y_t = concat_h(o_t) W_o

    The decay can forget everything (alpha -> 0), the delta rule edit single associations.  Init as the
    reference: -A uniform in (0, 16), dt log-uniform in [0.001, 0.1] (floored at 1e-4) via ``dt_bias``.

    Args:
        d_model: width D.
        n_heads: heads H (2).
        head_dim: key width K per head; None is ``int(0.75 * d_model) // n_heads`` (the reference's
            ``num_heads * head_dim = 0.75 * hidden_size``).
        expand_v: value width V = expand_v * K (2, the reference's default).
        use_gate: SiLU output gate with the gated RMSNorm (True, as the reference).
        conv_size, conv_bias, norm_eps, chunk_size, impl: as DeltaNet (4, False, 1e-5, 64, "chunked").

    State (:class:`GatedDeltaNetState`), constant in T: ``H*K*V*4 + (2*H*K + H*V) * (conv_size - 1) *
    elem_bytes`` bytes per batch row (float32 memory, conv buffers in the activation dtype).
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
        self.a_proj = nn.Linear(self.d_model, n_heads, bias=False)
        self.A_log, self.dt_bias = decay_init(n_heads)

    def log_decay(self, x: Tensor) -> Tensor:
        """log alpha_t = g_t per head: x (..., D) -> (..., H), float32 at least, in (-inf, 0)."""
        return gated_log_decay(self.a_proj(x), self.A_log, self.dt_bias)
