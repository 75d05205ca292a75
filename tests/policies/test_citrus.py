"""``citrus``: instruction-aware chunked eviction against hand computations and the reference's loop."""

import math

import pytest
import torch

from longrecall.policies.base import Observation, PolicyKVState, kept_positions
from longrecall.policies.citrus import CItruS
from longrecall.policies.finch import Finch

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def constructed(keys, instruction_queries):
    """One row, one head, head width 1, a call of S tokens from an empty cache: key j = keys[j], and the
    last len(instruction_queries) tokens query with those scalars, so logit(p, j) = query_p * keys[j]."""
    S, w = len(keys), len(instruction_queries)
    k = torch.tensor(keys, dtype=torch.float64).reshape(1, 1, S, 1)
    pos = torch.arange(S, dtype=torch.int32).reshape(1, 1, S)
    state = PolicyKVState(k, torch.zeros_like(k), pos, torch.tensor([S]))
    q = torch.zeros(1, 1, S, 1, dtype=torch.float64)
    q[0, 0, S - w :, 0] = torch.tensor(instruction_queries, dtype=torch.float64)
    return state, Observation(q, torch.arange(S).reshape(1, S), None)


def test_keeps_what_the_instruction_attends_to_chunk_after_chunk():
    """Chunks {0, 1, 2} and {3, 4, 5}, instruction at 6 (query 1), k = budget - 1 = 2: the instruction ranks
    tokens by their key.  Chunk 0 leaves 0 (key 3.0) and 1 (2.5); in chunk 1, 5 (2.8) displaces 1 and 3
    (2.0) does not."""
    state, obs = constructed([3.0, 2.5, 0.0, 2.0, 0.0, 2.8, 0.0], [1.0])
    policy = CItruS(budget=3, instruction_len=1, chunk=3)
    budget = torch.tensor([[[3]]])
    steps = [kept_positions(state._replace(pos=state.pos.masked_fill(~held, -1))) for held in
             policy.chunk_steps(state, obs, budget)]
    assert steps == [[0, 1], [0, 5]]
    assert kept_positions(policy.compress(state, obs, budget)) == [0, 5, 6]


@pytest.mark.parametrize("first_query, expected", [(1.0, [1, 3, 4]), (0.3, [0, 3, 4])])
def test_instruction_tokens_are_averaged(first_query, expected):
    """Context keys [0, 3, 1.4], k = 1; instruction token 4 (query -1) prefers token 0, token 3 (query
    ``first_query``) token 1.  With query 1 token 3's preference is sharp and the mean keeps 1 (token 4
    alone would keep 0); with query 0.3 it is flat and the mean keeps 0."""
    keys = [0.0, 3.0, 1.4, 0.0, 0.0]
    state, obs = constructed(keys, [first_query, -1.0])
    kept = CItruS(budget=3, instruction_len=2).compress(state, obs, torch.tensor([[[3]]]))
    assert kept_positions(kept) == expected
    a = [math.exp(first_query * x) for x in keys[:4]]  # token 3 sees positions 0..3
    b = [math.exp(-x) for x in keys]  # token 4 sees 0..4
    mean = [(a[j] / sum(a) + b[j] / sum(b)) / 2 for j in range(3)]  # query 1: [0.171, 0.392, 0.115]
    assert max(range(3), key=mean.__getitem__) == expected[0]
    assert max(range(3), key=lambda j: b[j]) == 0


def citrus_reference(keys, queries, context, instruction, chunk, k):
    """``generate_with_citrus`` with ``instruction_aware_single``, one row and head, lists and floats: read
    a chunk against the cache; before the next chunk (and before the final instruction pass) the
    instruction, read against [cache; instruction], keeps the cache's k tokens it attends to most."""

    def cut(cache):
        score = dict.fromkeys(cache, 0.0)
        for p in instruction:
            visible = [j for j in cache + instruction if j <= p]
            logits = [float(queries[p] @ keys[j]) / math.sqrt(len(keys[j])) for j in visible]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            for j, weight in zip(visible, weights, strict=True):
                if j in score:
                    score[j] += weight / sum(weights) / len(instruction)
        return sorted(sorted(cache, key=lambda j: (-score[j], j))[:k])

    chunks = [context[i : i + chunk] for i in range(0, len(context), chunk)]
    cache = list(chunks[0])
    for piece in chunks[1:]:
        cache = cut(cache) + piece
    return cut(cache) + instruction


@pytest.mark.parametrize("instruction_len, chunk, budget", [(3, 4, 8), (2, 3, 5), (4, 5, 6), (1, 2, 4), (3, 30, 7)])
def test_prefill_matches_the_reference_loop(instruction_len, chunk, budget):
    T = 23
    x = inputs(2, T, seed=3)
    mixer = make_attention(CItruS(budget=budget, instruction_len=instruction_len, chunk=chunk))
    _, state = mixer(x)
    with torch.no_grad():
        q, k, v, _ = mixer.project(x, torch.zeros(2, dtype=torch.int64))
    context, instruction = list(range(T - instruction_len)), list(range(T - instruction_len, T))
    for b in range(2):
        for h in range(2):
            expected = citrus_reference(dict(enumerate(k[b, h])), dict(enumerate(q[b, h])), context, instruction,
                                        chunk, budget - instruction_len)
            assert kept_positions(state, b, h) == expected, f"row {b} head {h}"
            for slot, p in enumerate(expected):
                assert torch.equal(state.k[b, h, slot], k[b, h, p]) and torch.equal(state.v[b, h, slot], v[b, h, p])


def test_budget_holds_after_every_chunk():
    """k = budget - instruction_len context tokens at most after each chunk, exactly k once k were read."""
    policy = CItruS(budget=7, instruction_len=3, chunk=3)
    mixer = make_attention(policy)
    x = inputs(2, 20, seed=5)
    state = mixer.init_state(2)
    with torch.no_grad():
        q, k, v, positions = mixer.project(x, state.length)
    full = policy.append(state, mixer.append(state, k, v, positions))
    steps = list(policy.chunk_steps(full, Observation(q, positions, None), mixer.kv_policy.budget_tensor()))
    assert [held.sum(-1).unique().tolist() for held in steps] == [[3], [4], [4], [4], [4], [4]]  # 17 = 5 x 3 + 2


def test_equals_finch_filling_without_normalisation():
    """Finch's fill schedule without its normalisation ranks by the same attention (a sum, not a mean)."""
    x = inputs(2, 30, seed=8)
    for mode in ("prefill", "step"):
        _, citrus = make_attention(CItruS(budget=9, mode=mode, instruction_len=3, chunk=4))(x)
        _, finch = make_attention(Finch(budget=9, mode=mode, window=3, chunk=4, schedule="fill", normalize=False))(x)
        assert torch.equal(citrus.pos, finch.pos)


def test_step_mode_keeps_the_current_query_best_and_itself():
    budget = 4
    x = inputs(2, 12, seed=6)
    mixer = make_attention(CItruS(budget=budget, mode="step"))
    with torch.no_grad():
        q, k, _, _ = mixer.project(x, torch.zeros(2, dtype=torch.int64))
    _, _, states = run_steps(mixer, x)
    for b in range(2):
        for h in range(2):
            keys, queries = dict(enumerate(k[b, h])), dict(enumerate(q[b, h]))
            kept = []
            for t in range(12):
                # a step is a one-token call: the cache cut by the current query, then the current token
                kept = citrus_reference(keys, queries, kept, [t], chunk=len(kept), k=budget - 1) if kept else [t]
                assert kept_positions(states[t], b, h) == kept, f"step {t}"


def test_state_properties_with_real_chunks():
    check_state_properties(lambda mode: make_attention(CItruS(budget=5, mode=mode, instruction_len=2, chunk=3)))


def test_invalid_fields_are_named():
    for field, bad in [("instruction_len", 0), ("instruction_len", 1.5), ("chunk", 0), ("chunk", "4")]:
        with pytest.raises(ValueError, match=field):
            CItruS(budget=8, **{field: bad})
    assert CItruS().mode == "prefill"
