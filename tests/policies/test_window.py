"""``window``: the closed-form mask (token t sees positions max(0, t - W) .. t), and sliding_window."""

import pytest
import torch
import torch.nn.functional as F

from longrecall.contract import assert_close
from longrecall.mixers.sliding_window import SlidingWindowAttention
from longrecall.policies.base import kept_positions
from longrecall.policies.window import Window

from policy_helpers import T, inputs, make_attention, run_steps


def masked_reference(mixer, x, visible):
    """Attention with an explicit (T, T) mask: visible(t, s) says whether query t sees key s."""
    q, k, v, _ = mixer.project(x, torch.zeros(x.shape[0], dtype=torch.int64))
    t = torch.arange(x.shape[1])
    mask = visible(t[:, None], t[None, :])
    return mixer.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("W", [1, 3, 6])
def test_window_equals_attention_with_the_closed_form_mask(W):
    x = inputs(2, T)
    mixer = make_attention(Window(budget=W))
    expected = masked_reference(mixer, x, lambda t, s: (s <= t) & (s >= t - W))
    y, state = mixer(x)
    y_steps, _, states = run_steps(mixer, x)
    assert_close(y, expected, "forward vs explicit mask")
    assert_close(y_steps, expected, "step loop vs explicit mask")
    assert kept_positions(state) == list(range(T - W, T))
    for t, s in enumerate(states):
        assert kept_positions(s, 1, 1) == list(range(max(0, t + 1 - W), t + 1))


def test_window_budget_b_equals_sliding_window_of_b_plus_one():
    """sliding_window's W counts the query itself; window's budget counts the cache between steps."""
    x = inputs(2, T, seed=3)
    mixer = make_attention(Window(budget=4))
    sliding = SlidingWindowAttention(16, window=5, n_heads=2).double()
    sliding.load_state_dict(mixer.state_dict())
    y, state = mixer(x)
    y_sliding, s_sliding = sliding(x)
    assert_close(y, y_sliding, "window budget 4 vs sliding_window W=5")
    assert s_sliding.pos.shape[2] == 5 and state.pos.shape[2] == 4


def test_window_in_prefill_mode_cuts_the_prompt_once():
    x = inputs(1, T)
    mixer = make_attention(Window(budget=4, mode="prefill"))
    _, state = mixer(x[:, :10])
    assert kept_positions(state) == [6, 7, 8, 9]
    _, state = mixer.step(x[:, 10], state)
    assert kept_positions(state) == [6, 7, 8, 9, 10]
