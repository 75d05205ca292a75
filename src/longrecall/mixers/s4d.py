"""S4D: the diagonal state-space layer of Gu et al. 2022 (arXiv 2206.11893); see ``S4D``."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.conv import causal_conv_fft_freq, kernel_rfft
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_int, check_positive

__all__ = ["S4D", "S4DState"]

INITS = ("lin", "inv")
_CACHE_LENGTHS = 4  # kernels kept per module (chunked prefill uses a couple of lengths)


class S4DState(NamedTuple):
    ssm: Tensor  # (B, H, N/2, 2): real and imaginary parts of the complex modes


class _Disc(NamedTuple):
    """Discretised parameters (T-independent)."""

    dtA_re: Tensor  # (H, M) dt * Re A  (< 0)
    dtA_im: Tensor  # (H, M) dt * Im A
    dA: Tensor  # (H, M) complex, exp(dt A)
    W: Tensor  # (H, M) complex, C * dB


class _Kernel(NamedTuple):
    """Everything the parallel form needs for one length T (input-independent)."""

    c: int  # inner block length of the factorisation j = i*c + r
    nc: int  # number of blocks, nc * c >= T
    lo: Tensor  # (H, 2M, c) real: [Re; Im] of dA^r, r = 0..c-1
    lo_t: Tensor  # (H, c, 2M) lo transposed, contiguous (bmm copies strided operands per matrix)
    hi: Tensor  # (H, nc, M) complex: dA^{i c}, i = 0..nc-1
    k_f: Tensor  # (H, T + 1) complex: rfft of the kernel K at n = 2T
    dA_T: Tensor  # (H, M) complex: dA^T, carries the initial state to the end


def _powers(dtA_re: Tensor, dtA_im: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
    """Re and Im of dA^j = exp(j dt A) for real exponents ``j (L,)``: each ``(H, M, L)``."""
    mag = torch.exp(dtA_re[..., None] * j)  # real exp, cos, sin: 3-4x faster than complex exp
    ang = dtA_im[..., None] * j
    return mag * torch.cos(ang), mag * torch.sin(ang)


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

    Speed: complex ``torch.exp`` is slow on CPU, so powers are ``exp(j dt Re A) (cos, sin)(j dt Im A)``,
    factored as ``dA^j = dA^{ic} dA^r`` (c = ceil(sqrt(T))): ``H M (c + T/c)`` transcendentals, and every
    contraction over time is a real batched matmul (O(H M T), no loop over T).

    Args:
        d_model: width H = D.
        d_state: real state size N per channel, even (64); N/2 complex modes.
        init: "lin" (S4D-Lin, default) or "inv" (S4D-Inv) imaginary parts.
        dt_min, dt_max: range of the log-uniform step-size init, ``0 < dt_min <= dt_max`` (1e-3, 1e-1).
        kernel_cache: memoise the discretisation and kernel spectrum of the last few lengths T when no
            graph is recorded for the kernel parameters (no_grad / inference_mode / frozen) (True).
            Keyed by T and a snapshot of the parameters' values, compared at every call (O(H N);
            values, since ``p.data.add_`` does not bump ``p._version``); training is unaffected.

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
        check_int(d_state=d_state)
        if d_state % 2:
            raise ArgumentError("d_state", "a positive even int (N/2 complex modes)", repr(d_state))
        check_choice("init", init, INITS)
        check_positive(dt_min=dt_min, dt_max=dt_max)
        if dt_min > dt_max:
            raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min!r} > dt_max={dt_max!r}")
        H, N, M = self.d_model, d_state, d_state // 2
        self.d_state, self.init, self.kernel_cache = N, init, bool(kernel_cache)

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # (H,)
        n = torch.arange(M, dtype=torch.float32)
        a_imag = math.pi * n if init == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)  # (M,)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.full((H, M), math.log(0.5)))
        self.A_imag = nn.Parameter(a_imag.repeat(H, 1))  # (H, M)
        self.C = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5))  # complex as (re, im)
        self.D = nn.Parameter(torch.randn(H))
        # no weight decay on the dynamics (S4/S4D; the flag is mamba_ssm's convention): it would pull every
        # mode toward Re A = -1 and dt = 1, one arbitrary timescale
        for param in (self.log_dt, self.log_A_real, self.A_imag):
            param._no_weight_decay = True
        self.out = nn.Linear(H, 2 * H)
        self._cache_params: tuple[Tensor, ...] | None = None
        self._cache_disc: _Disc | None = None
        self._cache_kernels: OrderedDict[int, _Kernel] = OrderedDict()

    def _kernel_params(self) -> tuple[Tensor, ...]:
        return (self.log_dt, self.log_A_real, self.A_imag, self.C)

    def _discretize(self) -> _Disc:
        dt = torch.exp(self.log_dt)[:, None]  # (H, 1)
        a_re = -torch.exp(self.log_A_real)  # (H, M)
        dtA_re, dtA_im = dt * a_re, dt * self.A_imag
        mag = torch.exp(dtA_re)
        cos, sin = torch.cos(dtA_im), torch.sin(dtA_im)
        dA = torch.complex(mag * cos, mag * sin)
        # exp(dtA) - 1 without cancellation (dt A can be ~1e-4): Re = expm1(a) cos b - 2 sin^2(b/2)
        em1 = torch.complex(torch.expm1(dtA_re) * cos - 2 * torch.sin(dtA_im / 2) ** 2, mag * sin)
        dB = em1 / torch.complex(a_re, self.A_imag)  # (H, M); |A| >= exp(log_A_real) > 0
        return _Disc(dtA_re, dtA_im, dA, torch.view_as_complex(self.C) * dB)

    def _build_kernel(self, d: _Disc, T: int, *, spectrum: bool = True) -> _Kernel | Tensor:
        H, M = d.dA.shape
        c = math.isqrt(T - 1) + 1  # ceil(sqrt(T)) for T >= 1
        nc = -(-T // c)
        ar = torch.arange(max(c, nc) + 1, dtype=d.dtA_re.dtype, device=d.dtA_re.device)
        lo_re, lo_im = _powers(d.dtA_re, d.dtA_im, ar[:c])  # (H, M, c)
        hi_re, hi_im = _powers(d.dtA_re, d.dtA_im, ar[:nc] * c)  # (H, M, nc)
        end_re, end_im = _powers(d.dtA_re, d.dtA_im, ar.new_full((1,), T))  # (H, M, 1)
        lo = torch.cat([lo_re, lo_im], dim=1)  # (H, 2M, c)
        hi = torch.complex(hi_re, hi_im).transpose(1, 2).contiguous()  # (H, nc, M)
        g = d.W[:, None, :] * hi  # (H, nc, M): W dA^{ic}
        # K[ic + r] = 2 Re(sum_n g[i, n] dA^r_n) = 2 (Re g Re dA^r - Im g Im dA^r): one real bmm
        K = 2 * (torch.cat([g.real, -g.imag], dim=-1) @ lo)  # (H, nc, c)
        K = K.reshape(H, nc * c)[:, :T]  # (H, T)
        if not spectrum:
            return K
        dA_T = torch.complex(end_re, end_im)[..., 0]
        return _Kernel(c, nc, lo, lo.transpose(1, 2).contiguous(), hi, kernel_rfft(K, T), dA_T)

    def kernel(self, T: int) -> Tensor:
        """The materialised convolution kernel ``K (H, T)`` (for tests and inspection)."""
        return self._build_kernel(self._discretize(), T, spectrum=False)

    def _use_cache(self) -> bool:
        if not self.kernel_cache:
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self._kernel_params()))

    def _cache_valid(self) -> bool:
        snap = self._cache_params
        return snap is not None and all(
            a.dtype == p.dtype and a.device == p.device and a.shape == p.shape and torch.equal(a, p)
            for a, p in zip(snap, self._kernel_params(), strict=True)
        )

    def _get(self, T: int | None) -> tuple[_Disc, _Kernel | None]:
        """Discretisation and (for ``T``) the kernel: cached at inference, fresh otherwise."""
        if not self._use_cache():
            d = self._discretize()
            return d, (None if T is None else self._build_kernel(d, T))
        # normal (not inference-mode) tensors without a graph: valid in any later context
        if not self._cache_valid():
            with torch.inference_mode(False), torch.no_grad():
                self._cache_params = tuple(p.detach().clone() for p in self._kernel_params())
                self._cache_disc, self._cache_kernels = self._discretize(), OrderedDict()
        if T is None:
            return self._cache_disc, None
        ker = self._cache_kernels.pop(T, None)
        if ker is None:
            with torch.inference_mode(False), torch.no_grad():
                ker = self._build_kernel(self._cache_disc, T)
        self._cache_kernels[T] = ker  # most recently used last
        while len(self._cache_kernels) > _CACHE_LENGTHS:
            self._cache_kernels.popitem(last=False)
        return self._cache_disc, ker

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> S4DState:
        p = self.log_A_real
        shape = (batch_size, self.d_model, self.d_state // 2, 2)
        return S4DState(torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype))

    def _check_state(self, state: S4DState, batch: int) -> Tensor:
        want = (batch, self.d_model, self.d_state // 2, 2)
        if not isinstance(state, S4DState) or tuple(state.ssm.shape) != want:
            got = tuple(state.ssm.shape) if isinstance(state, S4DState) else type(state).__name__
            raise ValueError(f"state must be S4DState with ssm of shape {want}, got {got}")
        return torch.view_as_complex(state.ssm.contiguous())  # (B, H, M) complex

    def _output(self, y: Tensor) -> Tensor:
        """(..., H) SSM output -> GELU -> Linear(H, 2H) -> GLU -> (..., H)."""
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def step(self, x: Tensor, state: S4DState) -> tuple[Tensor, S4DState]:
        self.check_input(x, step=True)
        s = self._check_state(state, x.shape[0])  # (B, H, M) complex; a view, never written
        d, _ = self._get(None)
        s = d.dA * s + x[..., None]  # (B, H, M): new tensor, the input state is untouched
        y = 2 * (d.W * s).real.sum(-1) + self.D * x  # (B, H)
        return self._output(y), S4DState(torch.view_as_real(s))

    def forward(self, x: Tensor, state: S4DState | None = None) -> tuple[Tensor, S4DState]:
        """Overrides ``Mixer.forward``: without a state the carried-state terms are skipped, not run on zeros."""
        self.check_input(x)
        B, T, _ = x.shape
        s0 = None if state is None else self._check_state(state, B)  # (B, H, M) complex
        if T == 0:
            return x.new_zeros(x.shape), (state if state is not None else self.init_state(B, device=x.device))
        d, ker = self._get(T)
        c, nc, M = ker.c, ker.nc, d.dA.shape[1]
        u = x.transpose(1, 2)  # (B, H, T)
        y = causal_conv_fft_freq(u, ker.k_f) + self.D[:, None] * u  # (B, H, T)
        if s0 is not None:
            # carried state: y_k += 2 Re(sum_n W_n dA_n^{k+1} s_n), same i*c + r factorisation
            g = (d.W * d.dA * s0)[..., None, :] * ker.hi  # (B, H, nc, M)
            y0 = 2 * (torch.cat([g.real, -g.imag], dim=-1) @ ker.lo)  # (B, H, nc, c)
            y = y + y0.flatten(2)[..., :T]
        # final state: s_{T-1} = sum_m dA^m u_{T-1-m} (+ dA^T s0); m = i*c + r, zero-padded past T
        v = F.pad(u.flip(-1), (0, nc * c - T)).unflatten(-1, (nc, c))  # (B, H, nc, c)
        inner = v @ ker.lo_t  # (B, H, nc, 2M): sum_r dA^r v[i c + r]
        inner = torch.complex(inner[..., :M], inner[..., M:])  # (B, H, nc, M)
        s = (inner * ker.hi).sum(-2)  # (B, H, M): sum_i dA^{ic} inner[i]
        if s0 is not None:
            s = s + ker.dA_T * s0
        return self._output(y.transpose(1, 2)), S4DState(torch.view_as_real(s))

    def extra_repr(self) -> str:
        extra = f"d_state={self.d_state}, init={self.init!r}, kernel_cache={self.kernel_cache}"
        return f"{super().extra_repr()}, {extra}"
