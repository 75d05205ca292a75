"""Chunkwise-parallel forms of the linear-attention kernels: same maths as ``naive.py``, a few matmuls
per chunk and one short loop over chunks instead of a loop over tokens.

Decayed / gated linear attention (``linear_attn_chunked``; Yang et al. 2024, "Gated Linear Attention
Transformers with Hardware-Efficient Training", arXiv 2312.06635, section 3; the chunkwise form of
RetNet, Sun et al. 2023, arXiv 2307.08621; Mamba-2's SSD, Dao & Gu 2024, arXiv 2405.21060). Cut the
sequence into chunks of C steps and let ``G_t`` be the cumulative log decay from the chunk's start
(inclusive of step t). With the chunk's incoming state S_0, each output splits into a part read from
S_0 and a masked (C x C) attention inside the chunk::

    o_i = (q_i * exp(Gq_i)) S_0 + sum_{j <= i} (sum_k q_ik k_jk exp(Gq_ik - G_jk)) v_j
    S_C = exp(G_C) * S_0 + sum_j (k_j * exp(G_C - G_j))^T v_j          (* on S's key rows)

``Gq = G`` for the plain recurrence; RWKV-6's bonus form (Peng et al. 2024, arXiv 2404.05892) reads
the state before the write, so ``Gq_i = G_{i-1}``, the mask is strict (j < i) and the current token
enters as ``(q_i . (u * k_i)) v_i``. The chunk states S_0 are passed on by a loop over chunks; the
intra-chunk parts and the read-outs of the stacked states are batched over all chunks.

(Gated) delta rule (``delta_rule_chunked``; Yang et al. 2024, "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length", arXiv 2406.06484, section 3; Yang et al. 2025, "Gated Delta
Networks", arXiv 2412.06464, section 3.3). Write the step as ``S_t = a_t S_{t-1} + k_t^T d_t`` with
the pseudo-value ``d_t = beta_t (v_t - a_t k_t S_{t-1})``. Unrolled inside a chunk, ``d`` solves a
unit-lower-triangular system (the UT transform of the WY representation)::

    (I + strictly_lower(diag(beta) K K^T * exp(G_i - G_j))) [U | W] = [diag(beta) V | diag(beta exp(G)) K]
    d = U - W S_0,    o = (Q * exp(G)) S_0 + (Q K^T * exp(G_i - G_j))_{j <= i} d,
    S_C = exp(G_C) S_0 + (K * exp(G_C - G))^T d

so only ``d = U - W S_0`` and the state update are sequential across chunks (two matmuls a chunk).

Numerical stability: every exponent is a difference ``G_i - G_j`` with step i at or after step j (or
``G_i`` itself), hence <= 0, and is masked with ``torch.where`` *before* ``exp`` (masked entries are
``exp(-inf) = 0`` with a zero gradient, never ``inf * 0``). Strong decays underflow to 0, the right
limit. The factorisation ``(q * exp(G)) (k * exp(-G))^T`` is used for per-key-channel decays only
where it is safe: ``exp(-G)`` overflows in float32 once a chunk's cumulative log decay passes about
-88, and its rounding grows with |G|. So when every chunk decays by at most ``FACTOR_SPAN`` (30) nats
(G counted from the chunk's start; checked on the data, ``_factorable``), the intra-chunk term is one
masked (C x C) matmul, the q factor <= 1 and the k factor <= exp(30); float32 error stays about 5e-7
of the output's scale at spans of 23 to 46 nats (measured, T = 256, K = V = 16). Otherwise the term
is cut into sub-chunks of ``c`` steps (``SUBCHUNK``, 16, or the largest divisor of C below it). A
sub-chunk's diagonal (c x c) block is again one factored matmul when each sub-chunk decays by at
most ``FACTOR_SPAN`` (G counted from the sub-chunk's start, so large cumulative sums never cancel);
else its scores are formed pairwise, one offset ``d = i - j`` at a time on contiguous slices (only
the causal pairs, no mask), with the pair's decay a running product of per-step decays as in the
sequential spec. The blocks below the diagonal factor through ``R_I``, G at the end of sub-chunk
I - 1, and ``E_J``, G at the end of sub-chunk J::

    exp(Gq_ik - G_jk) = exp(Gq_ik - R_Ik) * exp(R_Ik - E_Jk) * exp(E_Jk - G_jk),   each exponent <= 0 for J < I

In the delta rule one masked exp serves both the scores and the triangular system: the solve reads
only the system's strictly lower triangle and gives it a zero gradient elsewhere, so its diagonal
(and beta folded into its left factor, (C, K) rather than (C, C)) need no masking of their own.
A single chunk from an empty memory (no initial state, or a zero one wanting no gradient: ``_empty``)
skips the state terms, which are exactly zero: nothing is read from it and the delta rule's
pseudo-values are U itself (no W).

Float32 against the float64 spec (T = 1024, K = V = 16, chunk 64): relative error about 1e-6 of the
output's scale with moderate decays (the sequential float32 spec: about 1.5e-7), about 2e-7 with log
decays in [-20, -5]; the gap is the matmul accumulation order, not the decays.

Speed, measured on the project's 2-core CPU shared with other jobs (1 thread, float32, B=1, H=2,
T=4096, K=V=64; best of several runs, so ratios are the reliable part), chunked vs the sequential spec:

====================  ===========  ==========================  ==========================
variant               naive fwd    chunked fwd (C=32/64/128)   fwd+bwd naive / C=32/64/128
====================  ===========  ==========================  ==========================
scalar decay          ~360 ms      ~9 / 9 / 22 ms              ~1640 / 28 / 27 / 43 ms
per-channel decay     ~220 ms      ~15 / 17 / 29 ms            ~1160 / 72 / 81 / 107 ms
per-channel + bonus   ~155 ms      ~15 / 18 / 28 ms            ~1860 / 66 / 79 / 119 ms
gated delta rule      ~520 ms      ~23 / 24 / 41 ms            ~3370 / 72 / 78 / 110 ms
====================  ===========  ==========================  ==========================

C = 32 and 64 are within noise of each other except per-channel fwd+bwd (32 about 10% faster); 128
is slower everywhere. Sub-chunk 16 beat 4, 8 and 32 for the per-channel case. The first version,
which formed ``exp(Gq_i - G_j)`` as a masked (C, C, K) or (c, c, K) tensor, was 5-10x slower there.
(The table predates the factored per-channel forms and the single-exp delta rule.  Against the
version before them, same process, 1 thread, another job on the other core, C = 64: at B=1, H=2,
T=4096, K=V=64 with log decays -softplus(N(0, 1)) (the sub-chunk path) fwd+bwd went 100 -> 52 ms per
channel, 92 -> 67 ms with the bonus, 58 -> 50 ms for the gated delta rule; at the training size of
the MQAR models, B=32, H=4, T=64, K=V=16, decays up to 0.37 nats a step (one factored matmul),
19 -> 6 ms, 22 -> 8 ms and 21 -> 16 ms.)

The state is carried in float32 at least (``state_dtype``); outputs come back in ``v``'s dtype.
Gradients are plain autograd through these ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...protocol import check_positive
from .naive import check_shapes, state_dtype

__all__ = ["linear_attn_chunked", "delta_rule_chunked"]

SUBCHUNK: int = 16  # target sub-chunk length c for the per-channel intra-chunk term (see module notes)
FACTOR_SPAN: float = 30.0  # nats of decay inside a chunk (or sub-chunk) up to which its intra term is one matmul


# ----------------------------------------------------------------------------- helpers


def _chunks(x: Tensor, C: int, n: int) -> Tensor:
    """(B, H, T, ...) -> (B, H, n, C, ...), zero-padding T up to n * C."""
    pad = n * C - x.shape[2]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(*x.shape[:2], n, C, *x.shape[3:])


def _causal(C: int, device: torch.device, strict: bool) -> Tensor:
    """(C, C) bool mask of the pairs (i, j) step i reads: j <= i, or j < i when ``strict``."""
    i = torch.arange(C, device=device)
    return i[:, None] > i[None, :] if strict else i[:, None] >= i[None, :]


def _masked_exp(mask: Tensor, exponent: Tensor) -> Tensor:
    """exp(exponent) where mask, else 0; the mask goes on the exponent so no inf * 0 appears."""
    return torch.exp(torch.where(mask, exponent, float("-inf")))


def _factorable(G: Tensor) -> bool:
    """Whether cumulative log decays G (..., c, K), each from its block's start, stay within ``FACTOR_SPAN``
    nats, so that exp(Gq_i - G_j) = exp(Gq_i) * exp(-G_j) is safe there (see :func:`_diagonal_factored`)."""
    return bool(G[..., -1, :].min() >= -FACTOR_SPAN)  # G is non-increasing: its last step is its lowest


def _subchunk(C: int) -> int:
    """The largest divisor of C that is at most SUBCHUNK."""
    return max(d for d in range(1, min(C, SUBCHUNK) + 1) if C % d == 0)


def _from_diagonals(diagonals: list[Tensor], c: int, first: int) -> Tensor:
    """(c, c) lower-triangular matrices from their diagonals ``first``, ``first + 1``, .. c - 1.

    diagonals[m]: (..., c - first - m), the entries (i, i - first - m) for i >= first + m. Returns (..., c, c).
    """
    flat = torch.cat([*diagonals, diagonals[0].new_zeros(*diagonals[0].shape[:-1], 1)], dim=-1)  # (..., P + 1)
    i = torch.arange(c)
    d = i[:, None] - i[None, :]  # (c, c): the offset of entry (i, j)
    # position of entry (i, j) in ``flat``: diagonal d starts after the diagonals before it; P is the zero slot
    starts = torch.tensor([0] + [c - dd for dd in range(first, c - 1)]).cumsum(0)  # (c - first,)
    pos = starts[(d - first).clamp(0, c - first - 1)] + i[None, :]
    index = torch.where(d >= first, pos, flat.shape[-1] - 1).to(flat.device)  # (c, c)
    return flat[..., index]


def _chunk_length(chunk_size: int, T: int) -> int:
    """The chunk length used: chunk_size (a positive integer), or T when the sequence is shorter."""
    check_positive(chunk_size=chunk_size)
    if isinstance(chunk_size, float) and not chunk_size.is_integer():
        raise ValueError(f"chunk_size must be a whole number of steps, got {chunk_size!r}")
    return max(1, min(int(chunk_size), T))


def _empty(initial_state: Tensor | None) -> bool:
    """Whether the memory starts at zero with no gradient wanted for it: its terms can then be skipped."""
    return initial_state is None or not (initial_state.requires_grad or bool(initial_state.any()))


def _start(q: Tensor, v: Tensor, initial_state: Tensor | None, dtype: torch.dtype) -> Tensor:
    B, H, _, K = q.shape
    if initial_state is None:
        return q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)  # (B, H, K, V)
    return initial_state.to(dtype)


def _intra_per_channel(q: Tensor, k: Tensor, v: Tensor, g: Tensor, G: Tensor, Gq: Tensor, strict: bool) -> Tensor:
    """sum_{j <(=) i} (sum_k q_ik k_jk exp(Gq_ik - G_jk)) v_j inside each chunk, by sub-chunks of c steps.

    q, k, g (the per-step log decays), G, Gq: (B, H, n, C, K); v: (B, H, n, C, V). Returns (B, H, n, C, V).
    """
    B, H, n, C, K = q.shape
    c = _subchunk(C)
    ns = C // c
    qs, ks, gs, Gs, Gqs = (t.reshape(B, H, n, ns, c, K) for t in (q, k, g, G, Gq))  # (B, H, n, ns, c, K)
    vs = v.reshape(B, H, n, ns, c, v.shape[-1])  # (B, H, n, ns, c, V)

    first = 1 if strict else 0  # the bonus form reads only j < i
    o = _diagonal_factored(qs, ks, vs, gs, strict)
    if o is None:
        o = _diagonal_by_offsets(qs, ks, vs, gs, first)
    if ns == 1:
        return o.reshape(B, H, n, C, -1)
    return _below_diagonal(o, qs, ks, v, Gs, Gqs, q.device, strict)


def _diagonal_factored(qs: Tensor, ks: Tensor, vs: Tensor, gs: Tensor, strict: bool) -> Tensor | None:
    """The diagonal (c x c) blocks as one masked matmul, or None when a sub-chunk decays too much for it.

    With Gs the cumulative log decay from the sub-chunk's start (so |Gs| <= its span, no cancellation
    between large cumulative sums), exp(Gq_i - G_j) = exp(Gq_i) * exp(-G_j): the q factor is <= 1 and
    the k factor at most exp(span). Used only when every sub-chunk's span is at most ``FACTOR_SPAN``
    nats, so nothing overflows and the factors add about span * eps of relative error.
    qs, ks, gs: (B, H, n, ns, c, K); vs: (B, H, n, ns, c, V). Returns (B, H, n, ns, c, V) or None.
    """
    Gs = gs.cumsum(-2)  # (B, H, n, ns, c, K), <= 0, from each sub-chunk's start
    if not _factorable(Gs):
        return None
    Gqs = F.pad(Gs[..., :-1, :], (0, 0, 1, 0)) if strict else Gs  # the bonus form reads the state before step i
    c = qs.shape[-2]
    mask = _causal(c, qs.device, strict)  # (c, c)
    scores = ((qs * Gqs.exp()) @ (ks * (-Gs).exp()).transpose(-1, -2)).masked_fill(~mask, 0.0)
    return scores @ vs


def _diagonal_by_offsets(qs: Tensor, ks: Tensor, vs: Tensor, gs: Tensor, first: int) -> Tensor:
    """The diagonal (c x c) blocks for any decays (the fallback of :func:`_diagonal_factored`).

    Pairwise by offset d = i - j on contiguous slices, so only the causal pairs are formed (no mask).
    The decay of a pair is a product of per-step decays, built one offset at a time as in the
    sequential spec: exp(Gq_i - G_{i-d}) = exp(Gq_i - G_{i-d+1}) * exp(g_{i-d+1}), all <= 1.
    """
    c = qs.shape[-2]
    a = gs.exp()  # (B, H, n, ns, c, K), per-step decays in (0, 1]
    per_offset, pair_decay = [], None  # pair_decay None: the offset ``first``, a decay of 1
    for d in range(first, c):
        if d > first:  # rows i = d .. c - 1 take the step i - d + 1
            step = a[..., 1 : c - d + 1, :]
            pair_decay = step if pair_decay is None else pair_decay[..., 1:, :] * step
        prod = qs[..., d:, :] * ks[..., : c - d, :]  # (B, H, n, ns, c - d, K)
        per_offset.append((prod if pair_decay is None else prod * pair_decay).sum(-1))  # (B, H, n, ns, c - d)
    # (with the strict mask and c == 1 there are no pairs: the bonus term is added by the caller)
    return _from_diagonals(per_offset, c, first) @ vs if per_offset else torch.zeros_like(vs)  # (B, H, n, ns, c, V)


def _below_diagonal(o: Tensor, qs: Tensor, ks: Tensor, v: Tensor, Gs: Tensor, Gqs: Tensor, device,
                    strict: bool) -> Tensor:
    """Adds to the diagonal blocks ``o`` (B, H, n, ns, c, V) the blocks below the diagonal; returns (B, H, n, C, V)."""
    B, H, n, ns, c, _ = o.shape
    C = ns * c
    # Blocks below the diagonal: rows in sub-chunk I >= 1 read the columns of sub-chunks J < I through
    # the reference R_I = G at the end of sub-chunk I - 1 (exponents <= 0 on both sides):
    #   exp(Gq_i - G_j) = exp(Gq_i - R_I) * exp(R_I - E_J) * exp(E_J - G_j),   E_J = G at the end of J
    ends = Gs[..., -1, :]  # (B, H, n, ns, K)
    R = ends[..., :-1, :]  # (B, H, n, ns-1, K): R_I for I = 1 .. ns-1
    q_ref = qs[..., 1:, :, :] * torch.exp(Gqs[..., 1:, :, :] - R.unsqueeze(-2))  # (B, H, n, ns-1, c, K)
    k_end = ks[..., :-1, :, :] * torch.exp(R.unsqueeze(-2) - Gs[..., :-1, :, :])  # (B, H, n, ns-1, c, K)
    blocks = _causal(ns - 1, device, strict=False).unsqueeze(-1)  # (ns-1, ns-1, 1): J <= I - 1
    between = _masked_exp(blocks, R.unsqueeze(-2) - R.unsqueeze(-3))  # (B, H, n, ns-1, ns-1, K): R_I - E_J
    k_ref = (between.unsqueeze(-2) * k_end.unsqueeze(-4)).flatten(-3, -2)  # (B, H, n, ns-1, C-c, K)
    below = (q_ref @ k_ref.transpose(-1, -2)) @ v[..., None, : C - c, :]  # (B, H, n, ns-1, c, V)
    o = torch.cat([o[..., :1, :, :], o[..., 1:, :, :] + below], dim=-3)
    return o.reshape(B, H, n, C, -1)


def _pass_states(S: Tensor, writes: Tensor, decay: Tensor | None) -> tuple[Tensor, Tensor]:
    """S_{n+1} = decay_n * S_n + writes_n over chunks.

    S: (B, H, K, V); writes: (B, H, n, K, V); decay: None, (B, H, n) or (B, H, n, K).
    Returns the incoming state of every chunk (B, H, n, K, V) and the final state.
    """
    starts = []
    if decay is None:
        for w in writes.unbind(2):
            starts.append(S)
            S = S + w
    else:
        d = decay[..., None, None] if decay.dim() == 3 else decay.unsqueeze(-1)  # (B, H, n, K or 1, 1)
        for w, d_n in zip(writes.unbind(2), d.unbind(2), strict=True):
            starts.append(S)
            S = torch.addcmul(w, d_n, S)
    return torch.stack(starts, dim=2), S


# ----------------------------------------------------------------------------- public


def linear_attn_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                        initial_state: Tensor | None = None, *, bonus: Tensor | None = None,
                        chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel (decayed) linear attention; equals :func:`linear_attn_naive`.

    Args:
        q, k: (B, H, T, K). v: (B, H, T, V).
        log_decay: None, (B, H, T) per head, or (B, H, T, K) per key channel; values <= 0.
        initial_state: (B, H, K, V) or None for zeros.
        bonus: RWKV-6's u, (H, K), or None.
        chunk_size: steps per chunk; any T works (the last chunk is zero-padded, which leaves the
            state unchanged: zero k, v and log decay).

    Returns:
        o: (B, H, T, V) in v's dtype; the final state (B, H, K, V), float32 or wider.
    """
    check_shapes(q, k, v, log_decay, initial_state, bonus=bonus)
    dtype = state_dtype(v.dtype)
    B, H, T, K = q.shape
    C = _chunk_length(chunk_size, T)
    V = v.shape[-1]
    S = _start(q, v, initial_state, dtype)
    if T == 0:
        return v.new_zeros(B, H, 0, V), S
    n = math.ceil(T / C)
    q_, k_, v_ = (_chunks(t.to(dtype), C, n) for t in (q, k, v))  # (B, H, n, C, K|V)
    strict = bonus is not None  # RWKV-6 reads the state before the write
    mask = _causal(C, q.device, strict)  # (C, C)

    if log_decay is None:
        scores = (q_ @ k_.transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, H, n, C, C)
        o = scores @ v_  # (B, H, n, C, V)
        q_read, k_write, decay = q_, k_, None
    elif log_decay.dim() == 3:  # one decay per head: a (C, C) decay matrix per chunk
        g = _chunks(log_decay.to(dtype), C, n)  # (B, H, n, C)
        G = g.cumsum(-1)  # (B, H, n, C), <= 0, non-increasing
        Gq = F.pad(G[..., :-1], (1, 0)) if strict else G  # (B, H, n, C): G_{i-1} for the bonus form
        scores = (q_ @ k_.transpose(-1, -2)) * _masked_exp(mask, Gq.unsqueeze(-1) - G.unsqueeze(-2))
        o = scores @ v_  # (B, H, n, C, V)
        G_last = G[..., -1:]  # (B, H, n, 1)
        q_read = q_ * Gq.exp().unsqueeze(-1)
        k_write = k_ * (G_last - G).exp().unsqueeze(-1)
        decay = G_last.squeeze(-1).exp()  # (B, H, n)
    else:  # one decay per key channel (GLA, RWKV-6)
        g = _chunks(log_decay.to(dtype), C, n)  # (B, H, n, C, K)
        G = g.cumsum(-2)  # (B, H, n, C, K)
        Gq = F.pad(G[..., :-1, :], (0, 0, 1, 0)) if strict else G
        q_read = q_ * Gq.exp()
        if _factorable(G):  # every chunk decays at most FACTOR_SPAN nats: one masked matmul per chunk
            o = ((q_read @ (k_ * (-G).exp()).transpose(-1, -2)).masked_fill(~mask, 0.0)) @ v_  # (B, H, n, C, V)
        else:
            o = _intra_per_channel(q_, k_, v_, g, G, Gq, strict)  # (B, H, n, C, V)
        G_last = G[..., -1:, :]  # (B, H, n, 1, K)
        k_write = k_ * (G_last - G).exp()
        decay = G_last.squeeze(-2).exp()  # (B, H, n, K)

    if bonus is not None:  # the current token through u: (q_i . (u * k_i)) v_i
        u = bonus.to(dtype)[None, :, None, None, :]  # (1, H, 1, 1, K)
        o = o + (q_ * u * k_).sum(-1, keepdim=True) * v_

    writes = k_write.transpose(-1, -2) @ v_  # (B, H, n, K, V)
    if n == 1 and _empty(initial_state):  # one chunk from an empty memory: nothing to read, S = the write
        return o.reshape(B, H, C, V)[:, :, :T].to(v.dtype), writes[:, :, 0]
    starts, S = _pass_states(S, writes, decay)  # (B, H, n, K, V)
    o = o + q_read @ starts  # (B, H, n, C, V)
    return o.reshape(B, H, n * C, V)[:, :, :T].to(v.dtype), S


def delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None = None,
                       initial_state: Tensor | None = None, *, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunkwise (gated) delta rule by the WY representation / UT transform; equals :func:`delta_rule_naive`.

    Args:
        q, k: (B, H, T, K) (the caller normalises k). v: (B, H, T, V). beta: (B, H, T).
        log_decay: None (DeltaNet) or (B, H, T) (Gated DeltaNet), values <= 0.
        initial_state: (B, H, K, V) or None for zeros.
        chunk_size: steps per chunk; any T works (padding uses beta = 0, which writes nothing).

    Returns:
        o: (B, H, T, V) in v's dtype; the final state (B, H, K, V), float32 or wider.
    """
    check_shapes(q, k, v, log_decay, initial_state, beta=beta)
    if log_decay is not None and log_decay.dim() != 3:
        raise ValueError("delta_rule takes one decay per head: log_decay must be (B, H, T), "
                         f"got {tuple(log_decay.shape)}")
    dtype = state_dtype(v.dtype)
    B, H, T, K = q.shape
    C = _chunk_length(chunk_size, T)
    V = v.shape[-1]
    S = _start(q, v, initial_state, dtype)
    if T == 0:
        return v.new_zeros(B, H, 0, V), S
    n = math.ceil(T / C)
    q_, k_, v_ = (_chunks(t.to(dtype), C, n) for t in (q, k, v))  # (B, H, n, C, K|V)
    b = _chunks(beta.to(dtype), C, n)  # (B, H, n, C)
    causal = _causal(C, q.device, strict=False)  # (C, C): what each output reads

    # The solve below reads only the strictly lower triangle of ``system`` (unitriangular, lower) and its
    # gradient is zero elsewhere, so ``system`` is left unmasked there: one mask and one exp fewer.
    bk = b.unsqueeze(-1) * k_  # (B, H, n, C, K): beta folded into the left factor, not into (C, C)
    system = bk @ k_.transpose(-1, -2)  # (B, H, n, C, C): beta_i k_i . k_j
    qk = q_ @ k_.transpose(-1, -2)  # (B, H, n, C, C)
    if log_decay is None:
        scores = qk.masked_fill(~causal, 0.0)
        gamma, k_write, decay = None, k_, None
    else:
        G = _chunks(log_decay.to(dtype), C, n).cumsum(-1)  # (B, H, n, C), <= 0
        pair = _masked_exp(causal, G.unsqueeze(-1) - G.unsqueeze(-2))  # (B, H, n, C, C): exp(G_i - G_j), j <= i
        system = system * pair
        scores = qk * pair
        gamma = G.exp()  # (B, H, n, C)
        G_last = G[..., -1:]  # (B, H, n, 1)
        k_write = k_ * (G_last - G).exp().unsqueeze(-1)
        decay = G_last.squeeze(-1).exp()  # (B, H, n)

    if n == 1 and _empty(initial_state):  # one chunk from an empty memory: d = U exactly (no W S_0 term), no read
        U = torch.linalg.solve_triangular(system, b.unsqueeze(-1) * v_, upper=False, unitriangular=True)
        o = scores @ U  # (B, H, 1, C, V)
        S = k_write[:, :, 0].transpose(-1, -2) @ U[:, :, 0]  # (B, H, K, V)
        return o.reshape(B, H, C, V)[:, :, :T].to(v.dtype), S

    # UT transform: (I + system) [U | W] = [diag(beta) V | diag(beta gamma) K]; the unit diagonal is implied
    rhs_k = bk if gamma is None else bk * gamma.unsqueeze(-1)  # (B, H, n, C, K)
    q_read = q_ if gamma is None else q_ * gamma.unsqueeze(-1)
    rhs = torch.cat([b.unsqueeze(-1) * v_, rhs_k], dim=-1)  # (B, H, n, C, V + K)
    U, W = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True).split([V, K], dim=-1)

    starts, values = [], []
    d = decay.unbind(2) if decay is not None else [None] * n
    for U_n, W_n, kw_n, d_n in zip(U.unbind(2), W.unbind(2), k_write.unbind(2), d, strict=True):
        # U_n, W_n: (B, H, C, V | K); kw_n: (B, H, C, K); d_n: (B, H) or None
        starts.append(S)
        value = U_n - W_n @ S  # (B, H, C, V): the pseudo-values d = beta (v - a k S_prev) of the chunk
        values.append(value)
        write = kw_n.transpose(-1, -2) @ value  # (B, H, K, V)
        S = S + write if d_n is None else torch.addcmul(write, d_n[..., None, None], S)
    o = q_read @ torch.stack(starts, dim=2) + scores @ torch.stack(values, dim=2)  # (B, H, n, C, V)
    return o.reshape(B, H, n * C, V)[:, :, :T].to(v.dtype), S
