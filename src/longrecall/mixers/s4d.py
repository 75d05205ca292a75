"""S4D: the diagonal state-space layer of Gu et al. 2022 (arXiv 2206.11893); see ``S4D``."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ssm import ParamCache, diagonal
from ..protocol import Mixer
from ..registry import register_mixer

__all__ = ["S4D", "S4DState"]

_CACHE_LENGTHS = 4  # kernels kept per module (chunked prefill uses a couple of lengths)


class S4DState(NamedTuple):
    ssm: Tensor  # (B, H, N/2, 2): real and imaginary parts of the complex modes


@register_mixer("s4d")
class S4D(Mixer):
    """S4D: diagonal state-space layer (Gu, Gupta, Goel, Re 2022, "On the Parameterization and
    Initialization of Diagonal State Space Models", arXiv 2206.11893).

    Each of the H = D channels is an independent SISO linear SSM with N = d_state real states, held as
    M = N/2 complex modes with implied conjugates (hence 2 Re).  Per channel and mode n (zero-order
    hold, B = 1 absorbed into C)::

        A_n  = -exp(log_A_real_n) + i A_imag_n,   dt = exp(log_dt)      # Re A < 0: every mode decays
        dA_n = exp(dt A_n),   W_n = C_n (exp(dt A_n) - 1) / A_n
        recurrent:  s_k = dA * s_{k-1} + u_k,   y_k = 2 Re(sum_n W_n s_k,n) + D u_k      # s: (B, H, M) complex
        parallel:   y = K * u + D u + 2 Re(sum_n W_n dA_n^{k+1} s_{-1,n}),   K_j = 2 Re(sum_n W_n dA_n^j)
                    s_{T-1} = dA^T s_{-1} + sum_j dA^{T-1-j} u_j          # s_{-1}: carried; K * u: FFT conv

    Init: "lin" (S4D-Lin) A_imag_n = pi n, "inv" (S4D-Inv) A_imag_n = (N/pi) (N/(2n+1) - 1);
    log_A_real = log(1/2); dt log-uniform in [dt_min, dt_max]; C complex normal, variance 1/2 per
    part; D ~ N(0, 1).  Output stage as the paper's standalone layer (Conv1d(H, 2H, 1) + GLU):
    ``y -> GELU -> Linear(H, 2H) -> GLU``, kept so the mixer has its channel mixing; dropout omitted.

    The discretisation, kernel, FFT path with the carried state and step are :mod:`~longrecall.ops.ssm.diagonal`'s
    (factored powers ``dA^j = dA^{ic} dA^r``, c = ceil(sqrt(T)): O(H M T), no loop over T).

    Args:
        d_model: width H = D.
        d_state: real state size N per channel, even (64); N/2 complex modes.
        init: "lin" (S4D-Lin, default) or "inv" (S4D-Inv) imaginary parts.
        dt_min, dt_max: range of the log-uniform step-size init, ``0 < dt_min <= dt_max`` (1e-3, 1e-1).
        kernel_cache: memoise the discretisation and kernel spectrum of the last few lengths T when no
            graph is recorded for the kernel parameters (no_grad / inference_mode / frozen) (True): an
            :class:`~longrecall.ops.ssm.ParamCache`, valid for a snapshot of the parameters' values; training
            is unaffected.

    State (:class:`S4DState`): constant in T, ``ssm (B, H, N/2, 2)``, the complex modes as a real view in
    the parameters' dtype: ``H * N * 4`` bytes per sequence in float32.
    """

    state_growth = "constant"

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        kernel_cache: bool = True,
    ):
        super().__init__(d_model)
        diagonal.check_args(d_state=d_state, dt_min=dt_min, dt_max=dt_max, init=init)
        H, N = self.d_model, d_state
        self.d_state, self.init, self.kernel_cache = N, init, bool(kernel_cache)
        log_dt, log_A_real, A_imag, C = diagonal.s4d_init(H, N, init, dt_min, dt_max)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.log_A_real = nn.Parameter(log_A_real)  # (H, M)
        self.A_imag = nn.Parameter(A_imag)  # (H, M)
        self.C = nn.Parameter(C)  # (H, M, 2): complex as (re, im)
        self.D = nn.Parameter(torch.randn(H))
        # no weight decay on the dynamics (S4/S4D; the flag is mamba_ssm's convention): it would pull every
        # mode toward Re A = -1 and dt = 1, one arbitrary timescale
        for param in (self.log_dt, self.log_A_real, self.A_imag):
            param._no_weight_decay = True
        self.out = nn.Linear(H, 2 * H)
        self._cache_kernels = ParamCache(size=_CACHE_LENGTHS + 1)  # + the discretisation

    def _kernel_params(self) -> tuple[Tensor, ...]:
        return (self.log_dt, self.log_A_real, self.A_imag, self.C)

    def _get(self, T: int | None) -> tuple[diagonal.Disc, diagonal.Plan | None]:
        """Discretisation and (for ``T``) the plan: cached at inference, fresh otherwise."""
        params, cache, on = self._kernel_params(), self._cache_kernels, self.kernel_cache
        d = cache.get(params, lambda: diagonal.s4d_discretize(*params), "disc", enabled=on)
        return d, (None if T is None else cache.get(params, lambda: diagonal.plan(d, T), T, enabled=on))

    def kernel(self, T: int) -> Tensor:
        """The materialised convolution kernel ``K (H, T)`` (for tests and inspection)."""
        return diagonal.kernel(diagonal.s4d_discretize(*self._kernel_params()), T)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> S4DState:
        p = self.log_A_real
        return S4DState(diagonal.zero_modes(batch_size, self.d_model, self.d_state // 2, p, device, dtype))

    def _check_state(self, state: S4DState, batch: int) -> Tensor:
        return diagonal.check_modes(state, S4DState, batch, self.d_model, self.d_state // 2)  # (B, H, M) complex

    def _output(self, y: Tensor) -> Tensor:
        """(..., H) SSM output -> GELU -> Linear(H, 2H) -> GLU -> (..., H)."""
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def step(self, x: Tensor, state: S4DState) -> tuple[Tensor, S4DState]:
        self.check_input(x, step=True)
        s = self._check_state(state, x.shape[0])  # (B, H, M) complex; a view, never written
        y, s = diagonal.step(self._get(None)[0], self.D, x, s)  # (B, H), (B, H, M)
        return self._output(y), S4DState(torch.view_as_real(s))

    def forward(self, x: Tensor, state: S4DState | None = None) -> tuple[Tensor, S4DState]:
        """Overrides ``Mixer.forward``: without a state the carried-state terms are skipped, not run on zeros."""
        self.check_input(x)
        B, T, _ = x.shape
        s0 = None if state is None else self._check_state(state, B)  # (B, H, M) complex
        if T == 0:
            return x.new_zeros(x.shape), (state if state is not None else self.init_state(B, device=x.device))
        d, p = self._get(T)
        y, s = diagonal.apply(d, p, self.D, x.transpose(1, 2), s0)  # (B, H, T), (B, H, M)
        return self._output(y.transpose(1, 2)), S4DState(torch.view_as_real(s))

    def extra_repr(self) -> str:
        extra = f"d_state={self.d_state}, init={self.init!r}, kernel_cache={self.kernel_cache}"
        return f"{super().extra_repr()}, {extra}"
