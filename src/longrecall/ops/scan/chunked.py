"""Chunked Mamba-1 selective scan with O(B·E·N)-per-chunk saved memory (the mixer's fast path).

Same maths as :func:`~longrecall.ops.scan.naive.selective_scan_naive` (Gu & Dao 2023, Algorithm 2)::

    h_t = exp(delta_t ⊗ A) ⊙ h_{t-1} + (delta_t ⊙ u_t) ⊗ B_t,     y_t = h_t · C_t + D ⊙ u_t

The sequence is cut into chunks of ``chunk_size`` steps.  Within a chunk the states are computed
from the chunk's incoming state; the chunk's last state is passed on to the next chunk.  What makes
the scan cheap in memory is the backward: plain autograd through a scan keeps every state, a
(B, T, E, N) tensor that is 32x the activations at E=2D, N=16.  :class:`_ChunkedScan` keeps only the
inputs and one (B, E, N) boundary state per chunk, and its backward walks the chunks in reverse,
recomputing one chunk at a time with grad enabled, so the transient is one chunk's (B, L, E, N).

Exactness: no decay is clamped and no ``exp`` of a positive number is taken.  Every decay used is
``exp(delta * A)`` or ``exp(S_t - S_s)`` with ``s <= t`` for the cumulative log-decay ``S``, both
in (0, 1] when A <= 0, so strong decays underflow to 0 (the right limit) instead of overflowing.

Within-chunk formulations (``method``), measured on the project's 2-core CPU at E=256, N=16, fp32,
with another process busy on the machine (so ratios, not absolute times, are the reliable part):

* ``"sequential"`` (default): a short loop over the chunk's steps, one fused ``addcmul`` per step.
  Forward B=1, T=4096: 33 ms at L=64 (32-41 ms for L=16..128).  Forward B=16, T=256: 170 ms at L=64.
* ``"parallel"``: Hillis–Steele scan, log2(L) levels over the whole chunk, combining
  ``b_t += exp(S_t - S_{t-k}) b_{t-k}``.  58-72 ms (B=1) and 0.4-1.1 s (B=16): O(L log L) work and
  log2(L) full passes over (B, L, E, N) lose to one pass, because memory traffic dominates on CPU.
* segment-sum weights ``exp(S_t - S_s)`` masked to s <= t, an (L, L, E, N) transient: 2-50 s, 60-300x
  slower (O(L^2) work and memory); not kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...protocol import check_choice, check_positive
from .naive import scan_dtype

__all__ = ["selective_scan_chunked", "SCAN_METHODS"]

SCAN_METHODS: tuple[str, ...] = ("sequential", "parallel")


# ----------------------------------------------------------------------------- one chunk


def _chunk_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk by a loop over its L steps.  u, delta (B, L, E); A (E, N); B, C (B, L, N); h (B, E, N)."""
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, E, N), in (0, 1]
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (B, L, E, N)
    states = []
    for a_t, b_t in zip(decay.unbind(1), drive.unbind(1), strict=True):  # unbind, never decay[:, t] (see notes)
        h = torch.addcmul(b_t, a_t, h)  # h = a_t * h + b_t, one kernel
        states.append(h)
    hs = torch.stack(states, dim=1)  # (B, L, E, N)
    return _readout(hs, C), h


def _readout(hs: Tensor, C: Tensor) -> Tensor:
    """y_t = sum_n h_t[e, n] C_t[n]: hs (B, L, E, N), C (B, L, N) -> (B, L, E)."""
    # Measured (1 thread, E=256, N=16): einsum is ~20% faster without grad (B=1, T=4096 scan: 40 vs
    # 50 ms), the batched matmul ~15% faster in training (B=16, T=256 fwd+bwd: 255 vs 270-320 ms).
    if not torch.is_grad_enabled():
        return torch.einsum("blen,bln->ble", hs, C)
    return (hs @ C.unsqueeze(-1)).squeeze(-1)


def _chunk_parallel(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk by a Hillis–Steele scan over cumulative log-decays.  Shapes as ``_chunk_sequential``."""
    L = u.shape[1]
    S = torch.cumsum(delta.unsqueeze(-1) * A, dim=1)  # (B, L, E, N) cumulative log-decay, <= 0, decreasing
    b = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (B, L, E, N)
    k = 1
    while k < L:
        # after this level b_t holds the scan of steps (t - 2k, t] from a zero state; the decay from
        # step t-k to step t is exp(S_t - S_{t-k}), an exponent <= 0 by construction
        carried = torch.exp(S[:, k:] - S[:, :-k]) * b[:, :-k]  # (B, L-k, E, N)
        b = torch.cat([b[:, :k], b[:, k:] + carried], dim=1)
        k *= 2
    hs = b + torch.exp(S) * h.unsqueeze(1)  # add the incoming state, decayed to each step
    return _readout(hs, C), hs[:, -1].clone()  # clone: a view would keep the whole (B, L, E, N) chunk alive


_CHUNK_FNS = {"sequential": _chunk_sequential, "parallel": _chunk_parallel}


def _scan_chunks(u, delta, A, B, C, h, chunk_size, chunk_fn, starts: list | None = None):
    """Run the chunks in order, passing the state on; optionally record each chunk's incoming state."""
    ys = []
    for u_c, d_c, B_c, C_c in zip(*(t.split(chunk_size, dim=1) for t in (u, delta, B, C)), strict=True):
        if starts is not None:
            starts.append(h)
        y_c, h = chunk_fn(u_c, d_c, A, B_c, C_c, h)
        ys.append(y_c)
    return torch.cat(ys, dim=1), h  # (B, T, E), (B, E, N)


# ----------------------------------------------------------------------------- autograd


class _ChunkedScan(torch.autograd.Function):
    """Selective scan (without D) that saves inputs + one (B, E, N) state per chunk, recomputing in backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size, method):
        # Function.forward runs with grad disabled: nothing here builds a graph
        starts: list[Tensor] = []
        y, h_T = _scan_chunks(u, delta, A, B, C, h0, chunk_size, _CHUNK_FNS[method], starts)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))  # starts: (n_chunks, B, E, N)
        ctx.chunk_size, ctx.method = chunk_size, method
        return y, h_T

    @staticmethod
    def backward(ctx, dy, dh):
        u, delta, A, B, C, starts = ctx.saved_tensors
        need_u, need_delta, need_A, need_B, need_C, need_h0 = ctx.needs_input_grad[:6]
        chunk_fn = _CHUNK_FNS[ctx.method]
        pieces = [t.split(ctx.chunk_size, dim=1) for t in (u, delta, B, C, dy)]
        seq_grads: list[list[Tensor]] = [[], [], [], []]  # per chunk, in reverse: du, ddelta, dB, dC
        dA = torch.zeros_like(A) if need_A else None
        # walk the chunks backwards, carrying dL/dh from each chunk's start into the previous chunk
        for c in reversed(range(len(starts))):
            u_c, d_c, B_c, C_c, dy_c = (p[c] for p in pieces)
            leaves = [
                u_c.detach().requires_grad_(need_u),
                d_c.detach().requires_grad_(need_delta),
                A.detach().requires_grad_(need_A),
                B_c.detach().requires_grad_(need_B),
                C_c.detach().requires_grad_(need_C),
                starts[c].detach().requires_grad_(c > 0 or need_h0),  # earlier chunks need dh
            ]
            with torch.enable_grad():  # recompute this chunk only: an O(B·L·E·N) transient
                y_c, h_out = chunk_fn(*leaves)
            wanted = [t for t in leaves if t.requires_grad]
            # (h_out does not depend on C: with only C wanted in chunk 0 it has no graph)
            outs, douts = zip(*[(o, d) for o, d in ((y_c, dy_c), (h_out, dh)) if o.requires_grad], strict=True)
            got = iter(torch.autograd.grad(outs, wanted, douts, allow_unused=True))
            # allow_unused: e.g. C never reaches h_out, and dy may be all zeros; None means zero
            g = [next(got) if t.requires_grad else None for t in leaves]
            g = [torch.zeros_like(t) if t.requires_grad and gi is None else gi for t, gi in zip(leaves, g, strict=True)]
            for store, gi in zip(seq_grads, (g[0], g[1], g[3], g[4]), strict=True):
                store.append(gi)
            if dA is not None:
                dA += g[2]
            dh = g[5]

        def along_time(store: list, need: bool):
            return torch.cat(store[::-1], dim=1) if need else None

        du, ddelta, dB, dC = (along_time(s, n)
                              for s, n in zip(seq_grads, (need_u, need_delta, need_B, need_C), strict=True))
        return du, ddelta, dA, dB, dC, dh if need_h0 else None, None, None


# ----------------------------------------------------------------------------- public


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    h0: Tensor | None = None,
    chunk_size: int = 64,
    *,
    method: str = "sequential",
) -> tuple[Tensor, Tensor]:
    """Selective scan in chunks; equals :func:`selective_scan_naive` (outputs, final state, gradients).

    Args:
        u, delta, A, B, C, D, h0: as in :func:`selective_scan_naive` (shapes (B, T, E), (B, T, E),
            (E, N), (B, T, N), (B, T, N), (E,) or None, (B, E, N) or None).
        chunk_size: steps per chunk L; any T works (the last chunk may be shorter).
        method: within-chunk formulation, ``"sequential"`` (fastest here) or ``"parallel"``.

    Returns:
        y (B, T, E) in ``u``'s dtype, and h_T (B, E, N) in float32 (float64 for float64 inputs).

    Memory: with grad, saves the inputs plus ceil(T / L) states of (B, E, N); the transient in both
    directions is one chunk's (B, L, E, N).
    """
    check_positive(chunk_size=chunk_size)
    check_choice("method", method, SCAN_METHODS)
    dtype = scan_dtype(u.dtype)
    batch, T, channels = u.shape
    u_, delta_, A_, B_, C_ = (t.to(dtype) for t in (u, delta, A, B, C))
    h = u_.new_zeros(batch, channels, A.shape[-1]) if h0 is None else h0.to(dtype)  # (B, E, N)

    if T == 0:
        y = u_.new_zeros(u_.shape)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in (u_, delta_, A_, B_, C_, h)):
        y, h = _ChunkedScan.apply(u_, delta_, A_, B_, C_, h, int(chunk_size), method)
    else:  # inference: run the chunks, save nothing
        y, h = _scan_chunks(u_, delta_, A_, B_, C_, h, int(chunk_size), _CHUNK_FNS[method])
    if D is not None:
        y = y + D.to(dtype) * u_  # the skip is elementwise on (B, T, E): plain autograd is cheap
    return y.to(u.dtype), h
