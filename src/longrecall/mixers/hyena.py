"""Hyena: gating interleaved with long convolutions whose filters an FFN generates from positions."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..modules import ShortConvolution
from ..ops.conv.carry import IMPLS, conv_step_with_history, conv_with_history
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_bool, check_choice, check_int, check_positive, check_ratio

__all__ = ["Hyena", "HyenaState"]


class HyenaState(NamedTuple):
    short: Tensor  # (B, 3D, W - 1): the short filter's last inputs
    long: Tensor  # (B, D, t): every input of the long convolution so far; its length t is the position


class Sin(nn.Module):
    """``sin(freq * x)`` with a trainable frequency per feature (the reference shares one across the FFN)."""

    def __init__(self, dim: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(freq)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


@register_mixer("hyena")
class Hyena(Mixer):
    """Hyena operator of order 2 (Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Re 2023, "Hyena
    Hierarchy: Towards Larger Convolutional Language Models", arXiv 2302.10866, section 3), as the authors'
    ``safari`` ``standalone_hyena.py`` that Zoology's ``hyena`` mixer copies::

        x0, x1, v = split(short_conv(x W_in + b_in))       # (B, T, D) each; depthwise causal conv of W taps
        z = v * x1                                          # gate
        y_t = sum_{j <= t} h_j z_{t-j} + beta z_t           # long convolution; beta ~ N(0, 1) per channel
        out = (y * x0) W_out + b_out                        # gate, output projection
        h_j = FFN(pe(j)) * exp(-(j / (l_max - 1)) |delta|)  # implicit filter (D per lag), decay window
        pe(j) = [j / (l_max - 1), cos(2 pi f j / l_max), -sin(2 pi f j / l_max)]  # f = linspace(1e-4, bands-1, bands)
        FFN = Linear(emb_dim, F), Sin, (Linear(F, F), Sin) x num_inner_mlps, Linear(F, D, no bias); Sin = sin(w .)

    ``delta`` per channel is ``linspace(log(target) / slow_decay_pct, log(target) / fast_decay_pct, D)``: the
    window falls to ``target`` at a fraction between ``fast_decay_pct`` and ``slow_decay_pct`` of ``l_max``.
    The filter is generated for exactly the lags needed; beyond ``l_max`` the same formula continues (the
    window keeps decaying), so the operator runs on any length.  ``forward`` convolves by FFT over the
    carried history and the new inputs (``ops.conv.carry``); ``step`` is a dot product with the history.

    Kept from the reference: emb_dim 3, filter_order F = 64, 2 inner layers, one ``Sin`` module shared by
    every activation with a trainable frequency initialised to ``sin_freq``, the decay constants (0.3, 1.5,
    1e-2, fixed), ``beta ~ randn``, short filter of 3 taps with bias, default ``nn.Linear``/``Conv1d`` inits.
    Departures and doubts: the positional features are computed, not a table (the code registers them as a
    parameter with learning rate 1e-5, which also caps it at ``l_max``; sequences past ``l_max`` are cut
    there); ``sin_freq`` defaults to the reference ``HyenaFilter``'s ``w=1`` ("frequency of periodic
    activations", checked in safari's code; the ``Sin`` module's own default, 10, is what the filter overrides);
    no dropout, no filter normalisation, one head (``num_heads=1``, as the reference's default).

    Args:
        d_model: width D.
        l_max: the length the positional features are normalised by (>= 2); set it to the task length (2048).
        filter_order: width F of the filter FFN (64).
        emb_dim: positional features, odd and >= 3: time, then (emb_dim - 1) / 2 cosines and sines (3).
        num_inner_mlps: hidden F x F layers of the FFN (2).
        sin_freq: initial frequency w of the sine activation (1.0).
        short_filter_order: taps W of the short filter (3).
        fast_decay_pct, slow_decay_pct, target: the decay window's range (0.3, 1.5, 1e-2).
        impl: "fft" (default) or "naive" (the direct convolution) for ``forward``.
        kernel_cache: reuse the generated filter when no graph is recorded for its parameters (as S4D's
            cache; the parameters' values are compared at every call) (True).

    State (:class:`HyenaState`): linear in T: the short filter's last ``W - 1`` projected inputs and the
    whole history of the long convolution's input, ``D (3 (W - 1) + t) * 4`` bytes per sequence at position t
    in float32 (9,728 bytes at D = 64, t = 32).  The filter is time-invariant, so the position it needs is the
    history's length.
    """

    state_growth = "linear"
    contract_kwargs = {"l_max": 8, "filter_order": 8, "emb_dim": 5}  # T up to 20: past l_max, two bands

    def __init__(self, d_model: int, *, l_max: int = 2048, filter_order: int = 64, emb_dim: int = 3,
                 num_inner_mlps: int = 2, sin_freq: float = 1.0, short_filter_order: int = 3,
                 fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2,
                 impl: str = "fft", kernel_cache: bool = True):
        super().__init__(d_model)
        check_int(minimum=2, l_max=l_max)
        check_int(filter_order=filter_order, short_filter_order=short_filter_order)
        check_int(minimum=0, num_inner_mlps=num_inner_mlps)
        check_int(minimum=3, emb_dim=emb_dim)
        if emb_dim % 2 == 0:
            raise ArgumentError("emb_dim", "an odd int >= 3 (time, then cosine and sine pairs)", repr(emb_dim))
        check_positive(sin_freq=sin_freq, fast_decay_pct=fast_decay_pct, slow_decay_pct=slow_decay_pct)
        check_ratio("target", target, low_open=True, high_open=True)
        check_choice("impl", impl, IMPLS)
        check_bool(kernel_cache=kernel_cache)
        D, F = self.d_model, int(filter_order)
        self.l_max, self.filter_order, self.emb_dim, self.impl = int(l_max), F, int(emb_dim), impl
        self.kernel_cache = kernel_cache

        self.in_proj = nn.Linear(D, 3 * D)
        self.short_filter = ShortConvolution(3 * D, short_filter_order, bias=True, activation=None)
        self.sin = Sin(F, sin_freq)
        layers = [nn.Linear(self.emb_dim, F), self.sin]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(F, F), self.sin]
        self.implicit_filter = nn.Sequential(*layers, nn.Linear(F, D, bias=False))
        deltas = torch.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, D)
        self.register_buffer("deltas", deltas)  # (D,), fixed (the reference's modulation_lr = 0)
        self.bias = nn.Parameter(torch.randn(D))
        self.out_proj = nn.Linear(D, D)
        self._cache: tuple[tuple[Tensor, ...], Tensor] | None = None

    def filter(self, L: int) -> Tensor:
        """The implicit long filter at lags 0..L-1: ``h (D, L)``."""
        p = self.deltas
        j = torch.arange(L, device=p.device, dtype=p.dtype)
        t = j / (self.l_max - 1)  # (L,)
        bands = (self.emb_dim - 1) // 2
        freqs = torch.linspace(1e-4, bands - 1, bands, device=p.device, dtype=p.dtype)  # (bands,)
        angle = (2 * math.pi / self.l_max) * j[:, None] * freqs  # (L, bands)
        pe = torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1)  # (L, emb_dim)
        window = torch.exp(-t[:, None] * self.deltas.abs())  # (L, D)
        return (self.implicit_filter(pe) * window).T

    def _filter_inputs(self) -> tuple[Tensor, ...]:
        return (*self.implicit_filter.parameters(), self.deltas)

    def _kernel(self, L: int) -> Tensor:
        """``filter(L)``, from the cache when no graph is recorded for the filter's parameters."""
        inputs = self._filter_inputs()
        if not self.kernel_cache or (torch.is_grad_enabled() and any(p.requires_grad for p in inputs)):
            return self.filter(L)
        snap, h = self._cache or ((), None)
        valid = len(snap) == len(inputs) and all(a.dtype == p.dtype and a.device == p.device and torch.equal(a, p)
                                                 for a, p in zip(snap, inputs, strict=True))
        if not valid or h.shape[-1] < L:
            length = L if not valid else max(L, 2 * h.shape[-1])  # doubling: a step loop regenerates O(log T) times
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, valid in any later context
                self._cache = (tuple(p.detach().clone() for p in inputs), self.filter(length))
        return self._cache[1][:, :L]

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> HyenaState:
        p = self.bias
        device, dtype = device or p.device, dtype or p.dtype
        short = self.short_filter.init_state(batch_size, device=device, dtype=dtype)
        return HyenaState(short, torch.zeros(batch_size, self.d_model, 0, device=device, dtype=dtype))

    def _check_state(self, state: HyenaState, batch: int) -> int:
        want = (batch, 3 * self.d_model, self.short_filter.kernel_size[0] - 1)
        if not isinstance(state, HyenaState) or tuple(state.short.shape) != want or \
                tuple(state.long.shape[:2]) != (batch, self.d_model):
            raise ValueError(f"state must be a HyenaState for batch {batch} (from init_state or forward), "
                             f"got {type(state).__name__}")
        return state.long.shape[-1]

    def _forward(self, x: Tensor, state: HyenaState) -> tuple[Tensor, HyenaState]:
        t0 = self._check_state(state, x.shape[0])
        u, short = self.short_filter(self.in_proj(x), state.short)  # (B, T, 3D), (B, 3D, W - 1)
        x0, x1, v = u.split(self.d_model, dim=-1)  # (B, T, D) each
        z = (v * x1).transpose(1, 2)  # (B, D, T)
        y, long = conv_with_history(z, self._kernel(t0 + x.shape[1]), state.long, impl=self.impl)
        y = y + self.bias[:, None] * z
        return self.out_proj(y.transpose(1, 2) * x0), HyenaState(short, long)

    def step(self, x: Tensor, state: HyenaState) -> tuple[Tensor, HyenaState]:
        self.check_input(x, step=True)
        t0 = self._check_state(state, x.shape[0])
        u, short = self.short_filter.step(self.in_proj(x), state.short)  # (B, 3D)
        x0, x1, v = u.split(self.d_model, dim=-1)  # (B, D) each
        z = v * x1
        y, long = conv_step_with_history(z, self._kernel(t0 + 1), state.long)  # (B, D), (B, D, t0 + 1)
        return self.out_proj((y + self.bias * z) * x0), HyenaState(short, long)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, l_max={self.l_max}, filter_order={self.filter_order}, "
                f"emb_dim={self.emb_dim}, impl={self.impl!r}, kernel_cache={self.kernel_cache}")
