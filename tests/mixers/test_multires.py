"""MultiresConv: dilated conv1d tree == step loop from buffers == one direct convolution; init; state."""

import math

import pytest
import torch

from longrecall.mixers.multires import WAVELETS, MultiresConv, MultiresState, max_depth
from longrecall.ops.conv import causal_conv_fft, causal_conv_naive
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded

D = 5


def _model(kernel_size=3, depth=3, seed=0, d_model=D, **kw):
    return seeded(MultiresConv, d_model, seed=seed, kernel_size=kernel_size, depth=depth, **kw)


def _random_state(m, B, seed=3):
    g = torch.Generator().manual_seed(seed)
    return MultiresState(tuple(torch.randn(t.shape, generator=g, dtype=F64) for t in m.init_state(B).levels))


def _composed_kernel(m):
    """Independent of the conv1d path: each level's filter reversed (causal taps) and upsampled by 2^l,
    cascaded by polynomial products (direct convolutions), weighted and summed. (D, receptive field)."""
    with torch.no_grad():
        Dm, k, J, R = m.d_model, m.kernel_size, m.depth, m.receptive_field
        taps0, taps1 = m.h0[:, 0].flip(-1), m.h1[:, 0].flip(-1)  # taps[j] multiplies a_{t - j d}
        low = torch.zeros(1, Dm, R, dtype=F64)
        low[..., 0] = 1  # the cascade of low-passes so far, as a kernel on u
        K = m.w[:, J + 1, None] * low[0]
        for level in range(J):
            d = 2**level
            up0, up1 = (torch.zeros(Dm, (k - 1) * d + 1, dtype=F64) for _ in range(2))
            up0[:, ::d], up1[:, ::d] = taps0, taps1
            K = K + m.w[:, J - level, None] * causal_conv_naive(low, up1)[0]
            low = causal_conv_naive(low, up0)
        return K + m.w[:, 0, None] * low[0]


def test_registered_and_attributes():
    assert get_mixer("multires") is MultiresConv
    assert MultiresConv.state_growth == "constant"
    m = MultiresConv(8, kernel_size=2, max_len=1024)
    assert m.depth == 10 and m.receptive_field == 1024


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("L", [2, 3, 17, 64, 65, 1000, 4096])
def test_depth_from_length_is_the_shallowest_covering_tree(k, L):
    J = max_depth(L, k)
    assert (k - 1) * (2**J - 1) + 1 >= L
    assert J == 1 or (k - 1) * (2 ** (J - 1) - 1) + 1 < L


def test_random_init_as_the_reference():
    torch.manual_seed(0)
    m = MultiresConv(256, kernel_size=4, depth=6)
    assert m.h0.shape == m.h1.shape == (256, 1, 4) and m.w.shape == (256, 8)
    for p, bound in ((m.h0, math.sqrt(2 / 8)), (m.h1, math.sqrt(2 / 8)), (m.w, math.sqrt(2 / (2 * 7 + 2)))):
        assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # uniform on [-bound, bound]
    assert not torch.equal(m.h0, m.h1)


@pytest.mark.parametrize("name", list(WAVELETS))
def test_wavelet_init_is_an_orthogonal_filter_pair_reversed(name):
    lo, hi = (torch.tensor(f, dtype=F64) for f in WAVELETS[name])
    assert torch.isclose(lo.sum(), torch.tensor(math.sqrt(2), dtype=F64)) and abs(hi.sum()) < 1e-12
    assert torch.isclose(lo @ lo, torch.tensor(1.0, dtype=F64)) and torch.isclose(hi @ hi, torch.tensor(1.0, dtype=F64))
    assert abs(lo @ hi) < 1e-12
    for s in range(2, len(lo), 2):  # orthogonal to its even shifts
        assert abs(lo[s:] @ lo[:-s]) < 1e-12 and abs(hi[s:] @ hi[:-s]) < 1e-12
    m = MultiresConv(3, kernel_size=len(lo), depth=2, wavelet_init=name)
    torch.testing.assert_close(m.h0.double(), lo.flip(0).expand(3, 1, -1), rtol=0, atol=1e-7)
    torch.testing.assert_close(m.h1.double(), hi.flip(0).expand(3, 1, -1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("k,J", [(2, 1), (2, 4), (3, 3), (4, 2)])
@pytest.mark.parametrize("T", [1, 6, 40])
def test_parallel_equals_step_loop(k, J, T):
    m = _model(k, J)
    x, s0 = random_inputs(2, T, D, seed=2), _random_state(m, 2)
    for start in (s0, m.init_state(2, dtype=F64)):
        mh.assert_parallel_equals_step_loop(m, x, start, rtol=1e-12, atol=1e-12)


def test_gradients_parallel_equal_step_loop():
    m = _model(3, 3)
    x, s0 = random_inputs(2, 11, D, seed=4), _random_state(m, 2)
    mh.assert_grads_match(m, x, s0, seed=5, rtol=1e-10, atol=1e-12, nonzero=True)


@pytest.mark.parametrize("k,J", [(2, 3), (3, 2), (4, 3)])
def test_kernel_equals_composed_filters_and_direct_convolution(k, J):
    m = _model(k, J)
    R = m.receptive_field
    K = m.kernel(R + 7)
    torch.testing.assert_close(K[:, :R], _composed_kernel(m), rtol=1e-12, atol=1e-13)
    assert torch.all(K[:, R:] == 0) and torch.all(K[:, R - 1] != 0)  # support = the receptive field exactly
    u = random_inputs(2, 30, D, seed=6).transpose(1, 2)  # (B, D, T)
    with torch.no_grad():
        y_tree = m.conv_tree(u, m.init_state(2, dtype=F64))[0]
        torch.testing.assert_close(y_tree, causal_conv_naive(u, K), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(y_tree, causal_conv_fft(u, K), rtol=1e-10, atol=1e-10)


def test_outputs_forget_exactly_past_the_receptive_field():
    m = _model(2, 3)  # receptive field 8
    x = random_inputs(1, 30, D, seed=7)
    x2 = x.clone()
    x2[:, 5] += 1.0
    with torch.no_grad():
        diff = (m(x2)[0] - m(x)[0]).abs().amax(-1)[0]  # (T,)
    assert torch.all(diff[:5] == 0) and torch.all(diff[5:13] > 0) and torch.all(diff[13:] == 0)


def test_long_kernel_finite_and_fading_with_haar_filters():
    m = MultiresConv(2, kernel_size=2, max_len=65536, wavelet_init="haar").double()
    assert m.depth == 16
    with torch.no_grad():
        m.w.fill_(1.0)
        K = m.kernel(65536)
    assert torch.isfinite(K).all() and torch.all(K[:, -1] != 0)
    # Haar: the high-pass of level l (l = 1..J) has taps +-2^{-l/2} on lags [0, 2^l), the last low-pass
    # 2^{-J/2} on every lag: lags in [2^b, 2^{b+1}) only meet levels l > b, so |K| <= sum_{l > b} 2^{-l/2} + 2^{-J/2}
    for b in range(16):
        band = K[:, 2**b : 2 ** (b + 1)].abs().max().item()
        bound = sum(2 ** (-lvl / 2) for lvl in range(b + 1, 17)) + 2**-8
        assert band <= bound + 1e-12, (b, band, bound)


@pytest.mark.parametrize("split", [1, 3, 9, 16])
def test_chunked_forward_equals_whole(split):
    m = _model(3, 3)  # buffers of 2, 4 and 8 inputs
    with torch.no_grad():
        mh.assert_chunked_equals_whole(m, random_inputs(2, 23, D, seed=8), (split,), rtol=1e-12, atol=1e-12)


def test_state_holds_the_last_inputs_of_each_level():
    m = _model(3, 3)
    x = random_inputs(2, 20, D, seed=9)
    with torch.no_grad():
        _, s = m(x)
    torch.testing.assert_close(s.levels[0], x[:, -2:].transpose(1, 2), rtol=0, atol=0)  # level 0 reads u itself
    with torch.no_grad():
        _, s_short = m(x[:, :1])
    assert torch.all(s_short.levels[2][..., :-1] == 0)  # before the sequence: the causal zero padding


def test_state_bytes_and_no_mutation():
    m = MultiresConv(4, kernel_size=3, depth=4)
    s = m.init_state(3)
    assert [t.shape for t in s.levels] == [(3, 4, 2), (3, 4, 4), (3, 4, 8), (3, 4, 16)]
    assert m.state_bytes(s) == 3 * 4 * 2 * 15 * 4  # B D (k-1)(2^J-1) float32
    m = m.double()
    s = _random_state(m, 3)
    mh.assert_step_and_forward_keep_state(m, s, torch.randn(3, 4, dtype=F64), torch.randn(3, 6, 4, dtype=F64))
    _, s_new = m(torch.randn(3, 6, 4, dtype=F64), s)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in s_new.levels)


def test_bad_arguments():
    mh.assert_bad_arguments(MultiresConv, [({"kernel_size": 1}, "kernel_size"), ({"depth": 0}, "depth"),
                                           ({"max_len": 0}, "max_len"), ({"wavelet_init": "db3"}, "wavelet_init"),
                                           ({"kernel_size": 2, "wavelet_init": "db2"}, "kernel_size.*'db2'")])
    m = MultiresConv(4, depth=2)
    with pytest.raises(ValueError, match="d_model"):
        m(torch.zeros(1, 3, 5))
    mh.assert_wrong_states_rejected(m, m.init_state(3), MultiresConv(4, depth=3).init_state(2))


def test_empty_sequence():
    m = MultiresConv(4, depth=2)
    y, s = m(torch.zeros(2, 0, 4))
    assert y.shape == (2, 0, 4) and [t.shape for t in s.levels] == [(2, 4, 1), (2, 4, 2)]
