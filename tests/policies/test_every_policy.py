"""Every registered KV-cache policy, through the same checks (as tests/test_contract.py for mixers)."""

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.policies.base import PolicyKVState, cat_states, kept_positions
from longrecall.protocol import state_clone, state_detach, state_leaves, state_nbytes, state_select, state_to
from longrecall.registry import POLICIES

from policy_helpers import T, inputs, make_attention, run_steps

NAMES = POLICIES.names()
BOUNDED = [n for n in NAMES if POLICIES.get(n).bounded]
MODES = ["step", "prefill"]
BUDGET = 6


def policy(name, budget=None, mode="step", **kwargs):
    return POLICIES.get(name)(budget=budget, mode=mode, **kwargs)


@pytest.fixture
def x():
    return inputs()


def all_positions(state):
    B, H = state.pos.shape[:2]
    return [[kept_positions(state, b, h) for h in range(H)] for b in range(B)]


def test_registry_lists_the_first_policies():
    assert {"full", "window", "streaming", "h2o", "tova", "knorm", "random"} <= set(NAMES)


def test_every_policy_module_registers_a_policy():
    import pkgutil

    import longrecall.policies as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base"}
    assert modules == set(NAMES), "a policy file is not imported in policies/__init__.py (or is misnamed)"


@pytest.mark.parametrize("name", NAMES)
def test_docstring_first_line_describes_the_policy(name):
    from longrecall.cli.ls import first_line

    line = first_line(POLICIES.get(name))
    assert 20 <= len(line) <= 110 and not line.startswith("Base"), line


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_unlimited_budget_equals_plain_attention(name, mode, x):
    plain = make_attention()
    y_ref, s_ref = plain(x)
    y_steps_ref, _, _ = run_steps(plain, x)
    budgets = [None] + ([T, T + 7] if POLICIES.get(name).bounded else [])
    for budget in budgets:
        mixer = make_attention(policy(name, budget, mode))
        y, s = mixer(x)
        y_steps, s_steps, _ = run_steps(mixer, x)
        assert_close(y, y_ref, f"{name} budget={budget} forward vs attention", atol=1e-12, rtol=1e-10)
        assert_close(y_steps, y_steps_ref, f"{name} budget={budget} steps vs attention", atol=1e-12, rtol=1e-10)
        for state in (s, s_steps):
            assert isinstance(state, PolicyKVState)
            assert torch.equal(state.pos, s_ref.pos) and torch.equal(state.length, s_ref.length)
            assert_close((state.k, state.v), (s_ref.k, s_ref.v), f"{name} cache", atol=1e-12, rtol=1e-10)
        # chunked: the second forward carries the cache
        y1, s1 = mixer(x[:, :5])
        y2, _ = mixer(x[:, 5:], s1)
        assert_close(torch.cat([y1, y2], 1), y_ref, f"{name} chunked", atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_full_policy_state_holds_the_same_bytes_as_attention(name, x):
    plain = make_attention()
    mixer = make_attention(policy(name))
    _, s_ref = plain(x)
    _, s = mixer(x)
    extra = sum(t.numel() * t.element_size() for t in state_leaves(s.extra) + state_leaves(s.aux))
    assert mixer.state_bytes(s) == plain.state_bytes(s_ref) + extra == state_nbytes(s)


@pytest.mark.parametrize("name", BOUNDED)
def test_step_mode_respects_the_budget_after_every_step(name, x):
    mixer = make_attention(policy(name, BUDGET))
    unlimited = make_attention(policy(name))
    _, _, states = run_steps(mixer, x)
    _, _, full_states = run_steps(unlimited, x)
    for t, (state, full) in enumerate(zip(states, full_states, strict=True)):
        assert state.pos.shape[2] == min(t + 1, BUDGET), f"after step {t}"
        for leaf in state_leaves(state):
            assert leaf.dim() < 3 or leaf.shape[2] <= BUDGET
            held = leaf.untyped_storage().nbytes()
            assert held == leaf.numel() * leaf.element_size(), "a view keeps evicted tokens alive"
        assert mixer.state_bytes(state) == state_nbytes(state)
        if t + 1 > BUDGET:
            assert mixer.state_bytes(state) < unlimited.state_bytes(full)
        assert all(p == sorted(set(p)) for row in all_positions(state) for p in row), "cache not in position order"
        # every head holds budget tokens (or all), and the most recent token is always considered
        assert min(len(p) for row in all_positions(state) for p in row) == min(t + 1, BUDGET)


@pytest.mark.parametrize("name", BOUNDED)
def test_prefill_mode_compresses_once_then_appends(name, x):
    mixer = make_attention(policy(name, BUDGET, "prefill"))
    plain = make_attention()
    y, s = mixer(x[:, :9])
    assert_close(y, plain(x[:, :9])[0], "prefill outputs are full attention", atol=1e-12, rtol=1e-10)
    assert s.pos.shape[2] == BUDGET and s.length.tolist() == [9, 9]
    for t in range(9, T):
        _, s = mixer.step(x[:, t], s)
        assert s.pos.shape[2] == BUDGET + t - 8  # decoding appends, never evicts
    assert all(p[-(T - 9):] == list(range(9, T)) for row in all_positions(s) for p in row)


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_step_loop_in_step_mode(name, x):
    budget = BUDGET if POLICIES.get(name).bounded else None
    mixer = make_attention(policy(name, budget))
    start = run_steps(mixer, inputs(2, 8, seed=5))[1]  # a carried cache past its budget
    for label, state in (("initial", None), ("carried", start)):
        y, s = mixer(x, state)
        y_steps, s_steps, _ = run_steps(mixer, x, state)
        assert_close(y, y_steps, f"{name} outputs from the {label} state")
        assert_close(s, s_steps, f"{name} final state from the {label} state")


@pytest.mark.parametrize("name", BOUNDED)
def test_forward_gradients_equal_the_step_loop(name):
    mixer = make_attention(policy(name, 4))
    x = inputs(2, 9).requires_grad_(True)
    y, _ = mixer(x)
    g = torch.autograd.grad(y.square().sum(), [x, *mixer.parameters()])
    y_steps, _, _ = run_steps(mixer, x)
    g_steps = torch.autograd.grad(y_steps.square().sum(), [x, *mixer.parameters()])
    for a, b in zip(g, g_steps, strict=True):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        assert_close(a, b, "gradients", atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_batch_rows_are_independent(name, mode):
    budget = BUDGET if POLICIES.get(name).bounded else None
    mixer = make_attention(policy(name, budget, mode))
    x = inputs(3, T, seed=2)
    y, s = mixer(x)
    y_steps, s_steps, _ = run_steps(mixer, x)
    for i in range(3):
        yi, si = mixer(x[i : i + 1])
        yi_steps, si_steps, _ = run_steps(mixer, x[i : i + 1])
        assert_close(yi, y[i : i + 1], f"row {i} forward alone vs in a batch")
        assert_close(yi_steps, y_steps[i : i + 1], f"row {i} steps alone vs in a batch")
        assert_close(si, state_select(s, i), f"row {i} state alone vs in a batch")
        assert_close(si_steps, state_select(s_steps, i), f"row {i} stepped state alone vs in a batch")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_rows_of_different_lengths_share_a_batch(name, mode):
    """Caches of sequences that read 3 and 9 tokens, stacked (padded with empty slots), step on together."""
    budget = BUDGET if POLICIES.get(name).bounded else None
    mixer = make_attention(policy(name, budget, mode))
    prefixes = [inputs(1, 3, seed=10), inputs(1, 9, seed=11)]
    rest = inputs(2, 7, seed=12)
    alone = []
    for i, prefix in enumerate(prefixes):
        _, s = mixer(prefix)
        alone.append((s, run_steps(mixer, rest[i : i + 1], s)))
    batch_state = cat_states([s for s, _ in alone])
    assert batch_state.length.tolist() == [3, 9]
    y, s, _ = run_steps(mixer, rest, batch_state)
    y_fwd, s_fwd = mixer(rest, batch_state)
    for i, (_, (yi, si, _)) in enumerate(alone):
        assert_close(y[i : i + 1], yi, f"row {i} outputs")
        if mode == "step":
            assert_close(y_fwd[i : i + 1], yi, f"row {i} forward outputs")
            assert all_positions(state_select(s_fwd, i)) == all_positions(si)
        assert all_positions(state_select(s, i)) == all_positions(si), f"row {i} kept positions"
        assert torch.equal(s.length[i], si.length[0])


@pytest.mark.parametrize("name", NAMES)
def test_invalid_configurations_name_the_field(name):
    cls = POLICIES.get(name)
    for bad in (0, -1, 1.5, "x", 0.0, True, 2.0, [4]):
        with pytest.raises(ValueError, match="budget"):
            cls(budget=bad)
    for bad in ("x", "Step", None):
        with pytest.raises(ValueError, match="mode"):
            cls(mode=bad)
    if cls.bounded:
        with pytest.raises(ValueError, match="context_len"):
            make_attention(cls(budget=0.5))  # a ratio needs the context length
        mixer = make_attention(cls(budget=0.5), context_len=12)
        assert mixer.kv_policy.budgets == (6, 6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_no_state_mutation(name, mode, x):
    budget = 4 if POLICIES.get(name).bounded else None
    mixer = make_attention(policy(name, budget, mode))
    _, state, _ = run_steps(mixer, x[:, :7])
    before = state_clone(state)
    mixer.step(x[:, 7], state)
    assert_close(state, before, "state after step()", atol=0, rtol=0)
    mixer(x[:, 7:], state)
    assert_close(state, before, "state after forward()", atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_state_helpers_keep_the_policy_state_usable(name, x):
    budget = 4 if POLICIES.get(name).bounded else None
    mixer = make_attention(policy(name, budget))
    _, state, _ = run_steps(mixer, x[:, :7])
    for helper in (state_detach, state_clone, lambda s: state_to(s, dtype=torch.float64)):
        moved = helper(state)
        assert isinstance(moved, PolicyKVState) and moved.pos.dtype == torch.int32
        assert_close(moved, state, "helper round trip", atol=0, rtol=0)
    row = state_select(state, 1)
    assert isinstance(row, PolicyKVState) and row.pos.shape[0] == 1
    y_batch, s_batch, _ = run_steps(mixer, x[:, 7:], state)
    y_row, s_row, _ = run_steps(mixer, x[1:, 7:], row)
    assert_close(y_row, y_batch[1:], "a selected row continues as in the batch")
    assert_close(s_row, state_select(s_batch, 1), "its state too")
