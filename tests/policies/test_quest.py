"""``quest``: page bounds, the page selection, retrieval without eviction and its byte accounting."""

import math

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.policies.base import PolicyKVState, cat_states, kept_positions
from longrecall.policies.quest import Quest
from longrecall.protocol import state_nbytes, state_select

from policy_helpers import inputs, make_attention, run_steps


def hand_state(keys, length=None):
    """Batch 1, one head: keys (S, K) at positions 0..S-1."""
    k = torch.as_tensor(keys, dtype=torch.float64)[None, None]
    S = k.shape[2]
    pos = torch.arange(S, dtype=torch.int32)[None, None]
    return PolicyKVState(k, torch.zeros_like(k), pos, torch.tensor([length or S]))


def test_page_bound_is_an_upper_bound_and_the_elementwise_formula():
    x = inputs(2, 23, seed=3)
    policy = Quest(budget=8, page_size=4)
    mixer = make_attention(policy)
    _, state = mixer(x)
    q = torch.randn(2, 2, 3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    bounds = policy.page_bounds(state, q)  # (B, H, Tq, pages)
    assert bounds.shape == (2, 2, 3, 6)
    for p in range(6):
        keys = state.k[:, :, 4 * p : 4 * p + 4]  # (B, H, <=4, K)
        true_max = (q @ keys.transpose(-1, -2)).amax(-1)
        lo, hi = keys.amin(2)[:, :, None], keys.amax(2)[:, :, None]
        formula = torch.maximum(q * lo, q * hi).sum(-1)
        assert_close(bounds[..., p], formula, f"page {p} bound", atol=1e-12, rtol=1e-10)
        assert (true_max <= bounds[..., p] + 1e-12).all(), f"page {p}: the bound is not an upper bound"
    # the incrementally updated summaries equal the ones computed from scratch
    assert_close(state.aux, policy.summaries(state), "summaries", atol=0, rtol=0)


def test_the_query_attends_to_the_top_pages_and_its_own():
    # pages of 2: page p holds keys (a_p, b_p); q = (1, -1) so the bound is max(a) - min(b)
    keys = [[0, 0], [1, 0], [5, 0], [0, 0], [0, 3], [0, 3], [2, -2], [0, 0], [9, 9]]
    state = hand_state(keys)  # 9 tokens: pages 0..3 complete, page 4 holds the query (position 8)
    q = torch.tensor([1.0, -1.0], dtype=torch.float64)[None, None, None]
    policy = Quest(budget=4, page_size=2)  # two pages + the current one
    bounds = policy.page_bounds(state, q)[0, 0, 0]
    assert bounds.tolist() == [1.0, 5.0, -3.0, 4.0, 0.0]  # page 4's own bound is 9 - 9
    assert attended(policy, state, q) == [2, 3, 6, 7, 8]  # pages 1 and 3, and page 4
    # a budget of one page keeps page 1 only; ties go to the earlier page
    assert attended(Quest(budget=2, page_size=2), state, q) == [2, 3, 8]
    tied = hand_state([[1, 0], [0, 0], [1, 0], [0, 0], [0, 0]])
    assert attended(Quest(budget=2, page_size=2), tied, q) == [0, 1, 4]


def attended(policy, state, q):
    last = torch.tensor([[state.pos.shape[2] - 1]])
    return policy.attend_mask(state, q, last)[0, 0, 0].nonzero().flatten().tolist()


def sparse_attention_by_hand(mixer, x, policy):
    """Per query, softmax over the tokens of the selected pages, recomputed from q, k, v."""
    q, k, v, positions = mixer.project(x, torch.zeros(x.shape[0], dtype=torch.int64))
    P, T = policy.page_size, x.shape[1]
    out = torch.zeros_like(q)
    for b in range(x.shape[0]):
        for h in range(q.shape[1]):
            for t in range(T):
                c = t // P
                bounds = [sum(max(q[b, h, t, i] * k[b, h, p * P : p * P + P, i].min(),
                                  q[b, h, t, i] * k[b, h, p * P : p * P + P, i].max()) for i in range(q.shape[-1]))
                          for p in range(c)]
                top = sorted(range(c), key=lambda p: (-float(bounds[p]), p))[: policy.budget // P]
                keep = [j for j in range(t + 1) if j // P in top or j // P == c]
                w = torch.softmax(q[b, h, t] @ k[b, h, keep].T / math.sqrt(q.shape[-1]), -1)
                out[b, h, t] = w @ v[b, h, keep]
    return mixer.merge_heads(out)


@pytest.mark.parametrize("budget,page_size", [(4, 2), (6, 3), (8, 4)])
def test_forward_and_steps_equal_the_hand_computation(budget, page_size):
    x = inputs(2, 17, seed=5)
    policy = Quest(budget=budget, page_size=page_size)
    mixer = make_attention(policy)
    y, state = mixer(x)
    y_steps, s_steps, _ = run_steps(mixer, x)
    with torch.no_grad():
        expected = sparse_attention_by_hand(mixer, x, policy)
    assert_close(y, expected, "closed-form forward vs by hand", atol=1e-10, rtol=1e-8)
    assert_close(y_steps, expected, "steps vs by hand", atol=1e-10, rtol=1e-8)
    assert_close(state, s_steps, "forward state vs stepped state")
    assert kept_positions(state) == list(range(17))  # nothing is evicted
    assert not torch.allclose(y, make_attention()(x)[0])  # the selection matters here


def test_a_budget_covering_the_context_is_full_attention():
    x = inputs(2, 13)
    y_ref, _ = make_attention()(x)
    y, _ = make_attention(Quest(budget=16, page_size=4))(x)
    assert_close(y, y_ref, "budget >= length", atol=1e-12, rtol=1e-10)


def test_prefill_mode_is_dense_for_the_prompt_and_sparse_when_decoding():
    x = inputs(2, 20, seed=6)
    sparse = make_attention(Quest(budget=4, page_size=2, mode="prefill"))
    step_mode = make_attention(Quest(budget=4, page_size=2))
    y, state = sparse(x[:, :12])
    assert_close(y, make_attention()(x[:, :12])[0], "the prompt pass is full attention", atol=1e-12, rtol=1e-10)
    y_dec, state, _ = run_steps(sparse, x[:, 12:], state)
    y_ref, _ = step_mode(x)
    assert_close(y_dec, y_ref[:, 12:], "decoding selects pages as step mode does")
    assert state.pos.shape[2] == 20


def test_resident_bytes_are_the_read_pages_and_summaries():
    x = inputs(2, 37, seed=7)
    policy = Quest(budget=8, page_size=4)
    mixer = make_attention(policy)
    _, state = mixer(x)
    total = mixer.state_bytes(state)
    resident = policy.resident_bytes(state)
    per_token = 2 * (2 * 8 * 8 + 4)  # heads x (k, v float64 of width 8 + an int32 position)
    summaries = state_nbytes(state.aux)
    assert summaries == 2 * 2 * 2 * 10 * 8 * 8  # (kmin, kmax) x B x H x 10 pages x K x 8 bytes
    # last query at position 36: 2 selected pages of 4 + its own page holding 1 token
    assert resident == 2 * 9 * per_token + summaries + 2 * 8
    assert resident < total == state_nbytes(state)
    unlimited = make_attention(Quest())
    _, full = unlimited(x)
    assert unlimited.kv_policy.policy.resident_bytes(full) == unlimited.state_bytes(full)
    assert full.aux == ()  # no summaries without a budget


def test_rows_of_different_page_counts_share_a_batch():
    policy = Quest(budget=4, page_size=2)
    mixer = make_attention(policy)
    prefixes = [inputs(1, 3, seed=10), inputs(1, 9, seed=11)]
    rest = inputs(2, 6, seed=12)
    states = [mixer(p)[1] for p in prefixes]
    y, s, _ = run_steps(mixer, rest, cat_states(states))
    for i in range(2):
        yi, si, _ = run_steps(mixer, rest[i : i + 1], states[i])
        assert_close(y[i : i + 1], yi, f"row {i}")
        assert_close(policy.summaries(state_select(s, i)), si.aux, f"row {i} summaries", atol=1e-14, rtol=0)


def test_ratio_budgets_resolve_per_layer_and_fields_are_validated():
    with pytest.raises(ValueError, match="resolved"):
        attended(Quest(budget=0.5), hand_state([[0.0, 0.0]] * 3), torch.zeros(1, 1, 1, 2, dtype=torch.float64))
    policy = Quest(budget=0.5, page_size=4)
    mixer = make_attention(policy, context_len=64)
    assert mixer.kv_policy.policy.budget == 32 and policy.budget == 0.5  # the bound copy holds the tokens
    assert policy == Quest(budget=0.5, page_size=4) and policy.config()["budget"] == 0.5
    _, state = mixer(inputs(2, 70))
    # the caller's object reports bytes with the budget of its last application (as evaluate asks it)
    assert policy.resident_bytes(state) == mixer.kv_policy.policy.resident_bytes(state) < mixer.state_bytes(state)
    for bad in (0, -2, 1.5, "x", True):
        with pytest.raises(ValueError, match="page_size"):
            Quest(page_size=bad)
    with pytest.raises(ValueError, match="budget must be >= page_size=16"):
        make_attention(Quest(budget=8))
    assert Quest.bounded is False and Quest(budget=4, page_size=2).closed_form
