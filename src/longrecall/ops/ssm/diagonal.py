"""Diagonal complex state spaces: the core of S4D, DSS and H3's diagonal SSM.

``H`` independent SISO channels of ``M`` complex modes each (``N = 2M`` real states: every mode stands for a
conjugate pair, hence ``2 Re``).  For an input ``u (..., H, T)`` from the carried modes ``s_{-1} = s0 (..., H, M)``::

    s_k = dA s_{k-1} + u_k,   y_k = 2 Re(sum_n W_n s_k,n) + D u_k                        # the recurrence (step)
    y = K * u + D u + 2 Re(sum_n W_n dA_n^{k+1} s0_n),   K_j = 2 Re(sum_n W_n dA_n^j)     # the parallel form
    s_{T-1} = sum_{m < T} dA^m u_{T-1-m} + dA^T s0

``Disc`` holds ``dA = exp(dt A)`` and ``W`` (length-free); a mixer builds it from its own parameterisation
(``zoh``, ``s4d_discretize``).  ``plan(d, T)`` holds the parameter-only pieces for one length (cacheable:
``ParamCache``), ``apply`` the input-dependent ones.  Complex ``torch.exp`` is slow on CPU, so every power is
``exp(j dt Re A) (cos, sin)(j dt Im A)``, factored as ``dA^j = dA^{ic} dA^r`` (``c = ceil(sqrt(T))``):
``H M (c + T/c)`` transcendentals, and every sum over time is a real batched matmul (O(H M T), no loop over T).
The spec is the dense real system (``dplr_to_real`` with ``P = 0``) run by ``naive.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...validation import ArgumentError, check_choice, check_int, check_positive
from ..conv import causal_conv_fft_freq, kernel_rfft

__all__ = ["Disc", "Plan", "INITS", "check_args", "init_log_dt", "s4d_init", "s4d_discretize", "exp_em1", "zoh",
           "kernel", "plan", "apply", "step", "zero_modes", "check_modes"]

INITS = ("lin", "inv")  # S4D's imaginary parts


class Disc(NamedTuple):
    """Discretised parameters (length-free)."""

    dtA_re: Tensor  # (H, M) dt * Re A
    dtA_im: Tensor  # (H, M) dt * Im A
    dA: Tensor  # (H, M) complex, exp(dt A)
    W: Tensor  # (H, M) complex readout: y = 2 Re(sum_n W_n s_n) + D u


class Plan(NamedTuple):
    """Everything the parallel form needs for one length T (input-independent)."""

    c: int  # inner block length of the factorisation j = i*c + r
    nc: int  # number of blocks, nc * c >= T
    lo: Tensor  # (H, 2M, c) real: [Re; Im] of dA^r, r = 0..c-1
    lo_t: Tensor  # (H, c, 2M) lo transposed, contiguous (bmm copies strided operands per matrix)
    hi: Tensor  # (H, nc, M) complex: dA^{i c}, i = 0..nc-1
    k_f: Tensor  # (H, T + 1) complex: rfft of the kernel K at n = 2T
    dA_T: Tensor  # (H, M) complex: dA^T, carries the initial state to the end


def check_args(*, d_state: int, dt_min: float, dt_max: float, init: str | None = None) -> None:
    """The arguments every diagonal SSM shares: an even ``d_state``, ``0 < dt_min <= dt_max``, an S4D ``init``."""
    check_int(d_state=d_state)
    if d_state % 2:
        raise ArgumentError("d_state", "a positive even int (N/2 complex modes)", repr(d_state))
    if init is not None:
        check_choice("init", init, INITS)
    check_positive(dt_min=dt_min, dt_max=dt_max)
    if dt_min > dt_max:
        raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min!r} > dt_max={dt_max!r}")


def init_log_dt(H: int, dt_min: float, dt_max: float) -> Tensor:
    """``log dt ~ U[log dt_min, log dt_max]`` ``(H,)`` (one draw of ``torch.rand``)."""
    return torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def s4d_init(H: int, N: int, init: str, dt_min: float, dt_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """S4D's ``log_dt (H,)``, ``log_A_real (H, M)``, ``A_imag (H, M)``, ``C (H, M, 2)`` (Gu et al. 2022).

    Re A = -1/2; Im A = pi n ("lin", S4D-Lin) or (N/pi) (N/(2n+1) - 1) ("inv"); C complex normal, variance 1/2
    per part.  Draws ``log_dt`` then ``C``.
    """
    M = N // 2
    log_dt = init_log_dt(H, dt_min, dt_max)
    n = torch.arange(M, dtype=torch.float32)
    a_imag = math.pi * n if init == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)  # (M,)
    return log_dt, torch.full((H, M), math.log(0.5)), a_imag.repeat(H, 1), torch.randn(H, M, 2) * math.sqrt(0.5)


def exp_em1(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(z)`` and ``exp(z) - 1`` for ``z = a + i b``, the latter without cancellation (dt A can be ~1e-4)."""
    mag, cos, sin = torch.exp(a), torch.cos(b), torch.sin(b)
    em1_re = torch.expm1(a) * cos - 2 * torch.sin(b / 2) ** 2  # Re: expm1(a) cos b - 2 sin^2(b/2)
    return torch.complex(mag * cos, mag * sin), torch.complex(em1_re, mag * sin)


def zoh(dt: Tensor, A_re: Tensor, A_im: Tensor, C: Tensor) -> Disc:
    """Zero-order hold with ``B = 1``: ``dA = exp(dt A)``, ``W = C (exp(dt A) - 1) / A``; ``dt`` broadcasts
    against ``A`` to ``(H, M)``, ``C (H, M)`` complex, ``A != 0``."""
    dtA_re, dtA_im = dt * A_re, dt * A_im
    dA, em1 = exp_em1(dtA_re, dtA_im)
    return Disc(dtA_re, dtA_im, dA, C * (em1 / torch.complex(A_re, A_im)))


def s4d_discretize(log_dt: Tensor, log_A_real: Tensor, A_imag: Tensor, C: Tensor) -> Disc:
    """S4D's parameterisation: ``dt = exp(log_dt)``, ``A = -exp(log_A_real) + i A_imag`` (Re A < 0), C as (re, im)."""
    return zoh(torch.exp(log_dt)[:, None], -torch.exp(log_A_real), A_imag, torch.view_as_complex(C))


def _powers(dtA_re: Tensor, dtA_im: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
    """Re and Im of dA^j = exp(j dt A) for real exponents ``j (L,)``: each ``(H, M, L)``."""
    mag = torch.exp(dtA_re[..., None] * j)  # real exp, cos, sin: 3-4x faster than complex exp
    ang = dtA_im[..., None] * j
    return mag * torch.cos(ang), mag * torch.sin(ang)


def _blocks(d: Disc, T: int) -> tuple[int, int, Tensor, Tensor]:
    """``c``, ``nc``, ``lo (H, 2M, c)`` and ``hi (H, nc, M)`` of the factorisation ``dA^{ic + r}``."""
    c = math.isqrt(T - 1) + 1  # ceil(sqrt(T)) for T >= 1
    nc = -(-T // c)
    ar = torch.arange(max(c, nc) + 1, dtype=d.dtA_re.dtype, device=d.dtA_re.device)
    lo_re, lo_im = _powers(d.dtA_re, d.dtA_im, ar[:c])  # (H, M, c)
    hi_re, hi_im = _powers(d.dtA_re, d.dtA_im, ar[:nc] * c)  # (H, M, nc)
    return c, nc, torch.cat([lo_re, lo_im], dim=1), torch.complex(hi_re, hi_im).transpose(1, 2).contiguous()


def _response(W: Tensor, lo: Tensor, hi: Tensor, T: int) -> Tensor:
    """``2 Re(sum_n W_n dA_n^j)`` for ``j < T`` from ``W (..., H, M)``: ``(..., H, T)``."""
    g = W[..., None, :] * hi  # (..., H, nc, M): W dA^{ic}
    # [ic + r] = 2 Re(sum_n g[i, n] dA^r_n) = 2 (Re g Re dA^r - Im g Im dA^r): one real batched matmul
    return (2 * (torch.cat([g.real, -g.imag], dim=-1) @ lo)).flatten(-2)[..., :T]  # (..., H, nc c) -> (..., H, T)


def kernel(d: Disc, T: int) -> Tensor:
    """The convolution kernel ``K_j = 2 Re(sum_n W_n dA_n^j)``, ``(H, T)``."""
    _, _, lo, hi = _blocks(d, T)
    return _response(d.W, lo, hi, T)


def plan(d: Disc, T: int, K: Tensor | None = None) -> Plan:
    """The parallel form's pieces for length ``T``; the convolution uses ``K (H, T)`` when given (a kernel the
    powers of ``dA`` cannot give stably, e.g. DSS-softmax's growing modes), else ``kernel(d, T)``."""
    c, nc, lo, hi = _blocks(d, T)
    if K is None:
        K = _response(d.W, lo, hi, T)
    end_re, end_im = _powers(d.dtA_re, d.dtA_im, lo.new_full((1,), T))  # (H, M, 1)
    dA_T = torch.complex(end_re, end_im)[..., 0]
    return Plan(c, nc, lo, lo.transpose(1, 2).contiguous(), hi, kernel_rfft(K, T), dA_T)


def apply(d: Disc, p: Plan, D: Tensor, u: Tensor, s0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The parallel form over ``u (..., H, T)`` from the modes ``s0 (..., H, M)`` (``None``: zero, and its terms
    are skipped): ``y (..., H, T)`` and the final modes ``(..., H, M)``.  ``D (H,)``."""
    T, M = u.shape[-1], d.dA.shape[-1]
    if s0 is not None and not s0.requires_grad and not bool(s0.any()):
        # a zero carried state (every training batch starts from one) adds exact zeros to y, s and the
        # gradients: skip its terms, a third of an H3 layer's training step
        s0 = None
    y = causal_conv_fft_freq(u, p.k_f) + D[:, None] * u  # (..., H, T)
    if s0 is not None:  # 2 Re(sum_n W_n dA_n^{k+1} s0_n)
        y = y + _response(d.W * d.dA * s0, p.lo, p.hi, T)
    # final state: sum_m dA^m u_{T-1-m} (+ dA^T s0); m = i*c + r, zero-padded past T
    v = F.pad(u.flip(-1), (0, p.nc * p.c - T)).unflatten(-1, (p.nc, p.c))  # (..., H, nc, c)
    inner = v @ p.lo_t  # (..., H, nc, 2M): sum_r dA^r v[i c + r]
    inner = torch.complex(inner[..., :M], inner[..., M:])  # (..., H, nc, M)
    s = (inner * p.hi).sum(-2)  # (..., H, M): sum_i dA^{ic} inner[i]
    if s0 is not None:
        s = s + p.dA_T * s0
    return y, s


def step(d: Disc, D: Tensor, u: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """One token ``u (..., H)`` from the modes ``s (..., H, M)``: ``y (..., H)`` and new modes (``s`` untouched)."""
    s = d.dA * s + u[..., None]
    return 2 * (d.W * s).real.sum(-1) + D * u, s


def zero_modes(batch: int, H: int, M: int, like: Tensor, device=None, dtype=None) -> Tensor:
    """Zero carried modes ``(batch, H, M, 2)`` (complex as (re, im)), by default on ``like``'s device and dtype."""
    return torch.zeros((batch, H, M, 2), device=device or like.device, dtype=dtype or like.dtype)


def check_modes(state, cls: type, batch: int, H: int, M: int) -> Tensor:
    """The modes ``state.ssm (batch, H, M, 2)`` of a one-field state ``cls`` as complex ``(batch, H, M)``: a view,
    never to be written; a ``ValueError`` naming the state otherwise."""
    want = (batch, H, M, 2)
    if not isinstance(state, cls) or tuple(state.ssm.shape) != want:
        got = tuple(state.ssm.shape) if isinstance(state, cls) else type(state).__name__
        raise ValueError(f"state must be {cls.__name__} with ssm of shape {want}, got {got}")
    return torch.view_as_complex(state.ssm.contiguous())
