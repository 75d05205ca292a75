"""``lacache``: the ladder's geometry, a hand-computed ladder, and the reference's compaction as a plain loop."""

import math

import pytest
import torch

from longrecall.models.lm import LanguageModel
from longrecall.policies.base import kept_positions
from longrecall.policies.lacache import LaCache, Ladder
from longrecall.policies.streaming import StreamingLLM
from longrecall.protocol import state_nbytes

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def bound_ladder(policy, layer, n_layers):
    return policy.bind(n_heads=2, layer=layer, n_layers=n_layers).policy.ladder(policy.budget)


def reference_steps(T, budget, n_sink, n_layers, span, overlap):
    """The reference's ``LaCache.__call__`` fed one token per call, as plain lists (its ``floor(R / 2)``
    size compensation left out): each overflow compacts the P slots at the cursor of every layer to the
    A at offset ``layer mod (R + 1)``; the cursor starts over at the sinks when fewer than A slots remain
    before the last ``n_layers``.  Returns, after every token, each layer's positions and whether full."""
    P = 1 + math.ceil((n_layers - span) / (span - overlap))
    A = min(math.ceil(span / (span - overlap)), P)
    R = P - A
    caches = [[] for _ in range(n_layers)]
    cursor, history = n_sink, []
    for t in range(T):
        for cache in caches:
            cache.append(t)
        if len(caches[0]) > budget:
            if budget - cursor - n_layers < A:
                cursor = n_sink  # start over: compact the compacted rungs again
            for i, cache in enumerate(caches):
                offset = i % (R + 1)
                cache[cursor : cursor + P] = cache[cursor + offset : cursor + offset + A]
            cursor += A
        history.append(([list(c) for c in caches], len(caches[0]) == min(t + 1, budget)))
    return history


def test_geometry_by_hand():
    # 32 layers, span 16: P = 1 + ceil(16 / 16) = 2, A = 1, layers alternate between the two slots
    assert [bound_ladder(LaCache(budget=64, span=16), i, 32) for i in (0, 1, 2)] == [
        Ladder(2, 1, 0, 32, 4), Ladder(2, 1, 1, 32, 4), Ladder(2, 1, 0, 32, 4)]
    # span None: n_layers // 2, the same ladder
    assert bound_ladder(LaCache(budget=64), 3, 32) == Ladder(2, 1, 1, 32, 4)
    # 32 layers, span 8, overlap 4: P = 1 + ceil(24 / 4) = 7, A = ceil(8 / 4) = 2, R = 5: offset = layer mod 6
    assert bound_ladder(LaCache(budget=64, span=8, overlap=4), 13, 32) == Ladder(7, 2, 1, 32, 4)
    # the reference's SmolLM2 run (24 layers, span 9, overlap 7): P = 1 + ceil(15 / 2) = 9, A = 5, R = 4
    assert bound_ladder(LaCache(budget=64, span=9, overlap=7), 23, 24) == Ladder(9, 5, 3, 24, 4)
    # a small budget shrinks the sinks so that a rung fits before the last L slots: 35 - 32 - 1 = 2
    assert bound_ladder(LaCache(budget=35, span=16), 0, 32) == Ladder(2, 1, 0, 32, 2)
    # no ladder: one layer, span >= layers, A = P (R = 0), or no room for a rung (budget < L + A)
    assert bound_ladder(LaCache(budget=8), 0, 1) is None
    assert bound_ladder(LaCache(budget=64, span=16), 3, 16) is None
    assert bound_ladder(LaCache(budget=64, span=4, overlap=3), 2, 5) is None  # P = 2, A = min(4, 2)
    assert bound_ladder(LaCache(budget=32, span=16), 0, 32) is None


def test_hand_computed_ladder_covers_the_history_across_layers():
    """3 layers, span 1: P = 3, A = 1, R = 2; layer i keeps slot i of each rung of 3 (budget 7, one sink,
    rungs per sweep m = (7 - 3 - 1) // 1 = 3).  Token 7 starts the drops: rung 0 covers positions 1-3,
    rung 1 positions 4-6 (cursor 2), rung 2 positions 7-9 (cursor 3)."""
    x = inputs(1, 15, seed=4)
    expected = {
        13: [[0, 1, 4, 7, 10, 11, 12], [0, 2, 5, 8, 10, 11, 12], [0, 3, 6, 9, 10, 11, 12]],
        # rung 3 starts over at cursor 1 and compacts the kept (1, 4, 7), (2, 5, 8), (3, 6, 9) again
        15: [[0, 1, 10, 11, 12, 13, 14], [0, 5, 10, 11, 12, 13, 14], [0, 9, 10, 11, 12, 13, 14]],
    }
    for layer in range(3):
        mixer = make_attention(LaCache(budget=7, n_sink=1, span=1), layer=layer, n_layers=3)
        _, _, states = run_steps(mixer, x)
        for T, layers in expected.items():
            for row in range(1):
                assert [kept_positions(states[T - 1], row, h) for h in range(2)] == [layers[layer]] * 2
    union = set().union(*expected[13])
    assert union == set(range(13))  # three caches of 7 tokens hold all 13 positions


@pytest.mark.parametrize("budget, n_sink, n_layers, span, overlap, start_size", [
    (20, 4, 8, 4, 0, 4), (24, 2, 6, 3, 1, 2), (15, 1, 5, 2, 0, 1), (30, 4, 12, 5, 2, 4), (18, 0, 9, 3, 2, 0),
    (9, 4, 6, 3, 0, 2),  # start_size clamped as the reference's LongBench driver does: 9 - 6 - 1 = 2
])
def test_steps_equal_the_reference_whenever_it_is_full(budget, n_sink, n_layers, span, overlap, start_size):
    T = 90
    history = reference_steps(T, budget, start_size, n_layers, span, overlap)
    x = inputs(2, T, seed=3)
    checked = 0
    for layer in range(n_layers):
        mixer = make_attention(LaCache(budget=budget, n_sink=n_sink, span=span, overlap=overlap),
                               layer=layer, n_layers=n_layers)
        _, _, states = run_steps(mixer, x)
        for t, (layers, full) in enumerate(history):
            assert states[t].pos.shape[2] == min(t + 1, budget)
            if full:  # between rungs the reference runs below its size; here the cache stays full
                for row in range(2):
                    for h in range(2):
                        assert kept_positions(states[t], row, h) == layers[layer], f"layer {layer}, step {t}"
                checked += 1
    assert checked > T  # several steps per layer, startovers included


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_prefill_compacts_as_the_step_loop_then_appends(layer):
    x = inputs(2, 40, seed=6)
    steps = make_attention(LaCache(budget=12, n_sink=2, span=2), layer=layer, n_layers=5)
    prefill = make_attention(LaCache(budget=12, n_sink=2, span=2, mode="prefill"), layer=layer, n_layers=5)
    _, stepped, _ = run_steps(steps, x[:, :33])
    _, state = prefill(x[:, :33])
    assert torch.equal(state.pos, stepped.pos)
    for t in range(33, 40):
        _, state = prefill.step(x[:, t], state)
    assert kept_positions(state) == kept_positions(stepped) + list(range(33, 40))


def test_ladder_state_properties():
    """Forward vs step loop, rows alone vs in a batch, padded rows of different lengths, no mutation."""
    check_state_properties(lambda mode: make_attention(LaCache(budget=8, n_sink=1, span=1, mode=mode),
                                                       layer=1, n_layers=3))


def test_one_layer_is_streaming_llm():
    x = inputs(2, 20, seed=2)
    _, lacache, _ = run_steps(make_attention(LaCache(budget=6, n_sink=2)), x)
    _, streaming, _ = run_steps(make_attention(StreamingLLM(budget=6, n_sink=2)), x)
    assert torch.equal(lacache.pos, streaming.pos)


def test_model_layers_keep_different_rungs_of_the_same_size():
    torch.manual_seed(0)
    model = LanguageModel(50, 16, ["attention"] * 4, mixer_kwargs={"n_heads": 2}).double()
    model.set_kv_policy(LaCache(budget=10, n_sink=1, span=2), context_len=48)
    ids = torch.randint(0, 50, (1, 48), generator=torch.Generator().manual_seed(1))
    _, state = model(ids)
    kept = [kept_positions(layer) for layer in state.layers]
    assert all(len(p) == 10 for p in kept) and all(p[-2:] == [46, 47] for p in kept)
    assert kept[0] == kept[2] and kept[1] == kept[3] and kept[0] != kept[1]  # P = 2: offsets 0, 1, 0, 1
    union = set(kept[0]) | set(kept[1])
    assert len(union) > 10 and min(union - {0}) < 48 - 9  # more, and older, than a window of the same budget
    assert model.state_bytes(state) == sum(state_nbytes(layer) for layer in state.layers)


def test_invalid_fields_are_named():
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="n_sink"):
            LaCache(budget=8, n_sink=bad)
    for bad in (0, -2, 2.0):
        with pytest.raises(ValueError, match="span"):
            LaCache(budget=8, span=bad)
    with pytest.raises(ValueError, match="overlap"):
        LaCache(budget=8, span=4, overlap=4)
    with pytest.raises(ValueError, match="overlap"):
        make_attention(LaCache(budget=64, overlap=2), layer=0, n_layers=4)  # span None: 4 // 2 = 2
    with pytest.raises(ValueError, match="budget"):
        make_attention(LaCache(budget=3, n_sink=4))
    with pytest.raises(ValueError, match="budget"):  # budget < n_layers + A: no ladder, StreamingLLM's rule
        make_attention(LaCache(budget=3, span=2), layer=0, n_layers=4)
    make_attention(LaCache(budget=5, span=2), layer=0, n_layers=4)  # a ladder with 0 sinks
