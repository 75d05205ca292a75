"""Hyena: init, the implicit filter against the reference's positional table, FFT == direct == step loop."""

import copy
import math

import pytest
import torch

from longrecall.mixers.hyena import Hyena, HyenaState
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D = 4
rand_x = rand_x_for(D, T=13)


def make(**kw):
    return seeded(Hyena, D, **{"l_max": 8, "filter_order": 6, "emb_dim": 5, **kw})


def _reference_filter(m, L):
    """safari's PositionalEmbedding table (complex exponentials on linspace grids) for l_max >= L."""
    n = m.l_max
    t = torch.linspace(0, 1, n, dtype=F64)[:L, None]
    bands = (m.emb_dim - 1) // 2
    w = (2 * math.pi * torch.linspace(0, n - 1, n, dtype=F64) / n)[:L, None]
    z = torch.exp(-1j * torch.linspace(1e-4, bands - 1, bands, dtype=F64) * w)
    pe = torch.cat([t, z.real, z.imag], -1)
    return (m.implicit_filter(pe) * torch.exp(-t * m.deltas.abs())).T


def _reference(m, x, s0):
    """The operator by explicit sums over the carried history and the new inputs."""
    T, P = x.shape[1], s0.long.shape[-1]
    u, _ = m.short_filter(m.in_proj(x), s0.short)
    x0, x1, v = u.split(D, -1)
    z = torch.cat([s0.long.transpose(1, 2), v * x1], 1)  # (B, P + T, D)
    h = _reference_filter(m, P + T) if P + T <= m.l_max else m.filter(P + T)
    y = torch.stack([sum(h[:, j] * z[:, P + t - j] for j in range(P + t + 1)) for t in range(T)], 1)
    return m.out_proj((y + m.bias * z[:, P:]) * x0)


def test_registered_and_init():
    assert get_mixer("hyena") is Hyena and Hyena.state_growth == "linear"
    torch.manual_seed(0)
    m = Hyena(16, l_max=64)
    assert [type(c).__name__ for c in m.implicit_filter] == ["Linear", "Sin"] * 3 + ["Linear"]
    assert m.implicit_filter[0].in_features == 3 and m.implicit_filter[-1].bias is None
    assert all(c is m.sin for c in m.implicit_filter[1::2])  # one shared frequency, as the reference
    torch.testing.assert_close(m.sin.freq, torch.ones(64))
    torch.testing.assert_close(m.deltas[[0, -1]], torch.tensor([math.log(1e-2) / 1.5, math.log(1e-2) / 0.3]))
    assert m.short_filter.weight.shape == (48, 1, 3) and m.short_filter.bias is not None
    assert "deltas" not in dict(m.named_parameters())  # fixed window, the reference's modulation_lr = 0


@pytest.mark.parametrize("emb_dim,L", [(3, 8), (5, 5), (7, 8)])
def test_filter_equals_reference_table_and_prefixes(emb_dim, L):
    m = make(emb_dim=emb_dim)
    with torch.no_grad():
        torch.testing.assert_close(m.filter(L), _reference_filter(m, L), rtol=1e-12, atol=1e-12)
        long = m.filter(40)  # past l_max: the same formula continued
        torch.testing.assert_close(long[:, :L], m.filter(L), rtol=1e-12, atol=1e-12)


def test_decay_window_and_long_filter_finite():
    torch.manual_seed(0)
    l_max, T = 4096, 65536
    m = Hyena(4, l_max=l_max, filter_order=16)
    with torch.no_grad():
        h = m.filter(T)  # (D, T)
        t = torch.arange(T) / (l_max - 1)
        window = torch.exp(-t * m.deltas.abs()[:, None])
        bound = m.implicit_filter[-1].weight.abs().sum(1, keepdim=True)  # |FFN| <= ||W_last||_1: sin in [-1, 1]
    assert torch.isfinite(h).all()
    assert (h.abs() <= bound * window * (1 + 1e-5) + 1e-30).all()
    # the fastest channel's window reaches target = 1e-2 at 0.3 l_max, the slowest at 1.5 l_max
    torch.testing.assert_close(window[-1, round(0.3 * (l_max - 1))], torch.tensor(1e-2), rtol=5e-3, atol=0)
    torch.testing.assert_close(window[0, round(1.5 * (l_max - 1))], torch.tensor(1e-2), rtol=5e-3, atol=0)
    assert h[:, T // 2 :].abs().max() < 1e-6 * h[:, :16].abs().max()


@pytest.mark.parametrize("P,T", [(0, 1), (0, 8), (3, 5), (6, 9)])
def test_forward_and_step_equal_reference(P, T):
    m = make()
    with torch.no_grad():
        _, s0 = m.step_loop(rand_x(T=P, seed=7), m.init_state(2, dtype=F64)) if P else (None, m.init_state(2))
        y_ref = _reference(m, rand_x(T=T), s0)
        for y, s in (m(rand_x(T=T), s0), m.step_loop(rand_x(T=T), s0)):
            torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
            assert s.long.shape == (2, D, P + T)  # the history's length is the position


def test_fft_equals_direct_and_step_loop_gradients():
    fft, naive = make(), make(impl="naive")
    naive.load_state_dict(fft.state_dict())
    with torch.no_grad():
        _, s0 = fft.step_loop(rand_x(T=4, seed=9), fft.init_state(2, dtype=F64))
    s0 = HyenaState(*(t.clone().requires_grad_() for t in s0))
    x = rand_x(T=11).requires_grad_()
    w_y = rand_x(T=11, seed=3)
    runs = {"fft": (fft, fft(x, s0)), "naive": (naive, naive(x, s0)), "step": (fft, fft.step_loop(x, s0))}
    grads = {}
    for name, (mod, (y, s)) in runs.items():
        loss = (y * w_y).sum() + sum((t * t).sum() for t in s)
        grads[name] = torch.autograd.grad(loss, [x, *s0, *mod.parameters()])
    names = ["x", "s0.short", "s0.long"] + [n for n, _ in fft.named_parameters()]
    for name in ("fft", "step"):
        torch.testing.assert_close(runs[name][1][0], runs["naive"][1][0], rtol=1e-10, atol=1e-10)
        for a, b in zip(runs[name][1][1], runs["naive"][1][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for what, a, b in zip(names, grads[name], grads["naive"], strict=True):
            assert b.abs().max() > 0, what
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"{name}: {what}")


def test_filter_cache_used_invalidated_and_training_unaffected():
    m = make().float()
    x = rand_x(T=10, dtype=torch.float32)
    ref = copy.deepcopy(m)
    ref.kernel_cache = False
    with torch.inference_mode():
        y1 = m(x)[0]
    assert m._cache is not None and not m._cache[1].is_inference()
    torch.testing.assert_close(y1, ref(x)[0].detach(), rtol=0, atol=0)
    with torch.no_grad():
        m.sin.freq.data.add_(0.5)  # in-place: the cache must notice the new values
        ref.sin.freq.data.add_(0.5)
        torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=0, atol=0)
    m(x)[0].pow(2).sum().backward()  # grad enabled: a fresh filter with a graph
    assert m.sin.freq.grad is not None and m.implicit_filter[0].weight.grad is not None


def test_step_does_not_mutate_state():
    m = make()
    _, s = m(rand_x(T=5))
    mh.assert_step_and_forward_keep_state(m, s, rand_x(T=1)[:, 0], rand_x(T=3))
    assert m.state_bytes(s) == 2 * D * (3 * 2 + 5) * 8


def test_bad_arguments():
    mh.assert_bad_arguments(Hyena, [({"emb_dim": 4}, "emb_dim"), ({"emb_dim": 1}, "emb_dim"), ({"l_max": 1}, "l_max"),
                                    ({"target": 1.0}, "target"), ({"sin_freq": 0}, "sin_freq"),
                                    ({"impl": "direct"}, "impl"), ({"num_inner_mlps": -1}, "num_inner_mlps"),
                                    ({"filter_order": 0}, "filter_order")])
    m = Hyena(4, l_max=8)
    mh.assert_wrong_states_rejected(m, m.init_state(3))
