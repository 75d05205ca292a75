"""``knorm``: the cache holds the lowest-norm keys seen so far (plus the protected recent window)."""

import pytest

from longrecall.policies.base import kept_positions
from longrecall.policies.knorm import KNorm

from policy_helpers import inputs, make_attention, run_steps


@pytest.mark.parametrize("mode", ["step", "prefill"])
@pytest.mark.parametrize("recent", [0, 2])
def test_keeps_the_lowest_norm_keys(recent, mode):
    T, budget = 13, 5
    x = inputs(2, T, seed=13)
    mixer = make_attention(KNorm(budget=budget, recent=recent, mode=mode))
    _, full = make_attention()(x)
    norms = full.k.detach().norm(dim=-1)  # (B, H, T); rotation keeps norms
    states = run_steps(mixer, x)[2] if mode == "step" else [mixer(x[:, : t + 1])[1] for t in range(T)]
    for t, state in enumerate(states):
        seen = t + 1
        for b in range(2):
            for h in range(2):
                protected = list(range(max(0, seen - recent), seen)) if seen > budget else []
                others = [j for j in range(seen) if j not in protected]
                lowest = sorted(others, key=lambda j: float(norms[b, h, j]))[: budget - len(protected)]
                assert kept_positions(state, b, h) == sorted(lowest + protected), f"t={t} b={b} h={h}"


def test_knorm_validates_recent():
    with pytest.raises(ValueError, match="recent"):
        KNorm(budget=4, recent=-1)
    with pytest.raises(ValueError, match="recent"):
        make_attention(KNorm(budget=4, recent=6))
