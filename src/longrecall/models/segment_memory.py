"""Models whose memory crosses every layer and is rewritten once per segment (RMT, Memformer).

A mixer's memory lives inside one layer; the memory of a memory-token model is a set of vectors the
whole network reads at the start of a segment and rewrites at its end.  Such a model is a
``LanguageModel`` (the same embedding, blocks, head, ``loss``, ``loss_sum`` and ``generate``) that
reads its input ``segment_len`` tokens at a time: every segment runs the backbone from a fresh
backbone state, so the carried memory is the only path from one segment to the next.

The state (:class:`SegmentMemoryState`) is the memory ``(B, M, D)`` plus the token ids of the
current, unfinished segment (fewer than ``segment_len``): the backbone is causal and the memory is
written only at a segment's end, so a partial segment's outputs are those of the full segment at the
same positions, and ``forward`` over any split of a sequence (``step`` included) equals one call.
``step`` recomputes the unfinished segment (O(segment_len) per token, exact); the pending ids are
the bounded working memory and count in ``state_bytes`` (8 bytes each).

Segment boundaries are fixed by position (every ``segment_len`` tokens from the start), not by how
a caller splits its input.  Training through k segments is the training loop's ``segment_len`` /
``bptt_segments`` (train.segmented_backward): with ``segment_len`` equal to the model's, the carried
memory is detached every k segments, the truncated BPTT of RMT (Bulatov et al. 2022, section 3).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..modules import own
from ..protocol import state_nbytes
from ..validation import check_int
from .lm import LanguageModel, ModelState

__all__ = ["SegmentMemoryModel", "SegmentMemoryState"]


class SegmentMemoryState(NamedTuple):
    memory: Tensor  # (B, M, D): what the next segment reads
    pending: Tensor  # (B, n) int64, n < segment_len: ids of the unfinished segment


class SegmentMemoryModel(LanguageModel):
    """Base of the memory-token models: subclasses define ``_segment``.

    Args (besides ``LanguageModel``'s):
        segment_len: tokens per segment S.
        num_memory: memory vectors M (the learned initial memory ``memory_init`` (M, D), std 0.02 as
            the embeddings).
    """

    def __init__(self, vocab_size: int, d_model: int, layers: Sequence[str] = ("attention", "attention"), *,
                 segment_len: int = 32, num_memory: int = 8, mixer_kwargs: dict | None = None, mlp: bool = True,
                 short_conv: int = 0, tie_embeddings: bool = False):
        super().__init__(vocab_size, d_model, layers, mixer_kwargs=mixer_kwargs, mlp=mlp, short_conv=short_conv,
                         tie_embeddings=tie_embeddings)
        check_int(segment_len=segment_len, num_memory=num_memory)
        self.segment_len, self.num_memory = segment_len, num_memory
        self.config.update(segment_len=segment_len, num_memory=num_memory)
        self.memory_init = nn.Parameter(torch.randn(num_memory, d_model) * 0.02)  # (M, D)

    @classmethod
    def extra_arguments(cls) -> tuple[str, ...]:
        return ("segment_len", "num_memory")

    # -- to define ------------------------------------------------------------------------------

    def _segment(self, memory: Tensor, ids: Tensor, write: bool) -> tuple[Tensor, Tensor]:
        """One segment (or the unfinished part of one) read with ``memory (B, M, D)``: the final
        normalised hidden states of ``ids (B, S)`` (B, S, D), and the memory written at the segment's
        end (``write``) or ``memory`` unchanged."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------

    def _backbone_state(self, batch_size: int) -> ModelState:
        """A fresh state of the backbone blocks: nothing but the memory crosses a segment boundary."""
        return LanguageModel.init_state(self, batch_size)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> SegmentMemoryState:
        check_int(batch_size=batch_size)
        device = device or self.embedding.weight.device
        dtype = dtype or self.embedding.weight.dtype
        # a copy, not a view: the state owns the bytes it reports; the gradient reaches memory_init
        memory = self.memory_init.to(device=device, dtype=dtype).expand(batch_size, -1, -1).contiguous()
        return SegmentMemoryState(memory, torch.zeros(batch_size, 0, dtype=torch.long, device=device))

    def state_bytes(self, state: SegmentMemoryState) -> int:
        return state_nbytes(state)

    def hidden(self, input_ids: Tensor, state: SegmentMemoryState | None = None
               ) -> tuple[Tensor, SegmentMemoryState]:
        self._check_tokens(input_ids, 2)
        if state is None:
            state = self.init_state(input_ids.shape[0])
        if not isinstance(state, SegmentMemoryState):
            raise TypeError(f"state must be a SegmentMemoryState (from init_state), got {type(state).__name__}")
        tokens = torch.cat([state.pending, input_ids], dim=1)  # (B, n + T)
        S, memory, outputs = self.segment_len, state.memory, []
        n_full = tokens.shape[1] // S
        for i in range(n_full):
            h, memory = self._segment(memory, tokens[:, i * S:(i + 1) * S], write=True)
            outputs.append(h)
        rest = tokens[:, n_full * S:]
        if rest.shape[1]:
            outputs.append(self._segment(memory, rest, write=False)[0])
        h = torch.cat(outputs, dim=1)[:, state.pending.shape[1]:]  # (B, T, D): the new tokens only
        return h, SegmentMemoryState(own(memory), rest.clone())  # owned: the state holds what it reports

    def step(self, token: Tensor, state: SegmentMemoryState) -> tuple[Tensor, SegmentMemoryState]:
        """One token per sequence: recomputes the unfinished segment (exact; the backbone restarts per segment)."""
        self._check_tokens(token, 1)
        h, state = self.hidden(token[:, None], state)
        return self.head(h[:, 0]), state

    def set_kv_policy(self, policy, *, context_len: int | None = None) -> list[int]:
        if policy is None:
            return []
        raise ValueError(f"{type(self).__name__}: KV-cache policies manage an attention cache carried across the "
                         "sequence; this model's backbone restarts every segment and carries only its memory")
