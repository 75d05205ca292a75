"""Titans long-term memory: the hand-written gradient, chunk-start gradients, the delta-rule limit,
forgetting, carried mid-chunk states, state bytes and arguments."""

from __future__ import annotations

import pytest
import torch

from longrecall.mixers.titans import (
    DecayShares,
    Titans,
    TitansState,
    decay_shares_reference,
    memory_apply,
    memory_grads,
)
from longrecall.ops.linear_attn import delta_rule_naive
from longrecall.protocol import state_leaves, state_map
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS = 8, 2


def make(dtype=torch.float64, seed=0, **kwargs):
    kwargs = {"n_heads": N_HEADS, "memory_expansion": 2, "chunk_size": 4, **kwargs}
    return seeded(Titans, D_MODEL, dtype=dtype, seed=seed, **kwargs)


rand_x = rand_x_for(D_MODEL, T=13)


def force_gate(model: Titans, which: str, logit: float):
    """Make one gate (eta, alpha or lr) a constant: zero its weights, set its bias."""
    H = model.n_heads
    rows = slice(*{"eta": (0, H), "alpha": (H, 2 * H), "lr": (2 * H, 3 * H)}[which])
    with torch.no_grad():
        model.gates.weight[rows] = 0
        model.gates.bias[rows] = logit


def test_registered():
    assert get_mixer("titans") is Titans
    assert Titans.state_growth == "constant"


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hand_written_gradient_equals_autograd(depth):
    g = torch.Generator().manual_seed(depth)
    B, H, n, d, hidden = 2, 3, 5, 4, 6
    dims = [d] + [hidden] * (depth - 1) + [d]
    weights = tuple(torch.randn(B, H, i, o, generator=g, dtype=torch.float64).requires_grad_(True)
                    for i, o in zip(dims[:-1], dims[1:], strict=True))
    k, v = (torch.randn(B, H, n, d, generator=g, dtype=torch.float64) for _ in range(2))
    grads = memory_grads(weights, k, v)  # per layer (B, H, n, in, out)
    for s in range(n):
        loss = (memory_apply(weights, k[:, :, s : s + 1]) - v[:, :, s : s + 1]).square().sum()  # rows/heads independent
        expected = torch.autograd.grad(loss, weights)
        for mine, ref in zip(grads, expected, strict=True):
            torch.testing.assert_close(mine[:, :, s], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("zeros", [False, True])
def test_decay_shares_backward_equals_autograd(zeros):
    """The hand-written backward of the decay shares, gates exactly 0 included (no division anywhere)."""
    g = torch.Generator().manual_seed(3)
    eta, keep, lr = (torch.rand(3, 2, 9, generator=g, dtype=torch.float64) for _ in range(3))
    if zeros:
        eta[0, 0, 3] = eta[2, 0, 8] = eta[1, 1, 0] = 0
        keep[1, 1, 0] = keep[2, 1, 4] = keep[2, 1, 5] = 0
    inputs = [t.requires_grad_(True) for t in (eta, keep, lr)]
    fast, ref = DecayShares.apply(*inputs), decay_shares_reference(*inputs)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in ref]
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    grads = [torch.autograd.grad(sum((t * w).sum() for t, w in zip(out, weights, strict=True)), inputs)
             for out in (fast, ref)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def forward_and_grads(model, x, state, run, state_grads=True):
    """Outputs, final state and the gradients of a weighted sum of both with respect to x, every parameter
    and (``state_grads``) every floating tensor of the carried state."""
    x = x.detach().clone().requires_grad_(True)
    state = state_map(lambda t: t.detach().clone().requires_grad_(state_grads and t.is_floating_point()), state)
    y, new = run(x, state)
    g = torch.Generator().manual_seed(11)
    outs = [y, *(t for t in state_leaves(new) if t.is_floating_point())]
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in outs)
    wrt = [x, *model.parameters(), *(t for t in state_leaves(state) if t.requires_grad)]
    return [t.detach() for t in outs], torch.autograd.grad(loss, wrt, allow_unused=True)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("window", [4, 8, 64])
@pytest.mark.parametrize("carried", [0, 1, 3])
def test_windowed_forward_equals_step_loop_outputs_state_and_gradients(depth, window, carried):
    """The parallel form (windows of whole chunks, nothing per token materialised) against the step loop,
    in float64: outputs, the final state and every gradient (x, parameters, the carried state), with windows
    of one, two and all chunks; from a fresh state (its zero momentum skipped) or one carried 1 or 3
    tokens into its chunk (nonzero momentum, gradients to it too)."""
    model, x = make(memory_depth=depth), rand_x(T=13)
    model.window = window
    state = model.init_state(2)
    if carried:
        _, state = model.step_loop(rand_x(T=4 + carried, seed=5), state)
    fast, g_fast = forward_and_grads(model, x, state, model, state_grads=bool(carried))
    ref, g_ref = forward_and_grads(model, x, state, model.step_loop, state_grads=bool(carried))
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_fresh_momentum_is_skipped_only_when_it_is_zero_without_gradient():
    """A fresh state's zero momentum contributes nothing and is skipped; the same zeros wanting a
    gradient take the full path, whose momentum gradient equals the step loop's."""
    model, x = make(), rand_x(T=9)
    state = model.init_state(2)
    y_skip, s_skip = model(x, state)
    fast, g_fast = forward_and_grads(model, x, state, model)  # every state tensor wants a gradient
    ref, g_ref = forward_and_grads(model, x, state, model.step_loop)
    torch.testing.assert_close(y_skip, fast[0], rtol=1e-12, atol=1e-13)
    for a, b in zip(state_leaves(s_skip)[:-1], fast[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_gradients_of_a_chunk_are_taken_at_its_start_weights():
    model, x = make(chunk_size=16), rand_x(T=9)  # one (partial) chunk
    q, k, v, eta, lr, alpha = model.project(x)
    state = model.init_state(2)
    theta0 = state.start
    grads = memory_grads(theta0, k, v)  # every token at theta_0
    W, S = list(state.weights), list(state.momentum)
    outs = []
    for t in range(9):
        for layer in range(len(W)):
            S[layer] = eta[:, :, t, None, None] * S[layer] - lr[:, :, t, None, None] * grads[layer][:, :, t]
            W[layer] = (1 - alpha[:, :, t, None, None]) * W[layer] + S[layer]
        outs.append(memory_apply(tuple(W), q[:, :, t : t + 1])[:, :, 0])
    y, final = model(x)
    torch.testing.assert_close(y, model.output(torch.stack(outs, 2), x), rtol=1e-10, atol=1e-12)
    for mine, ref in zip(final.weights + final.momentum, tuple(W) + tuple(S), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(final.start, theta0, strict=True))  # chunk not finished: start kept
    assert final.position.tolist() == [9, 9]


def test_linear_memory_without_momentum_is_a_delta_rule():
    model = make(memory_depth=1, chunk_size=1)
    force_gate(model, "eta", -1000.0)  # eta = 0 exactly
    x = rand_x()
    q, k, v, eta, lr, alpha = model.project(x)
    assert eta.abs().max() == 0
    W = model.init_state(2).weights[0]  # (B, H, d, d)
    outs = []
    for t in range(x.shape[1]):  # W_t = (1 - alpha_t) W_{t-1} - 2 lr_t k_t^T (k_t W_{t-1} - v_t)
        k_t, v_t, a_t, lr_t = k[:, :, t], v[:, :, t], alpha[:, :, t, None, None], lr[:, :, t, None, None]
        err = torch.einsum("bhi,bhio->bho", k_t, W) - v_t
        W = (1 - a_t) * W - 2 * lr_t * k_t.unsqueeze(-1) * err.unsqueeze(-2)
        outs.append(torch.einsum("bhi,bhio->bho", q[:, :, t], W))
    y, state = model(x)
    torch.testing.assert_close(y, model.output(torch.stack(outs, 2), x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.weights[0], W, rtol=1e-10, atol=1e-12)


def test_linear_memory_without_momentum_or_decay_is_deltanet():
    model = make(memory_depth=1, chunk_size=1)
    force_gate(model, "eta", -1000.0)
    force_gate(model, "alpha", -1000.0)  # alpha = 0: no forgetting
    x = rand_x()
    q, k, v, _, lr, _ = model.project(x)
    o_ref, S_ref = delta_rule_naive(q, k, v, 2 * lr, initial_state=model.init_state(2).weights[0])
    y, state = model(x)
    torch.testing.assert_close(y, model.output(o_ref, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.weights[0], S_ref, rtol=1e-10, atol=1e-12)


def test_alpha_one_forgets_everything():
    model, x = make(chunk_size=16), rand_x()
    force_gate(model, "alpha", 1000.0)  # alpha = 1 exactly: theta_t = S_t
    _, state = model(x)
    for W, S in zip(state.weights, state.momentum, strict=True):
        torch.testing.assert_close(W, S, rtol=0, atol=0)
    force_gate(model, "eta", -1000.0)  # and no momentum: theta_t = -lr_t grad(theta_0; x_t)
    y, _ = model(x)
    x2 = x.clone()
    x2[:, :6] += torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    y2, _ = model(x2)
    torch.testing.assert_close(y2[:, 6:], y[:, 6:], rtol=1e-12, atol=1e-12)  # earlier tokens forgotten
    assert not torch.allclose(y2[:, :6], y[:, :6])


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 6, 9])
def test_split_forward_mid_chunk_equals_whole_and_step_loop(depth, k):
    model, x = make(memory_depth=depth), rand_x()
    y, state = model(x)
    y1, s1 = model(x[:, :k])
    assert s1.position.tolist() == [k % 4] * 2
    y2, s2 = model(x[:, k:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
    y_loop, s_loop = model.step_loop(x, model.init_state(2))
    torch.testing.assert_close(y_loop, y, rtol=1e-10, atol=1e-10)
    for a, b, c in zip(state_leaves(s2), state_leaves(state), state_leaves(s_loop), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c, b, rtol=1e-10, atol=1e-10)


def cat_states(a: TitansState, b: TitansState) -> TitansState:
    def cat(x, y):
        return tuple(torch.cat([u, w]) for u, w in zip(x, y, strict=True))

    return TitansState(cat(a.start, b.start), cat(a.weights, b.weights), cat(a.momentum, b.momentum),
                       torch.cat([a.position, b.position]))


def test_rows_at_different_chunk_positions():
    model, x = make(), rand_x()
    _, s_a = model(x[:1, :1])  # row 0: 1 token into its chunk
    _, s_b = model(x[1:, :3])  # row 1: 3 tokens into its chunk
    state = cat_states(s_a, s_b)
    assert state.position.tolist() == [1, 3]
    y, s = model(x, state)  # falls back to the step loop
    y_loop, s_loop = model.step_loop(x, state)
    torch.testing.assert_close(y, y_loop, rtol=0, atol=0)
    y0, _ = model(x[:1], state_map(lambda t: t[:1], state))  # row 0 alone takes the chunked path
    torch.testing.assert_close(y0, y[:1], rtol=1e-10, atol=1e-10)


def state_bytes_from_shapes(batch, d_model, n_heads=2, depth=2, expansion=4, elem=4):
    d = d_model // n_heads
    dims = [d] + [int(expansion * d)] * (depth - 1) + [d]
    per_copy = n_heads * sum(i * o for i, o in zip(dims[:-1], dims[1:], strict=True))
    return batch * (3 * per_copy * elem + 8)  # start, weights, momentum + int64 position


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_valid_and_state_bytes_from_shapes(d_model):
    torch.manual_seed(0)
    model = Titans(d_model)
    state = model.init_state(2)
    assert state.weights[0].dtype == torch.float32 and state.position.dtype == torch.int64
    assert model.state_bytes(state) == state_bytes_from_shapes(2, d_model)
    with torch.no_grad():
        y, state = model(torch.randn(2, 40, d_model))
    assert y.shape == (2, 40, d_model) and torch.isfinite(y).all()
    assert model.state_bytes(state) == state_bytes_from_shapes(2, d_model)
    assert state.position.tolist() == [40 % 16] * 2


def test_state_bytes_other_shapes():
    model = make(memory_depth=3, memory_expansion=1.5)
    assert model.state_bytes(model.init_state(3)) == state_bytes_from_shapes(3, D_MODEL, 2, 3, 1.5, elem=8)
    lin = make(memory_depth=1, dtype=torch.float32)
    assert lin.state_bytes(lin.init_state(1)) == state_bytes_from_shapes(1, D_MODEL, 2, 1)


def test_output_gate_optional():
    model = make(output_gate=False)
    assert model.gate_proj is None
    y, _ = model(rand_x())
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 3}, "n_heads"),
        ({"memory_depth": 0}, "memory_depth"),
        ({"memory_depth": 2.0}, "memory_depth"),
        ({"memory_expansion": 0}, "memory_expansion"),
        ({"memory_expansion": 0.01}, "memory_expansion"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": True}, "chunk_size"),
        ({"max_lr": 0.0}, "max_lr"),
        ({"max_lr": -1}, "max_lr"),
        ({"output_gate": 1}, "output_gate"),
        ({"value_norm": "yes"}, "value_norm"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Titans(8, **kwargs)
