import pytest

import longrecall.tasks.induction  # noqa: F401 - registers "induction" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.registry import TASKS
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.induction import CPU_SCALE, MAMBA_SCALE, Induction

SMALL = dict(vocab_size=8, seq_len=32, min_distance=1)


def test_registered_and_config():
    assert TASKS.get("induction") is Induction
    assert Induction(**SMALL).config() == {"task": "induction", "version": 1, **SMALL}


@pytest.mark.parametrize(
    "config", [SMALL, CPU_SCALE, MAMBA_SCALE, dict(vocab_size=3, seq_len=3, min_distance=1),
               dict(vocab_size=16, seq_len=64, min_distance=40)]
)
def test_structure_targets_and_distances(config):
    task = Induction(**config)
    V, T, trigger = task.vocab_size, task.seq_len, task.vocab_size - 1
    batch = task.build(32, 0)
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (32, T)
    for row in range(32):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        assert all(0 <= t < V for t in x)
        occurrences = [t for t in range(T) if x[t] == trigger]
        assert len(occurrences) == 2 and occurrences[1] == T - 1  # once inside, once at the end
        answer_pos = occurrences[0] + 1
        assert [t for t in range(T) if y[t] != IGNORE_INDEX] == [T - 1]  # only the final position
        assert y[T - 1] == x[answer_pos] != trigger
        assert d[T - 1] == T - 1 - answer_pos >= task.min_distance  # final position minus the answer's
        assert d[: T - 1] == [-1] * (T - 1)


def test_worked_example_layout():
    x = Induction(vocab_size=6, seq_len=10).build(1, 0).inputs[0].tolist()
    assert x[-1] == 5 and x.count(5) == 2


def test_distances_cover_the_allowed_range():
    task = Induction(vocab_size=16, seq_len=16, min_distance=5)
    batch = task.build(512, 0)
    distances = batch.distance[:, -1]
    assert set(distances.tolist()) == set(range(5, 15))  # uniform over [min_distance, T - 2]
    answers = batch.targets[:, -1]
    assert set(answers.tolist()) == set(range(15))  # any ordinary token, never the trigger


def test_slices():
    batch = Induction(**SMALL).build(4, 0)
    assert batch.slices["min_distance"].tolist() == [1] * 4 and batch.slices["seq_len"].tolist() == [32] * 4


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=2), "vocab_size"),
        (dict(vocab_size=8.0), "vocab_size"),
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=2, min_distance=1), "seq_len"),
        (dict(seq_len=True), "seq_len"),
        (dict(min_distance=0), "min_distance"),
        (dict(min_distance=31), "min_distance"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Induction(**{**SMALL, **kwargs})


def test_attention_learns_induction(learn):
    # chance is 1/7 (the answer is one of the 7 ordinary tokens); seeds 0-2 reached 1.00 after
    # 300 steps (about 10 s), the loss from about 2.0 to about 0.01
    metrics, first, last = learn(TrainConfig(task="induction", task_kwargs=SMALL, layers=["attention", "attention"],
                                d_model=32, short_conv=4, steps=300, batch_size=32, eval_every=300, eval_examples=256,
                                lr=3e-3, warmup_steps=20, threads=1))
    assert metrics["final_eval"]["accuracy"] > 0.6
    assert last < first - 1.0
