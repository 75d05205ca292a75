import pytest

import longrecall.tasks.copy  # noqa: F401 - registers "copy" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.copy import BOS, CPU_SCALE, LETTER0, PAPER_SCALE, SEP, Copy

SMALL = dict(string_length=12, alphabet_size=8)


@pytest.mark.parametrize("config", [CPU_SCALE, PAPER_SCALE, SMALL, dict(string_length=1, alphabet_size=2)])
def test_structure_targets_and_distances(config):
    task = Copy(**config)
    L, T = task.string_length, task.seq_len
    assert T == 2 * L + 2 and task.vocab_size == task.alphabet_size + 2
    batch = task.build(16, 0)
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (16, T)
    for row in range(16):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        sep = x.index(SEP)
        assert x[0] == BOS and sep == L + 1 and x.count(SEP) == 1 and x.count(BOS) == 1
        source, copy = x[1:sep], x[sep + 1 :]
        assert source == copy and all(LETTER0 <= t < task.vocab_size for t in source)
        scored = [t for t in range(T) if y[t] != IGNORE_INDEX]
        assert len(scored) == L  # every copied letter exactly once
        for t in scored:
            i = t - sep + 1  # the scored position predicts copy letter i (1-based), which sits at t + 1
            assert x[t + 1] == y[t] == source[i - 1]
            assert d[t] == t - i == L  # scored position minus the letter's source position (i)
            assert (t + 1) - i == L + 1  # the copy's own position minus the source's
        assert all(d[t] == -1 for t in range(T) if y[t] == IGNORE_INDEX)


def test_worked_example_layout():
    batch = Copy(string_length=3, alphabet_size=4).build(1, 0)
    x = batch.inputs[0].tolist()
    assert x[0] == 0 and x[4] == 1 and x[1:4] == x[5:8]
    assert batch.targets[0].tolist() == [-100] * 4 + x[1:4] + [-100]
    assert batch.distance[0].tolist() == [-1] * 4 + [3, 3, 3, -1]


def test_letters_cover_the_alphabet():
    batch = Copy(string_length=64, alphabet_size=26).build(32, 0)
    letters = batch.inputs[:, 1:65]
    assert set(letters.unique().tolist()) == set(range(LETTER0, LETTER0 + 26))


def test_slices_and_config():
    batch = Copy(**SMALL).build(4, 0)
    assert batch.slices["string_length"].tolist() == [12] * 4 and batch.slices["seq_len"].tolist() == [26] * 4
    config = Copy(**SMALL).config()
    assert config == {"task": "copy", "version": 1, "string_length": 12, "alphabet_size": 8}


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(string_length=0), "string_length"),
        (dict(string_length=100_001), "string_length"),
        (dict(string_length=3.0), "string_length"),
        (dict(alphabet_size=1), "alphabet_size"),
        (dict(alphabet_size=100_001), "alphabet_size"),
        (dict(alphabet_size=False), "alphabet_size"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Copy(**{**SMALL, **kwargs})


def test_seq_len_is_not_a_parameter():
    with pytest.raises(TypeError):
        Copy(string_length=4, alphabet_size=4, seq_len=10)


def test_attention_learns_to_copy(learn):
    # chance is 1/8 per letter; seeds 0-2 reached 1.00 after 200 steps (about 6 s)
    metrics, first, last = learn(TrainConfig(task="copy", task_kwargs=SMALL, layers=["attention", "attention"],
                                d_model=32, short_conv=4, steps=200, batch_size=32, eval_every=200, eval_examples=256,
                                lr=3e-3, warmup_steps=20, threads=1))
    assert metrics["final_eval"]["accuracy"] > 0.6
    assert last < first - 1.0  # from about ln(10) = 2.3
