"""``clusterkv``: keys grouped by k-means per head; each query recalls the clusters its centroids favour."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..protocol import state_nbytes
from ..registry import register_policy
from ..validation import ArgumentError, check_int
from .base import PolicyKVState
from .quest import RetrievalPolicy


def kmeans(keys: Tensor, valid: Tensor, n_clusters: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Cosine k-means of each (row, head)'s points, deterministic: centroids (B, H, C, K), labels (B, H, N).

    keys (B, H, N, K), the valid points of a row first (``valid`` (B, N)); row b makes ``n_clusters[b]``
    clusters (C = the largest; its other centroids are unused and get no point).  Init: farthest point
    first, the oldest point then repeatedly the point farthest (1 - cos) from every centroid chosen so far
    (ties: the earliest).  ``iters`` Lloyd steps: label = argmax_c cos(k, c) (ties: the lower c), c = mean
    of its keys (unnormalised, so q . c is the cluster's mean logit); an emptied cluster keeps its centroid.
    The labels returned are those of the final centroids.
    """
    B, H, N, K = keys.shape
    C = int(n_clusters.max()) if n_clusters.numel() else 0
    if C == 0 or N == 0:
        return keys.new_zeros(B, H, 0, K), torch.zeros(B, H, N, dtype=torch.int64, device=keys.device)
    active = torch.arange(C, device=keys.device) < n_clusters[:, None]  # (B, C)
    unit = F.normalize(keys, dim=-1)
    point_ok = valid[:, None, :]  # (B, 1, N)
    chosen = [torch.zeros(B, H, dtype=torch.int64, device=keys.device)]  # the oldest point
    distance = 1 - (unit * unit[:, :, :1]).sum(-1)  # (B, H, N) to the nearest chosen centroid
    for _ in range(1, C):
        pick = distance.masked_fill(~point_ok, -math.inf).argmax(-1)  # (B, H), first maximum on ties
        chosen.append(pick)
        picked = unit.gather(2, pick[:, :, None, None].expand(B, H, 1, K))
        distance = torch.minimum(distance, 1 - (unit * picked).sum(-1))
    index = torch.stack(chosen, -1)  # (B, H, C)
    centroids = keys.gather(2, index[..., None].expand(B, H, C, K))
    for _ in range(iters):
        labels = assign(unit, centroids, active)
        weight = point_ok.to(keys.dtype).expand(B, H, N)  # padding points add exact zeros
        target = labels[..., None].expand(B, H, N, K)
        sums = torch.zeros_like(centroids).scatter_add(2, target, keys * weight[..., None])
        counts = torch.zeros(B, H, C, dtype=keys.dtype, device=keys.device).scatter_add(2, labels, weight)
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids)
    return centroids, assign(unit, centroids, active)


def assign(unit: Tensor, centroids: Tensor, active: Tensor) -> Tensor:
    """(B, H, N) the active centroid of highest cosine similarity with each unit-norm point."""
    similarity = unit @ F.normalize(centroids, dim=-1).transpose(-1, -2)  # (B, H, N, C)
    return similarity.masked_fill(~active[:, None, None, :], -math.inf).argmax(-1)


def rank_in_group(group: Tensor, member: Tensor) -> Tensor:
    """(B, H, S) how many members of the same group precede each member on the slot axis (others: 0)."""
    B, H, S = group.shape
    key = torch.where(member, group, torch.iinfo(torch.int64).max)
    order = torch.sort(key, dim=-1, stable=True).indices  # groups in order, slots in order within each
    sorted_key = key.gather(-1, order)
    idx = torch.arange(S, device=group.device).expand(B, H, S)
    first = torch.ones_like(sorted_key[..., :1], dtype=torch.bool)
    starts = torch.cat([first, sorted_key[..., 1:] != sorted_key[..., :-1]], -1)  # a group begins
    start = torch.where(starts, idx, 0).cummax(-1).values
    return torch.empty_like(idx).scatter(-1, order, idx - start) * member


@register_policy("clusterkv")
@dataclass
class ClusterKV(RetrievalPolicy):
    """ClusterKV (Liu et al. 2024): keys k-means-clustered per head; a query recalls the best clusters.

    "ClusterKV: Manipulating LLM KV Cache in Semantic Space for Recallable Compression" (arXiv 2412.03213,
    DAC 2025); reference ``sjtu-zhao-lab/ClusterKV:accuracy/cluster_attention.py`` (``build_cluster``,
    ``cluster_attn_out``) and ``clusterkv/clusterkv_utils/clusterkv_controller.py`` (window clustering).
    Nothing is evicted.  The ``n_sink`` first tokens are never clustered.  In prefill mode each prompt
    pass ends by clustering every unclustered key (the reference's prefill clustering) into ``ceil(n /
    cluster_size)`` clusters; decoded tokens stay unclustered (the accuracy reference).  In step mode the
    unclustered keys form a window and, once it holds ``window`` keys, it is clustered into ``ceil(window
    / cluster_size)`` clusters (the system reference's window clustering).  Clustering is :func:`kmeans`
    per (row, head) on the keys as cached (post-rotary).  A query (q, per head) attends to the sinks, the
    unclustered keys, and ``R = budget - n_sink - window`` recalled keys: clusters by decreasing ``q . c``
    (ties: the older cluster) until their sizes reach R, the last one cut to its earliest keys (the
    reference's "truc").  ``extra[0]`` is each key's cluster (int32, -1 unclustered), ``aux = (centroids
    (B, H, C, K), clusters used per row (B,) int64)``; both count in ``state_bytes``, and
    ``resident_bytes`` holds the keys the last query read, every label and every centroid.

    Deviations from the reference: exactly ``iters`` Lloyd steps from a farthest-point init (it fits with
    RAFT's ``KMeansParams(max_iter=20, metric="cosine")``, RAFT's default init and tolerance, then labels
    by cosine as here); clusters sized by ``cluster_size`` (it fixes ``nlist = 400`` for the prompt and
    ``window_nlist = 8`` per window); window clustering in step mode only; every layer is sparse (it keeps
    the first two dense, and dense decoding while the context is under the budget); one key head per
    query head (its GQA policies are not needed).

    Args:
        budget: tokens a query attends to at most, ``n_sink + window + R`` with R >= 1 recalled keys (in
            prefill mode every decoded token is read, however many); None: full attention.
        mode: "step" (sparse for every query, window clustering) or "prefill" (dense prompt, clustered at its
            end; sparse decoding).
        n_sink: initial tokens always attended, never clustered (the reference's ``sink``: 16; 4 here).
        window: unclustered keys that trigger a window clustering in step mode (reference 320; 8 here).
        cluster_size: average keys per cluster (reference: 32K / 400 in the prompt, 320 / 8 in windows).
        iters: Lloyd iterations (the reference's ``fit_iter``: 20).
    """

    n_sink: int = 4
    window: int = 8
    cluster_size: int = 4
    iters: int = 20

    def validate(self) -> None:
        super().validate()
        check_int(n_sink=self.n_sink, iters=self.iters, minimum=0)
        check_int(window=self.window, cluster_size=self.cluster_size)

    def recall_budget(self, budget: int) -> int:
        """R: the keys recalled from clusters per query."""
        return budget - self.n_sink - self.window

    def check_budget(self, budget: int) -> None:
        if self.recall_budget(budget) < 1:
            raise ArgumentError("budget", f">= n_sink + window + 1 = {self.n_sink + self.window + 1} (at least one "
                                "recalled key)", repr(budget))

    # -- state ---------------------------------------------------------------------------------

    def new_extra(self, batch: int, n_heads: int, n_tokens: int, *, device=None, dtype=None) -> tuple:
        if self.budget is None:
            return ()  # full attention: nothing is clustered
        return (torch.full((batch, n_heads, n_tokens), -1, dtype=torch.int32, device=device),)

    def adopt(self, state) -> PolicyKVState:
        state = super().adopt(state)
        if self.budget is None or state.aux:
            return state
        B, H, _, K = state.k.shape
        return state._replace(aux=(state.k.new_zeros(B, H, 0, K),
                                   torch.zeros(B, dtype=torch.int64, device=state.k.device)))

    def compress(self, state: PolicyKVState, obs, budget: Tensor) -> PolicyKVState:
        """Cluster what the mode's rule says is due (nothing is evicted)."""
        if self.span() is None or not state.aux:
            return state
        pending = (state.pos >= self.n_sink) & (state.extra[0] < 0)  # (B, H, S), the same for every head
        if self.mode == "prefill":
            return self.cluster(state, pending, -(-pending[:, 0].sum(-1) // self.cluster_size))
        per_window = -(-self.window // self.cluster_size)
        while True:
            due = pending[:, 0].sum(-1) >= self.window  # (B,)
            if not bool(due.any()):
                return state
            take = pending & (pending.cumsum(-1) <= self.window) & due[:, None, None]  # the oldest window
            state = self.cluster(state, take, due.long() * per_window)
            pending = pending & ~take

    def cluster(self, state: PolicyKVState, take: Tensor, n_clusters: Tensor) -> PolicyKVState:
        """k-means of the keys where ``take`` (B, H, S) into ``n_clusters`` (B,) new clusters per row."""
        B, H, S, K = state.k.shape
        count = take[:, 0].sum(-1)  # (B,)
        N = int(count.max()) if B else 0
        if N == 0:
            return state
        slots = torch.sort((~take[:, 0]).to(torch.int8), dim=-1, stable=True).indices[:, :N]  # (B, N) in order
        valid = torch.arange(N, device=slots.device) < count[:, None]  # (B, N)
        work = torch.promote_types(state.k.dtype, torch.float32)
        keys = state.k.detach().gather(2, slots[:, None, :, None].expand(B, H, N, K)).to(work)
        centroids, labels = kmeans(keys, valid, n_clusters, self.iters)  # (B, H, C, K), (B, H, N)
        old, used = state.aux
        # this row's new clusters go after its used ones; slot C_total takes the unused centroids
        total = int((used + n_clusters).max())
        index = used[:, None] + torch.arange(centroids.shape[2], device=used.device)  # (B, C)
        index = torch.where(index < (used + n_clusters)[:, None], index, total)
        grown = torch.cat([old, old.new_zeros(B, H, total + 1 - old.shape[2], K)], 2)
        grown = grown.scatter(2, index[:, None, :, None].expand(B, H, -1, K), centroids.to(old.dtype))[:, :, :total]
        label_slots = slots[:, None, :].expand(B, H, N)
        cluster_id = torch.gather(index, 1, labels.flatten(1)).view(B, H, N).to(torch.int32)
        assigned = state.extra[0]
        cluster_id = torch.where(valid[:, None, :], cluster_id, assigned.gather(2, label_slots))
        extra = (assigned.scatter(2, label_slots, cluster_id),)
        return state._replace(extra=extra, aux=(grown, used + n_clusters))

    # -- attention -----------------------------------------------------------------------------

    def attend_mask(self, state: PolicyKVState, q: Tensor, q_pos: Tensor) -> Tensor | None:
        if self.attends_all(q) or not state.aux or state.aux[0].shape[2] == 0:
            return None
        centroids = state.aux[0]  # (B, H, C, K)
        B, H, S = state.pos.shape
        C, Tq = centroids.shape[2], q.shape[2]
        label = state.extra[0].long()
        valid = state.pos >= 0
        clustered = valid & (label >= 0)
        size = torch.zeros(B, H, C + 1, dtype=torch.int64, device=q.device).scatter_add(
            2, torch.where(clustered, label, C), clustered.long())[..., :C]  # (B, H, C)
        scores = q.detach().to(centroids.dtype) @ centroids.transpose(-1, -2)  # (B, H, Tq, C)
        scores = scores.masked_fill((size == 0)[:, :, None, :], -math.inf)
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # recall order
        sizes = size[:, :, None, :].expand(B, H, Tq, C).gather(-1, order)
        before = torch.empty_like(sizes).scatter(-1, order, sizes.cumsum(-1) - sizes)  # keys recalled first
        ahead = before.gather(-1, label.clamp_min(0)[:, :, None, :].expand(B, H, Tq, S))
        ahead = ahead + rank_in_group(label, clustered)[:, :, None, :]  # earlier keys of the same cluster
        recalled = clustered[:, :, None, :] & (ahead < self.recall_budget(self.span()))
        always = valid & (label < 0)  # unclustered keys, the sinks among them (never clustered)
        return always[:, :, None, :] | recalled

    def resident_bytes(self, state: PolicyKVState) -> int:
        """Keys and values the last query read (sinks, unclustered, min(R, clustered)), every label and
        every centroid: what a GPU holds while the clustered keys are offloaded."""
        if self.span() is None or not state.aux:
            return state_nbytes(state)
        valid = state.pos[:, 0] >= 0  # (B, S): every head holds the same tokens
        clustered = (valid & (state.extra[0][:, 0] >= 0)).sum(-1)
        read = valid.sum(-1) - clustered + clustered.clamp_max(self.recall_budget(self.span()))  # (B,)
        H, K = state.k.shape[1], state.k.shape[3]
        per_token = K * (state.k.element_size() + state.v.element_size()) + state.pos.element_size()
        return (int(read.sum()) * H * per_token + state_nbytes(state.extra) + state_nbytes(state.aux)
                + state_nbytes(state.length))
