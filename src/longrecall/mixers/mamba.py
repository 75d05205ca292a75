"""Mamba-1 block: a selective state-space model (S6) behind a gated, short-convolution front end."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import ShortConvolution, init_dt_bias
from ..ops.scan import fused_scan_available, selective_scan_chunked, selective_scan_fused, selective_scan_naive
from ..ops.scan.naive import scan_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_positive, is_int

__all__ = ["Mamba", "MambaState"]

SCANS: tuple[str, ...] = ("auto", "fused", "chunked", "naive")


class MambaState(NamedTuple):
    """Recurrent memory of one Mamba block: conv, the last ``d_conv - 1`` conv inputs (B, E, d_conv-1);
    ssm, the selective-scan state (B, E, N), float32 (float64 in float64 models)."""

    conv: Tensor
    ssm: Tensor


@register_mixer("mamba")
class Mamba(Mixer):
    """Mamba-1 selective SSM block (Gu & Dao 2023, arXiv 2312.00752), ``x (B, T, D) -> y (B, T, D)``.

    "Mamba: Linear-Time Sequence Modeling with Selective State Spaces".  The reference
    ``mamba_ssm/modules/mamba_simple.py`` ``Mamba`` (its slow path) with the same parameter names and
    shapes: a ``mamba_ssm`` or mambapy ``MambaBlock`` state dict loads with ``strict=True``.  Per
    token, with E = expand * D inner channels and N = d_state::

        x, z   = in_proj(h).chunk(2)                       # (E,), (E,)
        u      = SiLU(causal depthwise conv1d(x))          # kernel d_conv over time
        dt, B, C = split(x_proj(u), [R, N, N])             # R = dt_rank
        delta  = softplus(dt_proj(dt))                     # (E,), dt_proj has a bias
        h_t    = exp(delta ⊗ A) ⊙ h_{t-1} + (delta ⊙ u) ⊗ B,   A = -exp(A_log)  (E, N)
        out    = out_proj((h_t · C + D ⊙ u) ⊙ SiLU(z))

    Args:
        d_model: width D.
        d_state: state size N per channel (16).
        d_conv: causal depthwise convolution width (4).
        expand: E = int(expand * d_model) (2).
        dt_rank: rank R of the delta projection; "auto" is ceil(d_model / 16).
        dt_min, dt_max: range of the initial step sizes, sampled log-uniformly (0.001, 0.1).
        dt_init_floor: lower bound of the initial step sizes (1e-4).
        chunk_size: chunk length of the chunked scan (64).
        scan: "auto" (default: "fused" for CPU tensors when its C++ kernel builds here, else
            "chunked"), "fused" (the C++ CPU kernel, ``ops/scan/fused.py``; 8x the chunked form in
            training at B=32, T=64), "chunked" (PyTorch, O(B·E·N) saved memory per chunk, any device)
            or "naive" (the sequential spec).  All four compute the same function.

    State (:class:`MambaState`): constant in T, ``E * N * 4 + E * (d_conv - 1) * elem_bytes`` bytes per
    batch row (float32 ssm state; ``elem_bytes`` is the activation dtype's size).
    """

    state_growth = "constant"
    # small chunks so the contract's short sequences (T ~ 13) cross several chunk boundaries
    contract_kwargs = {"d_state": 4, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int | float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        scan: str = "auto",
    ):
        super().__init__(d_model)
        check_positive(d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size)
        check_positive(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor)
        check_choice("scan", scan, SCANS)
        if dt_rank == "auto":
            dt_rank = math.ceil(self.d_model / 16)
        if not is_int(dt_rank) or dt_rank <= 0:
            raise ArgumentError("dt_rank", "'auto' or a positive int", repr(dt_rank))
        if dt_min > dt_max:
            raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min!r}, dt_max={dt_max!r}")
        d_inner = int(expand * self.d_model)
        if d_inner < 1:  # a fractional expand can round to 0
            raise ArgumentError("expand", f"large enough that int(expand * d_model) >= 1 (d_model={self.d_model})",
                                repr(expand))

        self.d_state, self.d_conv, self.expand = int(d_state), int(d_conv), expand
        self.d_inner, self.dt_rank = d_inner, int(dt_rank)
        self.chunk_size, self.scan = int(chunk_size), scan
        E, N, R = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(self.d_model, 2 * E, bias=False)
        self.conv1d = ShortConvolution(E, self.d_conv, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.out_proj = nn.Linear(E, self.d_model, bias=False)

        # the reference's "random" dt_init: weights keep dt's variance, softplus(bias) log-uniform in [dt_min, dt_max]
        dt_init_std = R**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(E, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True  # as the reference: a generic init must not zero it

        # S4D-real initialisation A = -(n + 1); stored as log so that A = -exp(A_log) stays negative
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1)  # (E, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MambaState:
        device = self.A_log.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv = self.conv1d.init_state(batch_size, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=scan_dtype(dtype))
        return MambaState(conv, ssm)

    def _ssm_inputs(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """delta (…, E), B (…, N), C (…, N) from the conv output u (…, E)."""
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # dt_proj's bias is the reference's delta_bias
        return delta, B, C

    def _forward(self, x: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        u, conv = self.conv1d(xs, state.conv)  # (B, T, E)

        delta, B, C = self._ssm_inputs(u)  # (B, T, E), (B, T, N), (B, T, N)
        # A and D in at least float32 (the reference's .float(); float64 stays float64 for tests)
        dtype = scan_dtype(self.A_log.dtype)
        A, D = -torch.exp(self.A_log.to(dtype)), self.D.to(dtype)  # (E, N) < 0, (E,)
        scan = self.scan
        if scan == "auto":
            scan = "fused" if u.device.type == "cpu" and fused_scan_available() else "chunked"
        if scan == "fused":
            y, ssm = selective_scan_fused(u, delta, A, B, C, D, state.ssm)
        elif scan == "chunked":
            y, ssm = selective_scan_chunked(u, delta, A, B, C, D, state.ssm, self.chunk_size)
        else:
            y, ssm = selective_scan_naive(u, delta, A, B, C, D, state.ssm)
        y = y * F.silu(z)  # (B, T, E)
        return self.out_proj(y), MambaState(conv, ssm)

    def step(self, x: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token ``x (B, D)``: the recurrence."""
        self.check_input(x, step=True)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, E) each
        u, conv = self.conv1d.step(xs, state.conv)  # (B, E)

        delta, B, C = self._ssm_inputs(u)  # (B, E), (B, N), (B, N)
        dtype = state.ssm.dtype  # float32 state even for low-precision activations
        delta_, u_ = delta.to(dtype), u.to(dtype)
        A = -torch.exp(self.A_log.to(dtype))  # (E, N)
        decay = torch.exp(delta_.unsqueeze(-1) * A)  # (B, E, N)
        drive = (delta_ * u_).unsqueeze(-1) * B.to(dtype).unsqueeze(1)  # (B, E, N)
        ssm = decay * state.ssm + drive  # out of place: the given state is never touched
        y = torch.einsum("ben,bn->be", ssm, C.to(dtype)) + self.D.to(dtype) * u_  # (B, E)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), MambaState(conv, ssm)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, scan={self.scan!r}, chunk_size={self.chunk_size}"
        )
