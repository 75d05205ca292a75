"""``sirllm``: the decayed-surprisal rule, the model's surprisal hook, and the bare-layer fallback."""

import math

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.models import LanguageModel
from longrecall.policies.base import PolicyKVState, kept_positions
from longrecall.policies.sirllm import SirLLM
from longrecall.policies.streaming import StreamingLLM

from policy_helpers import inputs, make_attention, run_steps

V = 23


def hand_state(surprisal):
    S = len(surprisal)
    k = torch.randn(1, 2, S, 4, dtype=torch.float64)
    pos = torch.arange(S, dtype=torch.int32)[None, None].expand(1, 2, S).contiguous()
    s = torch.tensor(surprisal, dtype=torch.float64)[None, None].expand(1, 2, S).contiguous()
    return PolicyKVState(k, k.clone(), pos, torch.tensor([S]), (s,))


def keep(policy, state, budget):
    return kept_positions(policy.compress(state, None, torch.tensor([[[budget]]])))


def test_keeps_sinks_recent_and_the_highest_decayed_surprisal():
    s = [0.5, 4.0, 1.0, 3.0, 8.0, 2.0, 6.0, 0.1]
    state = hand_state(s)
    assert keep(SirLLM(budget=5, n_sink=1, recent=1), state, 5) == [0, 1, 4, 6, 7]  # top 3 of 1..6: 8, 6, 4
    # decay 0.5 per step: 4 * 0.5**6 = 0.0625, 3 * 0.5**4 = 0.1875, 8 * 0.5**3 = 1, 2 * 0.5**2 = 0.5, 6 * 0.5 = 3
    assert keep(SirLLM(budget=5, n_sink=1, recent=1, decay=0.5), state, 5) == [0, 4, 5, 6, 7]
    assert keep(SirLLM(budget=3, n_sink=0, recent=0), state, 3) == [1, 4, 6]  # the newest token competes too
    tied = hand_state([1.0, 2.0, 2.0, 2.0, 0.0, 0.0])
    assert keep(SirLLM(budget=3, n_sink=1), tied, 3) == [0, 2, 3]  # ties: the more recent
    assert keep(SirLLM(budget=4, n_sink=1), tied, 4) == [0, 1, 2, 3]
    assert keep(SirLLM(budget=5, n_sink=1), tied, 5) == [0, 1, 2, 3, 5]  # zeros last, newest first
    pending = hand_state([1.0, math.nan, 2.0])
    assert keep(SirLLM(budget=2, n_sink=0), pending, 2) == [0, 1, 2]  # waits for the model's surprisal


def test_a_bare_attention_layer_falls_back_to_streaming_llm():
    x = inputs(2, 15, seed=3)
    sir = make_attention(SirLLM(budget=6))
    stream = make_attention(StreamingLLM(budget=6))
    y, s, _ = run_steps(sir, x)
    y_ref, s_ref, _ = run_steps(stream, x)
    assert_close(y, y_ref, "no surprisal: sinks + most recent")
    assert kept_positions(s) == kept_positions(s_ref) == [0, 1, 2, 3, 13, 14]


def make_model(policy, layers=("attention", "attention")):
    torch.manual_seed(0)
    model = LanguageModel(V, 16, list(layers)).double()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # predictions far from uniform: surprisals differ
    torch.nn.init.normal_(model.embedding.weight, std=1.0)
    model.set_kv_policy(policy)
    return model


def surprisal_from_logits(logits, tokens):
    """log V for the first token, then -log p(x_t) under the logits at t - 1."""
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
    return torch.cat([torch.full_like(logp[:, :1], math.log(V)), -logp], 1)


def test_the_model_hands_each_token_its_surprisal_in_step_mode():
    policy = SirLLM(budget=6, n_sink=1, recent=1, decay=0.9)
    model = make_model(policy)
    tokens = torch.randint(V, (2, 20), generator=torch.Generator().manual_seed(1))
    state = model.init_state(2)
    logits = []
    with torch.no_grad():
        for t in range(20):
            out, state = model.step(tokens[:, t], state)
            logits.append(out)
    logits = torch.stack(logits, 1)
    s = surprisal_from_logits(logits, tokens)
    for layer in state.layers:
        for b in range(2):
            kept = kept_positions(layer, b)
            assert_close(layer.extra[0][b, 0], s[b, kept], f"stored surprisal row {b}", atol=1e-12, rtol=1e-10)
            # a static order (equal decay for all): the top 4 by decayed surprisal among 1..18
            decayed = {j: float(s[b, j]) * 0.9 ** (19 - j) for j in range(1, 19)}
            assert kept == sorted([0, 19] + sorted(decayed, key=decayed.get)[-4:])
    assert len(state.last_hidden) == 1 and state.last_hidden[0].shape == (2, 16)
    # forward runs the same token loop (token t's surprisal needs the output at t - 1)
    with torch.no_grad():
        fwd_logits, fwd_state = model(tokens)
    assert_close(fwd_logits, logits, "forward vs steps")
    assert_close(fwd_state, state, "states")
    layers = sum(model.blocks[i].mixer.state_bytes(state.layers[i]) for i in (0, 1))
    assert model.state_bytes(state) == layers + 2 * 16 * 8  # + the last hidden state (B, D) float64


def test_prefill_mode_compresses_the_prompt_by_its_own_surprisal():
    policy = SirLLM(budget=6, n_sink=1, mode="prefill")
    model = make_model(policy)
    plain = make_model(None)
    prompt = torch.randint(V, (2, 14), generator=torch.Generator().manual_seed(2))
    logits, state = model(prompt)
    ref_logits, _ = plain(prompt)
    assert_close(logits, ref_logits, "the prompt pass is full attention", atol=1e-12, rtol=1e-10)
    s = surprisal_from_logits(ref_logits, prompt)
    for b in range(2):
        expected = sorted([0] + s[b, 1:].argsort(descending=True)[:5].add(1).tolist())
        assert kept_positions(state.layers[0], b) == kept_positions(state.layers[1], b) == expected
        assert_close(state.layers[1].extra[0][b, 0], s[b, expected], "stored surprisal", atol=1e-12, rtol=1e-10)
    # chunks: each chunk's first token is scored by the prediction that ended the previous one
    unlimited = make_model(SirLLM(mode="prefill"))
    more = torch.randint(V, (2, 5), generator=torch.Generator().manual_seed(3))
    first_logits, chunked = unlimited(prompt)
    more_logits, chunked = unlimited(more, chunked)
    whole = surprisal_from_logits(torch.cat([first_logits, more_logits], 1), torch.cat([prompt, more], 1))
    assert_close(chunked.layers[0].extra[0][:, 0], whole, "stored surprisal, two chunks", atol=1e-12, rtol=1e-10)
    assert_close(chunked.layers[1].extra[0][:, 1], whole, "every layer and head", atol=1e-12, rtol=1e-10)
    # decoding appends, as every prefill policy
    new, final = model.generate(prompt, 3)
    assert new.shape == (2, 3) and final.layers[0].pos.shape[2] == 6 + 3


def test_models_without_a_surprisal_policy_are_unchanged():
    model = make_model(StreamingLLM(budget=6))
    tokens = torch.randint(V, (2, 9))
    logits, state = model(tokens)
    assert state.last_hidden == ()
    stepped = model.init_state(2)
    for t in range(9):
        out, stepped = model.step(tokens[:, t], stepped)
        assert_close(out, logits[:, t], f"step {t}")
    assert stepped.last_hidden == ()


def test_invalid_fields_are_named():
    for field, bad in [("n_sink", -1), ("recent", "x"), ("decay", 0.0), ("decay", 1.5), ("decay", True)]:
        with pytest.raises(ValueError, match=field):
            SirLLM(budget=8, **{field: bad})
    with pytest.raises(ValueError, match="n_sink \\+ recent = 6"):
        make_attention(SirLLM(budget=5, n_sink=4, recent=2))
    mixer = make_attention(SirLLM(budget=4))
    prefill = make_attention(SirLLM(budget=4, mode="prefill"))  # a prefill pass reads all its tokens at once
    state = prefill.kv_policy.policy.with_surprisal(prefill.init_state(2, dtype=torch.float64), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="surprisal was handed"):  # fewer values than tokens read
        prefill(inputs(2, 2), state)
    # more values than one step reads: each step consumes its own, the rest stay pending
    state = mixer.kv_policy.policy.with_surprisal(mixer.init_state(2, dtype=torch.float64),
                                                  torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    _, state = mixer.step(inputs(2, 1)[:, 0], state)
    assert state.aux[0].tolist() == [[2.0, 3.0], [5.0, 6.0]] and state.extra[0][:, 0, -1].tolist() == [1.0, 4.0]
