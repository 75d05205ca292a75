"""Compressive Transformer layer: parallel form == step loop, chunk invariance, f_c, eviction and the aux loss."""

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.compressive import Compressive, CompressiveState

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded

D = 8
SMALL = {"segment_len": 4, "mem_len": 4, "cmem_len": 2, "compression_rate": 2}


def make(seed=0, **kw):
    m = seeded(Compressive, D, seed=seed, **{**SMALL, **kw})
    if m.compression == "conv":  # move the conv off its mean-pooling init
        with torch.no_grad():
            m.compress_weight.copy_(torch.randn(m.compress_weight.shape, generator=torch.Generator().manual_seed(3)))
    return m


def carried(m, B, seed=9, T=7):
    with torch.no_grad():
        return m.step_loop(random_inputs(B, T, D, seed=seed), m.init_state(B))[1]


CONFIGS = [{"compression": "conv"}, {"compression": "mean"},
           {"compression": "conv", "segment_len": 3, "mem_len": 6, "cmem_len": 3, "compression_rate": 3},
           {"compression": "mean", "segment_len": 2, "mem_len": 2, "cmem_len": 1, "compression_rate": 1}]


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("T", [1, 5, 23])
def test_parallel_equals_step_loop(kw, T):
    m = make(**kw)
    x = random_inputs(2, T, D, seed=2)
    mh.assert_parallel_equals_step_loop(m, x, None, rtol=1e-12, atol=1e-12)
    mh.assert_parallel_equals_step_loop(m, x, carried(m, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", CONFIGS[:3])
def test_gradients_equal_step_loop(kw):
    m = make(**kw)
    s0 = carried(m, 2, T=6)
    x = random_inputs(2, 17, D, seed=4).requires_grad_()
    w = torch.randn(2, 17, D, generator=torch.Generator().manual_seed(5), dtype=F64)
    grads = []
    for run in (m.forward, m.step_loop):
        y, _ = run(x, s0)
        grads.append(torch.autograd.grad((y * w).sum(), [x, m.qkv.weight, m.out_proj.weight]))
    for a, b in zip(*grads, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)  # ops/rotary works in float32


@pytest.mark.parametrize("kw", CONFIGS[:3])
def test_chunked_carry_at_unaligned_splits(kw):
    m = make(**kw)
    with torch.no_grad():
        mh.assert_chunked_equals_whole(m, random_inputs(2, 29, D, seed=6), (1, 2, 7, 13, 14, 22), rtol=1e-12,
                                       atol=1e-12)


def test_memories_are_detached_and_conv_gets_no_output_gradient():
    m = make(compression="conv")
    x = random_inputs(2, 20, D, seed=7).requires_grad_()
    y, s = m(x)
    assert s.cmem_k.shape[2] == 2 and s.mem_k.shape[2] == 4
    assert not (s.mem_k.requires_grad or s.cmem_k.requires_grad or s.cmem_v.requires_grad)
    (g,) = torch.autograd.grad(y[:, -1].sum(), [x])
    assert g[:, :16].abs().max() == 0 and g[:, 16:].abs().max() > 0  # only the current segment is differentiable
    assert torch.autograd.grad(y.sum(), [m.compress_weight], allow_unused=True)[0] is None


@pytest.mark.parametrize("compression", ["conv", "mean"])
def test_compression_equals_direct_reference(compression):
    m = make(compression=compression, segment_len=6, mem_len=6, compression_rate=3)
    old = random_inputs(2, 2 * 6, m.head_dim, seed=8).reshape(2, 2, 6, m.head_dim)  # (B, H, n, K)
    for which in (0, 1):
        flat = old.permute(0, 1, 3, 2).reshape(2, D, 6)  # (B, H*K, n): conv1d channels
        if compression == "conv":
            weight = m.compress_weight[which].reshape(D, 1, 3)
            ref = F.conv1d(flat, weight, stride=3, groups=D)
        else:
            ref = F.avg_pool1d(flat, 3, stride=3)
        ref = ref.reshape(2, 2, m.head_dim, 2).permute(0, 1, 3, 2)
        torch.testing.assert_close(m.compress(old, which), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compression", ["conv", "mean"])
def test_memory_write_rules(compression):
    m = make(compression=compression)
    x = random_inputs(1, 14, D, seed=10)
    with torch.no_grad():
        _, s = m(x)
        _, k, v = m._project(x)  # (B, H, T, K)
    assert int(s.length) == 14 and s.k.shape[2] == 4
    torch.testing.assert_close(s.k[:, :, :2], k[:, :, 12:14])  # the partial segment, zero-padded
    assert s.k[:, :, 2:].abs().max() == 0
    torch.testing.assert_close(s.mem_k, k[:, :, 8:12])  # FIFO: the last mem_len tokens of whole segments
    torch.testing.assert_close(s.mem_v, v[:, :, 8:12])
    with torch.no_grad():  # cmem_len 2 of the 4 slots made from tokens 0..7: the newest, from tokens 4..7
        torch.testing.assert_close(s.cmem_k, m.compress(k[:, :, 4:8], 0))
        torch.testing.assert_close(s.cmem_v, m.compress(v[:, :, 4:8], 1))


@pytest.mark.parametrize("compression", ["conv", "mean"])
def test_evicted_token_acts_only_through_compressed_memory(compression):
    m = make(compression=compression)
    x = random_inputs(2, 16, D, seed=11)
    x2 = x.clone()
    x2[:, 5] += 1.0  # token 5 is in the compressed memory after 12 tokens (FIFO holds 8..11)
    rest = random_inputs(2, 6, D, seed=12)
    with torch.no_grad():
        _, s = m(x[:, :12])
        _, s2 = m(x2[:, :12])
        for a, b in zip(s[:4], s2[:4], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(s.cmem_k, s2.cmem_k)
        y, _ = m(rest, s)
        y2, _ = m(rest, s2)
        y_swap, _ = m(rest, s._replace(cmem_k=s2.cmem_k, cmem_v=s2.cmem_v))
    assert not torch.allclose(y, y2)  # it still matters ...
    torch.testing.assert_close(y_swap, y2, rtol=0, atol=0)  # ... and only through the compressed slots


def test_reconstruction_loss_zero_when_compression_is_exact():
    m = make(compression="conv", compression_rate=1, segment_len=2, mem_len=2, cmem_len=3)
    x = random_inputs(2, 11, D, seed=13)
    with torch.no_grad():
        m.compress_weight.fill_(1.0)  # rate 1 with unit weights: f_c is the identity
    assert m.reconstruction_loss(x).item() == 0.0
    with torch.no_grad():
        m.compress_weight.mul_(0.5)
    assert m.reconstruction_loss(x).item() > 1e-6


def test_reconstruction_loss_trains_only_the_compression():
    m = make(compression="conv")
    x = random_inputs(2, 13, D, seed=14)
    loss = m.reconstruction_loss(x, carried(m, 2))
    assert loss.item() > 0
    g_conv, g_qkv = torch.autograd.grad(loss, [m.compress_weight, m.qkv.weight], allow_unused=True)
    assert g_conv.abs().max() > 0 and g_qkv is None
    assert m.reconstruction_loss(x[:, :3]).item() == 0.0  # no eviction yet
    mean = make(compression="mean")
    assert mean.reconstruction_loss(x).item() > 0  # defined for parameter-free f_c too


def test_state_bytes_and_capacity():
    m = make()
    assert m.state_capacity == 4 + 2 * 2 + 4
    with torch.no_grad():
        _, s = m(random_inputs(1, 40, D, seed=15))
    assert isinstance(s, CompressiveState)
    assert m.state_bytes(s) == (4 + 4 + 2) * 2 * 2 * (D // 2) * 8 + 8


def test_step_and_forward_keep_state():
    m = make()
    mh.assert_step_and_forward_keep_state(m, carried(m, 2), random_inputs(2, 1, D)[:, 0], random_inputs(2, 9, D))


def test_bad_arguments():
    mh.assert_bad_arguments(Compressive, [
        ({"segment_len": 0}, "segment_len"),
        ({"mem_len": -1}, "mem_len"),
        ({"cmem_len": 1.5}, "cmem_len"),
        ({"compression_rate": 0}, "compression_rate"),
        ({"compression": "max"}, "compression"),
        ({"segment_len": 5, "compression_rate": 2}, "segment_len"),
        ({"mem_len": 3, "segment_len": 4, "compression_rate": 2}, "mem_len"),
        ({"n_heads": 3}, "n_heads"),
    ])
