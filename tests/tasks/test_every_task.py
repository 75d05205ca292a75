"""What every registered task must do, checked once over the whole registry (as the contract suite
does for mixers): deterministic per seed from a local generator, no global RNG touched, a
well-formed batch (token ids in the vocabulary, a distance wherever a target is scored), a
reproducible config, clear errors for bad ``build`` arguments, a card in docs/tasks.md.

Task-specific facts (exact targets on constructed examples, parameter bounds, learning) live in
``tests/tasks/test_<task>.py``. Each task runs here at its CPU scale from the ``probes`` preset.
"""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from longrecall.arena.presets import PROBE_TASKS
from longrecall.cli.ls import first_line
from longrecall.registry import TASKS
from longrecall.tasks.base import IGNORE_INDEX, Batch

LENGTH = 128
SETTINGS = {entry["task"]: entry["kwargs"] for entry in PROBE_TASKS}
CARDS = (Path(__file__).resolve().parents[2] / "docs" / "tasks.md").read_text()
# tasks whose answer is one label at one position (the rest of the sequence is context)
CLASSIFICATION = {"listops", "set_disjointness", "order_recall"}


def make(name: str):
    cls = TASKS.get(name)
    kwargs = dict(SETTINGS.get(name, {}))
    return cls(**{**kwargs, **cls.length_kwargs(LENGTH, kwargs)})


def same(a: Batch, b: Batch) -> bool:
    return (torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
            and torch.equal(a.distance, b.distance) and a.slices.keys() == b.slices.keys()
            and all(torch.equal(a.slices[k], b.slices[k]) for k in a.slices))


def test_every_task_is_probed():
    assert set(SETTINGS) == set(TASKS.names()), "add the task to PROBE_TASKS in arena/presets.py"


@pytest.mark.parametrize("name", TASKS.names())
def test_deterministic_per_seed_and_seeds_differ(name):
    task = make(name)
    a, b, c = task.build(8, 3), task.build(8, 3), task.build(8, 4)
    assert same(a, b)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name", TASKS.names())
def test_global_rngs_untouched(name):
    def draw():
        return torch.rand(3), random.random(), np.random.rand()

    torch.manual_seed(123), random.seed(7), np.random.seed(5)
    expected = draw()
    torch.manual_seed(123), random.seed(7), np.random.seed(5)
    make(name).build(4, 0)
    got = draw()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.parametrize("name", TASKS.names())
def test_batch_is_well_formed(name):
    task = make(name)
    batch = task.build(16, 0)
    assert batch.inputs.dtype == batch.targets.dtype == batch.distance.dtype == torch.int64
    assert batch.inputs.shape == (16, task.seq_len)
    assert int(batch.inputs.min()) >= 0 and int(batch.inputs.max()) < task.vocab_size
    scored = batch.targets != IGNORE_INDEX
    assert scored.any(dim=1).all(), "every example scores at least one position"
    assert int(batch.targets[scored].min()) >= 0 and int(batch.targets[scored].max()) < task.vocab_size
    # a distance wherever a target is scored (at least 1 token back), -1 elsewhere
    assert (batch.distance[scored] >= 1).all() and (batch.distance[~scored] == -1).all()
    assert (batch.distance[scored] < task.seq_len).all()
    if name in CLASSIFICATION:
        assert (scored.sum(dim=1) == 1).all()
    assert len(batch[2:5]) == 3 and same(batch[2:5], Batch.concat([batch[2:3], batch[3:5]]))


@pytest.mark.parametrize("name", TASKS.names())
def test_config_names_the_task_and_rebuilds_it(name):
    task = make(name)
    config = task.config()
    assert config["task"] == name and config["version"] == type(task).version
    rebuilt = TASKS.get(name)(**{k: v for k, v in config.items() if k not in ("task", "version")})
    assert same(rebuilt.build(4, 1), task.build(4, 1))


@pytest.mark.parametrize("name", TASKS.names())
def test_bad_build_arguments(name):
    task = make(name)
    with pytest.raises(ValueError, match="n must"):
        task.build(0, 0)
    with pytest.raises(TypeError, match="seed"):
        task.build(2, 1.5)


@pytest.mark.parametrize("name", TASKS.names())
def test_described_and_documented(name):
    assert first_line(TASKS.get(name)), "the class docstring's first line is what `longrecall ls tasks` shows"
    assert f"\n## {name}\n" in CARDS, f"docs/tasks.md needs a card `## {name}`"
