"""GRU: the gated recurrent unit (one hidden vector) as a mixer; torch.nn.GRU is its parallel form."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_int

__all__ = ["GRU", "GRUState"]


class GRUState(NamedTuple):
    """Recurrent memory of one GRU layer: hidden h (B, N), N = hidden_size."""

    h: Tensor


@register_mixer("gru")
class GRU(Mixer):
    """GRU (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
    Machine Translation", arXiv 1406.1078, section 2.3).

    The single-layer GRU of ``torch.nn.GRU`` / cuDNN, per token with hidden size N (gate order r, z, n as
    torch stores them in ``weight_ih`` (3N, D), ``weight_hh`` (3N, N), ``bias_ih``, ``bias_hh`` (3N,))::

        a_r, a_z, a_n = split(W_ih x_t + b_ih)        b_r, b_z, b_n = split(W_hh h_{t-1} + b_hh)   # (B, N) each
        r = sigmoid(a_r + b_r),   z = sigmoid(a_z + b_z)                     # reset and update gates
        n = tanh(a_n + r * b_n)                                              # candidate
        h_t = (1 - z) * n + z * h_{t-1}
        y_t = h_t                   (N = D)     or     y_t = W_out h_t      (N != D, W_out (D, N), no bias)

    ``_forward`` runs torch's fused kernel (MKL/cuDNN) carrying h; ``step`` is the equations above written
    out, so the contract's parallel-vs-step checks hold torch's kernel to them.

    Departures from the paper: the reset gate is applied *after* the recurrent matrix, n = tanh(W x +
    r * (U h + b)), as torch and cuDNN do (Keras's ``reset_after=True``); Cho et al. (section 2.3) apply it
    before, n = tanh(W x + U (r * h)).  The two are different functions of the same parameter shapes;
    torch's is kept so the parallel form is the fused kernel.  Biases are explicit (the paper omits them)
    and doubled as in torch.  z keeps the paper's convention (z = 1 keeps the old state).  Init: PyTorch's,
    every weight and bias U(-1/sqrt(N), 1/sqrt(N)); the paper's own initialisation (small Gaussian weights,
    recalled without the text at hand) is not used.  The output projection, only when N != D, is this
    library's addition (torch.nn.Linear init).

    Args:
        d_model: width D of input and output.
        hidden_size: N, the width of h (None: N = D, and y = h with no projection).

    State (:class:`GRUState`): constant in T, ``N * 4`` bytes per sequence in float32 (256 B at D = N = 64).
    """

    state_growth = "constant"

    def __init__(self, d_model: int, *, hidden_size: int | None = None):
        super().__init__(d_model)
        check_int(hidden_size=hidden_size, allow_none=True)
        D = self.d_model
        N = D if hidden_size is None else int(hidden_size)
        self.hidden_size = N
        self.rnn = nn.GRU(D, N, batch_first=True)  # reset_parameters: U(-1/sqrt(N), 1/sqrt(N)) everywhere
        self.out_proj = nn.Linear(N, D, bias=False) if N != D else nn.Identity()

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> GRUState:
        p = self.rnn.weight_hh_l0
        return GRUState(torch.zeros(batch_size, self.hidden_size, device=device or p.device, dtype=dtype or p.dtype))

    def _check_state(self, state: GRUState, batch: int) -> None:
        want = (batch, self.hidden_size)
        if not isinstance(state, GRUState) or tuple(state.h.shape) != want:
            got = tuple(state.h.shape) if isinstance(state, GRUState) else type(state).__name__
            raise ValueError(f"state must be GRUState with h of shape {want}, got {got}")

    def _forward(self, x: Tensor, state: GRUState) -> tuple[Tensor, GRUState]:
        self._check_state(state, x.shape[0])
        h0 = state.h.to(x.dtype).unsqueeze(0).contiguous()  # (1, B, N): torch's (layers, B, N)
        h, h_n = self.rnn(x, h0)  # h: (B, T, N)
        return self.out_proj(h), GRUState(h_n[0])

    def step(self, x: Tensor, state: GRUState) -> tuple[Tensor, GRUState]:
        self.check_input(x, step=True)
        self._check_state(state, x.shape[0])
        p = self.rnn
        a_r, a_z, a_n = F.linear(x, p.weight_ih_l0, p.bias_ih_l0).chunk(3, dim=-1)  # (B, N) each
        b_r, b_z, b_n = F.linear(state.h, p.weight_hh_l0, p.bias_hh_l0).chunk(3, dim=-1)
        r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
        n = torch.tanh(a_n + r * b_n)
        h = (1 - z) * n + z * state.h  # (B, N), a new tensor
        return self.out_proj(h), GRUState(h)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_size={self.hidden_size}"
