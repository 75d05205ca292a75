"""``think``: key channels scored by mean q_c^2 * mean k_c^2; pruned keys are stored narrower."""

import math

import pytest
import torch

from longrecall.policies.base import Observation, PolicyKVState, kept_positions
from longrecall.policies.think import ThinK

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def test_channel_selection_on_a_constructed_example():
    # mean q^2 per channel [1, 4, 0.1, 1], mean k^2 [2, 1, 12, 3]: scores [2, 4, 1.2, 3] -> keep 1, 3
    # (the largest keys alone would keep channels 2 and 3)
    q2, k2 = torch.tensor([1.0, 4.0, 0.1, 1.0]), torch.tensor([2.0, 1.0, 12.0, 3.0])
    signs = torch.tensor([1.0, -1.0]).repeat(3)[:, None]  # (6, 1)
    k = (signs * k2.sqrt()).reshape(1, 1, 6, 4).double()
    v = torch.arange(24, dtype=torch.float64).reshape(1, 1, 6, 4)
    pos = torch.arange(6, dtype=torch.int32).reshape(1, 1, 6)
    policy = ThinK(pruning_ratio=0.5, recent=2, window=2)
    state = policy.adopt(PolicyKVState(k, v, pos, torch.tensor([6])))
    obs = Observation(q2.sqrt().double().expand(1, 1, 2, 4), torch.tensor([[4, 5]]), None)
    out = policy.compress(state, obs, None)
    pk, pv, ppos, channels = out.aux
    assert channels.tolist() == [[[1, 3]]]
    assert torch.equal(pk, k[:, :, :4][..., [1, 3]]) and torch.equal(pv, v[:, :, :4])
    assert ppos.tolist() == [[[0, 1, 2, 3]]] and kept_positions(out) == [4, 5]
    assert torch.equal(out.k, k[:, :, 4:]) and torch.equal(out.v, v[:, :, 4:])
    view_k, view_v, view_pos = policy.attend_view(out)
    expected = k.clone()
    expected[:, :, :4, [0, 2]] = 0
    assert torch.equal(view_k, expected) and torch.equal(view_v, v) and torch.equal(view_pos, pos)


def test_prefill_prunes_all_but_the_recent_keys_and_saves_their_bytes():
    T, recent, window = 20, 4, 4
    x = inputs(2, T + 3, seed=9)
    mixer = make_attention(ThinK(pruning_ratio=0.5, recent=recent, window=window))
    plain = make_attention()
    y, state = mixer(x[:, :T])
    y_ref, full = plain(x[:, :T])
    assert torch.allclose(y, y_ref, atol=1e-12), "the prompt itself is read with every channel"
    pk, pv, ppos, channels = state.aux
    assert pk.shape == (2, 2, T - recent, 4) and kept_positions(state) == list(range(T - recent, T))
    q, k, _, _ = plain.project(x[:, :T], torch.zeros(2, dtype=torch.int64))
    scores = q[:, :, -window:].square().mean(2) * k.square().mean(2)  # (B, H, K)
    assert torch.equal(channels, scores.topk(4, dim=-1).indices.sort(-1).values)
    index = channels[:, :, None].expand(-1, -1, T - recent, -1)
    assert torch.equal(pk, torch.gather(full.k[:, :, : T - recent], 3, index))
    assert torch.equal(pv, full.v[:, :, : T - recent])
    saved = 2 * 2 * (T - recent) * (8 - 4) * 8  # float64 channels no longer stored
    assert plain.state_bytes(full) - mixer.state_bytes(state) == saved - channels.numel() * 8
    # decoding: the query only meets the kept channels of pruned keys (zeros elsewhere)
    keys = full.k.clone()
    dropped = torch.ones(2, 2, 8, dtype=torch.bool).scatter(2, channels, False)
    keys[:, :, : T - recent] = keys[:, :, : T - recent].masked_fill(dropped[:, :, None], 0.0)
    qn, kn, vn, _ = plain.project(x[:, T : T + 1], full.length)
    keys, values = torch.cat([keys, kn], 2), torch.cat([full.v, vn], 2)
    probs = torch.softmax(qn @ keys.transpose(-1, -2) / math.sqrt(8), dim=-1)
    y_step, state = mixer.step(x[:, T], state)
    assert torch.allclose(y_step, mixer.merge_heads(probs @ values)[:, 0], atol=1e-12)
    # new tokens keep full channels (ThinK_flash): the narrow part does not grow while decoding
    _, state = mixer.step(x[:, T + 1], state)
    assert state.aux[0].shape[2] == T - recent and kept_positions(state) == list(range(T - recent, T + 2))


def test_chunked_prompt_reuses_the_channel_set():
    x = inputs(2, 20, seed=10)
    mixer = make_attention(ThinK(pruning_ratio=0.5, recent=4, window=4))
    _, s1 = mixer(x[:, :12])
    _, s2 = mixer(x[:, 12:], s1)
    assert torch.equal(s1.aux[3], s2.aux[3]) and s2.aux[0].shape[2] == 16
    assert torch.equal(s2.aux[0][:, :, :8], s1.aux[0])


@pytest.mark.parametrize("config", [dict(pruning_ratio=0.0, recent=2), dict(recent=32)])
def test_no_pruning_is_full_attention(config):
    x = inputs(2, 20, seed=11)
    plain = make_attention()
    y_ref, _ = plain(x)
    mixer = make_attention(ThinK(**config))
    y1, s1 = mixer(x[:, :12])
    y2, _ = mixer(x[:, 12:], s1)
    assert torch.allclose(torch.cat([y1, y2], 1), y_ref, atol=1e-12)
    y_steps, _, _ = run_steps(make_attention(ThinK(mode="step", **config)), x)
    assert torch.allclose(y_steps, run_steps(plain, x)[0], atol=1e-12)


def test_step_mode_prunes_each_token_leaving_the_recent_window():
    recent = 3
    x = inputs(2, 12, seed=12)
    mixer = make_attention(ThinK(mode="step", pruning_ratio=0.25, recent=recent))
    _, _, states = run_steps(mixer, x)
    for t, state in enumerate(states):
        assert state.pos.shape[2] == min(t + 1, recent) and state.aux[0].shape[2] == max(0, t + 1 - recent)
        assert state.aux[0].shape[3] == 6  # 8 - floor(0.25 * 8)
    # the channel set is chosen by the query of step `recent` (the first token leaving the window)
    prev = states[recent - 1]
    q, k, _, _ = mixer.project(x[:, recent : recent + 1], prev.length)
    scores = q[:, :, 0].square() * torch.cat([prev.k, k], 2).square().mean(2)
    assert torch.equal(states[-1].aux[3], scores.topk(6, dim=-1).indices.sort(-1).values)


def test_registry_state_properties_while_pruning():
    check_state_properties(lambda mode: make_attention(ThinK(mode=mode, pruning_ratio=0.5, recent=2, window=3)))


def test_invalid_fields_are_named():
    for field, bad in [("budget", 4), ("budget", 0.5), ("pruning_ratio", 1.0), ("pruning_ratio", -0.1),
                       ("pruning_ratio", "x"), ("recent", -1), ("window", 0)]:
        with pytest.raises(ValueError, match=field):
            ThinK(**{field: bad})
    assert ThinK().mode == "prefill" and not ThinK.bounded
