"""``pyramidkv``: SnapKV per layer, budgets decreasing linearly with depth and summing to L * budget."""

import pytest
import torch

from longrecall.models.lm import LanguageModel
from longrecall.policies.base import kept_positions
from longrecall.policies.pyramidkv import PyramidKV
from longrecall.policies.snapkv import SnapKV

from policy_helpers import inputs, make_attention


def schedule(policy, budget, n_layers):
    return [policy.layer_budget(budget, layer, n_layers) for layer in range(n_layers)]


def test_hand_computed_schedule():
    # C = 64, w = 8, beta = 20: min_num = 56 / 20 = 2.8, max_num = 112 - 2.8 = 109.2,
    # step = 106.4 / 3 = 35.47: 109.2, 73.73, 38.27, 2.8 -> rounded + w = 117, 82, 46, 11
    assert schedule(PyramidKV(budget=64, window=8), 64, 4) == [117, 82, 46, 11]
    assert sum([117, 82, 46, 11]) == 4 * 64
    # beta = 1 is flat; one layer is SnapKV
    assert schedule(PyramidKV(budget=64, window=8, beta=1), 64, 4) == [64] * 4
    assert schedule(PyramidKV(budget=64, window=8), 64, 1) == [64]


@pytest.mark.parametrize("beta", [20, 7, 2.5])
@pytest.mark.parametrize("n_layers", [2, 3, 5, 8, 12, 32])
@pytest.mark.parametrize("budget, window", [(64, 8), (100, 32), (37, 5), (33, 32), (10, 32), (513, 32)])
def test_budgets_sum_to_layers_times_budget_and_decrease(budget, window, n_layers, beta):
    budgets = schedule(PyramidKV(budget=budget, window=window, beta=beta), budget, n_layers)
    assert sum(budgets) == n_layers * budget  # exact: rounding errors of layers l and L-1-l cancel
    assert budgets == sorted(budgets, reverse=True) and min(budgets) >= 1
    w = min(window, budget)
    assert abs(budgets[-1] - (w + (budget - w) / beta)) <= 0.5  # the top layer: budget_min
    assert abs(budgets[0] - (w + 2 * (budget - w) - (budget - w) / beta)) <= 0.5


def test_layers_of_a_model_hold_different_sizes_summing_to_the_total():
    torch.manual_seed(0)
    model = LanguageModel(50, 16, ["attention"] * 4, mixer_kwargs={"n_heads": 2}).double()
    policy = PyramidKV(budget=24, window=4, kernel=5)
    model.set_kv_policy(policy, context_len=64)
    ids = torch.randint(0, 50, (2, 64), generator=torch.Generator().manual_seed(1))
    _, state = model(ids)
    sizes = [layer.pos.shape[2] for layer in state.layers]
    assert sizes == schedule(policy, 24, 4) == [43, 30, 18, 5]  # 4 + round(39 - l * 38 / 3)
    assert sum(sizes) == 4 * 24 and len(set(sizes)) == 4
    assert [block.mixer.kv_policy.budgets for block in model.blocks] == [(s, s) for s in sizes]
    # the ratio form resolves the average first: 0.375 * 64 = 24
    model.set_kv_policy(PyramidKV(budget=0.375, window=4, kernel=5), context_len=64)
    assert [model(ids)[1].layers[i].pos.shape[2] for i in range(4)] == sizes


def test_each_layer_selects_as_snapkv_with_its_budget():
    x = inputs(2, 40, seed=8)
    for layer, budget in enumerate([35, 5]):  # 4 + (31.2, 0.8) rounded: budget 20, window 4, 2 layers
        pyramid = make_attention(PyramidKV(budget=20, window=4), layer=layer, n_layers=2)
        snap = make_attention(SnapKV(budget=budget, window=4))
        assert pyramid.kv_policy.budgets == (budget, budget)
        s1, s2 = pyramid(x)[1], snap(x)[1]
        assert [kept_positions(s1, b, h) for b in range(2) for h in range(2)] == [
            kept_positions(s2, b, h) for b in range(2) for h in range(2)
        ]


def test_invalid_fields_are_named():
    for bad in (0.5, 0, -3, "x", True, float("inf")):
        with pytest.raises(ValueError, match="beta"):
            PyramidKV(budget=8, beta=bad)
    with pytest.raises(ValueError, match="window"):
        PyramidKV(budget=8, window=0)
