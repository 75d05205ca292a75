"""MultiresConv: a causal dilated convolution tree with filters shared across levels (arXiv 2305.01638)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_int

__all__ = ["MultiresConv", "MultiresState", "WAVELETS", "max_depth"]

# Orthogonal wavelet decomposition filters (pywt's dec_lo, dec_hi); the quadrature mirror dec_hi[i] = (-1)^(i+1)
# dec_lo[k-1-i].  conv1d correlates, so __init__ reverses them, as the authors' reference does.
_S2 = 1 / math.sqrt(2)
_DB2_LO = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
WAVELETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "haar": ((_S2, _S2), (-_S2, _S2)),
    "db2": (_DB2_LO, tuple((-1) ** (i + 1) * c for i, c in enumerate(reversed(_DB2_LO)))),
}


def max_depth(seq_len: int, kernel_size: int) -> int:
    """The fewest levels J whose receptive field ``(k - 1)(2^J - 1) + 1`` covers ``seq_len`` (at least 1)."""
    return max(1, math.ceil(math.log2((seq_len - 1) / (kernel_size - 1) + 1)))


class MultiresState(NamedTuple):
    levels: tuple[Tensor, ...]  # level l: (B, D, (k - 1) 2^l), the last inputs a^(l) of that level, oldest first


@register_mixer("multires")
class MultiresConv(Mixer):
    """MultiresConv (Shi, Wang, Fox 2023, "Sequence Modeling with Multiresolution Convolutional Memory",
    ICML 2023, arXiv 2305.01638): a stationary (undecimated) wavelet-like tree of causal dilated
    depthwise convolutions whose two short filters are shared by every level.

    Per channel, with filters ``h0`` (low-pass) and ``h1`` (high-pass) of length k, depth J, and the
    dilated causal correlation ``(h *_d a)_t = sum_{j<k} h[j] a_{t - (k-1-j) d}``::

        a^(0) = u
        a^(l+1) = h0 *_{2^l} a^(l),   b^(l+1) = h1 *_{2^l} a^(l)                          l = 0 .. J-1
        y = w[0] a^(J) + sum_{l=1..J} w[J + 1 - l] b^(l) + w[J + 1] u                         # (B, T, D)
        out = GLU(Linear(D, 2D)(GELU(y)))                                                        # (B, T, D)

    This is the authors' ``forward_fading`` ("fading" tree selection: every level's high-pass output and the
    last low-pass at every step; finer resolution for the recent past).  Init as their reference
    (github.com/thjashin/multires-conv, ``MultiresLayer``): h0, h1 ~ U(-1, 1) sqrt(2 / 2k), or an orthogonal
    wavelet's filters reversed (``wavelet_init``, pywt's dec_lo / dec_hi, which the paper also tries);
    ``w (D, J + 2)`` ~ U(-1, 1) sqrt(2 / (2 (J + 1) + 2)); J from the sequence length:
    ``ceil(log2((L - 1)/(k - 1) + 1))``.  Output stage as the paper's block (GELU, then the 1x1 conv
    ``Conv1d(D, 2D, 1)`` + GLU as a Linear); dropout, normalisation and the residual belong to the model.

    Unsure / departures: the init constants and the ``w`` column layout are as we recall the reference (not
    checked against its source here); the default kernel size (2) and ``max_len`` (1024) are ours, not the
    paper's per-task values; its "uniform" tree selection and ``indep_res_init`` are not implemented.

    The parallel form is one ``conv1d`` per level with the carried inputs in place of the zero padding; the
    step form reads k taps spaced 2^l from each level's buffer.  Both are exact (no FFT).

    Args:
        d_model: width D.
        kernel_size: filter length k >= 2 (2).
        depth: number of levels J (None: ``max_depth(max_len, kernel_size)``).
        max_len: the sequence length the tree must cover when ``depth`` is None (1024).
        wavelet_init: None (random) or one of ``WAVELETS`` ("haar": k = 2, "db2": k = 4).

    State (:class:`MultiresState`): constant in T (J is fixed at construction): ``(k - 1)(2^J - 1)`` carried
    inputs per channel, ``D (k - 1)(2^J - 1) * 4`` bytes per sequence in float32, exactly the receptive field
    ``(k - 1)(2^J - 1) + 1`` tokens minus the current one.
    """

    state_growth = "constant"
    # k = 3 and three levels: buffers of 2, 4 and 8 inputs, longer and shorter than the suite's chunks
    contract_kwargs = {"kernel_size": 3, "depth": 3}

    def __init__(
        self,
        d_model: int,
        *,
        kernel_size: int = 2,
        depth: int | None = None,
        max_len: int = 1024,
        wavelet_init: str | None = None,
    ):
        super().__init__(d_model)
        check_int(minimum=2, kernel_size=kernel_size)
        check_int(depth=depth, allow_none=True)
        check_int(max_len=max_len)
        if wavelet_init is not None:
            check_choice("wavelet_init", wavelet_init, tuple(WAVELETS))
            n = len(WAVELETS[wavelet_init][0])
            if n != kernel_size:
                raise ArgumentError("kernel_size", f"{n}, the filter length of {wavelet_init!r}", repr(kernel_size))
        D, k = self.d_model, int(kernel_size)
        J = int(depth) if depth is not None else max_depth(max_len, k)
        self.kernel_size, self.depth, self.wavelet_init = k, J, wavelet_init
        if wavelet_init is None:
            bound = math.sqrt(2.0 / (2 * k))
            h0, h1 = (torch.empty(D, 1, k).uniform_(-1.0, 1.0) * bound for _ in range(2))
        else:
            h0, h1 = (torch.tensor(f[::-1], dtype=torch.float32).repeat(D, 1, 1) for f in WAVELETS[wavelet_init])
        self.h0, self.h1 = nn.Parameter(h0), nn.Parameter(h1)  # (D, 1, k) each
        m = J + 1
        self.w = nn.Parameter(torch.empty(D, m + 1).uniform_(-1.0, 1.0) * math.sqrt(2.0 / (2 * m + 2)))  # (D, J+2)
        self.out = nn.Linear(D, 2 * D)

    @property
    def receptive_field(self) -> int:
        """Tokens an output depends on, itself included."""
        return (self.kernel_size - 1) * (2**self.depth - 1) + 1

    def _buffer_lengths(self) -> list[int]:
        return [(self.kernel_size - 1) * 2**level for level in range(self.depth)]

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MultiresState:
        p = self.h0
        device, dtype = device or p.device, dtype or p.dtype
        return MultiresState(tuple(torch.zeros(batch_size, self.d_model, n, device=device, dtype=dtype)
                                   for n in self._buffer_lengths()))

    def _check_state(self, state: MultiresState, batch: int) -> None:
        want = [(batch, self.d_model, n) for n in self._buffer_lengths()]
        if not isinstance(state, MultiresState) or [tuple(t.shape) for t in state.levels] != want:
            got = [tuple(t.shape) for t in state.levels] if isinstance(state, MultiresState) else type(state).__name__
            raise ValueError(f"state must be MultiresState with levels of shapes {want}, got {got}")

    def _output(self, y: Tensor) -> Tensor:
        """(..., D) tree output -> GELU -> Linear(D, 2D) -> GLU -> (..., D)."""
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def conv_tree(self, u: Tensor, state: MultiresState) -> tuple[Tensor, MultiresState]:
        """The tree over ``u (B, D, T)`` from carried inputs: ``y (B, D, T)`` before the output stage, new state."""
        D, J = self.d_model, self.depth
        weight = torch.stack([self.h0, self.h1], dim=1).reshape(2 * D, 1, self.kernel_size)  # (2D, 1, k): lo, hi
        lo, y, levels = u, self.w[:, J + 1, None] * u, []
        for level, buf in enumerate(state.levels):
            a = torch.cat([buf.to(u.dtype), lo], dim=-1)  # (B, D, P + T): carried inputs replace the padding
            levels.append(a[..., -buf.shape[-1]:].clone())  # clone: own the memory, don't pin `a`
            lo, hi = F.conv1d(a, weight, dilation=2**level, groups=D).unflatten(1, (D, 2)).unbind(2)  # (B, D, T)
            y = y + self.w[:, J - level, None] * hi
        return y + self.w[:, 0, None] * lo, MultiresState(tuple(levels))

    def kernel(self, T: int) -> Tensor:
        """The tree's impulse response ``K (D, T)`` (an LTI kernel, zero past ``receptive_field``; for tests)."""
        impulse = self.h0.new_zeros(1, self.d_model, T)
        impulse[..., 0] = 1
        return self.conv_tree(impulse, self.init_state(1))[0][0]

    def _forward(self, x: Tensor, state: MultiresState) -> tuple[Tensor, MultiresState]:
        self._check_state(state, x.shape[0])
        y, new = self.conv_tree(x.transpose(1, 2), state)  # (B, D, T)
        return self._output(y.transpose(1, 2)), new

    def step(self, x: Tensor, state: MultiresState) -> tuple[Tensor, MultiresState]:
        self.check_input(x, step=True)
        self._check_state(state, x.shape[0])
        J = self.depth
        h0, h1 = self.h0[:, 0], self.h1[:, 0]  # (D, k)
        lo, y, levels = x, self.w[:, J + 1] * x, []
        for level, buf in enumerate(state.levels):
            a = torch.cat([buf.to(x.dtype), lo[..., None]], dim=-1)  # (B, D, P + 1): a new tensor
            taps = a[..., :: 2**level]  # (B, D, k): a_{t - (k-1) 2^l}, ..., a_t
            levels.append(a[..., 1:].clone())
            lo, hi = (taps * h0).sum(-1), (taps * h1).sum(-1)  # (B, D)
            y = y + self.w[:, J - level] * hi
        return self._output(y + self.w[:, 0] * lo), MultiresState(tuple(levels))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel_size={self.kernel_size}, depth={self.depth}, "
                f"receptive_field={self.receptive_field}, wavelet_init={self.wavelet_init!r}")
