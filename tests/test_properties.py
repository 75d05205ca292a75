"""Property-based checks (hypothesis) over random shapes and task parameters."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longrecall.ops.scan import selective_scan_chunked, selective_scan_naive
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.mqar import MQAR


@st.composite
def mqar_configs(draw):
    pairs = draw(st.integers(1, 12))
    passes = draw(st.integers(1, 3))
    seq_len = 2 * draw(st.integers(pairs * (passes + 1), 64))
    vocab = draw(st.integers(2 * pairs + 2, 300))
    return dict(vocab_size=vocab, seq_len=seq_len, num_kv_pairs=pairs, num_passes=passes,
                power_a=draw(st.floats(0.01, 1.0)), random_non_queries=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(mqar_configs(), st.integers(0, 2**31 - 1))
def test_mqar_targets_and_distances_are_true_for_any_valid_config(config, seed):
    task = MQAR(**config)
    batch = task.build(3, seed)
    P = task.num_kv_pairs
    for x, y, d in zip(batch.inputs, batch.targets, batch.distance, strict=True):
        keys, values = x[0 : 2 * P : 2].tolist(), x[1 : 2 * P : 2].tolist()
        scored = (y != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(scored) == P
        for q in scored:
            i = keys.index(x[q].item())
            assert y[q].item() == values[i] and d[q].item() == q - 2 * i > 0
    assert torch.equal(batch.inputs, task.build(3, seed).inputs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 6), st.integers(1, 5), st.integers(1, 16), st.booleans())
def test_chunked_scan_equals_naive_for_random_shapes(batch, T, E, N, chunk, carried):
    g = torch.Generator().manual_seed(T * 1000 + E * 10 + N)
    u = torch.randn(batch, T, E, generator=g, dtype=torch.float64)
    delta = torch.rand(batch, T, E, generator=g, dtype=torch.float64) * 2
    A = -torch.rand(E, N, generator=g, dtype=torch.float64) * 4
    B, C = (torch.randn(batch, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(E, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, E, N, generator=g, dtype=torch.float64) if carried else None
    y1, h1 = selective_scan_naive(u, delta, A, B, C, D, h0)
    y2, h2 = selective_scan_chunked(u, delta, A, B, C, D, h0, chunk_size=chunk)
    torch.testing.assert_close(y2, y1, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(h2, h1, atol=1e-10, rtol=1e-8)
