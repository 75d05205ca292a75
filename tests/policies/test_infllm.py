"""``infllm``: block layout, representative keys, block retrieval, local scores and byte accounting."""

import math

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.policies.base import PolicyKVState, kept_positions
from longrecall.policies.infllm import InfLLM
from longrecall.protocol import state_nbytes

from policy_helpers import inputs, make_attention, run_steps


def hand_state(keys, scores):
    """Batch 1, two heads with the same keys: keys (S, K) at positions 0..S-1, local scores (S,)."""
    k = torch.as_tensor(keys, dtype=torch.float64)[None, None].expand(1, 2, -1, -1).contiguous()
    S = k.shape[2]
    pos = torch.arange(S, dtype=torch.int32)[None, None].expand(1, 2, S).contiguous()
    score = torch.as_tensor(scores, dtype=torch.float64)[None, None].expand(1, 2, S) / 2
    return PolicyKVState(k, torch.zeros_like(k), pos, torch.tensor([S]), (score.contiguous(),))


# one sink, blocks of 3 from position 1, local window 2: at the query (position 11) the local window
# is 10..11, blocks [1, 4), [4, 7) are formed and [7, 10) is too (its end 10 <= 11 + 1 - 2)
KEYS = [[0, 0], [1, 0], [0, 1], [0, 0], [0, 0], [0, 5], [5, 0], [0, 0], [0, -1], [0, 0], [9, 9], [1, 1]]
SCORES = [0, 3, 1, 0, 0, 1, 4, 0, 9, 0, 0, 0]  # representatives (n_repr=1): 1 | 6 | 8


def mask_of(policy, state, q):
    return policy.attend_mask(state, q, torch.tensor([[state.pos.shape[2] - 1]]))[0, 0, 0].nonzero().flatten().tolist()


def test_retrieval_picks_the_block_whose_representative_matches():
    state = hand_state(KEYS, SCORES)
    policy = InfLLM(budget=6, n_init=1, n_local=2, block_size=3, n_repr=1, topk=1)
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 2, 1, 2)
    # q . rep: block 0 -> 1, block 1 -> 5 (token 6), block 2 -> 0: block 1, although token 5 scores 0
    assert mask_of(policy, state, q) == [0, 4, 5, 6, 10, 11]
    q = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(1, 2, 1, 2)
    # q . rep: 0, 0, -1; token 5's key (0, 5) is not a representative, so ties go to block 0
    assert mask_of(policy, state, q) == [0, 1, 2, 3, 10, 11]
    # with two representatives block 1 is represented by tokens 5 and 6: mean (2.5, 2.5) wins
    two = InfLLM(budget=6, n_init=1, n_local=2, block_size=3, n_repr=2, topk=1)
    assert mask_of(two, state, q) == [0, 4, 5, 6, 10, 11]
    # topk=2 retrieves the two best blocks
    both = InfLLM(budget=9, n_init=1, n_local=2, block_size=3, n_repr=1, topk=2)
    assert mask_of(both, state, q) == [0, 1, 2, 3, 4, 5, 6, 10, 11]


def test_the_remainder_of_a_forming_block_is_local():
    state = hand_state(KEYS[:11], SCORES[:11])  # query at 10: local 9..10, blocks 0 and 1 formed, 7..8 remain
    policy = InfLLM(budget=6, n_init=1, n_local=2, block_size=3, n_repr=1, topk=1)
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 2, 1, 2)
    assert mask_of(policy, state, q) == [0, 4, 5, 6, 7, 8, 9, 10]


def test_budget_split_and_attended_tokens():
    assert InfLLM(budget=64).layout(64) == (44, 1, 0)  # 4 sinks + 44 local + 1 block of 16 (64 // 3 = 21)
    assert InfLLM(budget=96).layout(96) == (60, 2, 0)  # a third (32) to memory: 2 blocks of 16
    assert InfLLM(budget=40, n_local=20).layout(40) == (20, 1, 0)
    assert InfLLM(budget=40, topk=1, block_size=8).layout(40) == (28, 1, 0)
    mixer = make_attention(InfLLM(budget=12, n_init=2, block_size=3))  # n_local 7, topk 1
    x = inputs(2, 30, seed=4)
    state = mixer.init_state(2, dtype=torch.float64)
    policy = mixer.kv_policy.policy
    for t in range(30):
        q, _, _, _ = mixer.project(x[:, t : t + 1], state.length)
        _, state = mixer.step(x[:, t], state)
        mask = policy.attend_mask(state, q, state.length[:, None] - 1)
        if mask is None:  # only sinks so far
            assert t < 2
            continue
        assert (mask.sum(-1) <= 12 + 3 - 1).all() and (mask.sum(-1) >= min(t + 1, 10)).all()
    assert kept_positions(state) == list(range(30))  # nothing is evicted


def test_local_scores_freeze_when_a_token_leaves_the_window():
    policy = InfLLM(budget=10, n_init=1, block_size=2, topk=1)  # n_local 7
    mixer = make_attention(policy)
    _, _, states = run_steps(mixer, inputs(2, 16, seed=5))
    for t in range(1, 16):
        before, after = states[t - 1].extra[0], states[t].extra[0][:, :, :t]
        left = states[t].pos[:, :, :t] <= t - 7  # no longer in query t's window of 7
        assert torch.equal(after[left], before[left])
        assert (after[~left] > before[~left]).all()  # attention probabilities are positive
    # retrieving every block makes attention full: a token's score is then the column sum of the
    # causal attention matrix over the 7 queries whose window held it
    full = make_attention(InfLLM(budget=48, n_init=1, n_local=7, block_size=2, topk=20))
    x = inputs(2, 16, seed=5)
    _, state = full(x)
    q, k, _, _ = full.project(x, torch.zeros(2, dtype=torch.int64))
    A = torch.softmax((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(torch.ones(16, 16).triu(1).bool(), -math.inf), -1)
    t, j = torch.arange(16)[:, None], torch.arange(16)[None, :]
    expected = (A * ((t - j) < 7)).sum(2)
    assert_close(state.extra[0], expected, "local scores", atol=1e-12, rtol=1e-10)


def test_modes_and_unlimited_budget():
    x = inputs(2, 24, seed=6)
    y_ref, _ = make_attention()(x)
    prefill = make_attention(InfLLM(budget=10, n_init=1, block_size=2, mode="prefill"))
    y, state = prefill(x[:, :16])
    assert_close(y, y_ref[:, :16], "dense prompt", atol=1e-12, rtol=1e-10)
    y_dec, state, _ = run_steps(prefill, x[:, 16:], state)
    assert not torch.allclose(y_dec, y_ref[:, 16:])  # decoding retrieves
    step = make_attention(InfLLM(budget=10, n_init=1, block_size=2))
    y_fwd, s_fwd = step(x)
    y_steps, s_steps, _ = run_steps(step, x)
    assert_close(y_fwd, y_steps, "forward is the step loop")
    assert_close(s_fwd, s_steps, "states")
    y_big, _ = make_attention(InfLLM(budget=64))(x)  # everything fits in the local window
    assert_close(y_big, y_ref, "budget >= length", atol=1e-12, rtol=1e-10)


def test_resident_bytes():
    policy = InfLLM(budget=12, n_init=2, block_size=3, n_repr=2)  # n_local 7, topk 1
    mixer = make_attention(policy)
    _, state = mixer(inputs(2, 30, seed=7))
    # last query 29: local 23..29; blocks from 2: [2,5) ... [20,23) formed (7), read 1
    per_token, per_key = 2 * (2 * 8 * 8 + 4 + 8), 2 * 8 * 8
    expected = 2 * ((2 + 7 + 3) * per_token + 6 * 2 * per_key) + 2 * 8
    assert policy.resident_bytes(state) == expected < mixer.state_bytes(state) == state_nbytes(state)
    unlimited = make_attention(InfLLM())
    _, full = unlimited(inputs(2, 30, seed=7))
    assert unlimited.kv_policy.policy.resident_bytes(full) == unlimited.state_bytes(full)


def test_invalid_fields_are_named():
    for field, bad in [("n_init", -1), ("n_local", 0), ("n_repr", 0), ("block_size", 0), ("topk", 0), ("topk", 1.5)]:
        with pytest.raises(ValueError, match=field):
            InfLLM(budget=64, **{field: bad})
    with pytest.raises(ValueError, match="n_local and topk"):
        InfLLM(topk=2)
    with pytest.raises(ValueError, match="budget=20 cannot hold"):
        make_attention(InfLLM(budget=20))  # 4 + 16 leaves no local window
    with pytest.raises(ValueError, match="budget=40 cannot hold"):
        InfLLM(budget=40, n_local=30, topk=1).layout(40)
