"""LRU: the Linear Recurrent Unit of Orvieto et al. 2023 (arXiv 2303.06349); see ``LRU``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.diag_scan import diag_scan
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_int, check_number, check_positive

__all__ = ["LRU", "LRUState"]


class LRUState(NamedTuple):
    h: Tensor  # (B, N, 2): real and imaginary parts of the paper's complex state x_k


@register_mixer("lru")
class LRU(Mixer):
    """LRU: complex diagonal linear recurrence (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De 2023,
    "Resurrecting Recurrent Neural Networks for Long Sequences", arXiv 2303.06349).

    A MIMO recurrence on N = d_state complex modes, input and output width H = D (paper's Appendix A)::

        lambda = exp(-exp(nu_log) + i exp(theta_log))          # (N,), |lambda| < 1 for any parameters
        gamma  = exp(gamma_log)                                 # (N,), init sqrt(1 - |lambda|^2)
        x_k    = diag(lambda) x_{k-1} + gamma ⊙ (B u_k)         # x: (B, N) complex; B = B_re + i B_im (N, H)
        y_k    = Re(C x_k) + D ⊙ u_k                            # C = C_re + i C_im (H, N); D (H,) real

    Init (Appendix A's ``init_lru_parameters``): ring init, u1, u2 ~ U[0, 1),
    ``nu_log = log(-log(u1 (r_max^2 - r_min^2) + r_min^2) / 2)``, ``theta_log = log(max_phase u2)``: |lambda|^2 is
    uniform in [r_min^2, r_max^2] (uniform over the ring's area, so |lambda| itself leans to r_max) and the phase
    uniform in [0, max_phase]; ``gamma_log = log(sqrt(1 - |lambda|^2))``, trained (Appendix A lists it among the
    parameters); B_re, B_im ~ N(0, 1/(2H)); C_re, C_im ~ N(0, 1/N); D ~ N(0, 1).

    Parallel form: ``ops.diag_scan`` (a chunked scan, equal to the step loop; the paper uses an associative
    scan, slower on a CPU: see that module).  The state is carried into and out of it.

    Departures and choices: the mixer is the recurrent layer only; the paper's block around it (norm, GELU, GLU
    or MLP, skip, dropout) is the model's job (LanguageModel puts norms, residuals and MLPs between mixers).
    d_state defaults to 2 * d_model: the paper sets N per task, and its tables were not at hand to pick one.
    The paper's optimiser settings (a smaller learning rate for nu, theta, gamma) belong to the training recipe
    and are not applied; the trainer already exempts these 1-D parameters from weight decay.  The uniform draws
    are clamped to >= the smallest normal float, so r_min = 0 never yields an infinite nu_log or theta_log.

    Args:
        d_model: width H = D.
        d_state: complex state size N, or None for 2 * d_model (None).
        r_min, r_max: ring radii, ``0 <= r_min <= r_max < 1`` (0.9, 0.999).
        max_phase: phases drawn in [0, max_phase] (2 pi).
        chunk_size: chunk length of the parallel scan, or None for ceil(sqrt(T)) (None).

    State (:class:`LRUState`): constant in T, ``h (B, N, 2)`` in the parameters' dtype: ``N * 8`` bytes per
    sequence in float32 (1 KiB at D = 64 with the default N = 128).
    """

    state_growth = "constant"
    contract_kwargs = {"d_state": 6, "chunk_size": 4}  # several chunks and a partial one at the contract's T

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        chunk_size: int | None = None,
    ):
        super().__init__(d_model)
        check_int(d_state=d_state, chunk_size=chunk_size, allow_none=True)
        check_number("r_min", r_min, 0, 1, high_open=True)
        check_number("r_max", r_max, 0, 1, high_open=True)
        if r_min > r_max:
            raise ArgumentError("r_min", "<= r_max", f"r_min={r_min!r} > r_max={r_max!r}")
        check_positive(max_phase=max_phase)
        H = self.d_model
        N = 2 * H if d_state is None else d_state
        self.d_state, self.chunk_size = N, chunk_size
        self.r_min, self.r_max, self.max_phase = float(r_min), float(r_max), float(max_phase)

        tiny = torch.finfo(torch.float32).tiny
        u1, u2 = torch.rand(N).clamp_min(tiny), torch.rand(N).clamp_min(tiny)  # (N,)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        # log sqrt(1 - |lambda|^2) with |lambda|^2 = exp(-2 exp(nu_log)); expm1: no cancellation near |lambda| = 1
        self.gamma_log = nn.Parameter(0.5 * torch.log(-torch.expm1(-2 * torch.exp(nu_log))))
        self.B_re = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.B_im = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.C_re = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.C_im = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H))

    def log_lambda(self) -> Tensor:
        """log of the eigenvalues, ``-exp(nu_log) + i exp(theta_log)``: (N,) complex."""
        return torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))

    def eigenvalues(self) -> Tensor:
        """lambda (N,) complex, for tests and inspection."""
        return torch.exp(self.log_lambda())

    def _drive(self, u: Tensor) -> Tensor:
        """gamma ⊙ (B u): (..., H) real -> (..., N) complex."""
        # gamma scales the (N, H) weight, not the (..., N) activations; rows interleaved (re, im) per mode so
        # the matmul's output is already view_as_complex's layout (no copy)
        W = (torch.stack([self.B_re, self.B_im], dim=1) * torch.exp(self.gamma_log)[:, None, None]).flatten(0, 1)
        return torch.view_as_complex(F.linear(u, W).unflatten(-1, (self.d_state, 2)))  # W: (2N, H)

    def _readout(self, h: Tensor, u: Tensor) -> Tensor:
        """Re(C h) + D ⊙ u: h (..., N) complex, u (..., H) -> (..., H)."""
        # Re(C h) = C_re Re h - C_im Im h, as one real matmul on view_as_real's interleaved (re, im) pairs
        W = torch.stack([self.C_re, -self.C_im], dim=-1).flatten(1)  # (H, 2N)
        return F.linear(torch.view_as_real(h).flatten(-2), W) + self.D * u

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LRUState:
        p = self.nu_log
        return LRUState(torch.zeros(batch_size, self.d_state, 2, device=device or p.device, dtype=dtype or p.dtype))

    def _check_state(self, state: LRUState, batch: int) -> Tensor:
        want = (batch, self.d_state, 2)
        if not isinstance(state, LRUState) or tuple(state.h.shape) != want:
            got = tuple(state.h.shape) if isinstance(state, LRUState) else type(state).__name__
            raise ValueError(f"state must be LRUState with h of shape {want}, got {got}")
        return torch.view_as_complex(state.h.to(self.nu_log.dtype).contiguous())  # (B, N); a view, never written

    def step(self, x: Tensor, state: LRUState) -> tuple[Tensor, LRUState]:
        self.check_input(x, step=True)
        h = self._check_state(state, x.shape[0])  # (B, N) complex
        u = x.to(self.nu_log.dtype)  # (B, H)
        h = torch.exp(self.log_lambda()) * h + self._drive(u)  # (B, N): a new tensor
        return self._readout(h, u).to(x.dtype), LRUState(torch.view_as_real(h))

    def _forward(self, x: Tensor, state: LRUState) -> tuple[Tensor, LRUState]:
        h0 = self._check_state(state, x.shape[0])  # (B, N) complex
        u = x.to(self.nu_log.dtype)  # (B, T, H)
        hs, h = diag_scan(self.log_lambda(), self._drive(u), h0, self.chunk_size)  # (B, T, N), (B, N)
        return self._readout(hs, u).to(x.dtype), LRUState(torch.view_as_real(h))

    def extra_repr(self) -> str:
        extra = f"d_state={self.d_state}, r_min={self.r_min}, r_max={self.r_max}, max_phase={self.max_phase:.4g}"
        return f"{super().extra_repr()}, {extra}, chunk_size={self.chunk_size}"
