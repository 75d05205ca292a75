"""LSSL: the Linear State-Space Layer, a dense HiPPO-LegS state space per channel; see ``LSSL``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ssm import Blocks, ParamCache, bilinear, dense_ssm, hippo_legs, ssm_blocks
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_bool, check_int, check_positive

__all__ = ["LSSL", "LSSLState"]


class LSSLState(NamedTuple):
    ssm: Tensor  # (B, H, N)


@register_mixer("lssl")
class LSSL(Mixer):
    """LSSL (Gu, Johnson, Goel, Saab, Dao, Rudra, Re 2021, "Combining Recurrent, Convolutional, and
    Continuous-time Models with Linear State-Space Layers", arXiv 2110.13985).

    Each of the H = D channels is an independent SISO linear SSM with a dense N x N state matrix,
    HiPPO-LegS (``ops.ssm.hippo``: ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` below the diagonal, ``-(n+1)`` on it,
    ``B_n = sqrt(2n+1)``), discretised by the bilinear (generalised) transform with a learned step per
    channel::

        Abar = (I - dt/2 A)^{-1} (I + dt/2 A),   Bbar = (I - dt/2 A)^{-1} dt B
        recurrent:  x_k = Abar x_{k-1} + Bbar u_k,   y_k = C x_k + D u_k                 # x: (B, H, N)
        parallel:   y = K * u + D u + C Abar^{k+1} x_{-1},   K_j = C Abar^j Bbar        # K * u: FFT conv

    The kernel is the Krylov sequence of ``Abar`` applied to ``Bbar``, computed densely by blocked
    doubling (``ops.ssm.dense``, O(H N^3 log T + H N T)); the final state and the carried state's terms
    use the same blocks (skipped when the incoming state is zero and needs no gradient).  This dense
    path is also the reference S4's Cauchy kernel is tested against.

    Variants: ``learn_A=False`` (default, the paper's fixed-A LSSL: A and B stay HiPPO-LegS buffers) or
    ``learn_A=True`` (A and B trained from the HiPPO init, one pair shared by all channels, as the
    dt are what distinguish channels).  Init: dt log-uniform in [dt_min, dt_max]; C ~ N(0, 1); D ~ N(0, 1).
    Output stage as this repo's ``s4d``: ``y -> GELU -> Linear(H, 2H) -> GLU``.

    Departures: one SSM per channel (the paper's layer, as we recall it, can carry M copies per channel,
    each with its own dt, mixed by a linear map); the paper computes the Krylov kernel with fast structured-matrix
    algorithms, this with dense matrix powers (exact, O(N^3) per doubling); learned A is a dense
    matrix (the paper keeps A in a structured class); no dropout.  Numerics: the discretisation and the
    Krylov blocks are computed in float64 and cast to the parameters' dtype (repeated squaring loses
    ~1e-4 in float32 by T = 4096).  Unsure: whether the paper's fixed-A variant also froze dt (here dt
    is always learned), and its init scale of C.

    Args:
        d_model: width H = D.
        d_state: state size N per channel (64).
        learn_A: train A and B (False).
        dt_min, dt_max: range of the log-uniform step-size init, ``0 < dt_min <= dt_max`` (1e-3, 1e-1).

    State (:class:`LSSLState`): constant in T, ``ssm (B, H, N)``: ``H * N * 4`` bytes per sequence in
    float32.  The discretisation and the kernels of the last few lengths are memoised while no graph is
    recorded for them (inference).
    """

    state_growth = "constant"
    contract_kwargs = {"d_state": 8}

    def __init__(self, d_model: int, *, d_state: int = 64, learn_A: bool = False, dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__(d_model)
        check_int(d_state=d_state)
        check_bool(learn_A=learn_A)
        check_positive(dt_min=dt_min, dt_max=dt_max)
        if dt_min > dt_max:
            raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min!r} > dt_max={dt_max!r}")
        H, N = self.d_model, d_state
        self.d_state, self.learn_A = N, learn_A
        A, B = hippo_legs(N, torch.float32)
        if learn_A:
            self.A, self.B = nn.Parameter(A), nn.Parameter(B)  # (N, N), (N,)
            self.A._no_weight_decay = True
        else:
            self.register_buffer("A", A)
            self.register_buffer("B", B)
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.log_dt._no_weight_decay = True
        self.C = nn.Parameter(torch.randn(H, N))
        self.D = nn.Parameter(torch.randn(H))
        self.out = nn.Linear(H, 2 * H)
        self._cache = ParamCache(size=8)

    def _discretize(self) -> tuple[Tensor, Tensor]:
        # float64 whatever the parameters' dtype: the Krylov blocks square Abar log2(T) times, each squaring
        # doubling the relative error (see ``Blocks.to``); O(H N^3 log T), no batch or T factor
        return bilinear(self.A.double(), self.B.double(), torch.exp(self.log_dt.double()))  # (H, N, N), (H, N)

    def _params(self) -> tuple[Tensor, ...]:
        return (self.log_dt, self.A, self.B, self.C)

    def _step_params(self) -> tuple[Tensor, ...]:
        return tuple(t.to(self.C.dtype) for t in self._cache.get(self._params(), self._discretize, "disc"))

    def _blocks(self, T: int, carry: bool) -> Blocks:
        """Discretisation, kernel and Krylov blocks for length T (memoised at inference)."""
        def build() -> Blocks:
            Abar, Bbar = self._cache.get(self._params(), self._discretize, "disc")
            return ssm_blocks(Abar, Bbar, self.C.double(), T, carry=carry).to(self.C.dtype)

        return self._cache.get(self._params(), build, (T, carry))

    def kernel(self, T: int) -> Tensor:
        """The convolution kernel ``K (H, T)``, ``T >= 1``."""
        return self._blocks(T, False).K

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LSSLState:
        p = self.C
        return LSSLState(torch.zeros(batch_size, self.d_model, self.d_state, device=device or p.device,
                                     dtype=dtype or p.dtype))

    def _check_state(self, state: LSSLState, batch: int) -> Tensor:
        want = (batch, self.d_model, self.d_state)
        if not isinstance(state, LSSLState) or tuple(state.ssm.shape) != want:
            got = tuple(state.ssm.shape) if isinstance(state, LSSLState) else type(state).__name__
            raise ValueError(f"state must be LSSLState with ssm of shape {want}, got {got}")
        return state.ssm

    def _output(self, y: Tensor) -> Tensor:
        """(..., H) SSM output -> GELU -> Linear(H, 2H) -> GLU -> (..., H)."""
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def step(self, x: Tensor, state: LSSLState) -> tuple[Tensor, LSSLState]:
        self.check_input(x, step=True)
        s = self._check_state(state, x.shape[0])  # (B, H, N); never written
        Abar, Bbar = self._cache.get(self._params(), self._step_params, "step")
        s = (Abar @ s[..., None])[..., 0] + Bbar * x[..., None]
        y = (self.C * s).sum(-1) + self.D * x  # (B, H)
        return self._output(y), LSSLState(s)

    def _forward(self, x: Tensor, state: LSSLState) -> tuple[Tensor, LSSLState]:
        s0 = self._check_state(state, x.shape[0])  # (B, H, N)
        u = x.transpose(1, 2)  # (B, H, T)
        carried = s0.requires_grad or bool(s0.any())
        blocks = self._blocks(u.shape[-1], carried)
        y, s = dense_ssm(blocks, u, blocks.K, s0 if carried else None)
        y = y + self.D[:, None] * u
        return self._output(y.transpose(1, 2)), LSSLState(s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, learn_A={self.learn_A}"
