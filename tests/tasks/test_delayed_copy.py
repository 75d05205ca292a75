import pytest

import longrecall.tasks.delayed_copy  # noqa: F401 - registers "delayed_copy" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.delayed_copy import BLANK, CPU_SCALE, SYMBOL0, URNN_SCALE, DelayedCopy

SMALL = dict(n_symbols=5, delay=30, alphabet_size=8)


@pytest.mark.parametrize(
    "config", [CPU_SCALE, URNN_SCALE, SMALL, dict(n_symbols=1, delay=0, alphabet_size=2),
               dict(n_symbols=3, delay=1, alphabet_size=50)]
)
def test_structure_targets_and_distances(config):
    task = DelayedCopy(**config)
    S, D, T = task.n_symbols, task.delay, task.seq_len
    assert T == S + D + 1 + S and task.vocab_size == task.alphabet_size + 2
    batch = task.build(16, 0)
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (16, T)
    for row in range(16):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        go = x.index(task.recall_token)
        assert go == S + D and x.count(task.recall_token) == 1
        symbols = x[:S]
        assert all(SYMBOL0 <= t < SYMBOL0 + task.alphabet_size for t in symbols)
        assert x[S:go] == [BLANK] * D and x[go + 1 :] == symbols
        scored = [t for t in range(T) if y[t] != IGNORE_INDEX]
        assert scored == list(range(go, go + S))
        for t in scored:
            i = t - go  # predicts symbol i (0-based), written at position i
            assert x[t + 1] == y[t] == symbols[i]
            assert d[t] == t - i == S + D
        assert all(d[t] == -1 for t in range(T) if y[t] == IGNORE_INDEX)


def test_worked_example_layout():
    task = DelayedCopy(n_symbols=3, delay=4, alphabet_size=8)
    x = task.build(1, 0).inputs[0].tolist()
    batch = task.build(1, 0)
    assert task.seq_len == 11 and task.recall_token == 9
    assert x[3:8] == [0, 0, 0, 0, 9] and x[8:] == x[:3]
    assert batch.targets[0].tolist() == [-100] * 7 + x[:3] + [-100]
    assert batch.distance[0].tolist() == [-1] * 7 + [7, 7, 7, -1]


def test_symbols_cover_the_alphabet_and_never_blank():
    batch = DelayedCopy(n_symbols=10, delay=5, alphabet_size=8).build(64, 0)
    symbols = batch.inputs[:, :10]
    assert set(symbols.unique().tolist()) == set(range(1, 9))


def test_slices_and_config():
    batch = DelayedCopy(**SMALL).build(4, 0)
    assert batch.slices["delay"].tolist() == [30] * 4 and batch.slices["seq_len"].tolist() == [41] * 4
    assert DelayedCopy(**SMALL).config() == {"task": "delayed_copy", "version": 1, **SMALL}


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(n_symbols=0), "n_symbols"),
        (dict(n_symbols=10_001), "n_symbols"),
        (dict(n_symbols=2.0), "n_symbols"),
        (dict(delay=-1), "delay"),
        (dict(delay=1_000_001), "delay"),
        (dict(delay=None), "delay"),
        (dict(alphabet_size=1), "alphabet_size"),
        (dict(alphabet_size=100_001), "alphabet_size"),
        (dict(alphabet_size=True), "alphabet_size"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DelayedCopy(**{**SMALL, **kwargs})


def test_attention_learns_delayed_copy(learn):
    # chance is 1/8 per symbol; seeds 0-2 reached 1.00 after 200 steps (about 8 s)
    metrics, first, last = learn(TrainConfig(task="delayed_copy", task_kwargs=SMALL, layers=["attention", "attention"],
                                d_model=32, short_conv=4, steps=200, batch_size=32, eval_every=200, eval_examples=256,
                                lr=3e-3, warmup_steps=20, threads=1))
    assert metrics["final_eval"]["accuracy"] > 0.6
    assert last < first - 1.0  # from about ln(10) = 2.3
