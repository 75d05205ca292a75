"""LEM: Long Expressive Memory, a multiscale ODE discretised as a gated RNN (arXiv 2110.04744); see ``LEM``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..ops.lem import fused_lem_available, lem_recurrence_fused
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_choice, check_int, check_number

__all__ = ["LEM", "LEMState", "IMPLS"]

IMPLS: tuple[str, ...] = ("auto", "fused", "loop")


class LEMState(NamedTuple):
    y: Tensor  # (B, N) the slow-read output state
    z: Tensor  # (B, N) the auxiliary state, updated first


@register_mixer("lem")
class LEM(Mixer):
    """LEM: Long Expressive Memory (Rusch, Mishra, Erichson, Mahoney 2022, "Long Expressive Memory for
    Sequence Modeling", ICLR 2022, arXiv 2110.04744), a nonlinear RNN with two hidden states.

    The paper's multiscale ODE ``y' = s2(t) (tanh(W_y z + V_y u + b_y) - y)``,
    ``z' = s1(t) (tanh(W_z y + V_z u + b_z) - z)`` with learned time scales, discretised implicit-explicit
    (z first, then y from the new z; eq. 3), per token n and hidden width N::

        dt1_n = dt * sigmoid(W_1 y_{n-1} + V_1 u_n + b_1)                        # (N,) time scale of z
        dt2_n = dt * sigmoid(W_2 y_{n-1} + V_2 u_n + b_2)                        # (N,) time scale of y
        z_n   = (1 - dt1_n) * z_{n-1} + dt1_n * tanh(W_z y_{n-1} + V_z u_n + b_z)
        y_n   = (1 - dt2_n) * y_{n-1} + dt2_n * tanh(W_y z_n + V_y u_n + b_y)    # output: y_n (B, N)

    Layout and init follow the authors' reference (github.com/tk-rusch/LEM, ``LEMCell``): the input maps
    ``V_*`` are one ``Linear(D, 4N)`` and the maps of y one ``Linear(N, 3N)`` (each with a bias, so every
    gate has two summed biases, as there), ``W_y`` is ``Linear(N, N)``; every one of their weights and
    biases ~ U(-1/sqrt(N), 1/sqrt(N)); zero initial states; ``dt`` = 1 (the reference's default; the paper
    tunes ``0 < dt <= 1`` per task, where its gradient bounds hold).  Unsure: this init is as we recall the
    reference code (not checked against its source here); the paper's text does not state one.

    Departures: the output is y_n itself when N = D (no output map, as the paper's layer) and
    ``Linear(N, D)`` (PyTorch's default init) when ``d_hidden`` != D.  Recurrent only: ``_forward`` applies
    the input maps to the whole sequence at once, then runs the recurrence over time, either as a Python
    loop of ``_cell`` (the arithmetic of ``step``, the spec) or as one C++ kernel (``ops/lem/fused.py``, the
    same maths with the adjoint recurrence written by hand; tested against the loop: outputs, final state,
    gradients).

    Args:
        d_model: width D of the input and output.
        d_hidden: hidden width N of y and z (None: N = D, no output projection).
        dt: the maximal time step ``dt`` in (0, 1] (1.0).
        impl: "auto" (the fused kernel for CPU tensors where it builds, else the loop), "fused" or "loop".

    State (:class:`LEMState`): constant in T, y and z ``(B, N)``: ``2 N * 4`` bytes per sequence in float32.
    """

    state_growth = "constant"

    def __init__(self, d_model: int, *, d_hidden: int | None = None, dt: float = 1.0, impl: str = "auto"):
        super().__init__(d_model)
        check_int(d_hidden=d_hidden, allow_none=True)
        check_number("dt", dt, 0, 1, low_open=True)
        check_choice("impl", impl, IMPLS)
        D = self.d_model
        N = D if d_hidden is None else int(d_hidden)
        self.d_hidden, self.dt, self.impl = N, float(dt), impl
        self.inp2hid = nn.Linear(D, 4 * N)  # V_1, V_2, V_z, V_y
        self.hid2hid = nn.Linear(N, 3 * N)  # W_1, W_2, W_z
        self.transform_z = nn.Linear(N, N)  # W_y
        bound = 1.0 / math.sqrt(N)
        with torch.no_grad():
            for p in self.parameters():  # before out_proj exists: it keeps PyTorch's init
                p.uniform_(-bound, bound)
        self.out_proj = nn.Linear(N, D) if N != D else None

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LEMState:
        p = self.hid2hid.weight
        shape = (batch_size, self.d_hidden)
        device, dtype = device or p.device, dtype or p.dtype
        return LEMState(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def _check_state(self, state: LEMState, batch: int) -> None:
        want = (batch, self.d_hidden)
        if not isinstance(state, LEMState) or tuple(state.y.shape) != want or tuple(state.z.shape) != want:
            got = tuple(tuple(t.shape) for t in state) if isinstance(state, LEMState) else type(state).__name__
            raise ValueError(f"state must be LEMState with y and z of shape {want}, got {got}")

    def _cell(self, inp: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """One update from the input maps ``inp (B, 4N)`` (V u + b, precomputable) and ``y, z (B, N)``."""
        i_dt1, i_dt2, i_z, i_y = inp.chunk(4, dim=-1)
        h_dt1, h_dt2, h_z = self.hid2hid(y).chunk(3, dim=-1)
        dt1 = self.dt * torch.sigmoid(i_dt1 + h_dt1)
        dt2 = self.dt * torch.sigmoid(i_dt2 + h_dt2)
        z = (1 - dt1) * z + dt1 * torch.tanh(i_z + h_z)
        y = (1 - dt2) * y + dt2 * torch.tanh(self.transform_z(z) + i_y)  # the new z: implicit-explicit
        return y, z

    def _output(self, y: Tensor) -> Tensor:
        return y if self.out_proj is None else self.out_proj(y)

    def step(self, x: Tensor, state: LEMState) -> tuple[Tensor, LEMState]:
        self.check_input(x, step=True)
        self._check_state(state, x.shape[0])
        y, z = self._cell(self.inp2hid(x), state.y, state.z)  # new tensors: the input state is untouched
        return self._output(y), LEMState(y, z)

    def _use_fused(self, x: Tensor) -> bool:
        if self.impl == "fused":
            if not fused_lem_available():
                raise RuntimeError("LEM(impl='fused') needs the C++ kernel, which is unavailable here "
                                   "(longrecall.ops.cpp.kernel_status() says why); use impl='loop' or 'auto'")
            return True
        return self.impl == "auto" and x.device.type == "cpu" and fused_lem_available()

    def _forward(self, x: Tensor, state: LEMState) -> tuple[Tensor, LEMState]:
        self._check_state(state, x.shape[0])
        y, z = state
        if x.shape[1] > 0 and self._use_fused(x):
            ys, zs = lem_recurrence_fused(self.inp2hid(x), self.hid2hid.weight, self.hid2hid.bias,
                                          self.transform_z.weight, self.transform_z.bias, y, z, self.dt)  # (B, T, N)
            # clones: a view would keep the whole (B, T, N) buffers alive in a carried state
            return self._output(ys), LEMState(ys[:, -1].clone(), zs[:, -1].clone())
        ys = []
        for inp in self.inp2hid(x).unbind(1):  # (B, 4N) per token; unbind keeps backward O(T)
            y, z = self._cell(inp, y, z)
            ys.append(y)
        return self._output(torch.stack(ys, dim=1)), LEMState(y, z)  # (B, T, D)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}, dt={self.dt:g}, impl={self.impl}"
