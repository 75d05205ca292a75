"""``h2o``: accumulated attention and the heavy-hitter + recent rule against a hand computation."""

import math

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.policies.base import kept_positions
from longrecall.policies.h2o import H2O

from policy_helpers import inputs, make_attention


def h2o_by_hand(q, k, budget, recent):
    """One head, batch 1: lists and dicts, no tensors ops beyond dot products."""
    K = q.shape[-1]
    kept, acc, history = [], {}, []
    for t in range(q.shape[0]):
        kept.append(t)
        acc[t] = 0.0
        logits = [float(q[t] @ k[j]) / math.sqrt(K) for j in kept]
        top = max(logits)
        weights = [math.exp(a - top) for a in logits]
        for j, w in zip(kept, weights, strict=True):
            acc[j] += w / sum(weights)
        if len(kept) > budget:
            recent_tokens = kept[len(kept) - recent :] if recent else []
            others = [j for j in kept if j not in recent_tokens]
            heavy = sorted(others, key=lambda j: (-acc[j], j))[: budget - recent]
            kept = sorted(heavy + recent_tokens)
            acc = {j: acc[j] for j in kept}
        history.append((list(kept), [acc[j] for j in kept]))
    return history


def test_tiny_example_accumulates_column_sums():
    """Three tokens, no eviction: acc = column sums of the causal attention matrix."""
    x = inputs(1, 3, d_model=4, seed=7)
    mixer = make_attention(H2O(budget=None), d_model=4, n_heads=1)
    _, state = mixer(x)
    q, k, _, _ = mixer.project(x, torch.zeros(1, dtype=torch.int64))
    scores = (q[0, 0] @ k[0, 0].T) / 2.0  # K = 4
    A = torch.softmax(scores.masked_fill(torch.ones(3, 3).triu(1).bool(), -math.inf), dim=-1)
    # by hand: token 0 gets 1 (from itself) + A[1, 0] + A[2, 0]; token 2 only A[2, 2]
    expected = torch.stack([1 + A[1, 0] + A[2, 0], A[1, 1] + A[2, 1], A[2, 2]])
    assert_close(state.extra[0][0, 0], expected, "accumulated attention", atol=1e-14, rtol=1e-12)
    assert_close(state.extra[0][0, 0], A.sum(0), "column sums", atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("budget,recent", [(4, None), (5, 1), (4, 0), (3, 3)])
def test_step_rule_matches_the_hand_computation(budget, recent):
    T = 12
    x = inputs(1, T, seed=8)
    mixer = make_attention(H2O(budget=budget, recent=recent))
    r = recent if recent is not None else budget // 2
    with torch.no_grad():
        q, k, _, _ = mixer.project(x, torch.zeros(1, dtype=torch.int64))
    state = mixer.init_state(1, dtype=torch.float64)
    hands = [h2o_by_hand(q[0, h], k[0, h], budget, r) for h in range(2)]
    for t in range(T):
        _, state = mixer.step(x[:, t], state)
        for h in range(2):
            kept, acc = hands[h][t]
            assert kept_positions(state, 0, h) == kept, f"step {t}, head {h}"
            want = torch.tensor(acc, dtype=torch.float64)
            assert_close(state.extra[0][0, h], want, f"scores step {t}", atol=1e-12, rtol=1e-10)


def test_heads_select_independently():
    x = inputs(1, 16, seed=9)
    mixer = make_attention(H2O(budget=6))
    with torch.no_grad():
        mixer.qkv.weight.mul_(4.0)  # peaky attention: heads disagree on which tokens matter
    _, state = mixer(x)
    assert kept_positions(state, 0, 0) != kept_positions(state, 0, 1)


def test_prefill_scores_are_the_prompt_column_sums():
    x = inputs(1, 10, seed=10)
    mixer = make_attention(H2O(budget=6, mode="prefill"))
    _, state = mixer(x)
    with torch.no_grad():
        _, unlimited = make_attention(H2O(budget=None, mode="prefill"))(x)
    for h in range(2):
        sums = unlimited.extra[0][0, h]
        recent = [7, 8, 9]
        heavy = sorted(sorted(range(7), key=lambda j: (-float(sums[j]), j))[:3])
        assert kept_positions(state, 0, h) == heavy + recent
        assert_close(state.extra[0][0, h], sums[heavy + recent], "gathered scores", atol=0, rtol=0)


def test_h2o_validates_its_fields():
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="recent"):
            H2O(budget=4, recent=bad)
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValueError, match="recent_ratio"):
            H2O(budget=4, recent_ratio=bad)
    with pytest.raises(ValueError, match="recent"):
        make_attention(H2O(budget=4, recent=5))
