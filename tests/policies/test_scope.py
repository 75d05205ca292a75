"""``scope``: the prompt compressed once, decoded tokens under their own budget, against a plain-Python loop."""

import math

import pytest
import torch

from longrecall.policies.base import cat_states, kept_positions
from longrecall.policies.scope import SCOPE
from longrecall.policies.snapkv import SnapKV
from longrecall.protocol import state_nbytes, state_select

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def softmax_row(q, keys, K):
    logits = [float(q @ k) / math.sqrt(K) for k in keys]
    top = max(logits)
    weights = [math.exp(a - top) for a in logits]
    return [w / sum(weights) for w in weights]


def snapkv_by_hand(q, k, n_prompt, budget, window, kernel):
    """One head: the last w prompt queries' summed attention, averaged over a kernel (zero padding outside
    the prefix, divisor = kernel), the budget - w best prefix tokens plus the last w."""
    K = q.shape[-1]
    w = min(window, n_prompt, budget)
    votes = [0.0] * n_prompt
    for i in range(n_prompt - min(window, n_prompt), n_prompt):
        for j, p in enumerate(softmax_row(q[i], k[: i + 1], K)):
            votes[j] += p
    prefix = n_prompt - w
    half = kernel // 2
    pooled = [sum(votes[m] for m in range(j - half, j + half + 1) if 0 <= m < prefix) / kernel for j in range(prefix)]
    heavy = sorted(range(prefix), key=lambda j: (-pooled[j], j))[: budget - w]
    return sorted(heavy) + list(range(prefix, n_prompt))


def decode_by_hand(q, k, kept, first, T, cap, recent):
    """One head: tokens first..T-1 appended one by one; decoded (>= first) over cap keep the recent ones
    and the others the new token's attention (over the whole cache) ranks highest.  Kept lists per step."""
    K = q.shape[-1]
    kept, history = list(kept), []
    for t in range(first, T):
        kept.append(t)
        decoded = [j for j in kept if j >= first]
        if len(decoded) > cap:
            probs = dict(zip(kept, softmax_row(q[t], [k[j] for j in kept], K), strict=True))
            newest = [j for j in decoded if j > t - recent]
            others = [j for j in decoded if j not in newest]
            heavy = sorted(others, key=lambda j: (-probs[j], j))[: cap - len(newest)]
            kept = [j for j in kept if j < first] + sorted(heavy + newest)
        history.append(list(kept))
    return history


def projections(mixer, x):
    with torch.no_grad():
        q, k, _, _ = mixer.project(x, torch.zeros(x.shape[0], dtype=torch.int64))
    return q, k


@pytest.mark.parametrize("decode_budget, decode_recent", [(5, 2), (4, 0), (3, 3), (None, None)])
def test_prefill_then_many_steps_keep_the_prompt_selection_and_the_decode_rule(decode_budget, decode_recent):
    """A 12-token prompt to budget 6 (window 3, kernel 3), then 28 decoded tokens under their own budget."""
    T, n_prompt = 40, 12
    x = inputs(2, T, seed=8)
    policy = SCOPE(budget=6, window=3, kernel=3, decode_budget=decode_budget, decode_recent=decode_recent)
    mixer = make_attention(policy)
    cap = 6 if decode_budget is None else decode_budget  # None: the budget
    recent = math.floor(0.25 * cap) if decode_recent is None else decode_recent
    q, k = projections(mixer, x)
    _, state = mixer(x[:, :n_prompt])
    assert state.aux[0].tolist() == [n_prompt, n_prompt]
    prompt_kept = {}
    for b in range(2):
        for h in range(2):
            prompt_kept[b, h] = snapkv_by_hand(q[b, h], k[b, h], n_prompt, 6, 3, 3)
            assert kept_positions(state, b, h) == prompt_kept[b, h]
    hands = {(b, h): decode_by_hand(q[b, h], k[b, h], prompt_kept[b, h], n_prompt, T, cap, recent)
             for b in range(2) for h in range(2)}
    for t in range(n_prompt, T):
        _, state = mixer.step(x[:, t], state)
        for (b, h), history in hands.items():
            kept = kept_positions(state, b, h)
            assert kept == history[t - n_prompt], f"step {t}, row {b}, head {h}"
            assert kept[: len(prompt_kept[b, h])] == prompt_kept[b, h]  # the prompt part never changes
            assert len(kept) == 6 + min(t + 1 - n_prompt, cap)
    assert state.aux[0].tolist() == [n_prompt, n_prompt]
    assert any(hands[0, 0][-1] != hands[key][-1] for key in hands)  # heads and rows choose differently


def test_prompt_selection_is_snapkv():
    x = inputs(2, 30, seed=5)
    _, scope = make_attention(SCOPE(budget=9, window=4, kernel=5))(x)
    _, snap = make_attention(SnapKV(budget=9, window=4, kernel=5))(x)
    assert torch.equal(scope.pos, snap.pos)


def test_step_mode_is_the_decoding_rule_on_every_token():
    T = 24
    x = inputs(1, T, seed=9)
    mixer = make_attention(SCOPE(budget=6, mode="step", decode_recent=2))
    q, k = projections(mixer, x)
    _, _, states = run_steps(mixer, x)
    y, state = mixer(x)
    for h in range(2):
        history = decode_by_hand(q[0, h], k[0, h], [], 0, T, 6, 2)
        assert [kept_positions(s, 0, h) for s in states] == history
    assert torch.equal(state.pos, states[-1].pos)
    assert state.aux[0].tolist() == [-1]  # step mode records no prompt


def test_a_sequence_started_by_step_has_a_one_token_prompt():
    x = inputs(1, 14, seed=3)
    mixer = make_attention(SCOPE(budget=4, decode_budget=3, decode_recent=1))
    q, k = projections(mixer, x)
    _, state, states = run_steps(mixer, x)
    assert state.aux[0].tolist() == [1]
    for h in range(2):
        history = decode_by_hand(q[0, h], k[0, h], [0], 1, 14, 3, 1)
        assert [kept_positions(s, 0, h) for s in states[1:]] == history


def test_a_later_forward_is_decoded_and_trimmed_by_its_last_query():
    x = inputs(1, 20, seed=4)
    mixer = make_attention(SCOPE(budget=5, window=2, kernel=3, decode_budget=4, decode_recent=2))
    q, k = projections(mixer, x)
    _, state = mixer(x[:, :8])
    prompt = [kept_positions(state, 0, h) for h in range(2)]
    _, state = mixer(x[:, 8:], state)
    for h in range(2):
        # one trim at the end of the call: positions 8..19 decoded, ranked by query 19 over the whole cache
        cache = prompt[h] + list(range(8, 20))
        probs = dict(zip(cache, softmax_row(q[0, h, 19], [k[0, h, j] for j in cache], q.shape[-1]), strict=True))
        heavy = sorted(range(8, 18), key=lambda j: (-probs[j], j))[:2]
        assert kept_positions(state, 0, h) == prompt[h] + sorted(heavy) + [18, 19]


def test_keep_the_whole_prompt():
    x = inputs(2, 25, seed=6)
    for policy in (SCOPE(budget=4, prefill="all", decode_budget=5), SCOPE(budget=None, decode_budget=5)):
        mixer = make_attention(policy)
        _, state = mixer(x[:, :15])
        assert state.pos.shape[2] == 15
        _, state, _ = run_steps(mixer, x[:, 15:], state)
        for b in range(2):
            for h in range(2):
                kept = kept_positions(state, b, h)
                assert kept[:15] == list(range(15)) and len(kept) == 20 and kept[-1] == 24


def test_a_ratio_budget_sets_the_decoding_budget_when_applied():
    x = inputs(1, 24, seed=2)
    mixer = make_attention(SCOPE(budget=0.25, window=2), context_len=24)  # 6 prompt and 6 decoded tokens
    _, state = mixer(x[:, :10])
    _, state, _ = run_steps(mixer, x[:, 10:], state)
    assert state.pos.shape[2] == 12 and kept_positions(state)[:6] == kept_positions(mixer(x[:, :10])[1])
    with pytest.raises(ValueError, match="resolved when the policy is applied"):
        SCOPE(budget=0.25).decode_cap()


def test_rows_of_different_prompt_lengths_share_a_batch():
    mixer = make_attention(SCOPE(budget=4, window=2, kernel=3, decode_budget=3))
    first, second = mixer(inputs(1, 3, seed=10))[1], mixer(inputs(1, 9, seed=11))[1]
    batch = cat_states([first, second])
    assert batch.aux[0].tolist() == [3, 9]
    rest = inputs(2, 6, seed=12)
    _, state, _ = run_steps(mixer, rest, batch)
    for i, alone in enumerate((first, second)):
        _, alone, _ = run_steps(mixer, rest[i : i + 1], alone)
        assert [kept_positions(state_select(state, i), 0, h) for h in range(2)] == [
            kept_positions(alone, 0, h) for h in range(2)]
    assert kept_positions(state, 0, 0)[:3] == [0, 1, 2] and len(kept_positions(state, 1, 0)) == 4 + 3


def test_state_properties_and_bytes():
    check_state_properties(lambda mode: make_attention(SCOPE(budget=5, window=2, kernel=3, mode=mode,
                                                             decode_budget=3 if mode == "prefill" else None)))
    mixer = make_attention(SCOPE(budget=5, window=2, decode_budget=3))
    _, state, _ = run_steps(mixer, inputs(2, 30), mixer(inputs(2, 10, seed=3))[1])
    assert state.pos.shape[2] == 8  # bounded: prompt budget + decoding budget
    assert mixer.state_bytes(state) == state_nbytes(state) == state_nbytes(state[:4]) + 2 * 8  # + the prompt lengths


def test_invalid_fields_are_named():
    with pytest.raises(ValueError, match="prefill"):
        SCOPE(budget=4, prefill="h2o")
    for bad in (0, -1, 1.5, "4"):
        with pytest.raises(ValueError, match="decode_budget"):
            SCOPE(budget=4, decode_budget=bad)
    with pytest.raises(ValueError, match="decode_budget"):
        SCOPE(budget=4, mode="step", decode_budget=4)
    with pytest.raises(ValueError, match="decode_recent"):
        SCOPE(budget=4, decode_budget=3, decode_recent=4)
    with pytest.raises(ValueError, match="decode_recent"):
        SCOPE(budget=4, decode_recent=-1)
    with pytest.raises(ValueError, match="decode_recent"):
        make_attention(SCOPE(budget=4, decode_recent=5))  # the decoding budget is the budget
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValueError, match="decode_recent_ratio"):
            SCOPE(budget=4, decode_recent_ratio=bad)
