import pytest

import longrecall.tasks.niah  # noqa: F401 - registers "niah" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.niah import BOS, CPU_SCALE, NEEDLE, NIAH, QUERY, REPEAT_PERIOD, VARIANTS

SMALL = dict(vocab_size=48, seq_len=64, variant="single", haystack="noise", num_needles=1, key_len=2, value_len=2)
CONFIGS = [
    CPU_SCALE,
    SMALL,
    dict(SMALL, haystack="repeat"),
    dict(vocab_size=30, seq_len=40, variant="multikey", haystack="repeat", num_needles=3, key_len=2, value_len=2),
    dict(vocab_size=64, seq_len=80, variant="multivalue", haystack="noise", num_needles=4, key_len=3, value_len=1),
    dict(vocab_size=64, seq_len=80, variant="multiquery", haystack="repeat", num_needles=3, key_len=1, value_len=3),
    dict(vocab_size=12, seq_len=20, variant="multiquery", haystack="noise", num_needles=3, key_len=1, value_len=1),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_structure_targets_and_distances(config):
    task = NIAH(**config)
    N, T, K, L, m = 24, task.seq_len, task.key_len, task.value_len, task.num_needles
    key0, value0 = 3, 3 + task.n_key_tokens
    filler0 = value0 + task.n_value_tokens
    batch = task.build(N, 0)
    assert batch.inputs.shape == (N, T) and batch.inputs.max() < task.vocab_size
    for row in range(N):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        assert x[0] == BOS
        starts = [i for i, t in enumerate(x) if t == NEEDLE]
        queries = [i for i, t in enumerate(x) if t == QUERY]
        assert len(starts) == m and queries and min(queries) > max(starts)
        needles = [(tuple(x[s + 1 : s + 1 + K]), x[s + 1 + K : s + 1 + K + L], s + 1 + K) for s in starts]
        for key, value, _ in needles:
            assert all(key0 <= t < value0 for t in key) and all(value0 <= t < filler0 for t in value)
        keys = [key for key, _, _ in needles]
        if task.variant == "multivalue":
            assert len(set(keys)) == 1
        else:
            assert len({t for key in keys for t in key}) == m * K  # all key tokens distinct

        # the haystack: every other context token is filler, random or the tiled sentence
        needle_positions = {s + i for s in starts for i in range(task.needle_len)}
        hay = [x[i] for i in range(1, min(queries)) if i not in needle_positions]
        assert len(hay) == T - 1 - m * task.needle_len - task.query_len
        assert all(filler0 <= t < task.vocab_size for t in hay)
        if task.haystack == "repeat":
            period = min(REPEAT_PERIOD, task.n_filler_tokens)
            assert hay == [filler0 + i % period for i in range(len(hay))]

        # recompute every answer from the inputs
        expected = {}  # scored position -> (target, distance)
        asked = []
        for q in queries:
            key = tuple(x[q + 1 : q + 1 + K])
            matches = [i for i, k in enumerate(keys) if k == key]
            assert matches and (len(matches) == 1 or task.variant == "multivalue")
            asked += matches
            answer = [(token, needles[i][2] + j) for i in matches for j, token in enumerate(needles[i][1])]
            for j, (token, source) in enumerate(answer):
                t = q + K + j  # the key's last token predicts the first value token
                assert x[t + 1] == token  # teacher forcing
                expected[t] = (token, t - source)
        scored = {t: (y[t], d[t]) for t in range(T) if y[t] != IGNORE_INDEX}
        assert scored == expected
        assert all(d[t] == -1 for t in range(T) if y[t] == IGNORE_INDEX)
        n_answers = m if task.variant in ("multivalue", "multiquery") else 1
        assert len(scored) == n_answers * L
        if task.variant == "multiquery":
            assert sorted(asked) == list(range(m))  # every key asked once
        assert queries[0] == T - task.query_len  # the queries close the sequence


def test_worked_example_layout():
    task = NIAH(vocab_size=24, seq_len=14, variant="single", haystack="repeat", key_len=2, value_len=2)
    for seed in range(20):
        batch = task.build(1, seed)
        x = batch.inputs[0].tolist()
        if x.index(NEEDLE) == 3:  # the docstring's draw: two filler tokens, then the needle
            assert x[:4] == [0, 17, 18, 1] and x[8:10] == [19, 2] and x[10:] == x[4:8]
            assert batch.targets[0].tolist() == [-100] * 11 + x[6:8] + [-100]
            assert batch.distance[0].tolist() == [-1] * 11 + [5, 5, -1]
            return
    pytest.fail("no seed put the needle at position 3")


def test_needles_spread_over_depths_and_multikey_asks_any():
    task = NIAH(vocab_size=64, seq_len=128, variant="multikey", num_needles=3, key_len=1, value_len=1)
    batch = task.build(200, 0)
    first = (batch.inputs == NEEDLE).float().argmax(1)
    assert first.min() < 10 and first.max() > 60
    d = batch.distance[batch.targets != IGNORE_INDEX]
    assert d.min() < 15 and d.max() > 100
    # which needle was asked: its rank among the needles, found from the query key
    ranks = []
    for x in batch.inputs.tolist():
        starts = [i for i, t in enumerate(x) if t == NEEDLE]
        ranks.append([x[s + 1] for s in starts].index(x[x.index(QUERY) + 1]))
    assert set(ranks) == {0, 1, 2}


@pytest.mark.parametrize("variant", VARIANTS)
def test_slices(variant):
    m = 1 if variant == "single" else 3
    batch = NIAH(vocab_size=48, seq_len=64, variant=variant, num_needles=m).build(4, 0)
    assert batch.slices["variant"].tolist() == [VARIANTS.index(variant)] * 4
    assert batch.slices["num_needles"].tolist() == [m] * 4 and batch.slices["seq_len"].tolist() == [64] * 4


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=11), "vocab_size"),
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=10), "seq_len"),  # BOS + needle 5 + query 5 = 11
        (dict(variant="multi"), "variant"),
        (dict(haystack="essay"), "haystack"),
        (dict(num_needles=0), "num_needles"),
        (dict(num_needles=2), "num_needles"),  # single takes exactly one
        (dict(variant="multikey", num_needles=1), "num_needles"),
        (dict(key_len=0), "key_len"),
        (dict(key_len=16), "key_len"),  # 15 key tokens in vocab_size 48
        (dict(variant="multiquery", num_needles=4, key_len=4), "key_len"),
        (dict(value_len=0), "value_len"),
        (dict(value_len=1.5), "value_len"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NIAH(**{**SMALL, **kwargs})


def test_smallest_sequence_and_multivalue_key_budget():
    NIAH(**{**SMALL, "seq_len": 11}).build(2, 0)  # empty haystack
    NIAH(vocab_size=48, seq_len=200, variant="multivalue", num_needles=8, key_len=15).build(2, 0)  # one key


def run(learn, task_kwargs: dict, steps: int) -> tuple[dict, float]:
    metrics, first, last = learn(TrainConfig(task="niah", task_kwargs=task_kwargs, layers=["attention", "attention"],
                                             d_model=32, short_conv=4, steps=steps, batch_size=32, eval_every=steps,
                                             eval_examples=256, lr=3e-3, warmup_steps=20, threads=1))
    return metrics, first - last


def test_attention_learns_single_needle(learn):
    # chance is 1/15 per value token (15 value tokens); seeds 0-2 reached 1.00 after 300 steps (about 15 s)
    metrics, loss_drop = run(learn, SMALL, 300)
    assert metrics["final_eval"]["accuracy"] > 0.6
    assert loss_drop > 2.0  # from about ln(48) = 3.9


@pytest.mark.slow
def test_attention_learns_multikey_needles(learn):
    # distractor needles slow learning down: 0.23-0.42 after 300 steps, 0.96 after 1,000 (about 60 s)
    metrics, loss_drop = run(learn, dict(SMALL, variant="multikey", num_needles=3), 1000)
    assert metrics["final_eval"]["accuracy"] > 0.6  # chance 1/15
    assert loss_drop > 2.0
