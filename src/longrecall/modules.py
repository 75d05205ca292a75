"""Building blocks the mechanisms share (as fla's ``fla/modules``): the carried short convolution, RMSNorm,
l2 normalisation, the one-token delta rule, Mamba's step-size and decay initialisation, and state helpers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops.linear_attn import state_dtype
from .protocol import check_int
from .validation import ArgumentError

__all__ = ["ShortConvolution", "RMSNorm", "rms_norm", "l2norm", "own", "head_dims", "delta_rule_step",
           "init_dt_bias", "decay_init", "gated_log_decay"]

# Mamba-2 / fla initialisation of a per-head decay (hard-coded in the references too)
A_INIT_RANGE = (0.0, 16.0)
DT_MIN, DT_MAX, DT_INIT_FLOOR = 0.001, 0.1, 1e-4


class ShortConvolution(nn.Conv1d):
    """Causal depthwise convolution over time that carries its last ``W - 1`` inputs (fla's ``ShortConvolution``).

    The parameters are the references' depthwise ``Conv1d`` (weight (C, 1, W)); the carried inputs replace
    zero padding, so splitting a sequence anywhere gives the same outputs.  ``activation``: "silu" or None.
    """

    def __init__(self, channels: int, size: int, *, bias: bool = False, activation: str | None = "silu"):
        # padding is unused (forward prepends the carried inputs); kept so the module is the references'
        super().__init__(channels, channels, size, groups=channels, padding=size - 1, bias=bias)
        if activation not in ("silu", None):
            raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
        self.activation = activation

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        """The carried inputs before the first token: zeros (B, C, W-1)."""
        return torch.zeros(batch_size, self.in_channels, self.kernel_size[0] - 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, T, C)`` continuing from ``buffer (B, C, W-1)`` -> (B, T, C) and the new buffer."""
        T = x.shape[1]
        padded = torch.cat([buffer.to(x.dtype), x.transpose(1, 2)], dim=-1)  # (B, C, W-1+T)
        y = F.conv1d(padded, self.weight, self.bias, groups=self.groups)  # (B, C, T)
        return self._activate(y).transpose(1, 2), padded[:, :, T:].clone()  # clone: don't pin `padded`

    def step(self, x: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """One token ``x (B, C)`` -> (B, C), new buffer (B, C, W-1)."""
        window = torch.cat([buffer.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (B, C, W): a new tensor
        return self.last(window), window[..., 1:].clone(memory_format=torch.contiguous_format)

    def last(self, window: Tensor) -> Tensor:
        """The output at the last position of ``window (..., C, W)``: a dot product per channel, (..., C)."""
        y = (window * self.weight.squeeze(1)).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)

    def _activate(self, y: Tensor) -> Tensor:
        return F.silu(y) if self.activation == "silu" else y


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, in x's dtype."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """``rms_norm(x) * weight``, optionally gated by ``SiLU(gate)``.

    The gate multiplies the normalised output (fla's ``FusedRMSNormGated``) or, with ``gate_first``, the input
    (mamba_ssm's ``RMSNormGated(norm_before_gate=False)``).  ``upcast``: the norm runs in x's dtype (False),
    in float32 or wider (True) or in the given dtype; the result is cast back to x's dtype before the weight.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, gate_first: bool = False,
                 upcast: bool | torch.dtype = False):
        super().__init__()
        self.eps, self.gate_first, self.upcast = float(eps), gate_first, upcast
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        if self.upcast is not False:
            x = x.to(state_dtype(dtype) if self.upcast is True else self.upcast)
        if gate is not None and self.gate_first:
            x = x * F.silu(gate.to(x.dtype))
        y = rms_norm(x, self.eps).to(dtype) * self.weight
        return y if gate is None or self.gate_first else y * F.silu(gate)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, gate_first={self.gate_first}, upcast={self.upcast}"


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(|x|^2 + eps)`` over the last dimension (fla's ``l2norm``; 0 stays 0, gradient finite)."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def own(t: Tensor) -> Tensor:
    """``t`` itself if it owns its storage, else a copy (a state must hold exactly the bytes it reports)."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def head_dims(d_model: int, n_heads: int, head_dim: int | None, default_head_dim: int,
              expand_v: int | float) -> tuple[int, int]:
    """(K, V) per head: ``head_dim`` (or the mixer's default) and ``expand_v * head_dim``, checked."""
    if head_dim is None:
        head_dim = default_head_dim
        if head_dim <= 0:
            raise ArgumentError("head_dim", "given (its default, d_model // n_heads, is 0)",
                                f"d_model={d_model}, n_heads={n_heads}")
    check_int(head_dim=head_dim)
    head_v = head_dim * expand_v
    if head_v != int(head_v) or int(head_v) <= 0:
        raise ArgumentError("expand_v", "such that expand_v * head_dim is a positive int",
                            f"expand_v={expand_v!r}, head_dim={head_dim}")
    return head_dim, int(head_v)


def delta_rule_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None,
                    S: Tensor) -> tuple[Tensor, Tensor]:
    """One token of the (gated) delta rule, in ``S``'s dtype, written as the kernel's spec.

    q, k (B, H, K); v (B, H, V); beta, log_decay (B, H) (log_decay None: no decay); S (B, H, K, V).
    Returns o (B, H, V) in S's dtype and the new S (a new tensor; ``S`` is not touched).
    """
    dtype = S.dtype
    q, k, v, beta = (t.to(dtype) for t in (q, k, v, beta))
    if log_decay is not None:
        S = log_decay.to(dtype).exp()[..., None, None] * S  # alpha_t S_{t-1}
    predicted = torch.einsum("bhk,bhkv->bhv", k, S)  # what the memory recalls for k_t
    S = S + k.unsqueeze(-1) * (beta.unsqueeze(-1) * (v - predicted)).unsqueeze(-2)
    return torch.einsum("bhk,bhkv->bhv", q, S), S


def init_dt_bias(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> Tensor:
    """(n,) biases whose softplus, the initial step sizes, is log-uniform in [dt_min, dt_max] (mamba_ssm's init)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus, stable for small dt


def decay_init(n: int) -> tuple[nn.Parameter, nn.Parameter]:
    """``A_log`` and ``dt_bias`` (each (n,)) initialised as Mamba-2 / fla's GatedDeltaNet."""
    A = torch.empty(n, dtype=torch.float32).uniform_(*A_INIT_RANGE)
    A_log = nn.Parameter(torch.log(A))
    dt_bias = nn.Parameter(init_dt_bias(n, DT_MIN, DT_MAX, DT_INIT_FLOOR))
    A_log._no_weight_decay = True
    dt_bias._no_weight_decay = True
    return A_log, dt_bias


def gated_log_decay(a: Tensor, A_log: Tensor, dt_bias: Tensor) -> Tensor:
    """g = -exp(A_log) * softplus(a + dt_bias) <= 0, in float32 at least; a (..., H), A_log and dt_bias (H,)."""
    dtype = state_dtype(a.dtype)
    return -torch.exp(A_log.to(dtype)) * F.softplus(a.to(dtype) + dt_bias.to(dtype))
