import pytest

import longrecall.tasks.multi_hop  # noqa: F401 - registers "multi_hop" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.registry import TASKS
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.multi_hop import ARROW, CPU_SCALE, FILLER, FIRST_ENTITY, QUERY_ARROW, MultiHop

SMALL = dict(vocab_size=32, seq_len=32, n_hops=2, n_chains=2, min_gap=0)


def parse(task, x):
    """Read the facts (start position, left, right) back from the stream of one example."""
    S, facts, i = task.seq_len - 2, [], 0
    while i < S:
        if x[i] == FILLER:
            i += 1
            continue
        assert x[i] >= FIRST_ENTITY and x[i + 1] == ARROW and x[i + 2] >= FIRST_ENTITY and i + 2 < S
        facts.append((i, x[i], x[i + 2]))
        i += 3
    return facts


def bucket(span):
    return 0 if span == 0 else 1 << (span.bit_length() - 1)


def test_registered_and_config():
    assert TASKS.get("multi_hop") is MultiHop
    assert MultiHop(**SMALL).config() == {"task": "multi_hop", "version": 1, **SMALL}


@pytest.mark.parametrize(
    "config",
    [SMALL, CPU_SCALE, dict(vocab_size=12, seq_len=16, n_hops=2, n_chains=2, min_gap=0),
     dict(vocab_size=64, seq_len=64, n_hops=4, n_chains=3, min_gap=5),
     dict(vocab_size=5, seq_len=5, n_hops=1, n_chains=1, min_gap=0),
     dict(vocab_size=16, seq_len=40, n_hops=3, n_chains=1, min_gap=14)],
)
def test_structure_targets_and_distances(config):
    task = MultiHop(**config)
    T, H, C = task.seq_len, task.n_hops, task.n_chains
    batch = task.build(16, 0)
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (16, T)
    assert int(batch.inputs.max()) < task.vocab_size
    for row in range(16):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        facts = parse(task, x)
        assert len(facts) == C * H
        successor = {left: (pos, right) for pos, left, right in facts}
        assert len(successor) == C * H  # every entity has at most one outgoing fact
        entities = {e for _, left, right in facts for e in (left, right)}
        assert len(entities) == C * (H + 1)
        starts = entities - {right for _, _, right in facts}
        assert len(starts) == C
        for start in starts:  # every chain, queried or distractor, has exactly n_hops facts
            node, hops = start, 0
            while node in successor:
                node, hops = successor[node][1], hops + 1
            assert hops == H
        # follow the queried chain from the query "a ->?"
        assert x[T - 1] == QUERY_ARROW and x[T - 2] in starts
        node, chain_positions = x[T - 2], []
        while node in successor:
            pos, node = successor[node]
            chain_positions.append(pos)
        assert [t for t in range(T) if y[t] != IGNORE_INDEX] == [T - 1]
        assert y[T - 1] == node  # the end of the chain
        assert d[T - 1] == T - 1 - min(chain_positions)  # from the earliest-written fact of the chain
        assert d[: T - 1] == [-1] * (T - 1)
        ordered = sorted(chain_positions)
        assert all(b - (a + 3) >= task.min_gap for a, b in zip(ordered, ordered[1:], strict=False))
        assert batch.slices["chain_span"][row].item() == bucket(ordered[-1] - ordered[0])


def test_worked_example_layout():
    x = MultiHop(vocab_size=12, seq_len=16, n_hops=2, n_chains=2).build(1, 0).inputs[0].tolist()
    assert x[-1] == 2 and x.count(1) == 4 and x.count(0) == 2


def test_chain_facts_are_shuffled_and_spread():
    task = MultiHop(vocab_size=64, seq_len=128, n_hops=2, n_chains=4, min_gap=0)
    batch = task.build(128, 0)
    in_order = 0
    for row in range(128):
        x = batch.inputs[row].tolist()
        successor = {left: (pos, right) for pos, left, right in parse(task, x)}
        first_pos, middle = successor[x[-2]]
        in_order += first_pos < successor[middle][0]
    assert 40 < in_order < 88  # the first hop is written first about half the time
    distances = batch.distance[:, -1]
    assert distances.min() < 60 and distances.max() > 110


def test_min_gap_pushes_the_chain_apart():
    near = MultiHop(vocab_size=64, seq_len=96, n_hops=3, n_chains=2, min_gap=0).build(256, 0)
    far = MultiHop(vocab_size=64, seq_len=96, n_hops=3, n_chains=2, min_gap=30).build(256, 0)
    assert far.slices["chain_span"].min() >= 64  # two gaps of 30 plus the 3-token facts
    assert far.slices["chain_span"].float().mean() > near.slices["chain_span"].float().mean() + 20


def test_slices():
    batch = MultiHop(**SMALL).build(4, 0)
    assert batch.slices["n_hops"].tolist() == [2] * 4 and batch.slices["n_chains"].tolist() == [2] * 4
    assert batch.slices["seq_len"].tolist() == [32] * 4
    assert set(batch.slices["chain_span"].tolist()) <= {0, 1, 2, 4, 8, 16}
    single = MultiHop(**{**SMALL, "n_hops": 1}).build(4, 0)
    assert single.slices["chain_span"].tolist() == [0] * 4


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=8), "vocab_size"),  # needs 3 + 2 * 3 = 9
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=13), "seq_len"),  # needs 3 * 4 + 2 = 14
        (dict(seq_len=20, min_gap=7), "seq_len"),  # needs 14 + 7 = 21
        (dict(n_hops=0), "n_hops"),
        (dict(n_hops=5), "n_hops"),
        (dict(n_hops=2.0), "n_hops"),
        (dict(n_chains=0), "n_chains"),
        (dict(n_chains=True), "n_chains"),
        (dict(min_gap=-1), "min_gap"),
        (dict(min_gap=1.5), "min_gap"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiHop(**{**SMALL, **kwargs})


def run(learn, task_kwargs, steps, **overrides):
    config = dict(task="multi_hop", task_kwargs=task_kwargs, layers=["attention", "attention"], d_model=32,
                  short_conv=4, steps=steps, batch_size=32, eval_every=steps, eval_examples=256, lr=3e-3,
                  warmup_steps=20, threads=1)
    metrics, first, last = learn(TrainConfig(**{**config, **overrides}))
    return metrics["final_eval"]["accuracy"], first, last


ONE_HOP = dict(vocab_size=32, seq_len=32, n_hops=1, n_chains=3)


def test_attention_starts_learning_one_hop(learn):
    # chance is 1/29 entities; 1/3 for a guesser that picks among the three chain ends.  Recall
    # switches on abruptly at a seed-dependent step: after 300 steps (about 10 s) seeds 0-2 were at
    # 0.61, 0.72, 0.27, the loss from ln(29) = 3.4 down by 0.86-1.85, so the robust bar here is
    # well above entity chance; test_attention_learns_one_hop (slow) checks recall itself
    accuracy, first, last = run(learn, ONE_HOP, 300)
    assert accuracy > 0.15
    assert last < first - 0.6


@pytest.mark.slow
def test_attention_learns_one_hop(learn):
    # seeds 0, 1, 3, 4 reached 0.97-1.00 after 1000 steps (about 20 s), far above the 1/3 of
    # guessing among chain ends; seed 2 stays at that guess (0.33) even after 2000 steps.
    # Two hops (2 chains) were not learned by 2-4 attention layers (d_model 64) in 2000-3000 steps.
    accuracy, first, last = run(learn, ONE_HOP, 1000, eval_every=1000)
    assert accuracy > 0.8
    assert last < first - 2.0
