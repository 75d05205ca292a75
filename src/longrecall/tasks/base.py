"""What every task returns, and the base class tasks derive from.

A task is a versioned dataclass whose fields are its configuration.  ``build(n, seed)`` generates
``n`` examples deterministically from a *local* ``torch.Generator`` (never global seeding), so the
same (config, seed) always gives the same batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

IGNORE_INDEX = -100  # targets not scored (the PyTorch cross-entropy convention, as in Zoology)


@dataclass
class Batch:
    """A generated batch.

    Attributes:
        inputs:   (N, T) int64 token ids.
        targets:  (N, T) int64 next-token targets, ``-100`` where nothing is scored.
        distance: (N, T) int64 tokens between where the scored fact was written and where it is
                  recalled; ``-1`` where nothing is scored.
        slices:   name -> (N,) per-example metadata used to group accuracy (e.g. ``num_kv_pairs``).
    """

    inputs: Tensor
    targets: Tensor
    distance: Tensor
    slices: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.inputs.shape != self.targets.shape or self.inputs.shape != self.distance.shape:
            raise ValueError(
                f"inputs, targets and distance must share a shape, got {tuple(self.inputs.shape)}, "
                f"{tuple(self.targets.shape)}, {tuple(self.distance.shape)}"
            )
        for name, value in self.slices.items():
            if value.shape != (self.inputs.shape[0],):
                raise ValueError(f"slice {name!r} must have shape (N,)={self.inputs.shape[0]}, "
                                 f"got {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index) -> "Batch":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Batch(
            self.inputs[index],
            self.targets[index],
            self.distance[index],
            {name: value[index] for name, value in self.slices.items()},
        )

    def to(self, device) -> "Batch":
        return Batch(
            self.inputs.to(device),
            self.targets.to(device),
            self.distance.to(device),
            {name: value.to(device) for name, value in self.slices.items()},
        )

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        """Stack batches of the same length T (slices must share names)."""
        lengths = {b.inputs.shape[1] for b in batches}
        if len(lengths) != 1:
            raise ValueError(f"cannot concatenate batches of different lengths {sorted(lengths)}")
        names = set(batches[0].slices)
        return Batch(
            torch.cat([b.inputs for b in batches]),
            torch.cat([b.targets for b in batches]),
            torch.cat([b.distance for b in batches]),
            {name: torch.cat([b.slices[name] for b in batches]) for name in names},
        )


@dataclass
class Task:
    """Base class: subclasses are ``@register_task`` dataclasses with a ``version``.

    Every task has the fields (or attributes) ``vocab_size`` and ``seq_len``; its constructor
    validates them and raises ``ValueError`` naming the argument.
    """

    version: ClassVar[int] = 1
    vocab_size: ClassVar[int]
    seq_len: ClassVar[int]

    def build(self, n: int, seed: int) -> Batch:
        raise NotImplementedError

    @classmethod
    def length_kwargs(cls, seq_len: int, kwargs: dict) -> dict:
        """Constructor arguments that make the task ``seq_len`` tokens long (the arena's ``lengths``).

        Most tasks take ``seq_len`` directly; a task whose length is derived from other parameters
        (``copy``: 2L + 2) overrides this and raises ``ValueError`` naming ``seq_len`` when no
        setting reaches that length exactly.
        """
        return {"seq_len": seq_len}

    def chance_accuracy(self) -> float | None:
        """Accuracy of a uniform guess among the answers the task can ask for (None: not defined for
        this task). Reports draw it as a reference line, so "above chance" can be read off a plot."""
        return None

    def config(self) -> dict:
        """The resolved configuration, with the task's registry key and version."""
        return {"task": getattr(type(self), "registry_key", type(self).__name__), "version": self.version,
                **dataclasses.asdict(self)}

    def replace(self, **changes) -> "Task":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def generator(seed: int) -> torch.Generator:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        return torch.Generator().manual_seed(seed)
