"""``shadowkv``: low-rank pre-rotary keys, offloaded values, chunk landmarks and outlier chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.rotary import apply_rotary
from ..protocol import state_nbytes
from ..registry import register_policy
from ..validation import ArgumentError, check_int, check_positive
from .base import PolicyKVState, keep_mask
from .quest import RetrievalPolicy

# aux = (u (B, 1, N, r), sv (B, H, r, K), values (B, H, N, K), positions (B, 1, N) int32 (-1: padding),
#        landmarks (B, H, N / chunk, K), outlier keys (B, H, n_out, chunk, K), outlier chunks (B, H, n_out)
#        int64 (-1: none), outlier similarities (B, H, n_out))
U, SV, VALUES, POSITIONS, LANDMARKS, OUTLIER_K, OUTLIER_IDX, OUTLIER_SIM = range(8)


def rotate(x: Tensor, positions: Tensor, base: float, inverse: bool = False) -> Tensor:
    """Rotary embedding of x (..., N, K) at ``positions`` (..., N), or its inverse, with float64 angles.

    ``ops/rotary.rotary_angles`` makes float32 angles, whose cos^2 + sin^2 is 1 only to ~1e-7; here
    un-rotating then rotating is the identity to rounding, whatever the layer's precision."""
    K = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, K, 2, device=x.device, dtype=torch.float64) / K)
    angles = positions.clamp_min(0).to(torch.float64)[..., None] * inv_freq  # (..., N, K/2)
    return apply_rotary(x, angles.cos(), -angles.sin() if inverse else angles.sin())


def valid_first(valid: Tensor, n: int) -> Tensor:
    """(B, n) indices along dim 1 of ``valid`` (B, M): the valid entries in order, then the others."""
    return torch.sort((~valid).to(torch.int8), dim=-1, stable=True).indices[:, :n]


@register_policy("shadowkv")
@dataclass
class ShadowKV(RetrievalPolicy):
    """ShadowKV (Sun et al. 2024): rank-r pre-rotary keys, values aside, top chunks by landmark per query.

    "ShadowKV: KV Cache in Shadows for High-Throughput Long-Context LLM Inference" (arXiv 2410.21465, ICML
    2025); reference ``ByteDance-Seed/ShadowKV:models/kv_cache.py`` (``ShadowKVCache``).  Chunks of
    ``chunk_size`` tokens from position 0; all but the last ``local_chunks`` complete ones are compressed
    (with the incomplete one, the local tokens stay exact in ``k, v, pos``).  Compressed keys are kept as
    ``u . sv``, the rank-r truncated SVD of the pre-rotary keys of a row, heads side by side ((N, H K) =
    (N, r) (r, H K)), and re-rotated at their positions when read.  Each chunk's landmark is the mean of
    its post-rotary keys; the ``outlier_chunks`` chunks whose keys have the lowest minimum cosine
    similarity to their landmark keep their exact keys and are always read.  A query (per head) reads the
    local tokens, the outliers and the ``budget // chunk_size - local_chunks - outlier_chunks`` other
    chunks of highest ``q . landmark`` (ties: the earlier chunk).  In prefill mode each prompt pass ends
    by compressing (one SVD of the prompt's keys, as the paper) and decoded tokens stay exact; in step
    mode a chunk is compressed as it leaves the local window.

    Pre-rotary keys: the cache stores keys rotated at their absolute positions (``ops/rotary``'s rotate-
    half layout), so they are un-rotated with those positions and ``rope_base`` (the layer's base; with
    another base or a scaled rotary, as in some Hugging Face models, the low-rank basis fits worse, but
    un-rotating and re-rotating stays exact).  At full rank (r = min(H K, N)) the keys read are the cached
    keys to rounding.

    Simulated, not offloaded: on a CPU run nothing moves between devices; ``values`` is an ordinary
    tensor in ``aux`` and every compressed key is rebuilt at every read (the paper rebuilds the selected
    chunks only: the same keys attended).  ``state_bytes`` counts everything held: the exact local (and
    decoded) tokens, the low-rank factors, the landmarks, the offloaded values, the outlier keys and the
    positions.  ``resident_bytes`` is the paper's GPU share: all of it but the offloaded values, plus the
    values of the chunks the last query read (selected and outlier chunks).

    Deviations from the reference: in step mode (not in the paper) and for later prompt passes the basis
    is updated as the truncated SVD of [current reconstruction; new pre-rotary keys] and the outliers are
    the lowest among chunks so far (one demoted keeps only its low-rank keys); chunk counts are not rounded
    to a multiple of 8 (the kernels' need); the query's own dot product with landmarks ranks chunks (the
    reference's softmax over them is monotone; its max over a GQA group is not needed); keys compressed
    carry no gradient.

    Args:
        budget: tokens a query reads, ``(local_chunks + outlier_chunks + selected) * chunk_size`` with at
            least one selected chunk (the incomplete chunk, and decoded tokens in prefill mode, on top); the
            paper's ``sparse_budget`` is the selected share; None: full attention, nothing compressed.
        mode: "step" (every query sparse, chunks compressed as they leave the local window) or "prefill"
            (dense prompt, compressed at its end; sparse decoding).
        chunk_size: tokens per chunk (the paper's 8).
        local_chunks: most recent complete chunks kept exact (paper 4; 1 at our scale).
        outlier_chunks: chunks kept exact as outliers (paper 48 at a sparse budget of 2048; 1 here).
        rank: rank r of the key factorisation (paper 160 of H K = 1024; 16 here), capped at H K.
        rope_base: rotary base of the attention layer (10,000, ``attention``'s default).
    """

    chunk_size: int = 8
    local_chunks: int = 1
    outlier_chunks: int = 1
    rank: int = 16
    rope_base: float = 10000.0

    def validate(self) -> None:
        super().validate()
        check_int(chunk_size=self.chunk_size, rank=self.rank)
        check_int(local_chunks=self.local_chunks, outlier_chunks=self.outlier_chunks, minimum=0)
        check_positive(rope_base=self.rope_base)

    def selected_chunks(self, budget: int) -> int:
        """Chunks a query picks by landmark, besides the local and outlier ones."""
        return budget // self.chunk_size - self.local_chunks - self.outlier_chunks

    def check_budget(self, budget: int) -> None:
        if self.selected_chunks(budget) < 1:
            least = (self.local_chunks + self.outlier_chunks + 1) * self.chunk_size
            raise ArgumentError("budget", f">= (local_chunks + outlier_chunks + 1) * chunk_size = {least} (at "
                                "least one selected chunk)", repr(budget))

    # -- state ---------------------------------------------------------------------------------

    def adopt(self, state) -> PolicyKVState:
        state = super().adopt(state)
        if self.budget is None or state.aux:
            return state
        B, H, _, K = state.k.shape
        z, c, r = state.k.new_zeros, self.chunk_size, min(self.rank, H * K)
        return state._replace(aux=(z(B, 1, 0, r), z(B, H, r, K), state.v.new_zeros(B, H, 0, K),
                                   state.pos.new_zeros(B, 1, 0), z(B, H, 0, K), z(B, H, 0, c, K),
                                   torch.zeros(B, H, 0, dtype=torch.int64, device=state.k.device), z(B, H, 0)))

    def compress(self, state: PolicyKVState, obs, budget: Tensor) -> PolicyKVState:
        """Move the complete chunks that left the local window into the compressed store."""
        if self.span() is None or not state.aux:
            return state
        B, H, S, K = state.k.shape
        c = self.chunk_size
        aux = list(state.aux)
        exact = state.pos[:, 0]  # (B, S): every head holds the same tokens
        target = (state.length // c - self.local_chunks).clamp_min(0) * c  # (B,) positions below are compressed
        move = (exact >= 0) & (exact < target[:, None])
        count = move.sum(-1)
        M = int(count.max()) if B else 0
        if M == 0:
            return state
        slots = valid_first(move, M)  # (B, M): whole chunks, in position order
        ok = torch.arange(M, device=slots.device) < count[:, None]  # (B, M)
        index = slots[:, None, :, None].expand(B, H, M, K)
        keys = state.k.detach().gather(2, index) * ok[:, None, :, None]  # (B, H, M, K) post-rotary
        values = state.v.gather(2, index) * ok[:, None, :, None]
        positions = exact.gather(1, slots).masked_fill(~ok, -1)  # (B, M)

        chunks = keys.view(B, H, M // c, c, K)
        landmarks = chunks.mean(3)  # (B, H, Cn, K)
        similarity = F.cosine_similarity(chunks, landmarks[:, :, :, None], dim=-1).amin(-1)  # (B, H, Cn)
        chunk_ok = ok.view(B, M // c, c)[..., 0]  # (B, Cn)
        done = (aux[POSITIONS][:, 0] >= 0).sum(-1) // c  # (B,) chunks compressed before
        chunk_id = torch.where(chunk_ok, done[:, None] + torch.arange(M // c, device=ok.device), -1)
        aux[OUTLIER_K], aux[OUTLIER_IDX], aux[OUTLIER_SIM] = self.outliers(
            aux, chunks, chunk_id[:, None].expand(B, H, -1), similarity, int((done + chunk_ok.sum(-1)).max()))

        # rows (tokens) valid first: the old store, then the new chunks, then padding
        row_pos = torch.cat([aux[POSITIONS][:, 0], positions], 1)  # (B, N + M)
        n_rows = int((row_pos >= 0).sum(-1).max())
        order = valid_first(row_pos >= 0, n_rows)  # (B, N')
        aux[U], aux[SV] = self.factorise(aux[U], aux[SV], rotate(keys, positions[:, None], self.rope_base, True),
                                         order)
        aux[VALUES] = torch.cat([aux[VALUES], values], 2).gather(2, order[:, None, :, None].expand(B, H, -1, K))
        aux[POSITIONS] = row_pos.gather(1, order)[:, None]
        old_ok = state.aux[POSITIONS][:, 0, ::c] >= 0  # (B, N / c) chunks of the old store
        chunk_order = valid_first(torch.cat([old_ok, chunk_ok], 1), n_rows // c)
        aux[LANDMARKS] = torch.cat([aux[LANDMARKS], landmarks.to(aux[LANDMARKS].dtype)], 2).gather(
            2, chunk_order[:, None, :, None].expand(B, H, -1, K))
        return keep_mask(state, (state.pos >= 0) & ~move[:, None, :])._replace(aux=tuple(aux))

    def outliers(self, aux: list, chunks: Tensor, chunk_id: Tensor, similarity: Tensor,
                 n_chunks: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ``outlier_chunks`` lowest similarities among the old outliers and the new chunks (ties: the
        earlier chunk): their exact keys, chunk indices (-1: none) and similarities."""
        ids = torch.cat([aux[OUTLIER_IDX], chunk_id], 2)  # (B, H, L + Cn)
        sims = torch.cat([aux[OUTLIER_SIM], similarity.to(aux[OUTLIER_SIM].dtype)], 2).masked_fill(ids < 0, math.inf)
        by_id = torch.sort(ids.masked_fill(ids < 0, torch.iinfo(torch.int64).max), dim=-1, stable=True).indices
        order = by_id.gather(-1, torch.sort(sims.gather(-1, by_id), dim=-1, stable=True).indices)
        order = order[..., : min(self.outlier_chunks, n_chunks)]  # (B, H, L')
        ids, sims = ids.gather(-1, order), sims.gather(-1, order)
        kept = sims.isfinite()
        keys = torch.cat([aux[OUTLIER_K], chunks.to(aux[OUTLIER_K].dtype)], 2)
        keys = keys.gather(2, order[..., None, None].expand(*order.shape, *keys.shape[3:]))
        return keys * kept[..., None, None], ids.masked_fill(~kept, -1), sims.masked_fill(~kept, 0)

    def factorise(self, u: Tensor, sv: Tensor, pre_new: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
        """Rank-r truncated SVD of the rows [u . sv; pre_new] (heads side by side) taken in ``order``."""
        B, H, r, K = sv.shape
        old = (u @ sv).transpose(1, 2).reshape(B, -1, H * K)  # (B, N, H K)
        rows = torch.cat([old, pre_new.transpose(1, 2).reshape(B, -1, H * K).to(old.dtype)], 1)
        rows = rows.gather(1, order[..., None].expand(-1, -1, H * K))  # (B, N', H K)
        work = torch.promote_types(rows.dtype, torch.float32)
        left, singular, right = torch.linalg.svd(rows.to(work), full_matrices=False)
        q = min(r, left.shape[-1])
        u_new = F.pad(left[..., :q], (0, r - q)).to(u.dtype)[:, None]  # (B, 1, N', r)
        sv_new = F.pad(singular[:, :q, None] * right[:, :q], (0, 0, 0, r - q))  # (B, r, H K)
        return u_new, sv_new.view(B, r, H, K).transpose(1, 2).to(sv.dtype).contiguous()

    # -- attention -----------------------------------------------------------------------------

    def compressed_keys(self, aux) -> Tensor:
        """(B, H, N, K) the keys read for the compressed tokens: re-rotated rank-r keys, outliers exact."""
        keys = rotate(aux[U] @ aux[SV], aux[POSITIONS], self.rope_base)  # (B, H, N, K)
        B, H, N, K = keys.shape
        c = self.chunk_size
        idx = aux[OUTLIER_IDX]  # (B, H, L)
        chunks = torch.cat([keys.view(B, H, N // c, c, K), keys.new_zeros(B, H, 1, c, K)], 2)
        where = idx.masked_fill(idx < 0, N // c)[..., None, None].expand(*idx.shape, c, K)
        return chunks.scatter(2, where, aux[OUTLIER_K].to(keys.dtype))[:, :, : N // c].reshape(B, H, N, K)

    def attend_view(self, state: PolicyKVState) -> tuple[Tensor, Tensor, Tensor]:
        if not state.aux or state.aux[POSITIONS].shape[2] == 0:
            return state.k, state.v, state.pos
        aux, H = state.aux, state.pos.shape[1]
        positions = aux[POSITIONS].expand(-1, H, -1)
        return (torch.cat([self.compressed_keys(aux).to(state.k.dtype), state.k], 2),
                torch.cat([aux[VALUES], state.v], 2), torch.cat([positions, state.pos], 2))

    def attend_mask(self, state: PolicyKVState, q: Tensor, q_pos: Tensor) -> Tensor | None:
        if self.attends_all(q) or not state.aux or state.aux[POSITIONS].shape[2] == 0:
            return None
        aux = state.aux
        B, H, S = state.pos.shape
        Tq, c = q.shape[2], self.chunk_size
        n_chunks = aux[LANDMARKS].shape[2]
        chunk_ok = aux[POSITIONS][:, :, ::c] >= 0  # (B, 1, C)
        idx = aux[OUTLIER_IDX]
        outlier = torch.zeros(B, H, n_chunks + 1, dtype=torch.bool, device=q.device).scatter(
            2, idx.masked_fill(idx < 0, n_chunks), True)[..., :n_chunks]  # (B, H, C)
        candidate = (chunk_ok & ~outlier)[:, :, None, :]  # (B, H, 1, C)
        scores = q.detach().to(aux[LANDMARKS].dtype) @ aux[LANDMARKS].transpose(-1, -2)  # (B, H, Tq, C)
        scores = scores.masked_fill(~candidate, -math.inf)
        rank = torch.sort(scores, dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
        chosen = candidate & (rank < self.selected_chunks(self.span()))
        read = (chosen | outlier[:, :, None, :]).repeat_interleave(c, dim=-1)  # (B, H, Tq, N)
        return torch.cat([read, read.new_ones(B, H, Tq, S)], -1)  # local and decoded tokens: always

    def resident_bytes(self, state: PolicyKVState) -> int:
        """All but the offloaded values, plus the values of the chunks the last query read."""
        if self.span() is None or not state.aux:
            return state_nbytes(state)
        values = state.aux[VALUES]
        B, H, _, K = values.shape
        chunks = (state.aux[POSITIONS][:, 0] >= 0).sum(-1) // self.chunk_size  # (B,)
        outliers = (state.aux[OUTLIER_IDX][:, 0] >= 0).sum(-1)  # (B,) the same count in every head
        read = chunks.clamp_max(self.selected_chunks(self.span()) + outliers) * self.chunk_size
        return state_nbytes(state) - state_nbytes(values) + int(read.sum()) * H * K * values.element_size()
