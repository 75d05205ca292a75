"""Causal long convolution that continues from a carried input history (streaming and chunked prefill).

A causal convolution whose kernel is as long as the sequence has no finite recurrent state: the exact
carried state is the input history itself.  With ``w = cat(history, u)`` (``P`` carried inputs, then
``T`` new ones) and a kernel ``k (C, L)`` (taps at lags ``>= L`` are zero)::

    y[b, c, t] = sum_{j = 0}^{P + t} k[c, j] * w[b, c, P + t - j],   t = 0..T-1
    new history = the last ``keep`` columns of w (all of w when ``keep`` is None)

``keep`` bounds the history for a finite kernel: ``keep = L - 1`` inputs are all a kernel of ``L`` taps
ever reads again.  ``conv_with_history`` computes every output at once (by FFT, or by the direct
``causal_conv_naive`` spec); ``conv_step_with_history`` one token by a dot product with the history.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fft import causal_conv_fft
from .naive import causal_conv_naive, check_conv_args

__all__ = ["IMPLS", "conv_with_history", "conv_step_with_history"]

IMPLS = ("fft", "naive")


def _check(u: Tensor, k: Tensor, history: Tensor, keep: int | None) -> None:
    check_conv_args(u, k)
    if not isinstance(history, Tensor) or history.dim() != 3 or history.shape[:2] != u.shape[:2]:
        got = tuple(getattr(history, "shape", ()))
        raise ValueError(f"history must have shape (B, C, P) = ({u.shape[0]}, {u.shape[1]}, P), got {got}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise ValueError(f"keep must be None or a non-negative int, got {keep!r}")


def _tail(w: Tensor, keep: int | None) -> Tensor:
    """The last ``keep`` columns of ``w (B, C, P + T)`` as a tensor that owns its memory."""
    if keep is None or keep >= w.shape[-1]:
        return w  # a fresh torch.cat result: owns exactly its bytes
    return w[..., w.shape[-1] - keep :].clone()


def conv_with_history(u: Tensor, k: Tensor, history: Tensor, *, keep: int | None = None,
                      impl: str = "fft") -> tuple[Tensor, Tensor]:
    """Causal convolution of ``u (B, C, T)`` continuing ``history (B, C, P)`` with kernel ``k (C, L)``.

    Returns ``y (B, C, T)`` and the new history ``(B, C, min(P + T, keep))``.  ``impl``: "fft"
    (O((P + T) log(P + T)) per channel) or "naive" (the direct convolution, the spec).
    """
    _check(u, k, history, keep)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    P = history.shape[-1]
    w = torch.cat([history.to(u.dtype), u], dim=-1)  # (B, C, P + T)
    conv = causal_conv_fft if impl == "fft" else causal_conv_naive
    return conv(w, k)[..., P:], _tail(w, keep)


def conv_step_with_history(x: Tensor, k: Tensor, history: Tensor, *,
                           keep: int | None = None) -> tuple[Tensor, Tensor]:
    """One token ``x (B, C)``: ``y = sum_j k[:, j] w[..., P - j]`` over the history; y (B, C), new history."""
    _check(x.unsqueeze(-1), k, history, keep)
    w = torch.cat([history.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (B, C, P + 1): a new tensor
    m = min(w.shape[-1], k.shape[-1])  # taps past the kernel's length are zero
    y = (w[..., w.shape[-1] - m :] * k[:, :m].flip(-1)).sum(-1)
    return y, _tail(w, keep)
