"""BaseConv: Zoology's minimal gated convolution (a short and a long gated convolution layer)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..modules import ShortConvolution
from ..ops.conv.carry import IMPLS, conv_step_with_history, conv_with_history
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_choice, check_int

__all__ = ["BaseConv", "BaseConvState"]


class BaseConvState(NamedTuple):
    short: Tensor  # (B, D, W - 1): the short stage's last inputs (W = short_kernel_size; (B, D, 0) without it)
    long: Tensor  # (B, D, P): the long stage's last P = min(t, l_max - 1) inputs


@register_mixer("base_conv")
class BaseConv(Mixer):
    """BaseConv (Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra, Re 2023, "Zoology: Measuring and
    Improving Recall in Efficient Language Models", arXiv 2312.04927, section 5), the gated-convolution
    baseline of its Figure 2, in the form of Zoology's code (``zoology/mixers/base_conv.py``).

    One Zoology ``BaseConv`` layer is ``u -> (u W + b) * conv(u) + u``: a linear projection gated by a
    depthwise causal convolution of the same input, plus the input.  Zoology's Figure 2 model alternates a
    short layer (kernel 3) and a long layer (an explicit filter of ``l_max`` taps) (``kernel_size=[3, -1,
    3, -1]``, 4 layers); this mixer is one such pair, so two ``base_conv`` blocks are that model::

        z = x + (x W_s + b_s) * (k_s * x + c_s)   # short stage: k_s (D, W), causal depthwise Conv1d with bias
        y = z + (z W_l + b_l) * (h * z)           # long stage:  h (D, l_max), y_t = sum_{j < l_max} h_j z_{t-j}

    Shapes: x, z, y (B, T, D).  The long convolution runs by FFT over the carried history and the new
    inputs (``ops.conv.carry``); ``step`` is its dot product with the history.

    Kept from Zoology: no activation (``use_act=False``), the filter initialised ``randn(D, l_max)`` (so a
    long-stage output's scale grows like sqrt(t); Zoology sets ``l_max`` to the task length), the short
    stage's ``nn.Conv1d`` (bias, default init), ``nn.Linear`` projections with bias.
    Departures: the two layers share one mixer, so there is no norm and no block residual between them;
    ``short_kernel_size=0`` drops the short stage, leaving one Zoology long layer.  The paper writes the
    layer as ``(u W + b_1) * (h * u + b_2)`` (as we recall section 5.1; not rechecked): Zoology's long
    filter has no ``b_2`` and neither has this one.  Zoology's optional implicit long filter is not offered.
    The ``+ u`` skip is checked against Zoology's ``BaseConv.forward`` (``conv(u) * projection(u) + u``);
    the ``randn`` init of the explicit long filter is our reading of its ``LongConvolution``.

    Args:
        d_model: width D.
        l_max: filter length (>= 2), the longest dependency (2048); lags ``>= l_max`` have no tap.
        short_kernel_size: taps W of the short stage (3); 0 turns it off.
        impl: "fft" (default) or "naive" (the direct convolution) for the long stage in ``forward``.

    State (:class:`BaseConvState`): bounded, ``state_capacity = l_max - 1`` tokens: the short stage's last
    ``W - 1`` inputs and the long stage's last ``min(t, l_max - 1)`` inputs, i.e.
    ``D (W - 1 + min(t, l_max - 1)) * 4`` bytes per sequence in float32 (at D = 64 with the defaults:
    8,704 bytes at t = 32, 262,656 at t = 1024, at most 524,544 once ``t >= l_max - 1``).
    """

    state_growth = "bounded"
    contract_kwargs = {"l_max": 6}  # the contract's sequences (T up to 20) run past the filter

    def __init__(self, d_model: int, *, l_max: int = 2048, short_kernel_size: int = 3, impl: str = "fft"):
        super().__init__(d_model)
        check_int(minimum=2, l_max=l_max)
        check_int(minimum=0, short_kernel_size=short_kernel_size)
        check_choice("impl", impl, IMPLS)
        D = self.d_model
        self.l_max, self.short_kernel_size, self.impl = int(l_max), int(short_kernel_size), impl
        self.state_capacity = self.l_max - 1
        if self.short_kernel_size:
            self.short_proj = nn.Linear(D, D)
            self.short_conv = ShortConvolution(D, self.short_kernel_size, bias=True, activation=None)
        self.long_proj = nn.Linear(D, D)
        self.filter = nn.Parameter(torch.randn(D, self.l_max))  # (D, l_max), Zoology's LongConvolution

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> BaseConvState:
        p = self.filter
        device, dtype = device or p.device, dtype or p.dtype
        empty = torch.zeros(batch_size, self.d_model, 0, device=device, dtype=dtype)
        short = self.short_conv.init_state(batch_size, device=device, dtype=dtype) if self.short_kernel_size else empty
        return BaseConvState(short, empty.clone())

    def _check_state(self, state: BaseConvState, batch: int) -> None:
        if not isinstance(state, BaseConvState) or state.short.shape[:2] != (batch, self.d_model) or \
                state.long.shape[:2] != (batch, self.d_model) or state.long.shape[-1] > self.l_max - 1:
            raise ValueError(f"state must be a BaseConvState for batch {batch} (from init_state or forward), "
                             f"got {type(state).__name__}")

    def _forward(self, x: Tensor, state: BaseConvState) -> tuple[Tensor, BaseConvState]:
        self._check_state(state, x.shape[0])
        short = state.short
        if self.short_kernel_size:
            c, short = self.short_conv(x, state.short)  # (B, T, D), (B, D, W - 1)
            x = x + self.short_proj(x) * c
        h, long = conv_with_history(x.transpose(1, 2), self.filter, state.long, keep=self.l_max - 1, impl=self.impl)
        return x + self.long_proj(x) * h.transpose(1, 2), BaseConvState(short, long)

    def step(self, x: Tensor, state: BaseConvState) -> tuple[Tensor, BaseConvState]:
        self.check_input(x, step=True)
        self._check_state(state, x.shape[0])
        short = state.short
        if self.short_kernel_size:
            c, short = self.short_conv.step(x, state.short)  # (B, D), (B, D, W - 1)
            x = x + self.short_proj(x) * c
        h, long = conv_step_with_history(x, self.filter, state.long, keep=self.l_max - 1)  # (B, D)
        return x + self.long_proj(x) * h, BaseConvState(short, long)

    def extra_repr(self) -> str:
        extra = f"l_max={self.l_max}, short_kernel_size={self.short_kernel_size}, impl={self.impl!r}"
        return f"{super().extra_repr()}, {extra}"
