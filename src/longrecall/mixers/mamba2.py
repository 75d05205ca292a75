"""Mamba-2 block: the SSD layer (state-space duality) behind a gated, short-convolution front end."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules import RMSNorm, ShortConvolution, init_dt_bias
from ..ops.linear_attn import IMPLS, linear_attn, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_divisor, check_int, check_positive

__all__ = ["Mamba2", "Mamba2State"]


class Mamba2State(NamedTuple):
    """Recurrent memory of one Mamba-2 block: conv, the last conv inputs (B, E + 2N, d_conv-1); ssm
    (B, H, N, P), float32 or wider, the kernel's (K, V) layout: N (B / C: keys, queries) by P (values)."""

    conv: Tensor
    ssm: Tensor


@register_mixer("mamba2")
class Mamba2(Mixer):
    """Mamba-2 / SSD block (Dao & Gu 2024, arXiv 2405.21060): scalar-decay-per-head selective SSM.

    "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
    Duality".  The reference ``mamba_ssm/modules/mamba2_simple.py`` ``Mamba2Simple`` (non-fused path,
    ``ngroups=1``) with the same parameter names and shapes: its state dict loads with ``strict=True``.
    Per token, with E = expand * D inner channels, H = E / P heads of P channels, N = d_state::

        z, xBC, dt = split(in_proj(u), [E, E + 2N, H])
        x, B, C    = split(SiLU(causal depthwise conv1d(xBC)), [E, N, N])   # B, C shared by heads
        dt         = softplus(dt + dt_bias)                                  # (H,)
        h_t        = exp(dt_h A_h) h_{t-1} + B_t^T (dt_h x_t,h),   A = -exp(A_log)   # (N, P) per head
        out        = out_proj(rmsnorm((C_t h_t + D_h x_t,h) * SiLU(z)) * norm.weight)

    A scalar A per head makes this decayed linear attention (sections 3-4), run on ``ops.linear_attn``
    with ``q=C, k=B, v=dt*x, log_decay=dt*A``.  Init as the reference: dt log-uniform in [dt_min,
    dt_max] (floored) through ``dt_bias``, -A uniform in ``A_init_range``, ``D = 1``, ``norm.weight = 1``.

    Args:
        d_model: width D.
        d_state: state size N (16 at CPU scale; the paper uses 64-128).
        d_conv: causal depthwise convolution width (4).
        expand: E = int(expand * d_model) (2).
        headdim: P, channels per head; must divide E (16, so H = E / 16 heads; the paper uses 64).
        A_init_range: (low, high), 0 < low <= high: range of the initial -A per head ((1, 16)).
        dt_min, dt_max: range of the initial step sizes, sampled log-uniformly (0.001, 0.1).
        dt_init_floor: lower bound of the initial step sizes (1e-4).
        norm_eps: epsilon of the gated RMSNorm (1e-5).
        chunk_size: chunk length of the chunked kernel (32: with 16 heads of N = P = 16 the (C x C)
            decay masks, not the matmuls, dominate; C = 32 measured 2x faster than 64 at T=4096,
            D=128, batch 1).
        impl: "chunked" (the parallel kernel) or "naive" (the sequential spec).

    State (:class:`Mamba2State`): constant in T, ``H * N * P * 4 + (E + 2N) * (d_conv - 1) * elem_bytes``
    bytes per batch row (float32 ssm state, conv buffer in the activation dtype).
    """

    state_growth = "constant"
    # small heads and chunks so the contract's short sequences (T ~ 13) cross several chunk boundaries
    contract_kwargs = {"d_state": 4, "headdim": 8, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int | float = 2,
        headdim: int = 16,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        norm_eps: float = 1e-5,
        chunk_size: int = 32,
        impl: str = "chunked",
    ):
        super().__init__(d_model)
        check_int(d_state=d_state, d_conv=d_conv, headdim=headdim)
        check_positive(expand=expand, chunk_size=chunk_size)
        check_positive(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, norm_eps=norm_eps)
        check_choice("impl", impl, IMPLS)
        if dt_min > dt_max:
            raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min!r}, dt_max={dt_max!r}")
        A_accepted = "a pair (low, high) with 0 < low <= high"
        try:
            A_lo, A_hi = (float(a) for a in A_init_range)
        except (TypeError, ValueError):
            raise ArgumentError("A_init_range", A_accepted, repr(A_init_range)) from None
        if not 0 < A_lo <= A_hi:
            raise ArgumentError("A_init_range", A_accepted, repr(A_init_range))
        d_inner = int(expand * self.d_model)
        if d_inner < 1:  # a fractional expand can round to 0
            raise ArgumentError("expand", f"large enough that int(expand * d_model) >= 1 (d_model={self.d_model})",
                                repr(expand))
        check_divisor("headdim", headdim, d_inner, "E = expand * d_model")

        self.d_state, self.d_conv, self.expand, self.headdim = d_state, d_conv, expand, headdim
        self.d_inner, self.nheads = d_inner, d_inner // headdim
        self.chunk_size, self.impl = int(chunk_size), impl
        E, N, H = self.d_inner, self.d_state, self.nheads
        self.conv_dim = E + 2 * N

        self.in_proj = nn.Linear(self.d_model, 2 * E + 2 * N + H, bias=False)  # [z, x, B, C, dt], as the reference
        self.conv1d = ShortConvolution(self.conv_dim, self.d_conv, bias=True)
        self.dt_bias = nn.Parameter(init_dt_bias(H, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(A_lo, A_hi)))
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNorm(E, eps=norm_eps, gate_first=True, upcast=True)
        self.out_proj = nn.Linear(E, self.d_model, bias=False)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Mamba2State:
        device = self.A_log.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv = self.conv1d.init_state(batch_size, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.nheads, self.d_state, self.headdim, device=device, dtype=state_dtype(dtype))
        return Mamba2State(conv, ssm)

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (…, E), xBC (…, E + 2N) (before the conv), dt (…, H) (before softplus)."""
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _ssm_inputs(self, xBC: Tensor, dt: Tensor, dtype: torch.dtype):
        """Heads x (…, H, P), B (…, N), C (…, N), step dt (…, H) and log decay dt*A (…, H), in ``dtype``."""
        x, B, C = torch.split(xBC.to(dtype), [self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (…, H, P)
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))  # (…, H) > 0
        A = -torch.exp(self.A_log.to(dtype))  # (H,) < 0
        return x, B, C, dt, dt * A

    def _forward(self, x: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        z, xBC, dt = self._split(self.in_proj(x))  # (B, T, E), (B, T, E+2N), (B, T, H)
        xBC, conv = self.conv1d(xBC, state.conv)  # (B, T, E+2N)

        dtype = state_dtype(x.dtype)  # the SSM runs in float32 at least
        xh, Bm, Cm, dt, log_a = self._ssm_inputs(xBC, dt, dtype)  # (B,T,H,P), (B,T,N), (B,T,N), (B,T,H), (B,T,H)
        H = self.nheads
        q = Cm.unsqueeze(1).expand(-1, H, -1, -1)  # (B, H, T, N): C shared by the heads (ngroups = 1)
        k = Bm.unsqueeze(1).expand(-1, H, -1, -1)  # (B, H, T, N)
        v = rearrange(xh * dt.unsqueeze(-1), "b t h p -> b h t p")  # (B, H, T, P): dt x
        y, ssm = linear_attn(q, k, v, log_a.transpose(1, 2), state.ssm,  # log decay (B, H, T)
                             impl=self.impl, chunk_size=self.chunk_size)  # y (B, H, T, P)
        y = rearrange(y, "b h t p -> b t h p") + self.D.to(dtype)[:, None] * xh  # D skip
        y = self.norm(y.flatten(2).to(x.dtype), z)  # (B, T, E)
        return self.out_proj(y), Mamba2State(conv, ssm)

    def step(self, x: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """One token ``x (B, D)``: the recurrence."""
        self.check_input(x, step=True)
        z, xBC, dt = self._split(self.in_proj(x))  # (B, E), (B, E+2N), (B, H)
        xBC, conv = self.conv1d.step(xBC, state.conv)  # (B, E+2N)

        dtype = state.ssm.dtype
        xh, Bm, Cm, dt, log_a = self._ssm_inputs(xBC, dt, dtype)  # (B,H,P), (B,N), (B,N), (B,H), (B,H)
        write = Bm[:, None, :, None] * (dt.unsqueeze(-1) * xh).unsqueeze(-2)  # (B, H, N, P): k^T v
        ssm = torch.exp(log_a)[..., None, None] * state.ssm + write  # out of place: `state` is untouched
        y = torch.einsum("bn,bhnp->bhp", Cm, ssm) + self.D.to(dtype)[:, None] * xh  # (B, H, P)
        y = self.norm(y.flatten(1).to(x.dtype), z)  # (B, E)
        return self.out_proj(y), Mamba2State(conv, ssm)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, nheads={self.nheads}, headdim={self.headdim}, "
            f"d_state={self.d_state}, d_conv={self.d_conv}, impl={self.impl!r}, chunk_size={self.chunk_size}"
        )
