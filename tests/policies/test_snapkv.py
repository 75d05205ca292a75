"""``snapkv``: the pooled votes of the observation window's queries pick the prefix tokens to keep."""

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.policies.base import Observation, PolicyKVState, kept_positions
from longrecall.policies.snapkv import SnapKV

from policy_helpers import inputs, make_attention, run_steps


def constructed_state(logits):
    """One row, one head, head width 1: key j = logits[j], so a query 1.0 scores exactly logits[j]."""
    S = len(logits)
    k = torch.tensor(logits, dtype=torch.float64).reshape(1, 1, S, 1)
    pos = torch.arange(S, dtype=torch.int32).reshape(1, 1, S)
    state = PolicyKVState(k, torch.zeros_like(k), pos, torch.tensor([S]))
    obs = Observation(torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.tensor([[S - 1]]), None)
    return state, obs


@pytest.mark.parametrize(
    "kernel, pooling, expected",
    [
        # votes e^l / Z over prefix 0..6 = [1.22, 1.65, 20.09, 1, 1, 8.17, 7.39] (x 1/Z)
        (1, "avg", [2, 5, 7]),  # no pooling: the two largest votes
        # avg3 (zero padding): [0.96, 7.65, 7.58, 7.36, 3.39, 5.52, 5.19] -> the spike's neighbourhood
        (3, "avg", [1, 2, 7]),
        # max3: [1.65, 20.09, 20.09, 20.09, 8.17, 8.17, 8.17] -> ties go to the earlier slots
        (3, "max", [1, 2, 7]),
        # avg7 (x 7): [23.96, 24.96, 33.12, 40.51, 39.29, 37.64, 17.56]: the spike and the pair together
        (7, "avg", [3, 4, 7]),
    ],
)
def test_keeps_the_hand_computed_top_pooled_votes(kernel, pooling, expected):
    state, obs = constructed_state([0.2, 0.5, 3.0, 0.0, 0.0, 2.1, 2.0, 0.0])
    policy = SnapKV(budget=3, window=1, kernel=kernel, pooling=pooling)
    kept = policy.compress(state, obs, torch.tensor([[[3]]]))
    assert kept_positions(kept) == expected
    # the hand numbers above, recomputed
    votes = [math.exp(x) for x in [0.2, 0.5, 3.0, 0.0, 0.0, 2.1, 2.0]]
    padded = [0.0] * (kernel // 2) + votes + [0.0] * (kernel // 2)
    window = [padded[j : j + kernel] for j in range(7)]
    pooled = [sum(w) / kernel if pooling == "avg" else max(w) for w in window]
    top = sorted(range(7), key=lambda j: (-pooled[j], j))[:2]
    assert sorted(top) + [7] == expected


def reference_selection(q, k, window, capacity, kernel, pooling):
    """FasterDecoding/SnapKV ``SnapKVCluster.update_kv``, literally (float64, no GQA): kept indices.

    One change: its ``topk`` breaks ties arbitrarily (common with max pooling, where neighbours share
    a maximum); here ties go to the earlier token, as in the policy.
    """
    T, K = q.shape[2], q.shape[3]
    attn = q[..., -window:, :] @ k.transpose(2, 3) / math.sqrt(K)
    mask = torch.full((window, window), torch.finfo(attn.dtype).min, dtype=attn.dtype)
    cond = torch.arange(window)
    mask.masked_fill_(cond < (cond + 1).view(window, 1), 0)
    attn[:, :, -window:, -window:] += mask[None, None]
    attn = torch.softmax(attn, dim=-1)
    votes = attn[:, :, -window:, :-window].sum(dim=-2)
    pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
    pooled = pool(votes, kernel_size=kernel, padding=kernel // 2, stride=1)
    index = torch.sort(pooled, dim=-1, descending=True, stable=True).indices[..., : capacity - window]
    index = index.sort(-1).values
    return torch.cat([index, torch.arange(T - window, T).expand(*index.shape[:2], -1)], -1)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("window, budget, kernel", [(8, 20, 7), (4, 11, 5), (1, 6, 3)])
def test_prefill_matches_the_reference_code(window, budget, kernel, pooling):
    T = 40
    x = inputs(2, T, seed=3)
    mixer = make_attention(SnapKV(budget=budget, window=window, kernel=kernel, pooling=pooling))
    y, state = mixer(x)
    plain = make_attention()
    y_ref, full = plain(x)
    assert torch.allclose(y, y_ref, atol=1e-12), "the prompt itself is read with full attention"
    q, k, _, _ = plain.project(x, torch.zeros(2, dtype=torch.int64))
    expected = reference_selection(q.detach(), k.detach(), window, budget, kernel, pooling)
    assert state.pos.shape[2] == budget
    assert torch.equal(state.pos.long(), expected)
    assert torch.equal(state.k, torch.gather(full.k, 2, expected[..., None].expand(-1, -1, -1, k.shape[3])))
    assert torch.equal(state.v, torch.gather(full.v, 2, expected[..., None].expand(-1, -1, -1, k.shape[3])))
    # decoding appends and never evicts again
    for t in range(3):
        _, state = mixer.step(x[:, t], state)
    assert state.pos.shape[2] == budget + 3 and state.pos[0, 0, -3:].tolist() == [T, T + 1, T + 2]


def test_window_is_clipped_to_the_prompt_and_the_budget():
    x = inputs(1, 20, seed=4)
    _, state = make_attention(SnapKV(budget=5, window=32))(x)  # budget < window: the most recent tokens
    assert all(kept_positions(state, 0, h) == list(range(15, 20)) for h in range(2))
    # a window longer than the prompt's compressed part: w = min(window, T) queries vote
    mixer = make_attention(SnapKV(budget=12, window=32))
    _, state = mixer(x[:, :10])
    assert state.pos.shape[2] == 10  # within budget: nothing to do
    _, state = mixer(x)
    assert kept_positions(state) == list(range(8, 20))  # w = 20 queries, 12 of their tokens kept


def test_step_mode_rule_with_the_current_query():
    """Step mode: after each step, the current token plus the budget - 1 best pooled votes of its query."""
    budget, kernel = 5, 3
    x = inputs(2, 14, seed=6)
    mixer = make_attention(SnapKV(budget=budget, mode="step", kernel=kernel))
    _, _, states = run_steps(mixer, x)
    for t in range(budget, 14):
        prev = states[t - 1]
        q, k, _, _ = mixer.project(x[:, t : t + 1], prev.length)
        keys = torch.cat([prev.k, k], 2)
        probs = torch.softmax(q @ keys.transpose(-1, -2) / math.sqrt(k.shape[-1]), dim=-1)[:, :, 0]
        pooled = F.avg_pool1d(probs[..., :-1], kernel_size=kernel, padding=kernel // 2, stride=1)
        top = pooled.topk(budget - 1, dim=-1).indices.sort(-1).values
        expected = torch.gather(prev.pos.long(), 2, top)
        assert torch.equal(states[t].pos[..., :-1].long(), expected), f"step {t}"
        assert (states[t].pos[..., -1] == t).all()


def test_invalid_fields_are_named():
    for field, bad in [("window", 0), ("window", 2.0), ("kernel", 4), ("kernel", 0), ("pooling", "mean")]:
        with pytest.raises(ValueError, match=field):
            SnapKV(budget=8, **{field: bad})
    assert SnapKV().mode == "prefill"


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_skips_empty_slots_of_a_padded_batch(pooling):
    """Rows of different lengths (padded with empty slots mid-cache) compress as they would alone."""
    from longrecall.policies.base import cat_states
    from longrecall.protocol import state_select

    mixer = make_attention(SnapKV(budget=8, window=3, kernel=5, pooling=pooling))
    prompts = [inputs(1, 4, seed=20), inputs(1, 12, seed=21)]
    chunk = inputs(2, 9, seed=22)
    alone = [mixer(chunk[i : i + 1], mixer(p)[1]) for i, p in enumerate(prompts)]
    batch = cat_states([mixer(p)[1] for p in prompts])
    assert (batch.pos[0] < 0).any()  # row 0 is padded
    y, state = mixer(chunk, batch)
    for i, (yi, si) in enumerate(alone):
        assert torch.allclose(y[i : i + 1], yi, atol=1e-12)
        row = state_select(state, i)
        assert [kept_positions(row, 0, h) for h in range(2)] == [kept_positions(si, 0, h) for h in range(2)]
