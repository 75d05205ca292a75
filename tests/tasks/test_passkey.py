import math

import pytest

import longrecall.tasks.passkey  # noqa: F401 - registers "passkey" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.passkey import BOS, CPU_SCALE, DIGIT0, FILLER0, INTRO, QUERY, Passkey

SMALL = dict(seq_len=48, key_digits=3, filler_len=5)


def find_intro(x: list[int]) -> int:
    hits = [i for i in range(len(x) - 2) if tuple(x[i : i + 3]) == INTRO]
    assert len(hits) == 1
    return hits[0]


@pytest.mark.parametrize(
    "config",
    [CPU_SCALE, SMALL, dict(seq_len=9, key_digits=2, depth=0.3, filler_len=1),
     dict(seq_len=100, key_digits=1, depth=[0.25])],
)
def test_structure_targets_and_distances(config):
    task = Passkey(**config)
    batch = task.build(32, 1)
    T, k = task.seq_len, task.key_digits
    F = T - 2 * k - 5
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (32, T)
    assert batch.inputs.min() >= 0 and batch.inputs.max() < task.vocab_size
    for row in range(32):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        intro = find_intro(x)
        key = x[intro + 3 : intro + 3 + k]
        assert all(DIGIT0 <= t < DIGIT0 + 10 for t in key)
        q = x.index(QUERY)
        assert q == T - k - 1 and x[0] == BOS and x.count(QUERY) == 1
        assert x[q + 1 :] == key  # teacher-forced answer
        # filler: everything else is the tiled sentence, its period continuing across the key
        filler = x[1:intro] + x[intro + 3 + k : q]
        assert len(filler) == F
        assert filler == [FILLER0 + i % task.filler_len for i in range(F)]
        # depth: the configured depth of this example puts the key after round(depth * F) filler tokens
        tenths = batch.slices["depth_tenths"][row].item()
        assert min(abs(intro - 1 - depth * F) for depth in task.depths if math.floor(depth * 10 + 0.5) == tenths) <= 0.5
        scored = [t for t in range(T) if y[t] != IGNORE_INDEX]
        assert scored == list(range(q, q + k))
        for i, t in enumerate(scored):
            assert y[t] == key[i]  # digit i of the key
            assert x[t + 1] == key[i]  # ... which is what comes next
            assert d[t] == t - (intro + 3 + i)  # scored position minus the same digit's position in the key
        assert all(d[t] == -1 for t in range(T) if y[t] == IGNORE_INDEX)


def test_depth_extremes_and_list_sampling():
    task = Passkey(seq_len=40, key_digits=3, depth=[0.0, 1.0])
    batch = task.build(64, 0)
    tenths = batch.slices["depth_tenths"]
    assert set(tenths.tolist()) == {0, 10}
    for row in range(64):
        intro = find_intro(batch.inputs[row].tolist())
        assert intro == (1 if tenths[row] == 0 else 40 - 3 - 1 - 3 - 3)  # right after BOS / right before QUERY
    # the distance grows with the depth's opposite: shallow keys are furthest from the query
    scored = batch.targets != IGNORE_INDEX
    shallow = batch.distance[scored & (tenths == 0)[:, None]]
    deep = batch.distance[scored & (tenths == 10)[:, None]]
    assert shallow.min() > deep.max()


def test_worked_example_layout():
    batch = Passkey(seq_len=15, key_digits=2, depth=0.5, filler_len=3).build(1, 0)
    x, y, d = batch.inputs[0].tolist(), batch.targets[0].tolist(), batch.distance[0].tolist()
    assert x[:7] == [0, 15, 16, 17, 11, 12, 13] and x[9:13] == [15, 16, 17, 14] and x[13:] == x[7:9]
    assert y[12:14] == x[7:9] and d == [-1] * 12 + [5, 5, -1]
    assert batch.slices["depth_tenths"].tolist() == [5] and batch.slices["seq_len"].tolist() == [15]


def test_derived_vocab_and_config():
    task = Passkey(**SMALL)
    assert task.vocab_size == 15 + 5
    assert task.config()["task"] == "passkey" and task.config()["depth"] == CPU_SCALE["depth"]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=2.5), "seq_len"),
        (dict(seq_len=10, key_digits=3), "seq_len"),  # needs 2 * 3 + 5 = 11
        (dict(key_digits=0), "key_digits"),
        (dict(key_digits=33), "key_digits"),
        (dict(key_digits=True), "key_digits"),
        (dict(filler_len=0), "filler_len"),
        (dict(filler_len=1001), "filler_len"),
        (dict(depth=-0.1), "depth"),
        (dict(depth=1.5), "depth"),
        (dict(depth=[]), "depth"),
        (dict(depth=[0.5, 2.0]), "depth"),
        (dict(depth="half"), "depth"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Passkey(**{**SMALL, **kwargs})


def test_smallest_sequence_is_accepted():
    batch = Passkey(seq_len=11, key_digits=3, depth=0.7).build(2, 0)  # no filler at all
    assert batch.inputs[0, :4].tolist() == [BOS, *INTRO]


def test_attention_learns_passkey(learn):
    # chance is 1/10 per digit; seeds 0-2 reached 0.99-1.00 after 200 steps (about 10 s)
    metrics, first, last = learn(TrainConfig(task="passkey", task_kwargs=SMALL, layers=["attention", "attention"],
                                d_model=32, short_conv=4, steps=200, batch_size=32, eval_every=200, eval_examples=256,
                                lr=3e-3, warmup_steps=20, threads=1))
    assert metrics["final_eval"]["accuracy"] > 0.6
    assert last < first - 1.5  # from about ln(20) = 3.0
