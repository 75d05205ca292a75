"""LEM's recurrence as one C++ kernel on the CPU, forward and backward (``csrc/lem_cpu.cpp``).

Same maths as the step loop of :class:`~longrecall.mixers.lem.LEM` (its ``step`` is the spec)::

    dt1_n = dt sigmoid(i1_n + W_1 y_{n-1} + b_1),   dt2_n = dt sigmoid(i2_n + W_2 y_{n-1} + b_2)
    z_n   = (1 - dt1_n) z_{n-1} + dt1_n tanh(iz_n + W_z y_{n-1} + b_z)
    y_n   = (1 - dt2_n) y_{n-1} + dt2_n tanh(W_y z_n + b_y + iy_n)

with ``inp_n = [i1, i2, iz, iy]`` the input maps, computed outside for the whole sequence.

Why a kernel: LEM is nonlinear in its state, so it has no parallel form, and its PyTorch step loop
records about fifteen autograd nodes per token; at T = 4,096 the per-op overhead, not the arithmetic,
is the cost. The kernel runs the two recurrences (forward, and the adjoint one in reverse) over each
batch row with its state in a small buffer; the backward computes everything that does not depend on
the running gradient (gates, tanh values, the weight gradients) as whole-sequence tensor operations
here, so only matrix-vector products with ``W_h^T`` and ``W_y^T`` remain sequential.

Memory: saves the input maps and the (B, T, N) states y and z (which the output holds anyway).
It is compiled on first use (``longrecall.ops.cpp``); :func:`fused_lem_available` says whether it
could be, and ``LEM`` falls back to its step loop where it cannot.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cpp import load_kernel

__all__ = ["lem_recurrence_fused", "fused_lem_available"]

_SOURCE = Path(__file__).with_name("csrc") / "lem_cpu.cpp"


def _kernel():
    return load_kernel("lem_cpu", _SOURCE)


def fused_lem_available() -> bool:
    """Whether the C++ kernel is (or can be) built on this machine; builds it on the first call."""
    return _kernel() is not None


class _FusedLEM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, W_h, b_h, W_y, b_y, y0, z0, dt: float):
        ys, zs = _kernel().forward(inp, W_h, b_h, W_y, b_y, y0, z0, dt)
        ctx.save_for_backward(inp, W_h, b_h, W_y, b_y, y0, z0, ys, zs)
        ctx.dt = dt
        return ys, zs

    @staticmethod
    @once_differentiable  # the hand-written backward has no graph: a double backward must fail, not be wrong
    def backward(ctx, dys, dzs):
        inp, W_h, b_h, W_y, b_y, y0, z0, ys, zs = ctx.saved_tensors
        dt, N = ctx.dt, W_y.shape[0]
        dys = torch.zeros_like(ys) if dys is None else dys.contiguous()
        dzs = torch.zeros_like(zs) if dzs is None else dzs.contiguous()
        y_prev = torch.cat([y0[:, None], ys[:, :-1]], dim=1)  # (B, T, N)
        z_prev = torch.cat([z0[:, None], zs[:, :-1]], dim=1)
        i1, i2, iz, iy = inp.split(N, dim=-1)
        h1, h2, hz = torch.nn.functional.linear(y_prev, W_h, b_h).split(N, dim=-1)
        dt1, dt2 = dt * torch.sigmoid(i1 + h1), dt * torch.sigmoid(i2 + h2)
        c = torch.tanh(iz + hz)
        e = torch.tanh(torch.nn.functional.linear(zs, W_y, b_y) + iy)
        dpre, dy0, dz0 = _kernel().backward(dt1.contiguous(), dt2.contiguous(), c.contiguous(), e.contiguous(),
                                            y_prev.contiguous(), z_prev.contiguous(), W_h, W_y, dys, dzs, dt)
        dh, dg = dpre[..., :3 * N].flatten(0, 1), dpre[..., 3 * N:].flatten(0, 1)  # (B T, 3N), (B T, N)
        dW_h, db_h = dh.mT @ y_prev.flatten(0, 1), dh.sum(0)
        dW_y, db_y = dg.mT @ zs.flatten(0, 1), dg.sum(0)
        return dpre, dW_h, db_h, dW_y, db_y, dy0, dz0, None


def lem_recurrence_fused(inp: Tensor, W_h: Tensor, b_h: Tensor, W_y: Tensor, b_y: Tensor, y0: Tensor, z0: Tensor,
                         dt: float) -> tuple[Tensor, Tensor]:
    """The states ``(ys, zs)``, each ``(B, T, N)``, of LEM's recurrence from ``inp (B, T, 4N)``, ``W_h (3N, N)``,
    ``b_h (3N,)``, ``W_y (N, N)``, ``b_y (N,)`` and the initial ``y0, z0 (B, N)``; differentiable in all of
    them. CPU tensors, float32 or float64; T >= 1.

    Raises RuntimeError when the kernel cannot be built here (check :func:`fused_lem_available`).
    """
    if _kernel() is None:
        raise RuntimeError("the fused LEM kernel is unavailable here (longrecall.ops.cpp.kernel_status() says why); "
                           "use LEM(impl='loop')")
    if inp.device.type != "cpu":
        raise ValueError(f"lem_recurrence_fused runs on CPU tensors, got device {inp.device}")
    if inp.dim() != 3 or W_y.dim() != 2:
        raise ValueError(f"inp must be (B, T, 4N) and W_y (N, N), got {tuple(inp.shape)} and {tuple(W_y.shape)}")
    (B, T, _), N = inp.shape, W_y.shape[0]
    want = {"inp": (B, T, 4 * N), "W_h": (3 * N, N), "b_h": (3 * N,), "W_y": (N, N), "b_y": (N,), "y0": (B, N),
            "z0": (B, N)}
    for name, tensor in zip(want, (inp, W_h, b_h, W_y, b_y, y0, z0), strict=True):
        if tuple(tensor.shape) != want[name]:
            raise ValueError(f"{name} must have shape {want[name]} (N = {N} from W_y), got {tuple(tensor.shape)}")
    if T == 0:
        raise ValueError("lem_recurrence_fused needs T >= 1 (LEM's forward returns the state for T = 0)")
    dtype = inp.dtype if inp.dtype in (torch.float32, torch.float64) else torch.float32  # bf16/half: in float32
    args = [t.to(dtype).contiguous() for t in (inp, W_h, b_h, W_y, b_y, y0, z0)]
    ys, zs = _FusedLEM.apply(*args, float(dt))
    return ys.to(inp.dtype), zs.to(inp.dtype)
