"""S4: the structured state-space layer with the HiPPO-LegS normal-plus-low-rank parameterisation; see ``S4``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ssm import (
    ParamCache,
    bilinear,
    dense_ssm,
    dplr_kernel,
    dplr_to_real,
    legs_nplr,
    output_from_real,
    ssm_blocks,
)
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_int, check_positive

__all__ = ["S4", "S4State"]


class S4State(NamedTuple):
    ssm: Tensor  # (B, H, N/2, 2): the kept half of the conjugate-symmetric state, (re, im)


class _Disc(NamedTuple):
    """The T-independent discretisation (dense tensors in the real representation of ``ops.ssm.hippo``)."""

    dt: Tensor  # (H,)
    Lambda: Tensor  # (H, M) complex
    P: Tensor  # (H, M) complex
    B: Tensor  # (H, M) complex
    Ct: Tensor  # (H, M) complex: the learned C~ for length l_max
    E: Tensor  # (H, M) complex: 2/dt + Lambda
    R: Tensor  # (H, M) complex: 1/(2/dt - Lambda)
    corr: Tensor  # (H,) real: 1 + P_full^* R P_full
    Abar64: Tensor  # (H, N, N) float64, dense: the Krylov blocks, C, and C~ for longer kernels
    Bbar64: Tensor  # (H, N) float64
    Ct_real64: Tensor  # (H, N) float64


def _lowrank(P: Tensor, s: Tensor) -> Tensor:
    """``P_full^* x_full = 2 Re(sum_m conj(P_m) s_m)`` for the half state ``s (..., M)``: ``(...)`` real."""
    return 2 * (P.conj() * s).real.sum(-1)


@register_mixer("s4")
class S4(Mixer):
    """S4 (Gu, Goel, Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces", arXiv 2111.00396).

    Each of the H = D channels is an independent SISO linear SSM with N = d_state states and
    ``A = Lambda - P P^*``: HiPPO-LegS in its normal-plus-low-rank form (``ops.ssm.hippo``), held as the
    kept half of each conjugate pair, M = N/2 complex modes.  Bilinear discretisation with step dt::

        Abar = (I - dt/2 A)^{-1} (I + dt/2 A),   Bbar = (I - dt/2 A)^{-1} dt B
        x_k = Abar x_{k-1} + Bbar u_k,   y_k = C x_k + D u_k          (x full, conjugate-symmetric; y = 2 Re(C s))
        y = K * u + D u,   K_j = C Abar^j Bbar                       (kernel: FFT convolution)

    The learned output vector is ``C~ = C (I - Abar^l_max)`` (the paper's C~, learned directly), so the
    length-``l_max`` kernel is the truncated generating function at the roots of unity, evaluated by
    Cauchy sums with the Woodbury correction and an inverse FFT (``ops.ssm.cauchy``, Algorithm 1).
    For ``T <= l_max`` the first T taps of that kernel are used; for ``T > l_max`` the kernel is computed
    at length ``L = l_max 2^k >= T`` with ``C~_2L = C~_L (I + Abar^L)`` (what the reference code does when
    it doubles its length, here without writing the parameter).  The model is one fixed system for
    every T: the step and the carried-state terms use ``C = C~ (I - Abar^l_max)^{-1}``.

    Recurrent form (``step``): the bilinear step of the DPLR matrix in O(N) per token (appendix C.2),
    ``x_k = (2/dt - A)^{-1} [(2/dt + A) x_{k-1} + 2 B u_k]`` with the inverse by Woodbury
    (``R = (2/dt - Lambda)^{-1}``).  Parallel form: the Cauchy kernel for ``K * u``; the final state
    and the carried state's terms (``C Abar^{k+1} x_{-1}``, ``Abar^T x_{-1}``; skipped when the incoming
    state is zero and needs no gradient) from dense ``Abar`` (the real N x N representation) by
    blocked Krylov powers (``ops.ssm.dense``).

    Parameterisation and init (the paper's, with the reference code's conventions): Lambda, P, B from
    the LegS NPLR, per channel, all trained; ``Re Lambda = -exp(log_lambda_re)`` (init -1/2), ``Q = P``
    tied; dt log-uniform in [dt_min, dt_max]; C~ complex normal (variance 1/2 per part); D ~ N(0, 1).
    Output stage as this repo's ``s4d`` (the paper's GLU layer): ``y -> GELU -> Linear(H, 2H) -> GLU``.

    Departures: ``Re Lambda < 0`` by the exp parameterisation and ``Q = P`` (later versions of the
    reference code; with them ``A + A^*`` is negative definite, so every trained system stays stable);
    no B clipping, no dropout, no bidirectional variant.  Numerics: the Cauchy kernel runs in the
    parameters' dtype (complex64 agrees with complex128 to ~1e-6 at init, N = 64, L = 4096; the Woodbury
    denominator ``1 + P^* R(z) P`` has real part >= 1 on the unit circle, so it never cancels); the dense
    parts (Abar, its powers, C, the Krylov blocks) are computed in float64 and cast, as repeated
    squaring loses ~1e-4 in float32.  Cost: the kernel is O(H N max(T, l_max)), so ``l_max`` near the
    task's length is cheapest.  Unsure: the paper ties C~ to the training length; ``l_max`` plays that
    role here (1024).

    Args:
        d_model: width H = D.
        d_state: state size N per channel, even (64); N/2 complex modes.
        l_max: the length C~ is defined for (1024); longer sequences use doubled kernels.
        dt_min, dt_max: range of the log-uniform step-size init, ``0 < dt_min <= dt_max`` (1e-3, 1e-1).

    State (:class:`S4State`): constant in T, ``ssm (B, H, N/2, 2)``: ``H * N * 4`` bytes per sequence in
    float32.  The discretisation, C and the kernels of the last few lengths are memoised while no graph is
    recorded for them (inference; ``ops.ssm.ParamCache``).
    """

    state_growth = "constant"
    contract_kwargs = {"d_state": 8, "l_max": 8}  # T = 13 > l_max: the doubled kernel runs too

    def __init__(self, d_model: int, *, d_state: int = 64, l_max: int = 1024, dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__(d_model)
        check_int(d_state=d_state, l_max=l_max)
        if d_state % 2:
            raise ArgumentError("d_state", "a positive even int (N/2 complex modes)", repr(d_state))
        check_positive(dt_min=dt_min, dt_max=dt_max)
        if dt_min > dt_max:
            raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min!r} > dt_max={dt_max!r}")
        H, N = self.d_model, d_state
        self.d_state, self.l_max = N, l_max
        nplr = legs_nplr(N)

        def per_channel(z: Tensor) -> Tensor:  # (M,) complex -> (H, M, 2) float32
            return torch.view_as_real(z).float().repeat(H, 1, 1)

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.log_lambda_re = nn.Parameter(torch.log(-nplr.Lambda.real).float().repeat(H, 1))  # (H, M)
        self.lambda_im = nn.Parameter(nplr.Lambda.imag.float().repeat(H, 1))  # (H, M)
        self.P = nn.Parameter(per_channel(nplr.P))  # (H, M, 2)
        self.B = nn.Parameter(per_channel(nplr.B))  # (H, M, 2)
        self.C = nn.Parameter(torch.randn(H, N // 2, 2) * math.sqrt(0.5))  # C~ as (re, im)
        self.D = nn.Parameter(torch.randn(H))
        # no weight decay on the dynamics (S4's advice): it would pull A, B and dt toward 0
        for param in (self.log_dt, self.log_lambda_re, self.lambda_im, self.P, self.B):
            param._no_weight_decay = True
        self.out = nn.Linear(H, 2 * H)
        self._cache = ParamCache(size=8)

    def _kernel_params(self) -> tuple[Tensor, ...]:
        return (self.log_dt, self.log_lambda_re, self.lambda_im, self.P, self.B, self.C)

    def _discretize(self) -> _Disc:
        # dense parts in float64 whatever the parameters' dtype: every squaring of Abar doubles the relative
        # error (1e-4 after ten in float32, see ``Blocks.to``); they cost O(H N^3 log T), no batch or T factor
        log_dt, log_re, im, *cplx = (p.double() for p in self._kernel_params())
        dt = torch.exp(log_dt)  # (H,)
        Lambda = torch.complex(-torch.exp(log_re), im)  # (H, M)
        P, B, Ct = (torch.view_as_complex(p.contiguous()) for p in cplx)
        A_r, B_r, Ct_r = dplr_to_real(Lambda, P, B, Ct)
        Abar, Bbar = bilinear(A_r, B_r, dt)
        E, R = 2 / dt[:, None] + Lambda, 1 / (2 / dt[:, None] - Lambda)
        corr = 1 + _lowrank(P, R * P)
        real, cplx = self._dtypes()
        return _Disc(dt.to(real), *(t.to(cplx) for t in (Lambda, P, B, Ct, E, R)), corr.to(real), Abar, Bbar, Ct_r)

    def _dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        real = self.log_dt.dtype
        return real, torch.complex128 if real == torch.float64 else torch.complex64

    def _output_vector(self, d: _Disc) -> tuple[Tensor, Tensor]:
        """``C = C~ (I - Abar^l_max)^{-1}``, real float64 ``(H, N)`` and complex ``(H, M)``: for the step and a
        carried state."""

        def build() -> tuple[Tensor, Tensor]:
            eye = torch.eye(d.Abar64.shape[-1], dtype=d.Abar64.dtype, device=d.Abar64.device)
            # C (I - Abar^L) = C~  <=>  (I - Abar^L)^T C^T = C~^T
            C_r = torch.linalg.solve((eye - torch.linalg.matrix_power(d.Abar64, self.l_max)).mT, d.Ct_real64)
            return C_r, output_from_real(C_r).to(self._dtypes()[1])

        return self._cache.get(self._kernel_params(), build, "C")

    def _get(self) -> _Disc:
        return self._cache.get(self._kernel_params(), self._discretize, "disc")

    def _kernel(self, d: _Disc, T: int) -> Tensor:
        return self._cache.get(self._kernel_params(), lambda: self._build_kernel(d, T), ("K", T))

    def _build_kernel(self, d: _Disc, T: int) -> Tensor:
        L, Ct = self.l_max, d.Ct
        if T > L:
            Ct_r, power = d.Ct_real64, torch.linalg.matrix_power(d.Abar64, L)
            while L < T:  # C~_2L = C~_L (I + Abar^L)
                Ct_r = Ct_r + (Ct_r[:, None, :] @ power)[:, 0]
                power, L = power @ power, 2 * L
            Ct = output_from_real(Ct_r).to(d.Ct.dtype)
        return dplr_kernel(d.Lambda, d.P, d.B, Ct, d.dt, L)[:, :T]  # (H, T)

    def kernel(self, T: int) -> Tensor:
        """The convolution kernel ``K (H, T)`` from the Cauchy form (for tests and inspection)."""
        return self._kernel(self._get(), T)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> S4State:
        p = self.C
        shape = (batch_size, self.d_model, self.d_state // 2, 2)
        return S4State(torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype))

    def _check_state(self, state: S4State, batch: int) -> Tensor:
        want = (batch, self.d_model, self.d_state // 2, 2)
        if not isinstance(state, S4State) or tuple(state.ssm.shape) != want:
            got = tuple(state.ssm.shape) if isinstance(state, S4State) else type(state).__name__
            raise ValueError(f"state must be S4State with ssm of shape {want}, got {got}")
        return state.ssm

    def _output(self, y: Tensor) -> Tensor:
        """(..., H) SSM output -> GELU -> Linear(H, 2H) -> GLU -> (..., H)."""
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def step(self, x: Tensor, state: S4State) -> tuple[Tensor, S4State]:
        self.check_input(x, step=True)
        s = torch.view_as_complex(self._check_state(state, x.shape[0]).contiguous())  # (B, H, M); never written
        d = self._get()
        v = d.E * s - d.P * _lowrank(d.P, s)[..., None] + 2 * d.B * x[..., None]  # (2/dt + A) x + 2 B u
        v = d.R * v
        s = v - d.R * d.P * (_lowrank(d.P, v) / d.corr)[..., None]  # Woodbury: (2/dt - A)^{-1}
        y = 2 * (self._output_vector(d)[1] * s).real.sum(-1) + self.D * x  # (B, H)
        return self._output(y), S4State(torch.view_as_real(s))

    def _forward(self, x: Tensor, state: S4State) -> tuple[Tensor, S4State]:
        s0 = self._check_state(state, x.shape[0]).flatten(-2)  # (B, H, N) real, interleaved
        d = self._get()
        u = x.transpose(1, 2)  # (B, H, T)
        carried = s0.requires_grad or bool(s0.any())
        T = u.shape[-1]
        C = self._output_vector(d)[0] if carried else None
        blocks = self._cache.get(
            self._kernel_params(), lambda: ssm_blocks(d.Abar64, d.Bbar64, C, T, carry=carried).to(self._dtypes()[0]),
            ("blocks", T, carried))
        y, s = dense_ssm(blocks, u, self._kernel(d, T), s0 if carried else None)
        y = y + self.D[:, None] * u
        return self._output(y.transpose(1, 2)), S4State(s.unflatten(-1, (-1, 2)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, l_max={self.l_max}"
