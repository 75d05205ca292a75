"""RMT: the Recurrent Memory Transformer, memory tokens read at a segment's start and written at its end."""

from __future__ import annotations

import torch
from torch import Tensor

from .segment_memory import SegmentMemoryModel

__all__ = ["RecurrentMemoryTransformer"]


class RecurrentMemoryTransformer(SegmentMemoryModel):
    """Recurrent Memory Transformer (Bulatov, Kuratov & Burtsev 2022, arXiv 2207.06881), decoder form.

    Segment tau of S tokens X_tau (embedded) is read together with the M memory vectors M_tau, placed
    both before it (read) and after it (write)::

        H = Backbone([M_tau ; X_tau ; M_tau])        # (B, M + S + M, D), causal
        logits_tau = head(H[M : M + S])
        M_{tau+1}  = H[M + S :]                        # the write positions' final hidden states

    Causality does the rest: the read copy is visible to every token of the segment, the write copy
    sees the whole segment and the read copy.  M_0 is learned.  The backbone is any stack of
    registered mixers (``layers``; attention in the paper); it restarts every segment, so the M x D
    memory is the model's whole carried state (``segment_memory``).  Training through k segments:
    the loop's ``segment_len`` (= this model's) and ``bptt_segments`` = k.

    Departures: the new memory is the hidden state after the final RMSNorm (what the authors' HF
    implementation takes as ``hidden_states[-1]`` of a GPT-2 backbone); positions restart at 0 every
    segment (the backbone's own positional scheme, e.g. RoPE, over the M + S + M inputs).  The
    paper's curriculum over the number of segments is left to the training recipe.

    Args: ``LanguageModel``'s, plus ``segment_len`` S (32) and ``num_memory`` M (8).
    State (``SegmentMemoryState``): M * D floats plus the ids of the unfinished segment.
    """

    def _segment(self, memory: Tensor, ids: Tensor, write: bool) -> tuple[Tensor, Tensor]:
        M, S = memory.shape[1], ids.shape[1]
        x = self.embedding(ids)  # (B, S, D)
        x = torch.cat([memory.to(x.dtype), x] + ([memory.to(x.dtype)] if write else []), dim=1)  # (B, M+S[+M], D)
        x, _ = self._run_blocks(x, self._backbone_state(ids.shape[0]), "forward")
        h = self.norm(x)
        return h[:, M:M + S], (h[:, M + S:] if write else memory)
