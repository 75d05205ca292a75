"""mLSTM: the matrix-memory LSTM cell of xLSTM, with exponential input gates and a stabiliser."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear_attn import IMPLS, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_choice, check_divisor, check_positive

__all__ = ["MLSTM", "MLSTMState"]


class MLSTMState(NamedTuple):
    """Recurrent memory of one mLSTM layer, float32 or wider: C (B, H, K, V), n (B, H, K), stabiliser m (B, H)."""

    C: Tensor
    n: Tensor
    m: Tensor


@register_mixer("mlstm")
class MLSTM(Mixer):
    """xLSTM's mLSTM matrix memory (Beck et al. 2024, arXiv 2405.04517) with exponential gating.

    "xLSTM: Extended Long Short-Term Memory", section 2.3 and appendix A.3.  Per head (width d), with
    row-vector state C (K, V) (the paper's C^T) and scalar pre-activations i~_t, f~_t::

        q_t, k_t, v_t = W_q x, W_k x / sqrt(d), W_v x              # eq. 22-24
        m_t   = max(log f_t + m_{t-1}, i~_t),  log f_t = logsigmoid(f~_t)   # stabiliser, eq. 15 (A.3)
        i'_t  = exp(i~_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)
        C_t   = f'_t C_{t-1} + i'_t k_t^T v_t,   n_t = f'_t n_{t-1} + i'_t k_t      # eq. 19-20
        h~_t  = q_t C_t / max(|q_t . n_t|, exp(-m_t))                               # eq. 21
        y_t   = out_proj(o_t * GroupNorm_heads(h~_t)),  o_t = sigmoid(W_o x + b_o)  # eq. 25

    The stabiliser cancels (``h~_t = q C^_t / max(|q . n^_t|, 1)`` with the unstabilised sums), so the
    chunkwise parallel form (:meth:`_chunk`) is exact and carries the *same* (C, n, m) as the step loop.
    Deviation from the paper: its pre-up-projection block (factor-2 up-projection, causal conv,
    learnable skip, SiLU branch) is left out, so the layer compares memories, not block designs.
    Init as the reference ``mLSTMLayer``: gate weights 0, forget-gate bias linspace(3, 6) over heads,
    input-gate bias N(0, 0.1^2).

    Args:
        d_model: width D.
        n_heads: number of heads H; must divide d_model (4).
        norm_eps: epsilon of the per-head GroupNorm on h~ (1e-5).
        impl: "chunked" (chunkwise-parallel form) or "naive" (loop over ``step``) for ``forward``.
        chunk_size: chunk length L of the chunkwise form; its cost is O(T L d) (64).

    State (:class:`MLSTMState`): constant in T, ``H * (d^2 + d + 1) * 4`` bytes per sequence in
    float32 (4,368 B at D = 64 with 4 heads).
    """

    state_growth = "constant"
    # small chunks so the contract's short sequences (T ~ 13) cross several chunk boundaries
    contract_kwargs = {"n_heads": 2, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 4,
        norm_eps: float = 1e-5,
        impl: str = "chunked",
        chunk_size: int = 64,
    ):
        super().__init__(d_model)
        check_positive(norm_eps=norm_eps, chunk_size=chunk_size)
        check_choice("impl", impl, IMPLS)
        check_divisor("n_heads", n_heads, self.d_model, "d_model")
        self.n_heads, self.head_dim = int(n_heads), self.d_model // int(n_heads)
        self.impl, self.chunk_size = impl, int(chunk_size)
        D, H = self.d_model, self.n_heads

        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.igate = nn.Linear(D, H, bias=True)
        self.fgate = nn.Linear(D, H, bias=True)
        self.ogate = nn.Linear(D, D, bias=True)
        self.out_norm = nn.GroupNorm(H, D, eps=norm_eps)
        self.out_proj = nn.Linear(D, D, bias=False)
        with torch.no_grad():  # start remembering (f ~ 0.95-0.998), i ~ 1
            nn.init.zeros_(self.igate.weight)
            nn.init.normal_(self.igate.bias, std=0.1)
            nn.init.zeros_(self.fgate.weight)
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, H))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MLSTMState:
        device = self.q_proj.weight.device if device is None else device
        dtype = state_dtype(self.q_proj.weight.dtype if dtype is None else dtype)
        H, d = self.n_heads, self.head_dim
        C = torch.zeros(batch_size, H, d, d, device=device, dtype=dtype)
        n = torch.zeros(batch_size, H, d, device=device, dtype=dtype)
        m = torch.zeros(batch_size, H, device=device, dtype=dtype)  # the paper's m_0 = 0
        return MLSTMState(C, n, m)

    def _cell_inputs(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k (scaled), v (..., H, d) and i~, log f (..., H) for x (..., D), all in ``dtype``."""
        heads = (self.n_heads, self.head_dim)
        q, k, v = (p(x).unflatten(-1, heads).to(dtype) for p in (self.q_proj, self.k_proj, self.v_proj))
        i_pre = self.igate(x).to(dtype)
        log_f = F.logsigmoid(self.fgate(x).to(dtype))  # log of the sigmoid forget gate, finite, <= 0
        return q, k * self.head_dim**-0.5, v, i_pre, log_f

    def _output(self, h: Tensor, x: Tensor) -> Tensor:
        """Per-head GroupNorm of h~ (..., H, d), output gate from x (..., D), out projection."""
        h = h.flatten(-2).to(x.dtype)  # (..., D)
        h = self.out_norm(h.reshape(-1, self.d_model)).view(h.shape)  # GroupNorm wants (N, C)
        return self.out_proj(torch.sigmoid(self.ogate(x)) * h)

    @staticmethod
    def _chunk(q, k, v, i_pre, log_f, state: MLSTMState) -> tuple[Tensor, MLSTMState]:
        """One chunk of L tokens from ``state``, quadratic inside (appendix A.3's D matrix).

        q, k: (B, H, L, K); v: (B, H, L, V); i_pre, log_f: (B, H, L).  With F_t = sum_{r<=t} log f_r in
        the chunk, the recurrence unrolls to (every exponent <= 0 and one of them 0: no overflow)::

            log D_ts = F_t - F_s + i~_s  (s <= t)      log c_t = F_t + m_0   (weight of C_0, n_0)
            m_t      = max(log c_t, max_s log D_ts)    == the recurrent m_t
            C_t      = exp(log c_t - m_t) C_0 + sum_s exp(log D_ts - m_t) k_s^T v_s     (n_t alike)
        """
        L = q.shape[2]
        F_cum = log_f.cumsum(-1)  # (B, H, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        log_D = F_cum.unsqueeze(-1) - F_cum.unsqueeze(-2) + i_pre.unsqueeze(-2)  # (B, H, L, L) [t, s]
        log_D = log_D.masked_fill(~causal, float("-inf"))
        log_c = F_cum + state.m.unsqueeze(-1)  # (B, H, L)
        m = torch.maximum(log_c, log_D.amax(-1))  # (B, H, L)
        D_mat = torch.exp(log_D - m.unsqueeze(-1))  # (B, H, L, L), 0 above the diagonal
        carry = torch.exp(log_c - m)  # (B, H, L)

        scores = (q @ k.transpose(-1, -2)) * D_mat  # (B, H, L, L)
        num = scores @ v + carry.unsqueeze(-1) * (q @ state.C)  # (B, H, L, V)
        den = scores.sum(-1) + carry * torch.einsum("bhlk,bhk->bhl", q, state.n)  # (B, H, L)
        h = num / torch.maximum(den.abs(), torch.exp(-m)).unsqueeze(-1)

        w_end, c_end = D_mat[:, :, -1], carry[:, :, -1]  # (B, H, L), (B, H): weights at the chunk's end
        C = c_end[..., None, None] * state.C + (k * w_end.unsqueeze(-1)).transpose(-1, -2) @ v  # (B, H, K, V)
        n = c_end.unsqueeze(-1) * state.n + torch.einsum("bhl,bhlk->bhk", w_end, k)  # (B, H, K)
        return h, MLSTMState(C, n, m[:, :, -1].clone())

    def _forward(self, x: Tensor, state: MLSTMState) -> tuple[Tensor, MLSTMState]:
        if self.impl == "naive":
            return self.step_loop(x, state)
        q, k, v, i_pre, log_f = self._cell_inputs(x, state.C.dtype)  # (B, T, H, d) x 3, (B, T, H) x 2
        q, k, v, i_pre, log_f = (t.transpose(1, 2) for t in (q, k, v, i_pre, log_f))  # (B, H, T, ...)
        hs = []
        for start in range(0, x.shape[1], self.chunk_size):
            piece = slice(start, start + self.chunk_size)
            h, state = self._chunk(q[:, :, piece], k[:, :, piece], v[:, :, piece], i_pre[:, :, piece],
                                   log_f[:, :, piece], state)
            hs.append(h)
        h = torch.cat(hs, dim=2).transpose(1, 2)  # (B, T, H, d)
        return self._output(h, x), state

    def step(self, x: Tensor, state: MLSTMState) -> tuple[Tensor, MLSTMState]:
        """One token ``x (B, D)``: the stabilised recurrence."""
        self.check_input(x, step=True)
        q, k, v, i_pre, log_f = self._cell_inputs(x, state.C.dtype)  # (B, H, d) x 3, (B, H) x 2
        m = torch.maximum(log_f + state.m, i_pre)  # (B, H)
        f_act = torch.exp(log_f + state.m - m)
        i_act = torch.exp(i_pre - m)
        C = f_act[..., None, None] * state.C + i_act[..., None, None] * (k.unsqueeze(-1) * v.unsqueeze(-2))
        n = f_act.unsqueeze(-1) * state.n + i_act.unsqueeze(-1) * k  # (B, H, K)
        num = torch.einsum("bhk,bhkv->bhv", q, C)  # (B, H, V)
        den = torch.einsum("bhk,bhk->bh", q, n)  # (B, H)
        h = num / torch.maximum(den.abs(), torch.exp(-m)).unsqueeze(-1)
        return self._output(h, x), MLSTMState(C, n, m)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_dim={self.head_dim}, impl={self.impl!r}, "
            f"chunk_size={self.chunk_size}"
        )
