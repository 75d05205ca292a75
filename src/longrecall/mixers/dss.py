"""DSS: diagonal state spaces (Gupta, Gu, Berant 2022): a diagonal SSM, skew-HiPPO init, exp or softmax kernel."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ssm import ParamCache, diagonal, legs_nplr
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_int

__all__ = ["DSS", "DSSState"]

VARIANTS = ("exp", "softmax")
_CACHE_SIZE = 8  # a discretisation and a plan per length: 4 lengths for the per-call softmax


class DSSState(NamedTuple):
    ssm: Tensor  # (B, H, N/2, 2): real and imaginary parts of the complex modes


@register_mixer("dss")
class DSS(Mixer):
    """DSS: diagonal state-space layer (Gupta, Gu, Berant 2022, "Diagonal State Spaces are as Effective as
    Structured State Spaces", arXiv 2203.14343), variants DSS-exp (default) and DSS-softmax.

    Each of the H = D channels is a SISO SSM with a diagonal A = diag(Lambda), N = d_state real states held as
    M = N/2 complex modes with implied conjugates; B is absorbed into w. Zero-order hold with step dt
    (Proposition 1 of the paper; the conjugates' factor 2 is absorbed into w)::

        Lambda_n = Lambda_re_n + i Lambda_im_n  (M,), shared by the channels;   dt = exp(log_dt)  (H,);   w (H, M)
        exp:      Lambda_re = -exp(Lambda_log_neg_re) < 0
                  K_k = Re(sum_n w_n Lambda_n^-1 (e^{Lambda_n dt} - 1) e^{k Lambda_n dt})
        softmax:  Lambda_re free
                  K_k = Re(sum_n w_n Lambda_n^-1 softmax_k(k Lambda_n dt)),   softmax over k = 0..L-1
        y = K * u + D u;   recurrent: s_k = e^{Lambda dt} s_{k-1} + u_k,   y_k = Re(sum_n v_n s_{k,n}) + D u_k
        v = w Lambda^-1 (e^{Lambda dt} - 1) (exp),   v = w Lambda^-1 / sum_{j<L} e^{j Lambda dt} (softmax)

    Init (the paper's): Lambda_n = -1/2 + i omega_n with omega_n > 0 the imaginary parts of the eigenvalues of
    HiPPO-LegS's normal part (``ops.ssm.legs_nplr``; ascending 0.26, 0.91, 1.70, ... up to ~1300 at N = 64, not
    pi n, which is S4D-Lin's simplification); log dt ~ U[log dt_min, log dt_max]; w complex normal (variance 1/2
    per part: unsure of the paper's scale); D ~ N(0, 1). Output stage as S4D's (GELU -> Linear(H, 2H) -> GLU;
    unsure which output stage the paper's runs used); dropout omitted. Written without the paper at hand, so
    also unsure: one dt per channel (the authors' code can give Re and Im separate dt), Lambda shared by the
    channels (not per channel as in S4D), exact 1/Lambda (the code adds an epsilon).

    Softmax and the length L: the normaliser Z_n(L) = sum_{j<L} e^{j Lambda_n dt} = (e^{L Lambda_n dt} - 1) /
    (e^{Lambda_n dt} - 1) depends on L, which the paper takes as the input length T (``softmax_length=None``):
    every call normalises over its own T. The state (the unnormalised modes s) is the exp form's and carries
    exactly, but outputs of a length-T call use Z(T), a step (a one-token call) Z(1) = 1 and a chunked sequence
    each chunk's length, so the step loop and the chunked carry cannot match the outputs (nor the gradients):
    listed in ``contract.KNOWN_GAPS`` under ``"dss(variant='softmax')"``. With ``softmax_length=L`` the normaliser
    is Z(L) at any T: the exp form's recurrence with another readout (v = w Lambda^-1 / Z(L)), equal to the
    paper's kernel at T = L, passing the whole contract. For Re Lambda > 0 (softmax only) the kernel is computed
    stably when L = T, as the paper, normalised from the last position; the state of such a mode grows like
    e^{k Re(Lambda) dt}, as any recurrent form of an unstable system, and overflows float32 past
    k Re(Lambda) dt ~ 88.

    Runs on :mod:`~longrecall.ops.ssm.diagonal` (which reads y = 2 Re(sum W s)): exp is its zero-order hold with
    C = w / 2, softmax that W divided by (e^{L Lambda dt} - 1), i.e. v / 2.

    Args:
        d_model: width H = D.
        d_state: real state size N per channel, even (64); N/2 complex modes.
        variant: "exp" (default, the one with a length-free recurrent form) or "softmax".
        softmax_length: None (the paper: normalise over each call's length) or a fixed L; softmax only.
        dt_min, dt_max: range of the log-uniform step-size init, ``0 < dt_min <= dt_max`` (1e-3, 1e-1).
        kernel_cache: memoise the discretisation and kernel spectra at inference, as :class:`S4D` (True).

    State (:class:`DSSState`): constant in T, ``ssm (B, H, N/2, 2)``, ``H * N * 4`` bytes per sequence in float32.
    """

    state_growth = "constant"

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        variant: str = "exp",
        softmax_length: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        kernel_cache: bool = True,
    ):
        super().__init__(d_model)
        check_choice("variant", variant, VARIANTS)
        check_int(softmax_length=softmax_length, allow_none=True)
        if softmax_length is not None and variant != "softmax":
            raise ArgumentError("softmax_length", "None unless variant='softmax'", repr(softmax_length))
        diagonal.check_args(d_state=d_state, dt_min=dt_min, dt_max=dt_max)
        H, N, M = self.d_model, d_state, d_state // 2
        self.d_state, self.variant, self.softmax_length = N, variant, softmax_length
        self.kernel_cache = bool(kernel_cache)
        self.log_dt = nn.Parameter(diagonal.init_log_dt(H, dt_min, dt_max))  # (H,)
        self._re_name = "Lambda_log_neg_re" if variant == "exp" else "Lambda_re"
        re = torch.full((M,), math.log(0.5) if variant == "exp" else -0.5)  # Re Lambda = -1/2
        self.register_parameter(self._re_name, nn.Parameter(re))
        self.Lambda_im = nn.Parameter(-legs_nplr(N).Lambda.imag.flip(0).float())  # (M,) ascending, > 0
        self.W = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5))  # complex w as (re, im)
        self.D = nn.Parameter(torch.randn(H))
        for param in (self.log_dt, getattr(self, self._re_name), self.Lambda_im):
            param._no_weight_decay = True
        self.out = nn.Linear(H, 2 * H)
        self._cache_kernels = ParamCache(size=_CACHE_SIZE)

    def _kernel_params(self) -> tuple[Tensor, ...]:
        return (self.log_dt, getattr(self, self._re_name), self.Lambda_im, self.W)

    def eigenvalues(self) -> Tensor:
        """Lambda ``(M,)`` complex."""
        re = -torch.exp(self.Lambda_log_neg_re) if self.variant == "exp" else self.Lambda_re
        return torch.complex(re, self.Lambda_im)

    def _length(self, T: int | None) -> int | None:
        """The softmax's L: fixed, or the call's length (a step is a call of one token); None for exp."""
        return None if self.variant == "exp" else self.softmax_length or (T or 1)

    def _discretize(self, L: int | None, sign: Tensor | None = None) -> diagonal.Disc:
        """The modes for exp (``L=None``) or a softmax over ``L`` positions; ``sign (M,)`` of +-1 flips modes
        (Lambda, w -> -Lambda, -w: the same softmax kernel, reversed in time)."""
        lam, w = self.eigenvalues(), torch.view_as_complex(self.W) / 2  # (M,), (H, M)
        if sign is not None:
            lam, w = lam * sign, w * sign
        d = diagonal.zoh(torch.exp(self.log_dt)[:, None], lam.real, lam.imag, w)
        return d if L is None else d._replace(W=d.W / diagonal.exp_em1(L * d.dtA_re, L * d.dtA_im)[1])

    def _reversed_kernel(self, T: int) -> Tensor | None:
        """The kernel ``(H, T)`` of a softmax over the call's length with growing modes (Re Lambda > 0), as the
        paper: those modes run backwards, softmax_k = e^{-(T-1-k) z} / sum_m e^{-m z} (z = Lambda dt), since their
        forward powers may overflow; None when there are none (the forward powers then serve)."""
        if self.variant == "exp" or self._length(T) != T:
            return None
        grow = self.eigenvalues().real > 0  # (M,)
        if not bool(grow.any()):
            return None
        d = self._discretize(T, 1 - 2 * grow.to(self.log_dt.dtype))
        return diagonal.kernel(d._replace(W=d.W * ~grow), T) + diagonal.kernel(d._replace(W=d.W * grow), T).flip(-1)

    def _get(self, T: int | None) -> tuple[diagonal.Disc, diagonal.Plan | None]:
        """Discretisation (normalised for T's softmax) and (for ``T``) the plan: cached at inference."""
        params, cache, on, L = self._kernel_params(), self._cache_kernels, self.kernel_cache, self._length(T)
        d = cache.get(params, lambda: self._discretize(L), ("disc", L), enabled=on)
        if T is None:
            return d, None
        return d, cache.get(params, lambda: diagonal.plan(d, T, self._reversed_kernel(T)), T, enabled=on)

    def kernel(self, T: int) -> Tensor:
        """The materialised convolution kernel ``K (H, T)`` (for tests and inspection)."""
        K = self._reversed_kernel(T)
        return K if K is not None else diagonal.kernel(self._discretize(self._length(T)), T)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> DSSState:
        return DSSState(diagonal.zero_modes(batch_size, self.d_model, self.d_state // 2, self.W, device, dtype))

    def _check_state(self, state: DSSState, batch: int) -> Tensor:
        return diagonal.check_modes(state, DSSState, batch, self.d_model, self.d_state // 2)  # (B, H, M) complex

    def _output(self, y: Tensor) -> Tensor:
        """(..., H) SSM output -> GELU -> Linear(H, 2H) -> GLU -> (..., H)."""
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def step(self, x: Tensor, state: DSSState) -> tuple[Tensor, DSSState]:
        self.check_input(x, step=True)
        s = self._check_state(state, x.shape[0])  # (B, H, M) complex
        y, s = diagonal.step(self._get(None)[0], self.D, x, s)  # (B, H), (B, H, M)
        return self._output(y), DSSState(torch.view_as_real(s))

    def _forward(self, x: Tensor, state: DSSState) -> tuple[Tensor, DSSState]:
        s0 = self._check_state(state, x.shape[0])  # (B, H, M) complex
        d, p = self._get(x.shape[1])
        y, s = diagonal.apply(d, p, self.D, x.transpose(1, 2), s0)  # (B, H, T), (B, H, M)
        return self._output(y.transpose(1, 2)), DSSState(torch.view_as_real(s))

    def extra_repr(self) -> str:
        extra = f"d_state={self.d_state}, variant={self.variant!r}, kernel_cache={self.kernel_cache}"
        if self.softmax_length is not None:
            extra += f", softmax_length={self.softmax_length}"
        return f"{super().extra_repr()}, {extra}"
