"""LSTM: the classic gated RNN (hidden and cell vectors) as a mixer; torch.nn.LSTM is its parallel form."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_int, is_number

__all__ = ["LSTM", "LSTMState"]


class LSTMState(NamedTuple):
    """Recurrent memory of one LSTM layer: hidden h (B, N) and cell c (B, N), N = hidden_size."""

    h: Tensor
    c: Tensor


@register_mixer("lstm")
class LSTM(Mixer):
    """LSTM (Hochreiter & Schmidhuber 1997, Neural Computation 9(8); forget gate: Gers et al. 2000).

    The single-layer LSTM of ``torch.nn.LSTM`` / cuDNN, per token with hidden size N (gate order i, f, g, o
    as torch stores them in ``weight_ih`` (4N, D), ``weight_hh`` (4N, N), ``bias_ih``, ``bias_hh`` (4N,))::

        i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)       # (B, 4N) -> 4 x (B, N)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)
        y_t = h_t                   (N = D)     or     y_t = W_out h_t      (N != D, W_out (D, N), no bias)

    ``_forward`` runs torch's fused kernel (MKL/cuDNN) carrying (h, c); ``step`` is the equations above
    written out, so the contract's parallel-vs-step checks hold torch's kernel to them.

    Departures from the 1997 paper, all those of the now-standard LSTM (and of torch/cuDNN): a forget gate
    (Gers, Schmidhuber & Cummins 2000; the 1997 cell has none, c_t = c_{t-1} + i g), tanh for the paper's
    scaled-sigmoid squashings g ([-2, 2]) and h ([-1, 1]; ranges recalled, not checked against the text),
    no peephole connections, full BPTT instead of the paper's truncated gradient, and two bias vectors
    (their sum is the gate bias).  Init: PyTorch's, every weight and bias U(-1/sqrt(N), 1/sqrt(N)), except
    the forget gate's total bias, set to ``forget_bias`` (b_ih_f = forget_bias, b_hh_f = 0) as Jozefowicz,
    Zaremba & Sutskever 2015 ("An Empirical Exploration of Recurrent Network Architectures", ICML)
    recommend (1.0).  The output projection, only when N != D, is this library's addition (torch.nn.Linear
    init).

    Args:
        d_model: width D of input and output.
        hidden_size: N, the width of h and c (None: N = D, and y = h with no projection).
        forget_bias: the forget gate's initial total bias (1.0, Jozefowicz et al. 2015); None keeps
            PyTorch's uniform init for it as for every other bias.

    State (:class:`LSTMState`): constant in T, ``2 * N * 4`` bytes per sequence in float32
    (512 B at D = N = 64).
    """

    state_growth = "constant"

    def __init__(self, d_model: int, *, hidden_size: int | None = None, forget_bias: float | None = 1.0):
        super().__init__(d_model)
        check_int(hidden_size=hidden_size, allow_none=True)
        if forget_bias is not None and not (is_number(forget_bias) and math.isfinite(forget_bias)):
            raise ArgumentError("forget_bias", "None or a finite number", repr(forget_bias))
        D = self.d_model
        N = D if hidden_size is None else int(hidden_size)
        self.hidden_size, self.forget_bias = N, forget_bias
        self.rnn = nn.LSTM(D, N, batch_first=True)  # reset_parameters: U(-1/sqrt(N), 1/sqrt(N)) everywhere
        if forget_bias is not None:
            with torch.no_grad():
                self.rnn.bias_ih_l0[N : 2 * N].fill_(float(forget_bias))
                self.rnn.bias_hh_l0[N : 2 * N].zero_()
        self.out_proj = nn.Linear(N, D, bias=False) if N != D else nn.Identity()

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LSTMState:
        p = self.rnn.weight_hh_l0
        zeros = torch.zeros(batch_size, self.hidden_size, device=device or p.device, dtype=dtype or p.dtype)
        return LSTMState(zeros, zeros.clone())

    def _check_state(self, state: LSTMState, batch: int) -> None:
        want = (batch, self.hidden_size)
        if not isinstance(state, LSTMState) or any(tuple(t.shape) != want for t in state):
            got = tuple(tuple(t.shape) for t in state) if isinstance(state, LSTMState) else type(state).__name__
            raise ValueError(f"state must be LSTMState with h and c of shape {want}, got {got}")

    def _forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        self._check_state(state, x.shape[0])
        h0, c0 = (t.to(x.dtype).unsqueeze(0).contiguous() for t in state)  # (1, B, N): torch's (layers, B, N)
        h, (h_n, c_n) = self.rnn(x, (h0, c0))  # h: (B, T, N)
        return self.out_proj(h), LSTMState(h_n[0], c_n[0])

    def step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        self.check_input(x, step=True)
        self._check_state(state, x.shape[0])
        r = self.rnn
        gates = F.linear(x, r.weight_ih_l0, r.bias_ih_l0) + F.linear(state.h, r.weight_hh_l0, r.bias_hh_l0)  # (B, 4N)
        i, f, g, o = gates.chunk(4, dim=-1)  # (B, N) each
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)  # (B, N)
        h = torch.sigmoid(o) * torch.tanh(c)  # (B, N)
        return self.out_proj(h), LSTMState(h, c)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_size={self.hidden_size}, forget_bias={self.forget_bias}"
