import pytest
import torch

import longrecall.tasks.set_disjointness  # noqa: F401 - registers "set_disjointness" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.registry import TASKS
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.set_disjointness import CPU_SCALE, NO, QUERY, SEP, YES, SetDisjointness

SMALL = dict(universe_size=32, short_size=3, long_size=8, order="short_first")


def test_registered_and_config():
    assert TASKS.get("set_disjointness") is SetDisjointness
    assert SetDisjointness(**SMALL).config() == {"task": "set_disjointness", "version": 1, **SMALL}
    task = SetDisjointness(**SMALL)
    assert task.vocab_size == 32 + 5 and task.seq_len == 3 + 8 + 3


@pytest.mark.parametrize("order", ["short_first", "long_first"])
@pytest.mark.parametrize(
    "sizes", [SMALL, CPU_SCALE, dict(universe_size=5, short_size=1, long_size=4),
              dict(universe_size=10, short_size=5, long_size=5), dict(universe_size=64, short_size=4, long_size=16)]
)
def test_structure_targets_and_distances(sizes, order):
    task = SetDisjointness(**{**sizes, "order": order})
    S, L, V, T = task.short_size, task.long_size, task.vocab_size, task.seq_len
    F = S if order == "short_first" else L  # size of the set written first
    batch = task.build(32, 0)
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (32, T)
    for row in range(32):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        assert x[0] == SEP and x[F + 1] == SEP and x[T - 1] == QUERY
        first, second = x[1 : F + 1], x[F + 2 : T - 1]
        assert len(second) == S + L - F
        assert all(5 <= t < V for t in first + second)
        assert len(set(first)) == len(first) and len(set(second)) == len(second)  # sets: no repeats
        shared = set(first) & set(second)
        assert len(shared) <= 1  # at most one common element
        assert [t for t in range(T) if y[t] != IGNORE_INDEX] == [T - 1]  # only the query
        assert y[T - 1] == (YES if shared else NO)
        fact = 1 + first.index(shared.pop()) if shared else 1  # shared element's first occurrence, or the first set
        assert d[T - 1] == T - 1 - fact
        assert d[: T - 1] == [-1] * (T - 1)
        assert batch.slices["intersect"][row].item() == (y[T - 1] == YES)
    assert batch.slices["order"].tolist() == [0 if order == "short_first" else 1] * 32


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_labels_exactly_balanced(n):
    for seed in range(4):
        yes = SetDisjointness(**SMALL).build(n, seed).slices["intersect"].sum().item()
        assert yes in {n // 2, (n + 1) // 2}


def test_shared_element_at_every_position():
    batch = SetDisjointness(**SMALL).build(512, 0)
    x = batch.inputs[batch.slices["intersect"] == 1]
    short, long = x[:, 1:4], x[:, 5:13]
    match = short[:, :, None] == long[:, None, :]  # (n, 3, 8)
    assert (match.sum((1, 2)) == 1).all()
    assert match.any(2).sum(0).min() > 0 and match.any(1).sum(0).min() > 0  # every index in both sets


def test_orders_share_sets_and_labels():
    short_first = SetDisjointness(**SMALL).build(16, 5)
    long_first = SetDisjointness(**{**SMALL, "order": "long_first"}).build(16, 5)
    assert torch.equal(short_first.targets, long_first.targets)
    assert torch.equal(short_first.inputs[:, 1:4], long_first.inputs[:, 10:13])  # short set moved last
    assert torch.equal(short_first.inputs[:, 5:13], long_first.inputs[:, 1:9])
    # the fact sits in the first set: the separator and the whole second set lie between it and the query
    assert (short_first.distance[:, -1] >= 8 + 2).all() and (long_first.distance[:, -1] >= 3 + 2).all()


def test_length_kwargs_set_the_long_set():
    kwargs = SetDisjointness.length_kwargs(40, SMALL)
    assert kwargs == {"long_size": 40 - 3 - 3}
    assert SetDisjointness(**{**SMALL, **kwargs, "universe_size": 64}).seq_len == 40
    assert SetDisjointness.length_kwargs(25, {}) == {"long_size": 25 - 4 - 3}  # the default short_size is 4
    with pytest.raises(ValueError, match="seq_len"):
        SetDisjointness.length_kwargs(8, SMALL)  # long_size would be 2 < short_size


def test_worked_example_layout():
    x = SetDisjointness(universe_size=10, short_size=2, long_size=4).build(1, 0).inputs[0].tolist()
    assert len(x) == 9 and x[0] == x[3] == SEP and x[-1] == QUERY


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(universe_size=0), "universe_size"),
        (dict(universe_size=10), "universe_size"),  # < short + long = 11
        (dict(universe_size=32.0), "universe_size"),
        (dict(short_size=0), "short_size"),
        (dict(short_size=True), "short_size"),
        (dict(long_size=-1), "long_size"),
        (dict(long_size=2), "long_size"),  # shorter than short_size
        (dict(order="random"), "order"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SetDisjointness(**{**SMALL, **kwargs})


@pytest.mark.parametrize("order", ["short_first", "long_first"])
def test_attention_learns_set_disjointness(order, learn):
    # chance is 1/2 (exactly balanced YES/NO); seeds 0-2 reached 0.96-1.00 after 300 steps (5-15 s)
    # in either order, with the loss from about 2.1 (10 classes untrained) to under 0.15 (ln 2 = 0.69
    # is the loss of a model that only learned to answer YES or NO)
    metrics, first, last = learn(TrainConfig(task="set_disjointness", task_kwargs={**CPU_SCALE, "order": order},
                                layers=["attention", "attention"], d_model=32, short_conv=4, steps=300, batch_size=32,
                                eval_every=300, eval_examples=256, lr=3e-3, warmup_steps=20, threads=1))
    assert metrics["final_eval"]["accuracy"] > 0.8
    assert last < 0.45 < first - 1.0
