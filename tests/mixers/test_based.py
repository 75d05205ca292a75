"""Based: the Taylor feature map, the linear branch against its quadratic form, the window branch,
state bytes and arguments."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from longrecall.mixers.based import Based, BasedState, taylor_feature_map, taylor_read, taylor_write
from longrecall.mixers.sliding_window import SlidingWindowAttention
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS, FEATURE_DIM, WINDOW = 8, 2, 4, 4


def make(dtype=torch.float64, seed=0, **kwargs):
    kwargs = {"n_heads": N_HEADS, "feature_dim": FEATURE_DIM, "window": WINDOW, "block_size": 3,
              "chunk_size": 4, **kwargs}
    return seeded(Based, D_MODEL, dtype=dtype, seed=seed, **kwargs)


rand_x = rand_x_for(D_MODEL, T=13)


def test_registered():
    assert get_mixer("based") is Based
    assert Based.state_growth == "bounded"
    assert make().state_capacity == WINDOW
    assert isinstance(make().window_attn, SlidingWindowAttention)  # composed, not copied


def test_taylor_feature_map_is_the_second_order_expansion():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(5, 7, 16, generator=g, dtype=torch.float64) for _ in range(2))
    phi_q, phi_k = taylor_feature_map(q), taylor_feature_map(k)
    assert phi_q.shape == (5, 7, 1 + 16 + 256)
    s = (q * k).sum(-1)
    torch.testing.assert_close((phi_q * phi_k).sum(-1), 1 + s + s**2 / 2, rtol=1e-13, atol=1e-13)


def test_module_scales_the_taylor_argument_by_sqrt_feature_dim():
    model, x = make(), rand_x()
    phi_q, phi_k, _ = model.features(x)  # (B, T, H, F)
    q = model.q_proj(x).unflatten(-1, (N_HEADS, FEATURE_DIM))
    k = model.k_proj(x).unflatten(-1, (N_HEADS, FEATURE_DIM))
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(FEATURE_DIM)
    kernel = torch.einsum("bthf,bshf->bhts", phi_q, phi_k)
    torch.testing.assert_close(kernel, 1 + s + s**2 / 2, rtol=1e-12, atol=1e-12)


def quadratic_linear_branch(model: Based, x):
    """o_t = sum_{s<=t} K(q_t, k_s) v_s / sum_{s<=t} K(q_t, k_s), K = 1 + a + a^2/2, a = q·k/sqrt(d)."""
    T = x.shape[1]
    q = model.q_proj(x).unflatten(-1, (N_HEADS, FEATURE_DIM))
    k = model.k_proj(x).unflatten(-1, (N_HEADS, FEATURE_DIM))
    v = model.v_proj(x).unflatten(-1, (N_HEADS, D_MODEL // N_HEADS))
    a = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(model.feature_dim)
    K = (1 + a + a**2 / 2) * torch.ones(T, T, dtype=x.dtype).tril()
    return torch.einsum("bhts,bshv->bhtv", K, v) / K.sum(-1, keepdim=True)  # (B, H, T, V)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_linear_branch_equals_the_quadratic_formula(impl):
    model, x = make(impl=impl), rand_x()
    state = model.init_state(2)
    o, kv, z = model.linear_branch(x, state.kv, state.z)
    torch.testing.assert_close(o, quadratic_linear_branch(model, x), rtol=1e-10, atol=1e-12)
    phi_q, phi_k, v = model.features(x)
    torch.testing.assert_close(z, phi_k.sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kv, torch.einsum("bthf,bthv->bhfv", phi_k, v), rtol=1e-12, atol=1e-12)


def test_taylor_write_and_read_equal_the_explicit_features():
    g = torch.Generator().manual_seed(2)
    k, q = (torch.randn(3, 2, 7, 5, generator=g, dtype=torch.float64) for _ in range(2))
    v, S = torch.randn(3, 2, 7, 6, generator=g, dtype=torch.float64), torch.randn(3, 2, 31, 6, generator=g,
                                                                                   dtype=torch.float64)
    torch.testing.assert_close(taylor_write(k, v), taylor_feature_map(k).transpose(-1, -2) @ v, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(taylor_read(q, S), taylor_feature_map(q) @ S, rtol=1e-13, atol=1e-13)


def branch_and_grads(model, x, kv, z, run, state_grads):
    """The linear branch's outputs, new kv and z, and the gradients of a weighted sum of all three with
    respect to x, every parameter and (``state_grads``) the carried kv and z."""
    x = x.detach().clone().requires_grad_(True)
    kv, z = (t.detach().clone().requires_grad_(state_grads) for t in (kv, z))
    o, new_kv, new_z = run(x, kv, z)
    g = torch.Generator().manual_seed(5)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (o, new_kv, new_z))
    wrt = [x, *([kv, z] if state_grads else []), *(p for _, p in sorted(model.named_parameters()))]
    return (o, new_kv, new_z), torch.autograd.grad(loss, wrt, allow_unused=True)


@pytest.mark.parametrize("T, chunk_size", [(13, 4), (13, 16), (8, 4), (1, 4), (5, 5)])
@pytest.mark.parametrize("carried", [False, True])
def test_kernel_form_equals_the_feature_form_outputs_state_and_gradients(T, chunk_size, carried):
    """The kernel form (impl="chunked") against explicit features through both linear_attn kernels,
    from an empty memory (no gradient to it: the one-chunk shortcut when T <= chunk) and from a carried one
    (with gradients to it)."""
    model, x = make(chunk_size=chunk_size), rand_x(T=T)
    state = model.init_state(2)
    kv, z = state.kv, state.z
    if carried:
        _, kv, z = model.linear_branch_features(rand_x(T=6, seed=3), kv, z, impl="naive")
    fast, g_fast = branch_and_grads(model, x, kv, z, model.linear_branch, carried)
    for impl in ("chunked", "naive"):
        ref, g_ref = branch_and_grads(model, x, kv, z, partial(model.linear_branch_features, impl=impl), carried)
        for a, b in zip(fast, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for a, b in zip(g_fast, g_ref, strict=True):
            if b is None:
                assert a is None or a.abs().max() == 0
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_output_is_the_sum_of_the_two_branches():
    model, x = make(), rand_x()
    y, state = model(x)
    o = quadratic_linear_branch(model, x)
    y_lin = model.out_proj(o.transpose(1, 2).flatten(2))
    y_win, window = model.window_attn(x)
    torch.testing.assert_close(y, y_lin + y_win, rtol=1e-10, atol=1e-12)
    assert state.window.k.shape[2] == WINDOW and torch.equal(state.window.k, window.k)


@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_split_forward_equals_whole_and_step_loop(k):
    model, x = make(), rand_x()
    y, state = model(x)
    y1, s1 = model(x[:, :k])
    y2, s2 = model(x[:, k:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
    y_loop, s_loop = model.step_loop(x, model.init_state(2))
    torch.testing.assert_close(y_loop, y, rtol=1e-10, atol=1e-10)
    for a, b, c in zip(s2[:2], state[:2], s_loop[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c, b, rtol=1e-10, atol=1e-10)


def state_bytes_from_shapes(batch, T, d_model, n_heads=2, feature_dim=16, window=64, elem=4):
    F = 1 + feature_dim + feature_dim**2
    K = d_model // n_heads
    cached = min(T, window)
    return batch * (n_heads * F * K * 4 + n_heads * F * 4 + cached * n_heads * (2 * K * elem + 4) + 8)


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_valid_and_state_bytes_from_shapes(d_model):
    torch.manual_seed(0)
    model = Based(d_model)
    state = model.init_state(2)
    assert isinstance(state, BasedState) and state.kv.dtype == torch.float32
    assert state.kv.shape == (2, 2, 273, d_model // 2) and state.z.shape == (2, 2, 273)
    assert model.state_bytes(state) == state_bytes_from_shapes(2, 0, d_model)
    with torch.no_grad():
        y, state = model(torch.randn(2, 70, d_model))
    assert y.shape == (2, 70, d_model) and torch.isfinite(y).all()
    assert model.state_bytes(state) == state_bytes_from_shapes(2, 70, d_model)  # window full: 64 tokens


def test_float64_state_stays_float64_and_bytes_count():
    model, x = make(), rand_x(T=3)
    _, state = model(x)
    assert state.kv.dtype == torch.float64
    F = 1 + FEATURE_DIM + FEATURE_DIM**2
    V = D_MODEL // N_HEADS
    want = 2 * (N_HEADS * F * V * 8 + N_HEADS * F * 8 + 3 * N_HEADS * (2 * V * 8 + 4) + 8)
    assert model.state_bytes(state) == want


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 2.0}, "n_heads"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"feature_dim": 1.5}, "feature_dim"),
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"block_size": 0}, "block_size"),
        ({"impl": "fast"}, "impl"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": True}, "chunk_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Based(8, **kwargs)
