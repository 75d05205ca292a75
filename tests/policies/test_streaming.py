"""``streaming``: sinks + recent window against an explicit mask; budget and sink validation."""

import pytest
from test_window import masked_reference

from longrecall.contract import assert_close
from longrecall.policies.base import kept_positions
from longrecall.policies.streaming import StreamingLLM
from longrecall.policies.window import Window

from policy_helpers import T, inputs, make_attention, run_steps


@pytest.mark.parametrize("n_sink,budget", [(4, 6), (2, 5), (1, 1), (3, 3)])
def test_streaming_equals_attention_with_sinks_and_window(n_sink, budget):
    x = inputs(2, T, seed=4)
    mixer = make_attention(StreamingLLM(budget=budget, n_sink=n_sink))
    recent = budget - n_sink
    expected = masked_reference(mixer, x, lambda t, s: (s <= t) & ((s < n_sink) | (s >= t - recent)))
    y, state = mixer(x)
    y_steps, _, states = run_steps(mixer, x)
    assert_close(y, expected, "forward vs explicit mask")
    assert_close(y_steps, expected, "step loop vs explicit mask")
    assert kept_positions(state) == list(range(n_sink)) + list(range(T - recent, T))
    for t, s in enumerate(states):
        seen = t + 1
        want = sorted(set(range(min(n_sink, seen))) | set(range(max(0, seen - recent), seen)))
        assert kept_positions(s, 0, 1) == want


def test_streaming_without_sinks_is_the_window():
    x = inputs(2, T, seed=5)
    y, s = make_attention(StreamingLLM(budget=5, n_sink=0))(x)
    y_w, s_w = make_attention(Window(budget=5))(x)
    assert_close((y, s), (y_w, s_w), "n_sink=0 vs window")


def test_streaming_validates_its_sinks():
    for bad in (-1, 1.5, "4", None):
        with pytest.raises(ValueError, match="n_sink"):
            StreamingLLM(budget=8, n_sink=bad)
    with pytest.raises(ValueError, match="n_sink"):
        make_attention(StreamingLLM(budget=3, n_sink=4))  # the sinks do not fit the budget
    with pytest.raises(ValueError, match="n_sink"):
        make_attention(StreamingLLM(budget=0.1, n_sink=4), context_len=20)  # resolved ratio: 2 tokens


def test_streaming_keeps_original_positions():
    """Kept keys stay rotated at their absolute positions: the cached k equals the prompt's k there."""
    x = inputs(1, T, seed=6)
    mixer = make_attention(StreamingLLM(budget=6, n_sink=2))
    _, state = mixer(x)
    _, full = make_attention()(x)
    idx = state.pos[0, 0].long()
    assert_close(state.k, full.k[:, :, idx], "kept keys are the original rotated keys", atol=0, rtol=0)
