"""MoM: routing, unselected memories untouched, shared memory always written, parallel == step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.contract import assert_close
from longrecall.mixers.gated_deltanet import GatedDeltaNet
from longrecall.mixers.mom import (
    MoM,
    MoMState,
    ShiftedProducts,
    gathered_short_conv,
    route_index,
    routed_short_conv,
    routed_short_conv_step,
    shifted_products,
)
from longrecall.modules import ShortConvolution
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D_MODEL = 16


def make(impl="chunked", dtype=F64, seed=0, **kwargs):
    return seeded(MoM, D_MODEL, dtype=dtype, seed=seed, impl=impl, **{"chunk_size": 4, **kwargs})


rand_x = rand_x_for(D_MODEL, T=13)


def random_state(model, batch=2, seed=7):
    g = torch.Generator().manual_seed(seed)
    return MoMState(*(torch.randn(t.shape, generator=g, dtype=t.dtype) for t in model.init_state(batch, dtype=F64)))


def never_route_memory_zero(model):
    """Router logits c_m * x_0 with c_0 < 0 < c_1 < c_2 < c_3: memory 0 loses top-2 whenever x_0 > 0."""
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.weight[:, 0] = torch.tensor([-3.0, 1.0, 2.0, 3.0], dtype=model.gate.weight.dtype)


def test_registered():
    assert get_mixer("mom") is MoM
    assert MoM.state_growth == "constant"
    assert MoM.__doc__.splitlines()[0].startswith("MoM:")


def test_router_topk_counts_and_weights():
    model, x = make(num_memories=5, topk=3), rand_x(T=20)
    route = model.route(x)
    assert route.probs.shape == (2, 20, 5) and route.mask.shape == (2, 20, 6)
    assert (route.mask[..., :5].sum(-1) == 3).all() and route.mask[..., 5].all()  # top-3 + the shared one
    torch.testing.assert_close(route.weights[..., :5].sum(-1), torch.ones(2, 20, dtype=F64))
    assert (route.weights[..., :5][~route.mask[..., :5]] == 0).all() and (route.weights[..., 5] == 1).all()
    top = route.probs.topk(3, dim=-1).indices.sort(-1).values
    assert torch.equal(route.mask[..., :5].nonzero()[:, 2].view(2, 20, 3), top)  # highest probabilities chosen
    # the same decisions one token at a time
    for t in range(20):
        step_route = model.route(x[:, t])
        assert torch.equal(step_route.mask, route.mask[:, t])
        torch.testing.assert_close(step_route.weights, route.weights[:, t], rtol=1e-14, atol=1e-14)


def test_unselected_memories_unchanged_after_a_step_and_shared_always_updates():
    model, x = make(), rand_x(T=6)
    state = random_state(model)
    for t in range(x.shape[1]):
        mask = model.route(x[:, t]).mask  # (B, Mt)
        _, new = model.step(x[:, t], state)
        for b in range(2):
            for m in range(model.n_mem):
                same = [torch.equal(new[i][b, m], state[i][b, m]) for i in (1, 2, 3)]  # conv_k, conv_v, memory
                assert all(same) if not mask[b, m] else not any(same), (t, b, m)
        assert mask[:, -1].all()  # the shared memory is written at every token
        assert not torch.equal(new.conv_q, state.conv_q)
        state = new


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_never_routed_memory_survives_a_parallel_segment(impl):
    model = make(impl)
    never_route_memory_zero(model)
    x = rand_x(T=11)
    x[..., 0] = 3 + x[..., 0].abs()
    assert not model.route(x).mask[..., 0].any()
    state = random_state(model)
    _, new = model(x, state)
    if impl == "naive":  # beta = 0, g = 0 leave it bit for bit
        for i in (1, 2, 3):
            assert torch.equal(new[i][:, 0], state[i][:, 0])
    else:
        assert_close([t[:, 0] for t in new[1:]], [t[:, 0] for t in state[1:]], "state", atol=1e-12, rtol=1e-12)
    assert not torch.allclose(new.memory[:, 1:], state.memory[:, 1:])


def test_routed_conv_sees_only_routed_tokens():
    """Against a loop that gathers each memory's tokens, prepends its buffer and convolves (as fla)."""
    g = torch.Generator().manual_seed(0)
    B, M, T, C, W = 2, 3, 9, 5, 4
    u = torch.randn(B, M, T, C, generator=g, dtype=F64)
    mask = torch.rand(B, M, T, generator=g) < 0.4
    mask[0, 0] = False  # a memory that gets nothing this segment
    buffer = torch.randn(B, M, C, W - 1, generator=g, dtype=F64)
    conv = ShortConvolution(C, W, bias=True).double()
    y, new_buffer = routed_short_conv(u, mask, buffer, conv)
    for b in range(B):
        for m in range(M):
            idx = mask[b, m].nonzero()[:, 0]
            seq = torch.cat([buffer[b, m], u[b, m, idx].T], dim=-1)  # (C, W-1+n)
            if len(idx):
                ref = F.silu(F.conv1d(seq[None], conv.weight, conv.bias, groups=C))[0].T  # (n, C)
                torch.testing.assert_close(y[b, m, idx], ref, rtol=1e-12, atol=1e-12)
            assert (y[b, m][~mask[b, m]] == 0).all()
            assert torch.equal(new_buffer[b, m], seq[:, -(W - 1):])
    # and one token at a time
    buf, ys = buffer, []
    for t in range(T):
        y_t, buf = routed_short_conv_step(u[:, :, t], mask[:, :, t], buf, conv)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 2)[mask], y[mask], rtol=1e-12, atol=1e-12)
    assert torch.equal(buf, new_buffer)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("kwargs", [{}, {"shared_memory": False, "use_gate": False}, {"num_memories": 3, "topk": 3}])
def test_step_loop_equals_forward(impl, kwargs):
    model, x = make(impl, **kwargs), rand_x()
    for start in (None, random_state(model)):
        init = start if start is not None else model.init_state(2, dtype=F64)
        y, state = model(x, start)
        y_loop, state_loop = model.step_loop(x, init)
        torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
        assert_close(state, state_loop, "state", atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 5, 8])  # short splits: a memory may get fewer than conv_size - 1 tokens
def test_split_forward_equals_whole(k):
    mh.assert_chunked_equals_whole(make(), rand_x(), (k,), rtol=1e-10, atol=1e-10)


def test_one_memory_is_gated_deltanet():
    """M = 1, top-1, no shared memory: every token goes to the one memory with weight 1."""
    mom = make(num_memories=1, topk=1, shared_memory=False, head_dim=6, expand_v=2)
    gdn = GatedDeltaNet(D_MODEL, head_dim=6, expand_v=2, chunk_size=4).to(F64)
    missing, unexpected = gdn.load_state_dict(mom.state_dict(), strict=False)
    assert not missing and unexpected == ["gate.weight"]
    x = rand_x()
    y_m, s_m = mom(x)
    y_g, s_g = gdn(x)
    torch.testing.assert_close(y_m, y_g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_m.memory[:, 0], s_g.memory, rtol=1e-12, atol=1e-12)


def test_gradients_reach_every_parameter_and_match_across_impls():
    x, grads = rand_x(), []
    for impl in ("chunked", "naive"):
        model = make(impl)
        y, state = model(x)
        (y.square().sum() + state.memory.sum()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert grads[0][name].abs().max() > 0, name
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-10, msg=name)


def test_no_state_mutation_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    mh.assert_step_and_forward_keep_state(model, state, x[:, 0], x)
    Mt, H, K, V, W1 = 5, 2, 4, 8, 3  # K = (16 // 2) // 2
    assert model.state_bytes(state) == 3 * (Mt * H * K * V * 8 + (H * K + Mt * H * K + Mt * H * V) * W1 * 8)
    m32 = MoM(64)
    s32 = m32.init_state(1)
    assert s32.memory.shape == (1, 5, 2, 16, 32) and s32.memory.dtype == torch.float32
    assert m32.state_bytes(s32) == 5 * 2 * 16 * 32 * 4 + (32 + 5 * 32 + 5 * 64) * 3 * 4


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_valid(d_model):
    model = MoM(d_model)
    y, _ = model(torch.randn(1, 3, d_model))
    assert y.shape == (1, 3, d_model) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_memories": 0}, "num_memories"),
        ({"topk": 0}, "topk"),
        ({"topk": 5}, "topk"),  # more than num_memories = 4
        ({"shared_memory": "yes"}, "shared_memory"),
        ({"n_heads": -1}, "n_heads"),
        ({"n_heads": 9}, "head_dim"),  # default head_dim (16 // 2) // 9 = 0
        ({"head_dim": 0}, "head_dim"),
        ({"expand_v": 0}, "expand_v"),
        ({"head_dim": 3, "expand_v": 0.5}, "expand_v"),
        ({"use_gate": 0}, "use_gate"),
        ({"conv_size": 0}, "conv_size"),
        ({"conv_bias": "no"}, "conv_bias"),
        ({"norm_eps": 0}, "norm_eps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "gather"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MoM(16, **kwargs)


# --------------------------------------------------------------------------- gathered forward vs masked reference


def test_route_index_lists_each_memorys_tokens_in_order():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2, 3, 11, generator=g) < 0.5
    mask[1, 2] = False  # no token for this memory in this row
    index, count = route_index(mask)  # (G, B, L), (G, B)
    assert index.shape == (3, 2, int(mask.sum(-1).max())) and torch.equal(count, mask.sum(-1).T)
    for b in range(2):
        for m in range(3):
            n = int(count[m, b])
            assert torch.equal(index[m, b, :n], mask[b, m].nonzero()[:, 0]) and (index[m, b, n:] == 0).all()


@pytest.mark.parametrize("W", [1, 2, 4])
def test_shifted_products_backward_equals_autograd(W):
    g = torch.Generator().manual_seed(W)
    padded = torch.randn(3, 2, W - 1 + 9, 5, generator=g, dtype=F64, requires_grad=True)  # (G, B, W-1+L, C)
    w = torch.randn(5, W, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(3, 2, 9, 5, generator=g, dtype=F64)
    y, y_ref = ShiftedProducts.apply(padded, w), shifted_products(padded, w)
    torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad((y * weight).sum(), (padded, w)),
                    torch.autograd.grad((y_ref * weight).sum(), (padded, w)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_gathered_short_conv_equals_routed_short_conv():
    g = torch.Generator().manual_seed(4)
    B, M, T, C, W = 2, 3, 10, 5, 4
    u = torch.randn(B, M, T, C, generator=g, dtype=F64)
    mask = torch.rand(B, M, T, generator=g) < 0.4
    mask[1, 0] = False
    buffer = torch.randn(B, M, C, W - 1, generator=g, dtype=F64)
    conv = ShortConvolution(C, W, bias=True).double()
    y_ref, buffer_ref = routed_short_conv(u, mask, buffer, conv)
    index, count = route_index(mask)  # (M, B, L)
    gathered = u.transpose(0, 1).gather(2, index[..., None].expand(-1, -1, -1, C))  # (M, B, L, C)
    y, new_buffer = gathered_short_conv(gathered, count, buffer, conv)
    for b in range(B):
        for m in range(M):
            n = int(count[m, b])
            torch.testing.assert_close(y[m, b, :n], y_ref[b, m][mask[b, m]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_buffer, buffer_ref, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("kwargs", [{}, {"shared_memory": False, "use_gate": False}, {"num_memories": 3, "topk": 3},
                                    {"num_memories": 6, "topk": 1, "chunk_size": 3}])
def test_gathered_forward_equals_masked_formulation(impl, kwargs):
    """forward (each memory over its gathered tokens) == forward_masked (every memory everywhere, masked)."""
    model, x = make(impl, **kwargs), rand_x(batch=3, T=17)  # rows route different counts to each memory
    for start in (None, random_state(model, batch=3)):
        y, state = model(x, start)
        y_ref, state_ref = model.forward_masked(x, start)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        assert_close(state, state_ref, "state", atol=1e-12, rtol=1e-12)
    grads = []
    for fn in (model, model.forward_masked):
        xg = x.clone().requires_grad_(True)
        y, state = fn(xg, random_state(model, batch=3))
        params = [xg, *model.parameters()]
        grads.append(torch.autograd.grad(y.square().sum() + state.memory.sum(), params))
    for name, a, b in zip(["x"] + [n for n, _ in model.named_parameters()], *grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_memory_unrouted_in_one_row_only_is_left_exactly(impl):
    """Row 0 never routes to memory 0, row 1 always does: row 0's memory 0 runs only pads (beta = g = 0,
    k = v = 0), which leave it bit for bit."""
    model = make(impl)
    never_route_memory_zero(model)
    x = rand_x(T=11)
    x[0, :, 0] = 3 + x[0, :, 0].abs()
    x[1, :, 0] = -3 - x[1, :, 0].abs()  # x_0 < 0: memory 0 has the highest logit
    mask = model.route(x).mask
    assert not mask[0, :, 0].any() and mask[1, :, 0].all()
    state = random_state(model)
    _, new = model(x, state)
    for i in (1, 2, 3):  # conv_k, conv_v, memory
        assert torch.equal(new[i][0, 0], state[i][0, 0]) and not torch.equal(new[i][1, 0], state[i][1, 0])
