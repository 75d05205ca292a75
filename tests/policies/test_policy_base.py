"""The policy base: budgets, keep_mask / keep_topk, per-head and per-layer budgets, the hooks, the model."""

from dataclasses import dataclass

import pytest
import torch

from longrecall.cli.ls import rows
from longrecall.contract import assert_close
from longrecall.mixers.attention import KVState
from longrecall.models import LanguageModel
from longrecall.policies.base import Policy, PolicyKVState, keep_mask, keep_topk, kept_positions
from longrecall.policies.h2o import H2O
from longrecall.policies.streaming import StreamingLLM
from longrecall.policies.window import Window
from longrecall.protocol import state_nbytes

from policy_helpers import inputs, make_attention, run_steps


def toy_state(B=1, H=2, S=5, K=4):
    pos = torch.arange(S, dtype=torch.int32).expand(B, H, S).clone()
    k = torch.randn(B, H, S, K, dtype=torch.float64)
    return PolicyKVState(k, k + 1, pos, torch.full((B,), S), (k[..., 0] * 10,), ())


# --------------------------------------------------------------------------- helpers


def test_keep_mask_gathers_in_order_pads_and_really_shrinks():
    state = toy_state()
    keep = torch.tensor([[[True, False, True, False, True], [False, True, False, False, False]]])
    kept = keep_mask(state, keep)
    assert kept.pos.tolist() == [[[0, 2, 4], [1, -1, -1]]]
    assert_close(kept.k[0, 0], state.k[0, 0, [0, 2, 4]], "gathered keys", atol=0, rtol=0)
    assert_close(kept.extra[0][0, 0], state.extra[0][0, 0, [0, 2, 4]], "gathered statistics", atol=0, rtol=0)
    assert kept.k[0, 1, 1:].abs().sum() == 0 and kept.v[0, 1, 1:].abs().sum() == 0  # empty slots are zero
    for leaf in (kept.k, kept.v, kept.pos, kept.extra[0]):
        assert leaf.shape[2] == 3 and leaf.untyped_storage().nbytes() == leaf.numel() * leaf.element_size()
    assert state_nbytes(kept) < state_nbytes(state)


def test_keep_topk_protects_breaks_ties_early_and_takes_per_head_budgets():
    state = toy_state()
    scores = torch.tensor([[[1.0, 1.0, 5.0, 0.0, 2.0], [3.0, 3.0, 3.0, 3.0, 3.0]]], dtype=torch.float64)
    protected = state.pos == 3
    kept = keep_topk(state, scores, torch.tensor([[[2], [3]]]), protected)
    assert kept_positions(kept, 0, 0) == [2, 3]  # 3 is protected, then the best score
    assert kept_positions(kept, 0, 1) == [0, 1, 3]  # ties: the earlier slots, plus the protected one


@pytest.mark.parametrize(
    "budget,context_len,expected",
    [(None, None, None), (7, None, 7), (1.0, 10, 10), (0.5, 9, 4), (0.29, 100, 29), (0.01, 10, 1)],
)
def test_budget_resolution(budget, context_len, expected):
    assert Window(budget=budget).resolve_budget(context_len) == expected


def test_ratio_needs_a_positive_context_len():
    for bad in (None, 0, -3, 2.5):
        with pytest.raises(ValueError, match="context_len"):
            Window(budget=0.5).resolve_budget(bad)


# --------------------------------------------------------------------------- per-head, per-layer budgets


@dataclass
class SplitWindow(Window):
    """Window with a smaller budget for head 0 (a static per-head allocation)."""

    def head_budgets(self, budget, n_heads, layer, n_layers):
        return (budget // 2,) + (budget,) * (n_heads - 1)


@dataclass
class DeeperKeepsMore(Window):
    """A per-layer schedule (the PyramidKV hook, reversed): layer l keeps budget * (l + 1)."""

    def layer_budget(self, budget, layer, n_layers):
        return budget * (layer + 1)


def test_per_head_budgets_pad_the_smaller_heads_and_count_them():
    x = inputs(1, 11)
    mixer = make_attention(SplitWindow(budget=4))
    y, state = mixer(x)
    y_steps, s_steps, states = run_steps(mixer, x)
    assert_close((y, state), (y_steps, s_steps), "per-head budgets: forward vs steps")
    assert kept_positions(state, 0, 0) == [9, 10] and kept_positions(state, 0, 1) == [7, 8, 9, 10]
    assert state.pos.shape[2] == 4 and state.pos[0, 0, 2:].tolist() == [-1, -1]
    assert mixer.state_bytes(state) == state_nbytes(state)  # the empty slots are held, so counted
    assert all(s.pos.shape[2] <= 4 for s in states)
    # each head attends exactly like a window of its own budget: an explicit per-head mask
    q, k, v, _ = mixer.project(x, torch.zeros(1, dtype=torch.int64))
    t = torch.arange(11)
    mask = torch.stack([(t[None] <= t[:, None]) & (t[None] >= t[:, None] - b) for b in (2, 4)])[None]  # (1, H, T, T)
    expected = mixer.merge_heads(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert_close(y, expected, "per-head windows vs explicit per-head mask")


def test_model_applies_the_policy_to_each_attention_layer_with_its_index():
    model = LanguageModel(30, 16, ["attention", "s4d", "sliding_window", "attention"],
                          mixer_kwargs={"sliding_window": {"window": 4}}).double()
    keys = set(model.state_dict())
    assert model.set_kv_policy(DeeperKeepsMore(budget=3)) == [0, 3]
    first, last = model.blocks[0].mixer.kv_policy, model.blocks[3].mixer.kv_policy
    assert (first.layer, first.n_layers, first.budgets) == (0, 2, (3, 3))
    assert (last.layer, last.n_layers, last.budgets) == (1, 2, (6, 6))
    assert model.blocks[2].mixer.kv_policy is None  # sliding_window is left alone
    assert set(model.state_dict()) == keys  # configuration, not parameters
    tokens = torch.randint(30, (2, 12))
    logits, state = model(tokens)
    stepped = model.init_state(2, dtype=torch.float64)
    for t in range(12):
        step_logits, stepped = model.step(tokens[:, t], stepped)
        assert_close(step_logits, logits[:, t], f"model step {t}")
    assert state.layers[0].pos.shape[2] == 3 and state.layers[3].pos.shape[2] == 6
    assert model.state_bytes(state) == model.state_bytes(stepped)
    model.set_kv_policy(None)
    assert isinstance(model(tokens)[1].layers[0], KVState)


def test_generate_with_a_prefill_policy_keeps_the_cache_bounded():
    model = LanguageModel(30, 16, ["attention", "attention"]).double()
    prompt = torch.randint(30, (2, 20))
    model.set_kv_policy(StreamingLLM(budget=0.25, n_sink=2, mode="prefill"), context_len=20)
    assert model.blocks[0].mixer.kv_policy.budgets == (5, 5)
    tokens, state = model.generate(prompt, 4)
    assert tokens.shape == (2, 4)
    assert state.layers[0].pos.shape[2] == 5 + 4 and state.layers[0].length.tolist() == [24, 24]
    assert kept_positions(state.layers[1]) == [0, 1, 17, 18, 19, 20, 21, 22, 23]


def test_invalid_model_policies_leave_the_model_unchanged():
    model = LanguageModel(30, 16, ["attention", "attention"])
    with pytest.raises(ValueError, match="n_sink"):
        model.set_kv_policy(StreamingLLM(budget=3))
    assert all(b.mixer.kv_policy is None for b in model.blocks)
    with pytest.raises(ValueError, match="attention"):
        LanguageModel(30, 16, ["s4d"]).set_kv_policy(Window(budget=4))
    with pytest.raises(TypeError, match="attention"):
        LanguageModel(30, 16, ["sliding_window"]).blocks[0].mixer.set_policy(Window(budget=4))
    with pytest.raises(TypeError, match="Policy"):
        model.blocks[0].mixer.set_policy("window")


def test_plain_attention_is_unchanged_and_refuses_a_policy_state():
    mixer = make_attention()
    x = inputs(2, 6)
    y, state = mixer(x)
    assert type(state) is KVState and mixer.kv_policy is None
    _, policy_state = make_attention(Window(budget=3))(x)
    with pytest.raises(ValueError, match="PolicyKVState"):
        mixer(x, policy_state)
    with pytest.raises(ValueError, match="PolicyKVState"):
        mixer.step(x[:, 0], policy_state)


def test_a_plain_cache_is_adopted_with_fresh_statistics():
    x = inputs(1, 9)
    _, plain = make_attention()(x[:, :5])
    mixer = make_attention(H2O(budget=4))
    _, state = mixer(x[:, 5:], plain)
    assert isinstance(state, PolicyKVState) and state.pos.shape[2] == 4
    with pytest.raises(ValueError, match="statistics"):
        make_attention(H2O(budget=4)).step(x[:, 0], make_attention(Window(budget=4))(x)[1])


# --------------------------------------------------------------------------- hooks for later policies


@dataclass
class LastTwoOnly(Policy):
    """Keep everything, attend to the query and the two tokens before it (a retrieval-style hook)."""

    position_only = True
    bounded = False

    def keep_position(self, pos, length, budget):
        return pos >= 0

    def attend_mask(self, state, q, q_pos):
        return state.pos[:, :, None, :] >= q_pos[:, None, :, None] - 2


@pytest.mark.parametrize("mode", ["step", "prefill"])
def test_attend_mask_restricts_attention_without_evicting(mode):
    x = inputs(2, 10)
    mixer = make_attention(LastTwoOnly(mode=mode))
    y_steps, s_steps, _ = run_steps(mixer, x)
    y_window, _ = make_attention(Window(budget=2))(x)
    y, state = mixer(x)
    assert_close(y_steps, y_window, "attend_mask (steps) vs window of 2")
    assert_close(y, y_window, "attend_mask (forward) vs window of 2")
    assert s_steps.pos.shape[2] == state.pos.shape[2] == 10  # nothing evicted: resident = total
    assert mixer.kv_policy.policy.resident_bytes(s_steps) == mixer.state_bytes(s_steps)


def test_ls_policies_lists_every_policy_with_a_description():
    listed = {row["name"]: row["description"] for row in rows("policies")}
    assert {"full", "window", "streaming", "h2o", "tova", "knorm", "random"} <= set(listed)
    assert all(listed.values())
