"""Accuracy overall, per slice and per distance bucket, for any task.

Nothing here is task-specific: a ``Batch`` carries targets (-100 where unscored), a ``distance``
per scored position and per-example ``slices``; this module counts correct predictions by each.
Distances are grouped into power-of-two buckets (1, 2-3, 4-7, ...) so that accuracy-vs-distance
curves have a readable number of points at any length.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .tasks.base import IGNORE_INDEX, Batch


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
        for d, h in zip(distances, hits):
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
