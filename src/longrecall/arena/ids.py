"""Run ids and the order runs are queued in.

A run's id is the first 16 hex digits of the sha256 of its fully resolved config's canonical JSON,
without the keys that do not change results (``out_dir``, ``threads``) and without recipe keys added
after stores existed while they are at their defaults, so a store written before them resumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..config import TrainConfig

__all__ = ["RESULT_NEUTRAL_KEYS", "ID_OMITTED_DEFAULTS", "RunSpec", "canonical_json", "run_id", "estimated_work",
           "longest_first"]

# TrainConfig keys that do not change a run's results, so they are left out of its id
RESULT_NEUTRAL_KEYS = ("out_dir", "threads")
# keys added after stores existed: left out of the id while at these defaults, so a run configured
# before they existed keeps its id (and its stored result)
ID_OMITTED_DEFAULTS = {"loss_on": "answers", "max_steps": None, "target_accuracy": 0.99, "compile": False,
                       "segment_len": None, "bptt_segments": None, "model": "lm", "model_kwargs": {},
                       "aux_loss_weight": 0.0}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(config: TrainConfig | dict) -> str:
    """Stable id of a fully resolved config: sha256 of its canonical JSON without out_dir/threads."""
    data = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    for key in RESULT_NEUTRAL_KEYS:
        data.pop(key, None)
    for key, default in ID_OMITTED_DEFAULTS.items():
        if key in data and data[key] == default:
            del data[key]
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its id, its resolved and validated config, and labels for reports."""

    id: str
    config: TrainConfig
    labels: dict
    spec_name: str

    @property
    def config_dict(self) -> dict:
        return self.config.to_dict()


def estimated_work(config: TrainConfig) -> int:
    """A mixer-agnostic size of a run, for ordering: training tokens x layers x width.

    Only the order matters (``longest_first``); it ignores early stopping and the mixers' different
    per-token costs, which a spec cannot know before running.
    """
    seq_len = (config.task_kwargs or {}).get("seq_len", 1)
    steps = config.max_steps if config.max_steps is not None else config.steps
    return steps * config.batch_size * int(seq_len) * len(config.layers) * config.d_model


def longest_first(runs: list[RunSpec]) -> list[RunSpec]:
    """Runs by decreasing ``estimated_work``, grid order among equals.

    Workers claim pending runs in insertion order, so a store filled in grid order starts the
    largest runs (longest sequence, widest model) last, and one worker finishes them alone while the
    others idle. With exact run times, longest-first list scheduling on m workers ends within
    4/3 - 1/(3m) of the optimal wall time, against 2 - 1/m for an arbitrary order (Graham 1969);
    this estimate is rougher than exact times but orders a sweep's lengths and widths correctly.
    """
    return sorted(runs, key=lambda run: -estimated_work(run.config))
