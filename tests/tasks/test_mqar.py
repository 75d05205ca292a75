import pytest
import torch

from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.mqar import CPU_SCALE, MQAR, ZOOLOGY_SCALE


@pytest.mark.parametrize("config", [CPU_SCALE, ZOOLOGY_SCALE,
                                    dict(vocab_size=64, seq_len=40, num_kv_pairs=5, num_passes=2)])
def test_structure_targets_and_distances(config):
    task = MQAR(**config, random_non_queries=False)
    batch = task.build(16, 0)
    V, T, P, passes = task.vocab_size, task.seq_len, task.num_kv_pairs, task.num_passes
    assert batch.inputs.shape == (16, T)
    for row in range(16):
        x, y, d = batch.inputs[row], batch.targets[row], batch.distance[row]
        keys, values = x[0 : 2 * P : 2], x[1 : 2 * P : 2]
        assert ((keys >= 1) & (keys < V // 2)).all() and len(set(keys.tolist())) == P
        assert ((values >= V // 2) & (values < V)).all() and len(set(values.tolist())) == P
        for p in range(1, passes):  # JRT repeats
            assert torch.equal(x[2 * P * p : 2 * P * (p + 1)], x[: 2 * P])
        scored = (y != IGNORE_INDEX).nonzero().flatten()
        assert len(scored) == P
        for q in scored.tolist():
            key = x[q].item()  # the query key sits at the scored position
            i = keys.tolist().index(key)
            assert y[q].item() == values[i].item()  # target = its value
            assert d[q].item() == q - 2 * i  # distance = true token gap to the key's first occurrence
            assert q >= 2 * P * passes and (q - 2 * P * passes) % 2 == 0
        assert (d[y == IGNORE_INDEX] == -1).all()


def test_worked_example_from_docstring_shape():
    batch = MQAR(vocab_size=12, seq_len=16, num_kv_pairs=2, random_non_queries=False).build(1, 0)
    x, y = batch.inputs[0], batch.targets[0]
    assert x[4:].tolist().count(0) == 16 - 4 - 2  # two queries, everything else filler
    assert (y != IGNORE_INDEX).sum() == 2


def test_random_non_queries_fill_only_filler():
    clean = MQAR(**CPU_SCALE, random_non_queries=False).build(8, 5)
    noisy = MQAR(**CPU_SCALE).build(8, 5)
    keep = clean.inputs != 0
    assert torch.equal(noisy.inputs[keep], clean.inputs[keep])
    assert torch.equal(noisy.targets, clean.targets)
    assert (noisy.inputs[~keep] != 0).float().mean() > 0.9


def test_power_law_favours_short_gaps():
    batch = MQAR(vocab_size=1024, seq_len=512, num_kv_pairs=8, power_a=0.01).build(256, 0)
    uniform = MQAR(vocab_size=1024, seq_len=512, num_kv_pairs=8, power_a=1.0).build(256, 0)
    def median(b):
        return b.distance[b.targets != IGNORE_INDEX].float().median()

    assert median(batch) < 0.5 * median(uniform)


def test_slices():
    batch = MQAR(**CPU_SCALE).build(4, 0)
    assert batch.slices["num_kv_pairs"].tolist() == [16] * 4 and batch.slices["seq_len"].tolist() == [256] * 4


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(seq_len=-2), "seq_len"),
        (dict(seq_len=255), "seq_len"),
        (dict(num_kv_pairs=0), "num_kv_pairs"),
        (dict(num_kv_pairs=100, seq_len=256), "seq_len"),
        (dict(vocab_size=20, num_kv_pairs=10, seq_len=64), "num_kv_pairs"),
        (dict(power_a=0.0), "power_a"),
        (dict(power_a=1.5), "power_a"),
        (dict(num_passes=0), "num_passes"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MQAR(**{**CPU_SCALE, **kwargs})



def test_chance_accuracy_is_a_uniform_guess_among_the_values():
    from longrecall.tasks.mqar import MQAR

    assert MQAR(vocab_size=256, seq_len=64, num_kv_pairs=4).chance_accuracy() == 1 / 128
    assert MQAR(vocab_size=65, seq_len=64, num_kv_pairs=4).chance_accuracy() == 1 / 33  # values: [32, 65)
