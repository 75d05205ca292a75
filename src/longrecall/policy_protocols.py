"""How a KV-cache policy meets the question: the four evaluation protocols of ``evaluate_policy``.

Users of KV-cache compression compare methods under different protocols without saying so
(cold-compress #42, kvpress #262): a SnapKV cache compressed with the question in view cannot be
reused for a second question, and compression during decoding is rarely measured.  Here the protocol
is an argument, stored with every evaluation.  For one example, with p0 its first scored position
(the context is ``[0, p0)``, the query region ``[p0, T)``, and an answer is scored at the position of
the token that asks for it):

``agnostic``
    Compress the context, then read the query region token by token (kvpress's default; the question
    is never visible at compression).  ``evaluate_policy`` runs it itself (it batches examples whose
    contexts differ when the policy evicts at every step).
``aware``
    The prompt is the context plus the first question (``[0, p0]``): the policy compresses with the
    question in view (SnapKV's and Finch's setting); then the query region is read again from the
    compressed cache, the question asked a second time, and the answers are scored on that reading.
    The first reading's prediction at p0 was made before compression and is not scored.
``reuse``
    Compress the context once; answer each question from a copy of that same cache, never seeing the
    other questions.  A question is a run of consecutive scored positions with the tokens since the
    previous run (``[p0, end_1]``, ``[end_1 + 1, end_2]``, ...).  Query-aware policies lose here what
    they gained in ``aware``.
``decode``
    Compress the context, let the model generate ``decode_tokens`` tokens greedily (the policy keeps
    evicting in step mode; a prefill-mode policy's cache grows, as it would), then read the query
    region: the accuracy of what is asked late in a long generation (H2O's and SCOPE's setting).
    Positions move ``decode_tokens`` further than training saw: the full cache under the same protocol
    (``policy=None``) is the reference.

Every protocol but ``agnostic`` runs one group of examples sharing p0 at a time.  Each returns the
predictions (B, T) (-100 where unscored), the summed loss and the bytes held after the compressed
prompt and at the end.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .protocol import state_clone
from .tasks.base import IGNORE_INDEX, Batch

PROTOCOLS = ("agnostic", "aware", "reuse", "decode")
# the names stored with an evaluation; "query_agnostic_v1" is what stores written before protocols hold
STORED_NAMES = {"agnostic": "query_agnostic_v1", "aware": "query_aware_v1", "reuse": "reuse_v1", "decode": "decode_v1"}

__all__ = ["PROTOCOLS", "STORED_NAMES", "question_spans", "run_protocol"]


def question_spans(scored: Tensor, p0: int) -> list[tuple[int, int]]:
    """(start, end) inclusive of each question of one example: runs of consecutive scored positions of
    ``scored`` (T,) bool, each with the tokens since the previous run; the first starts at ``p0``."""
    positions = torch.nonzero(scored).flatten().tolist()
    spans, start = [], p0
    for i, t in enumerate(positions):
        if i + 1 == len(positions) or positions[i + 1] != t + 1:
            spans.append((start, t))
            start = t + 1
    return spans


def _read(model, inputs: Tensor, targets: Tensor, state, predictions: Tensor, columns: range) -> tuple[float, object]:
    """Feed ``inputs[:, t]`` for t in ``columns`` with ``model.step``; score where ``targets`` does."""
    loss_sum = 0.0
    for t in columns:
        logits, state = model.step(inputs[:, t], state)
        scored = targets[:, t] != IGNORE_INDEX
        if scored.any():
            chosen = logits[scored]
            predictions[scored, t] = chosen.argmax(-1)
            loss_sum += torch.nn.functional.cross_entropy(chosen.float(), targets[scored, t], reduction="sum").item()
    return loss_sum, state


def run_protocol(protocol: str, model, part: Batch, p0: int, held: Callable, *, decode_tokens: int
                 ) -> tuple[Tensor, float, tuple, tuple]:
    """One group of examples with the same first scored position ``p0`` under ``protocol`` (not
    ``agnostic``): (predictions (B, T), summed loss, bytes after the prompt, bytes at the end), the
    bytes as ``held(state)`` gives them for the whole group."""
    inputs, targets = part.inputs, part.targets
    T = inputs.shape[1]
    predictions = torch.full_like(targets, IGNORE_INDEX)
    if protocol == "aware":
        _, state = model.hidden(inputs[:, :p0 + 1])  # the first question is in the prompt
        after_prompt = held(state)
        loss_sum, state = _read(model, inputs, targets, state, predictions, range(p0, T))  # asked again
        return predictions, loss_sum, after_prompt, held(state)
    if protocol == "decode":
        if p0 == 0:
            raise ValueError("protocol 'decode' needs a context before the first scored position (p0 = 0)")
        logits, state = model(inputs[:, :p0])
        after_prompt = held(state)
        token = logits[:, -1].argmax(-1)  # (B,)
        for _ in range(decode_tokens):
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
        loss_sum, state = _read(model, inputs, targets, state, predictions, range(p0, T))
        return predictions, loss_sum, after_prompt, held(state)
    if protocol == "reuse":
        loss_sum, after_prompt, end = 0.0, [0, 0], [0, 0]
        for b in range(inputs.shape[0]):  # each example has its own questions
            row = part[b:b + 1]
            _, context = (model.hidden(row.inputs[:, :p0]) if p0 > 0 else (None, model.init_state(1)))
            prompt_bytes = held(context)
            last_bytes = prompt_bytes
            for start, end_t in question_spans(row.targets[0] != IGNORE_INDEX, p0):
                own = predictions[b:b + 1]
                part_loss, state = _read(model, row.inputs, row.targets, state_clone(context), own,
                                         range(start, end_t + 1))
                predictions[b:b + 1] = own
                loss_sum += part_loss
                last_bytes = held(state)
            for total, value in ((after_prompt, prompt_bytes), (end, last_bytes)):
                total[0] += value[0]
                total[1] = None if value[1] is None or total[1] is None else total[1] + value[1]
        return predictions, loss_sum, tuple(after_prompt), tuple(end)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS[1:])} here, got {protocol!r}")
