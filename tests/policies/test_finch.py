"""``finch``: chunk-by-chunk question-guided selection against hand computations and a plain-Python loop."""

import math

import pytest
import torch

from longrecall.policies.base import Observation, PolicyKVState, kept_positions
from longrecall.policies.finch import Finch

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def constructed(keys, question_queries):
    """One row, one head, head width 1, a call of S tokens from an empty cache: key j = keys[j], and the
    last len(question_queries) tokens query with those scalars, so logit(p, j) = query_p * keys[j]."""
    S, w = len(keys), len(question_queries)
    k = torch.tensor(keys, dtype=torch.float64).reshape(1, 1, S, 1)
    pos = torch.arange(S, dtype=torch.int32).reshape(1, 1, S)
    state = PolicyKVState(k, torch.zeros_like(k), pos, torch.tensor([S]))
    q = torch.zeros(1, 1, S, 1, dtype=torch.float64)
    q[0, 0, S - w :, 0] = torch.tensor(question_queries, dtype=torch.float64)
    return state, Observation(q, torch.arange(S).reshape(1, S), None)


@pytest.mark.parametrize(
    "schedule, after_chunks, expected",
    [
        # the question (query 1 at position 6) ranks context tokens by their key: 0 (3.0) > 1 (2.5) > 3 (2.0)
        # fill: cut to k = 2 after each chunk: {0, 1} of chunk 0, and 3 does not beat them
        ("fill", [[0, 1], [0, 1]], [0, 1, 6]),
        # proportional: r = 2 * 3 // 6 = 1 after chunk 0 (1 is evicted), r = 2 after chunk 1 (3 is kept)
        ("proportional", [[0], [0, 3]], [0, 3, 6]),
    ],
)
def test_keeps_the_tokens_the_question_attends_to(schedule, after_chunks, expected):
    state, obs = constructed([3.0, 2.5, 0.0, 2.0, 0.0, 0.0, 0.0], [1.0])
    policy = Finch(budget=3, window=1, chunk=3, schedule=schedule)
    budget = torch.tensor([[[3]]])
    steps = [kept_positions(state._replace(pos=state.pos.masked_fill(~held, -1))) for held in
             policy.chunk_steps(state, obs, budget)]
    assert steps == after_chunks
    assert kept_positions(policy.compress(state, obs, budget)) == expected


@pytest.mark.parametrize("normalize, expected", [(False, [1, 2, 3]), (True, [0, 2, 3])])
def test_normalisation_weights_each_question_token_by_the_keys_it_sees(normalize, expected):
    """Context keys [0, 3]; question token 2 (query 1, key 0.5) prefers token 1, question token 3 (query -2,
    key 3) prefers token 0.  Token 2 sees 3 keys, token 3 sees 4."""
    state, obs = constructed([0.0, 3.0, 0.5, 3.0], [1.0, -2.0])
    kept = Finch(budget=3, window=2, normalize=normalize).compress(state, obs, torch.tensor([[[3]]]))
    assert kept_positions(kept) == expected
    # the hand numbers: A = softmax of query 1 over keys [0, 3, 0.5], B = of query -2 over [0, 3, 0.5, 3]
    a = [math.exp(x) for x in (0.0, 3.0, 0.5)]
    b = [math.exp(-2 * x) for x in (0.0, 3.0, 0.5, 3.0)]
    a, b = [x / sum(a) for x in a], [x / sum(b) for x in b]
    raw = [a[j] + b[j] for j in range(2)]  # [0.772, 0.885]: token 1
    weighted = [3 * a[j] + 4 * b[j] for j in range(2)]  # [3.046, 2.658]: token 0
    assert raw[1] > raw[0] and weighted[0] > weighted[1]


def finch_by_hand(keys, queries, held, new, w, chunk, budget, schedule="proportional", normalize=True):
    """One row and head, lists and floats: ``keys`` and ``queries`` map positions to vectors, ``held`` is
    the carried cache, ``new`` the call's positions.  Returns the context kept after each chunk and the
    final cache, as the paper's loop reads [kept; chunk; question]."""
    w = min(w, len(new))
    question, context = new[len(new) - w :], new[: len(new) - w]
    k = budget - min(w, budget)
    total = new[-1] + 1 - w  # context tokens read by the end of the call (positions start at 0)
    history = []
    for piece in [context[i : i + chunk] for i in range(0, len(context), chunk)] or [[]]:
        candidates = held + piece
        seen = piece[-1] + 1 if piece else new[0]
        r = k if schedule == "fill" else k * seen // max(total, 1)
        score = dict.fromkeys(candidates, 0.0)
        for p in question:
            visible = [j for j in candidates + question if j <= p]
            logits = [float(queries[p] @ keys[j]) / math.sqrt(len(keys[j])) for j in visible]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            for j, weight in zip(visible, weights, strict=True):
                if j in score:
                    score[j] += (len(visible) if normalize else 1) * weight / sum(weights)
        held = sorted(sorted(candidates, key=lambda j: (-score[j], j))[:r])
        history.append(held)
    return history, sorted(held + question[w - min(w, budget) :])


@pytest.mark.parametrize("schedule", ["proportional", "fill"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("window, chunk, budget", [(3, 4, 8), (2, 3, 5), (4, 5, 3), (1, 2, 6)])
def test_two_prefill_calls_match_the_plain_loop(schedule, normalize, window, chunk, budget):
    """Calls of 11 then 13 tokens: the kept positions after every chunk and at the end of each call, the
    budget invariant, and keys kept as read (no re-rotation)."""
    policy = Finch(budget=budget, window=window, chunk=chunk, schedule=schedule, normalize=normalize)
    mixer = make_attention(policy)
    x = inputs(2, 24, seed=3)
    first, second = x[:, :11], x[:, 11:]
    _, state1 = mixer(first)
    with torch.no_grad():
        q, k, v, positions = mixer.project(x, torch.zeros(2, dtype=torch.int64))
    carried = mixer.kv_policy.policy.adopt(state1)
    full = policy.append(carried, mixer.append(carried, k[:, :, 11:], v[:, :, 11:], positions[:, 11:]))
    obs = Observation(q[:, :, 11:], positions[:, 11:], None)
    steps = list(policy.chunk_steps(full, obs, mixer.kv_policy.budget_tensor()))
    _, state2 = mixer(second, state1)
    w = min(window, 13)
    for b in range(2):
        for h in range(2):
            keys, queries = dict(enumerate(k[b, h])), dict(enumerate(q[b, h]))
            _, kept1 = finch_by_hand(keys, queries, [], list(range(11)), window, chunk, budget, schedule, normalize)
            assert kept_positions(state1, b, h) == kept1
            history, kept2 = finch_by_hand(keys, queries, kept1, list(range(11, 24)), window, chunk, budget,
                                           schedule, normalize)
            assert kept_positions(state2, b, h) == kept2, f"row {b} head {h}"
            assert len(steps) == len(history)
            for held, expected in zip(steps, history, strict=True):
                got = full.pos[b, h][held[b, h]].tolist()
                assert got == expected
                assert len(got) + min(w, budget) <= budget  # the budget holds after every chunk
            for slot, p in enumerate(kept2):  # keys and values as read: no re-rotation
                assert torch.equal(state2.k[b, h, slot], k[b, h, p]) and torch.equal(state2.v[b, h, slot], v[b, h, p])


def test_proportional_cache_grows_with_the_text_read():
    """One call of 2 + 30 tokens, chunk 5, budget 12 (k = 10): the context kept after chunk i is
    floor(10 * 5 (i + 1) / 30), reaching k only with the last chunk; fill holds k from the second."""
    x = inputs(1, 32, seed=4)
    for schedule, sizes in [("proportional", [1, 3, 5, 6, 8, 10]), ("fill", [5, 10, 10, 10, 10, 10])]:
        policy = Finch(budget=12, window=2, chunk=5, schedule=schedule)
        mixer = make_attention(policy)
        state = mixer.init_state(1)
        with torch.no_grad():
            q, k, v, positions = mixer.project(x, state.length)
        full = policy.append(state, mixer.append(state, k, v, positions))
        steps = policy.chunk_steps(full, Observation(q, positions, None), mixer.kv_policy.budget_tensor())
        assert [held.sum(-1).tolist() for held in steps] == [[[n, n]] for n in sizes]


def test_step_mode_keeps_the_current_query_best_and_itself():
    """Step mode is a call of one token: the question is the current query (w = 1)."""
    budget = 5
    x = inputs(2, 14, seed=6)
    mixer = make_attention(Finch(budget=budget, mode="step", window=4, chunk=3))
    with torch.no_grad():
        q, k, _, _ = mixer.project(x, torch.zeros(2, dtype=torch.int64))
    _, _, states = run_steps(mixer, x)
    for b in range(2):
        for h in range(2):
            keys, queries, kept = dict(enumerate(k[b, h])), dict(enumerate(q[b, h])), []
            for t in range(14):
                _, kept = finch_by_hand(keys, queries, kept, [t], 4, 3, budget)
                assert kept_positions(states[t], b, h) == kept, f"step {t}"


def test_budget_at_most_the_window_keeps_the_last_tokens():
    x = inputs(1, 20, seed=7)
    _, state = make_attention(Finch(budget=5, window=8, chunk=4))(x)
    assert all(kept_positions(state, 0, h) == list(range(15, 20)) for h in range(2))


def test_state_properties_with_real_chunks():
    check_state_properties(lambda mode: make_attention(Finch(budget=5, mode=mode, window=2, chunk=3)))


def test_invalid_fields_are_named():
    for field, bad in [("window", 0), ("window", 2.0), ("chunk", 0), ("chunk", None), ("schedule", "linear"),
                       ("normalize", 1)]:
        with pytest.raises(ValueError, match=field):
            Finch(budget=8, **{field: bad})
    assert Finch().mode == "prefill"
