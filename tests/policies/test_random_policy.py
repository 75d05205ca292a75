"""``random``: reproducible, content-independent, and the budget highest hash scores seen so far."""

import pytest
import torch

from longrecall.policies.base import kept_positions
from longrecall.policies.random import Random, hash_scores

from policy_helpers import inputs, make_attention, run_steps


def kept(seed, x, mode="step"):
    mixer = make_attention(Random(budget=5, seed=seed, mode=mode))
    state = run_steps(mixer, x)[1] if mode == "step" else mixer(x)[1]
    return [[kept_positions(state, b, h) for h in range(2)] for b in range(x.shape[0])]


@pytest.mark.parametrize("mode", ["step", "prefill"])
def test_reproducible_and_independent_of_content(mode):
    x = inputs(2, 20, seed=14)
    first = kept(3, x, mode)
    assert first == kept(3, x, mode)  # same seed: same selection
    assert first == kept(3, inputs(2, 20, seed=15), mode)  # a pure function of (seed, position, head)
    assert first != kept(4, x, mode)  # another seed: another selection
    assert first[0][0] != first[0][1]  # heads differ


def test_keeps_the_highest_hash_scores_seen():
    x = inputs(1, 20, seed=16)
    scores = hash_scores(torch.arange(20, dtype=torch.int32).expand(1, 2, 20), 7)
    mixer = make_attention(Random(budget=5, seed=7))
    _, _, states = run_steps(mixer, x)
    for t, state in enumerate(states):
        for h in range(2):
            best = scores[0, h, : t + 1].argsort(descending=True, stable=True)[:5]
            assert kept_positions(state, 0, h) == sorted(best.tolist())


def test_hash_is_deterministic_and_spread():
    pos = torch.arange(4096, dtype=torch.int32).expand(1, 2, 4096)
    a, b = hash_scores(pos, 0), hash_scores(pos, 0)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 2**32
    assert a.unique().numel() > 4000  # practically no ties
    assert 0.45 < (a < 2**31).double().mean() < 0.55


def test_seed_must_be_a_non_negative_int():
    for bad in (-1, 1.5, "0", None):
        with pytest.raises(ValueError, match="seed"):
            Random(budget=4, seed=bad)
