"""Accuracy overall, per slice and per distance bucket, for any task.

Nothing here is task-specific: a ``Batch`` carries targets (-100 where unscored), a ``distance``
per scored position and per-example ``slices``; this module counts correct predictions by each.
Distances are grouped into power-of-two buckets (1, 2-3, 4-7, ...) so that accuracy-vs-distance
curves have a readable number of points at any length.

``evaluate_policy`` scores the same way with the model's attention caches under a KV-cache policy
and budget under one of four protocols (``policy_protocols``: when the question is read relative to
the compression; see its docstring for the bytes it reports).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kv_bytes import parse_byte_budget
from .policy_protocols import PROTOCOLS, STORED_NAMES, run_protocol
from .tasks.base import IGNORE_INDEX, Batch
from .validation import check_choice, check_int


def distance_bucket(distance: int) -> str:
    """Power-of-two bucket label: 0 -> '0', 1 -> '1', 5 -> '4-7', 300 -> '256-511'."""
    if distance <= 1:
        return str(max(distance, 0))
    low = 1 << (int(distance).bit_length() - 1)
    return f"{low}-{2 * low - 1}"


def bucket_low(label: str) -> int:
    return int(label.split("-")[0])


@dataclass
class Counts:
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def add(self, correct: int, total: int) -> None:
        self.correct += int(correct)
        self.total += int(total)


@dataclass
class EvalAccumulator:
    """Adds up predictions from any number of batches (of any lengths)."""

    overall: Counts = field(default_factory=Counts)
    by_slice: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counts)))
    by_distance: dict = field(default_factory=lambda: defaultdict(Counts))
    loss_sum: float = 0.0

    def add(self, predictions: Tensor, batch: Batch, loss_sum: float = 0.0) -> None:
        """predictions: (N, T) predicted token ids (only scored positions are read)."""
        scored = batch.targets != IGNORE_INDEX  # (N, T)
        hit = (predictions == batch.targets) & scored
        self.overall.add(hit.sum(), scored.sum())
        self.loss_sum += loss_sum
        per_example_hit, per_example_total = hit.sum(1), scored.sum(1)  # (N,)
        for name, values in batch.slices.items():
            for value in values.unique().tolist():
                rows = values == value
                self.by_slice[name][value].add(per_example_hit[rows].sum(), per_example_total[rows].sum())
        distances, hits = batch.distance[scored].tolist(), hit[scored].tolist()
        for d, h in zip(distances, hits, strict=True):
            self.by_distance[distance_bucket(d)].add(h, 1)

    def result(self) -> dict:
        return {
            "accuracy": self.overall.accuracy,
            "loss": self.loss_sum / self.overall.total if self.overall.total else float("nan"),
            "scored": self.overall.total,
            "by_slice": {
                name: {str(value): {"accuracy": c.accuracy, "scored": c.total} for value, c in sorted(groups.items())}
                for name, groups in self.by_slice.items()
            },
            "by_distance": {
                label: {"accuracy": c.accuracy, "scored": c.total}
                for label, c in sorted(self.by_distance.items(), key=lambda item: bucket_low(item[0]))
            },
        }


@torch.no_grad()
def evaluate(model, batches: Batch | list[Batch], *, batch_size: int = 64, device=None) -> dict:
    """Accuracy of ``model`` on one or several batches (e.g. one per number of pairs or length).

    Returns ``{"accuracy", "loss", "scored", "by_slice", "by_distance", "state_bytes"}`` where
    ``state_bytes`` maps each evaluated length to the model state's bytes per sequence there.
    """
    if isinstance(batches, Batch):
        batches = [batches]
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    acc = EvalAccumulator()
    state_bytes = {}
    try:
        for batch in batches:
            for start in range(0, len(batch), batch_size):
                part = batch[start : start + batch_size].to(device)
                h, state = model.hidden(part.inputs)
                scored = part.targets != IGNORE_INDEX
                logits = model.head(h[scored])  # (P, V): the head only where scored
                predictions = torch.full_like(part.targets, IGNORE_INDEX)
                predictions[scored] = logits.argmax(-1)
                loss = torch.nn.functional.cross_entropy(logits.float(), part.targets[scored], reduction="sum")
                acc.add(predictions.cpu(), part.to("cpu"), loss.item())
                state_bytes.setdefault(str(part.inputs.shape[1]), model.state_bytes(state) // len(part))
    finally:
        model.train(was_training)
    return {**acc.result(), "state_bytes": state_bytes}


# ----------------------------------------------------------------------------- under a KV-cache policy

POLICY_PROTOCOL = STORED_NAMES["agnostic"]  # what stores written before the other protocols hold


def _policy_layers(model) -> list[int]:
    """Indices of the blocks whose mixer takes a KV-cache policy (plain ``attention``)."""
    from .mixers.attention import Attention

    return [i for i, b in enumerate(model.blocks) if isinstance(b.mixer, Attention) and b.mixer.supports_policy]


def _resident_hook(policy):
    """The policy's ``resident_bytes(layer_state)`` when it distinguishes resident from total bytes
    (retrieval policies that offload), else None."""
    from .policies.base import Policy

    hook = getattr(type(policy), "resident_bytes", None) if policy is not None else None
    if hook is None or hook is getattr(Policy, "resident_bytes", None):
        return None
    return policy.resident_bytes


def _held_bytes(model, state, layers: list[int], resident) -> tuple[int, int | None]:
    """(state bytes, resident bytes or None) of a whole sub-batch: every layer's state plus the
    short-convolution buffers; resident bytes replace the policy layers' totals by the policy's
    ``resident_bytes``."""
    total = model.state_bytes(state)
    if resident is None:
        return total, None
    held = total
    for i in layers:
        layer_state = state.layers[i]
        held += int(resident(layer_state)) - model.blocks[i].mixer.state_bytes(layer_state)
    return total, held


@torch.no_grad()
def evaluate_policy(model, batch: Batch, policy=None, *, context_len: int | None = None, batch_size: int = 64,
                    device=None, protocol: str = "agnostic", decode_tokens: int = 32) -> dict:
    """Accuracy of ``model`` on ``batch`` with every attention layer's cache under ``policy``.

    ``protocol`` says when the question is read (``policy_protocols``: ``agnostic``, ``aware``,
    ``reuse``, ``decode`` with ``decode_tokens`` generated tokens); the rest of this docstring
    describes ``agnostic``, the default.  The other protocols group examples by their first scored
    position and report their bytes after the compressed prompt and at the end the same way.

    Protocol ``agnostic`` (as kvpress's default): for each example the *context* is the tokens
    before its first scored position (the first ``targets != -100``). The context is prefilled with
    the policy active (``forward``: in ``prefill`` mode full causal attention then one compression,
    in ``step`` mode the eviction loop); then the remaining tokens, from the first scored position
    to the end of the sequence, are fed one at a time with ``model.step`` (decode: in prefill mode
    the cache grows by the appended tokens, in step mode it stays within the budget), and the
    logits of scored positions are scored exactly as ``evaluate`` scores them (overall, per slice, per distance
    bucket; loss is the cross-entropy there). So the question is never visible when the context is
    compressed.

    Examples of one batch may have different first scored positions (MQAR's queries start after a
    variable number of pairs). In ``prefill`` mode they are grouped by that position, so every
    example's context is exactly its own; in ``step`` mode (and without a bounded policy) the batch
    is split at its earliest first scored position, which is exact because step-mode eviction makes
    ``forward`` equal the step loop (the split point does not change what the cache holds).

    ``policy``: a ``Policy`` (its budget resolved with ``context_len``, default the batch's length
    T, i.e. a float budget is a fraction of the whole evaluated sequence) or None (plain attention:
    the same predictions as ``evaluate``, through the step path). The model's attention layers get
    their previous policies back afterwards.

    Returns ``evaluate``'s keys (``accuracy``, ``loss``, ``scored``, ``by_slice``, ``by_distance``)
    and, per sequence (means over examples), summed over layers (short-convolution buffers too):
    ``state_bytes``, the bytes held after the example's context; ``state_bytes_end``, after the
    whole sequence (T tokens: comparable with ``evaluate``'s ``state_bytes[T]`` of a mixer, and the
    most the cache ever held in prefill mode); ``resident_bytes`` / ``resident_bytes_end``, the
    same with the policy layers counted by the policy's ``resident_bytes`` (None when the policy
    does not tell resident from total bytes: it has no such hook or keeps the base one). Also
    ``budget_tokens`` (the resolved budget before per-layer allocation; None: unlimited; for a byte
    budget, the tokens it buys), ``budget_bytes`` (the byte budget given, else None),
    ``context_len``, ``context_tokens`` (mean context length), ``examples``, ``split``
    (``"per_example"`` or ``"batch_min"``) and ``protocol`` (its stored name, ``STORED_NAMES``).
    """
    check_choice("protocol", protocol, PROTOCOLS)
    check_int(decode_tokens=decode_tokens, minimum=0)
    device = device or next(model.parameters()).device
    T = batch.inputs.shape[1]
    context_len = T if context_len is None else context_len
    layers = _policy_layers(model)
    saved = {i: model.blocks[i].mixer.kv_policy for i in layers}
    was_training = model.training
    model.eval()
    budget_bytes = parse_byte_budget(policy.budget) if policy is not None else None
    policy = model.resolve_byte_budget(policy)  # a byte budget becomes the tokens it buys (kv_bytes)
    resident = _resident_hook(policy)
    budget_tokens = policy.resolve_budget(context_len) if policy is not None else None
    per_example = protocol != "agnostic" or (policy is not None and policy.mode == "prefill"
                                             and budget_tokens is not None)
    held_fn = lambda state: _held_bytes(model, state, layers, resident)  # noqa: E731
    acc = EvalAccumulator()
    sums = {"state_bytes": 0.0, "state_bytes_end": 0.0, "resident_bytes": 0.0, "resident_bytes_end": 0.0,
            "context_tokens": 0.0}
    counted = 0
    try:
        if policy is not None:
            model.set_kv_policy(policy, context_len=context_len)
        else:
            for i in layers:
                model.blocks[i].mixer.set_policy(None)
        scored_all = batch.targets != IGNORE_INDEX
        has_scored = scored_all.any(1)
        first = torch.where(has_scored, scored_all.float().argmax(1), torch.full_like(has_scored, T, dtype=torch.long))
        rows = torch.nonzero(has_scored).flatten()
        if per_example:
            groups = [rows[first[rows] == p] for p in sorted(set(first[rows].tolist()))]
        else:
            groups = [rows]
        for group in groups:
            for start in range(0, len(group), batch_size):
                index = group[start : start + batch_size]
                part = batch[index].to(device)
                p0 = int(first[index].min())
                starts = first[index].tolist()
                wanted = set(starts) | {T}
                held: dict[int, tuple[int, int | None]] = {}  # tokens processed -> bytes of the sub-batch
                B = len(index)
                if protocol != "agnostic":
                    predictions, loss_sum, prompt, end = run_protocol(protocol, model, part, p0, held_fn,
                                                                      decode_tokens=decode_tokens)
                    acc.add(predictions.cpu(), part.to("cpu"), loss_sum)
                    sums["state_bytes"] += prompt[0]
                    sums["state_bytes_end"] += end[0]
                    if resident is not None:
                        sums["resident_bytes"] += prompt[1]
                        sums["resident_bytes_end"] += end[1]
                    sums["context_tokens"] += p0 * B
                    counted += B
                    continue
                if p0 > 0:
                    _, state = model.hidden(part.inputs[:, :p0])
                else:
                    state = model.init_state(B, device=device)
                if p0 in wanted:
                    held[p0] = _held_bytes(model, state, layers, resident)
                predictions = torch.full_like(part.targets, IGNORE_INDEX)
                loss_sum = 0.0
                for t in range(p0, T):  # to the end: the bytes at T compare with evaluate's
                    logits, state = model.step(part.inputs[:, t], state)
                    if t + 1 in wanted:
                        held[t + 1] = _held_bytes(model, state, layers, resident)
                    scored = part.targets[:, t] != IGNORE_INDEX
                    if scored.any():
                        chosen = logits[scored]
                        predictions[scored, t] = chosen.argmax(-1)
                        loss_sum += torch.nn.functional.cross_entropy(
                            chosen.float(), part.targets[scored, t], reduction="sum").item()
                acc.add(predictions.cpu(), part.to("cpu"), loss_sum)
                for s in starts:
                    sums["state_bytes"] += held[s][0] / B
                    sums["state_bytes_end"] += held[T][0] / B
                    if resident is not None:
                        sums["resident_bytes"] += held[s][1] / B
                        sums["resident_bytes_end"] += held[T][1] / B
                    sums["context_tokens"] += s
                counted += B
    finally:
        for i, bound in saved.items():
            model.blocks[i].mixer.kv_policy = bound
        model.train(was_training)
    n = max(counted, 1)
    out = {
        **acc.result(),
        "state_bytes": round(sums["state_bytes"] / n) if counted else None,
        "state_bytes_end": round(sums["state_bytes_end"] / n) if counted else None,
        "resident_bytes": round(sums["resident_bytes"] / n) if counted and resident is not None else None,
        "resident_bytes_end": round(sums["resident_bytes_end"] / n) if counted and resident is not None else None,
        "budget_tokens": budget_tokens,
        "budget_bytes": budget_bytes,
        "context_len": context_len,
        "context_tokens": sums["context_tokens"] / n if counted else None,
        "examples": counted,
        "split": "per_example" if per_example else "batch_min",
        "protocol": STORED_NAMES[protocol],
    }
    return out
