"""``em_llm``: surprise boundaries, similarity + contiguity retrieval, the model's surprisal, bytes."""

import math
import statistics

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.models import LanguageModel
from longrecall.policies.base import PolicyKVState, kept_positions
from longrecall.policies.em_llm import EMLLM
from longrecall.policies.infllm import InfLLM
from longrecall.protocol import state_nbytes

from policy_helpers import inputs, make_attention, run_steps

V = 23


def hand_state(surprisal, keys=None, scores=None):
    """Batch 1, two heads holding the same tokens at positions 0..S-1."""
    S = len(surprisal)
    keys = torch.zeros(S, 2) if keys is None else torch.as_tensor(keys, dtype=torch.float64)
    k = keys.to(torch.float64)[None, None].expand(1, 2, -1, -1).contiguous()
    pos = torch.arange(S, dtype=torch.int32)[None, None].expand(1, 2, S).contiguous()

    def per_token(values):
        return torch.as_tensor(values, dtype=torch.float64)[None, None].expand(1, 2, S).contiguous()

    local = per_token([0.0] * S if scores is None else scores)
    return PolicyKVState(k, torch.zeros_like(k), pos, torch.tensor([S]), (per_token(surprisal), local))


def boundaries_by_hand(s, n_init, tau, gamma, max_event):
    starts, last = [], None
    for p in range(len(s)):
        window = s[max(0, p - tau) : p]
        cut = p == n_init or (p > n_init and len(window) >= 2 and s[p] > statistics.mean(window)
                              + gamma * statistics.stdev(window))
        if cut:
            last = p
        starts.append(p >= n_init and (p - last) % max_event == 0)
    return starts


@pytest.mark.parametrize("gamma,tau,max_event", [(1.0, 4, 100), (0.5, 6, 100), (1.0, 4, 3), (2.0, 8, 5)])
def test_events_start_exactly_where_surprise_crosses_the_threshold(gamma, tau, max_event):
    s = torch.rand(40, generator=torch.Generator().manual_seed(int(10 * gamma) + tau), dtype=torch.float64)
    s = (s * 4).pow(2).tolist()  # skewed: a few large surprises
    policy = EMLLM(budget=64, n_init=3, gamma=gamma, tau=tau, max_event=max_event)
    starts = policy.boundaries(hand_state(s))[0].tolist()
    assert starts == boundaries_by_hand(s, 3, tau, gamma, max_event)
    assert sum(starts) > 3  # the example has events
    # a clean step: a flat stream with two spikes cuts exactly at the spikes
    flat = [1.0] * 13
    flat[4] = flat[8] = 10.0
    starts = EMLLM(budget=64, n_init=1, tau=3).boundaries(hand_state(flat))[0]
    assert starts.nonzero().flatten().tolist() == [1, 4, 8]


# sink 0; events [1, 4), [4, 7), [7, 10), [10, ...) cut by surprise spikes; query at 12, local 11..12
SPIKY = [1.0, 1, 1, 1, 10, 1, 1, 10, 1, 1, 10, 1, 1]
KEYS = [[0, 0], [3, 0], [0, 0], [0, 0], [0, 0], [0, 3], [0, 0], [0, 0], [-3, -3], [0, 0], [0, 0], [0, 0], [0, 0]]
SCORES = [0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]  # representatives (n_repr=1): 1 | 5 | 8


def mask_of(policy, state, q):
    q = torch.tensor(q, dtype=torch.float64).expand(1, 2, 1, 2)
    return policy.attend_mask(state, q, torch.tensor([[12]]))[0, 0, 0].nonzero().flatten().tolist()


def test_retrieval_takes_the_similar_event_and_its_neighbour():
    state = hand_state(SPIKY, KEYS, SCORES)
    policy = EMLLM(budget=35, n_init=1, n_local=2, n_repr=1, tau=3, k_sim=1, k_contig=1)
    assert policy.layout(35) == (2, 1, 1)
    _, unit_end = policy.units(state)
    assert unit_end[0].tolist()[:3] == [4, 7, 10]
    # q matches event 0's representative: event 0, then its successor (event 1); 10 is the remainder
    assert mask_of(policy, state, [1.0, 0.0]) == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12]
    # event 1: its successor, event 2, comes first
    assert mask_of(policy, state, [0.0, 1.0]) == [0, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    # event 2 is the last formed one: its predecessor, event 1
    assert mask_of(policy, state, [-1.0, -1.0]) == [0, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    # without the contiguity buffer, the similar event alone
    alone = EMLLM(budget=35, n_init=1, n_local=2, n_repr=1, tau=3, k_sim=1, k_contig=0)
    assert mask_of(alone, state, [-1.0, -1.0]) == [0, 7, 8, 9, 10, 11, 12]


def test_budget_split():
    assert EMLLM(budget=96).layout(96) == (60, 2, 0)  # a third to memory: 2 events of at most 16
    assert EMLLM(budget=200).layout(200) == (132, 3, 1)  # 4 events, 30% (1) contiguous
    assert EMLLM(budget=40, k_sim=1).layout(40) == (20, 1, 0)
    assert EMLLM(budget=40, n_local=3, max_event=8).layout(40) == (3, 3, 1)


def make_model(policy):
    torch.manual_seed(0)
    model = LanguageModel(V, 16, ["attention", "attention"]).double()
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.normal_(model.embedding.weight, std=1.0)
    model.set_kv_policy(policy)
    return model


def test_the_model_hands_surprise_and_forward_equals_steps():
    policy = EMLLM(budget=12, n_init=1, n_local=4, max_event=3, k_sim=1, k_contig=1, tau=4)
    model = make_model(policy)
    tokens = torch.randint(V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state, logits = model.init_state(2), []
        for t in range(24):
            out, state = model.step(tokens[:, t], state)
            logits.append(out)
        logits = torch.stack(logits, 1)
        fwd_logits, fwd_state = model(tokens)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
    s = torch.cat([torch.full_like(logp[:, :1], math.log(V)), -logp], 1)
    for layer in state.layers:
        assert kept_positions(layer) == list(range(24))  # retrieval keeps everything
        assert_close(layer.extra[0][:, 0], s, "stored surprise", atol=1e-12, rtol=1e-10)
        starts = policy.boundaries(layer)
        for b in range(2):
            assert starts[b].tolist() == boundaries_by_hand(s[b].tolist(), 1, 4, 1.0, 3)
    assert_close(fwd_logits, logits, "forward vs steps")
    assert_close(fwd_state, state, "states")
    assert not torch.allclose(logits, make_model(None)(tokens)[0])  # retrieval restricts attention
    prefill = make_model(EMLLM(budget=12, n_init=1, n_local=4, max_event=3, k_sim=1, tau=4, mode="prefill"))
    new, final = prefill.generate(tokens[:, :20], 4)
    assert new.shape == (2, 4) and final.layers[0].pos.shape[2] == 24


def test_a_bare_layer_has_no_surprise_and_cuts_infllm_blocks():
    x = inputs(2, 26, seed=4)
    em = make_attention(EMLLM(budget=14, n_init=2, n_local=6, max_event=3, k_sim=2, k_contig=0))
    inf = make_attention(InfLLM(budget=14, n_init=2, n_local=6, block_size=3, topk=2))
    y, s, _ = run_steps(em, x)
    y_ref, s_ref, _ = run_steps(inf, x)
    assert_close(y, y_ref, "events = blocks of max_event")
    assert_close(s.extra[1], s_ref.extra[0], "local scores")


def test_resident_bytes():
    policy = EMLLM(budget=14, n_init=2, n_local=6, max_event=3, k_sim=2, k_contig=0, n_repr=2)
    mixer = make_attention(policy)
    _, state = mixer(inputs(2, 26, seed=5))
    # last query 25: local 20..25; events [2,5) ... [17,20) formed (6), 2 read
    per_token, per_key = 2 * (2 * 8 * 8 + 4 + 8 + 8), 2 * 8 * 8
    assert policy.resident_bytes(state) == 2 * ((2 + 6 + 6) * per_token + 4 * 2 * per_key) + 2 * 8
    assert policy.resident_bytes(state) < mixer.state_bytes(state) == state_nbytes(state)
    unlimited = make_attention(EMLLM())
    _, full = unlimited(inputs(2, 26, seed=5))
    assert unlimited.kv_policy.policy.resident_bytes(full) == unlimited.state_bytes(full)


def test_invalid_fields_are_named():
    for field, bad in [("gamma", -1.0), ("gamma", "x"), ("tau", 1), ("max_event", 0), ("k_sim", 0),
                       ("k_contig", -1), ("n_repr", 0), ("n_init", -1)]:
        with pytest.raises(ValueError, match=field):
            EMLLM(budget=64, **{field: bad})
    with pytest.raises(ValueError, match="k_sim and k_contig split a budget"):
        EMLLM(k_sim=1)
    with pytest.raises(ValueError, match="budget=20 cannot hold"):
        make_attention(EMLLM(budget=20))


@pytest.mark.parametrize("name", ["em_llm", "sirllm"])
@pytest.mark.parametrize("mode", ["step", "prefill"])
def test_unbudgeted_surprisal_policies_equal_the_plain_model(name, mode):
    """budget=None in step mode: the layer reads the handed surprisal one token at a time (a step
    loop inside forward); this used to raise a shape error."""
    from longrecall.registry import POLICIES

    torch.manual_seed(0)
    model = LanguageModel(vocab_size=40, d_model=16, layers=["attention", "attention"]).double()
    tokens = torch.randint(0, 40, (2, 21))
    plain, _ = model.hidden(tokens)
    model.set_kv_policy(POLICIES.get(name)(budget=None, mode=mode))
    with_policy, state = model.hidden(tokens)
    assert_close(with_policy, plain, "hidden states")
    layer = state.layers[0]
    assert not torch.isnan(layer.extra[0]).any() and layer.k.shape[2] == 21
