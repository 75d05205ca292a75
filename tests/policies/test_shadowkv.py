"""``shadowkv``: pre-rotary keys, the rank-r factors, landmarks and outliers, the chunk selection, bytes."""

import math

import pytest
import torch
from einops import rearrange

from longrecall.contract import assert_close
from longrecall.policies.base import PolicyKVState
from longrecall.policies.shadowkv import (
    LANDMARKS,
    OUTLIER_IDX,
    OUTLIER_K,
    OUTLIER_SIM,
    POSITIONS,
    SV,
    VALUES,
    ShadowKV,
    U,
    rotate,
)
from longrecall.protocol import state_nbytes

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def projected(mixer, x):
    """q, k, v as the cache holds them (rotated) and the keys before rotary, from the projection."""
    q, k, v, _ = mixer.project(x, torch.zeros(x.shape[0], dtype=torch.int64))
    raw = rearrange(mixer.qkv(x), "b t (three h k) -> three b h t k", three=3, h=mixer.n_heads)[1]
    return q, k, v, raw


@pytest.mark.parametrize("mode", ["prefill", "step"])
def test_unrotated_keys_are_the_projection_and_full_rank_is_exact(mode):
    x = inputs(2, 30, seed=3)
    for rope_base in (10000.0, 500.0):  # a base unlike the layer's: the round trip stays exact
        policy = ShadowKV(budget=16, chunk_size=2, rank=16, rope_base=rope_base, mode=mode)  # H K = 16: full
        mixer = make_attention(policy)
        _, state = mixer(x)
        with torch.no_grad():
            _, k, v, raw = projected(mixer, x)
        # 30 tokens, chunks of 2, one local chunk: positions 0..27 compressed, 28 and 29 exact
        assert state.aux[POSITIONS][:, 0].tolist() == [list(range(28))] * 2 and state.pos[0, 0].tolist() == [28, 29]
        keys, values, positions = policy.attend_view(state)
        assert positions[0, 0].tolist() == list(range(30))
        assert_close(keys, k, f"{mode}: keys read at full rank", atol=1e-12, rtol=1e-10)
        assert_close(values, v, f"{mode}: offloaded values", atol=1e-14, rtol=0)
    # ops/rotary's angles are float32: un-rotating recovers the projection to that precision
    assert_close(rotate(k, torch.arange(30), 10000.0, inverse=True), raw, "pre-rotary keys", atol=1e-5, rtol=0)
    assert (rotate(k, torch.arange(30), 500.0, inverse=True) - raw).abs().max() > 0.1


def test_low_rank_keys_are_the_best_rank_r_approximation():
    x = inputs(2, 30, seed=4)
    policy = ShadowKV(budget=16, chunk_size=2, rank=3, outlier_chunks=1, mode="prefill")
    mixer = make_attention(policy)
    _, state = mixer(x)
    with torch.no_grad():
        _, k, _, _ = projected(mixer, x)
    pre = rotate(k[:, :, :28], torch.arange(28), 10000.0, inverse=True)
    rows = pre.transpose(1, 2).reshape(2, 28, 16)  # (B, N, H K), heads side by side
    low = (state.aux[U] @ state.aux[SV]).transpose(1, 2).reshape(2, 28, 16)
    sigma = torch.linalg.svdvals(rows)
    # Eckart-Young: the squared error of the best rank-3 approximation is the sum of the other sigma^2
    assert_close((rows - low).square().sum((1, 2)), sigma[:, 3:].square().sum(-1), "rank-3 error", atol=1e-10)
    assert (torch.linalg.svdvals(low)[:, 3:] < 1e-10).all()
    keys = policy.attend_view(state)[0][:, :, :28]
    for b in range(2):
        for h in range(2):
            outlier = int(state.aux[OUTLIER_IDX][b, h, 0])
            exact = (keys[b, h] - k[b, h, :28]).abs().amax(-1) < 1e-12  # (28,)
            assert exact.tolist() == [i // 2 == outlier for i in range(28)], (b, h)


def test_landmarks_and_outliers_by_hand():
    x = inputs(2, 27, seed=5)
    states = {}
    for mode in ("prefill", "step"):
        policy = ShadowKV(budget=16, chunk_size=4, local_chunks=1, outlier_chunks=2, rank=4, mode=mode)
        mixer = make_attention(policy)
        states[mode] = mixer(x)[1]
    with torch.no_grad():
        _, k, _, _ = projected(mixer, x)
    aux = states["prefill"].aux
    for b in range(2):
        for h in range(2):
            chunks = [k[b, h, 4 * j : 4 * j + 4] for j in range(5)]  # 27 // 4 - 1 = 5 chunks compressed
            landmarks = [c.mean(0) for c in chunks]
            similarity = [min(float(key @ lm / (key.norm() * lm.norm())) for key in c)
                          for c, lm in zip(chunks, landmarks, strict=True)]
            outliers = sorted(range(5), key=lambda j: (similarity[j], j))[:2]
            assert_close(aux[LANDMARKS][b, h], torch.stack(landmarks), "landmarks", atol=1e-14, rtol=0)
            assert aux[OUTLIER_IDX][b, h].tolist() == outliers
            assert_close(aux[OUTLIER_SIM][b, h], torch.tensor([similarity[j] for j in outliers], dtype=torch.float64),
                         "similarities", atol=1e-12, rtol=0)
            assert torch.equal(aux[OUTLIER_K][b, h], torch.stack([chunks[j] for j in outliers]))
    # chunk by chunk (step mode) ends with the same landmarks and outliers as one prompt pass
    step = states["step"].aux
    assert torch.equal(step[OUTLIER_IDX], aux[OUTLIER_IDX])  # keys projected one token at a time: rounding
    assert_close(step[OUTLIER_K], aux[OUTLIER_K], "outlier keys chunk by chunk", atol=1e-14, rtol=0)
    assert_close(step[LANDMARKS], aux[LANDMARKS], "landmarks chunk by chunk", atol=1e-14, rtol=0)


def read_positions(policy, state, q):
    """Positions the query q (K,) at the last position reads (head 0 of row 0)."""
    _, _, positions = policy.attend_view(state)
    mask = policy.attend_mask(state, torch.tensor(q, dtype=torch.float64)[None, None, None],
                              torch.tensor([[int(state.length[0]) - 1]]))
    return sorted(positions[0, 0][mask[0, 0, 0]].tolist())


def test_the_query_reads_its_top_chunks_the_outliers_and_the_local_tokens():
    # chunks of 2: chunk 2 holds two orthogonal keys (min cosine 0.71 to its landmark): the outlier
    keys = [[1, 0], [1, 0.1], [0, 1], [0, 1], [1, 0], [0, 1], [-1, 0], [-1, 0.2], [5, 5], [5, 5]]
    k = torch.tensor(keys, dtype=torch.float64)[None, None]
    state = PolicyKVState(k, k.clone(), torch.arange(10, dtype=torch.int32)[None, None], torch.tensor([10]))

    def reads(budget, q):
        policy = ShadowKV(budget=budget, chunk_size=2, local_chunks=1, outlier_chunks=1, rank=2)
        compressed = policy.compress(policy.adopt(state), None, torch.tensor([[[budget]]]))
        assert compressed.aux[OUTLIER_IDX].tolist() == [[[2]]] and compressed.pos[0, 0].tolist() == [8, 9]
        return read_positions(policy, compressed, q)

    # q = (1, 0): q . landmark = 1.0, 0, (outlier), -1.0
    assert reads(6, [1.0, 0.0]) == [0, 1, 4, 5, 8, 9]  # one chosen chunk, the outlier, the local chunk
    assert reads(8, [1.0, 0.0]) == [0, 1, 2, 3, 4, 5, 8, 9]
    # q = (0, 1): 0.05, 1.0, (outlier), 0.1: chunks 1 then 3
    assert reads(6, [0.0, 1.0]) == [2, 3, 4, 5, 8, 9]
    assert reads(8, [0.0, 1.0]) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert reads(20, [0.0, 1.0]) == list(range(10))


def sparse_attention_by_hand(mixer, x, policy, prompt=0):
    """Per query: local tokens + outlier chunks + top chunks by q . landmark, from q, k, v by plain loops
    (exact keys: the policy runs at full rank).  ``prompt`` > 0: prefill mode, compressed once."""
    q, k, v, _ = projected(mixer, x)
    B, H, T, K = q.shape
    c, n_sel = policy.chunk_size, policy.selected_chunks(policy.budget)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                seen = t if policy.mode == "step" else prompt  # the length at the last compression
                n_chunks = max(0, seen // c - policy.local_chunks) if t >= prompt else 0
                chunks = [k[b, h, j * c : j * c + c] for j in range(n_chunks)]
                landmarks = [chunk.mean(0) for chunk in chunks]
                similarity = [min(float(key @ lm / (key.norm() * lm.norm())) for key in chunk)
                              for chunk, lm in zip(chunks, landmarks, strict=True)]
                outliers = sorted(range(n_chunks), key=lambda j: (similarity[j], j))[: policy.outlier_chunks]
                others = [j for j in range(n_chunks) if j not in outliers]
                chosen = sorted(others, key=lambda j: (-float(q[b, h, t] @ landmarks[j]), j))[:n_sel]
                keep = [i for j in sorted(chosen + outliers) for i in range(j * c, j * c + c)]
                keep += list(range(n_chunks * c, t + 1))
                w = torch.softmax(q[b, h, t] @ k[b, h, keep].T / math.sqrt(K), -1)
                out[b, h, t] = w @ v[b, h, keep]
    return mixer.merge_heads(out)


@pytest.mark.parametrize("mode,prompt", [("step", 0), ("prefill", 17)])
def test_forward_and_steps_equal_the_hand_computation(mode, prompt):
    x = inputs(2, 25, seed=6)
    policy = ShadowKV(budget=8, chunk_size=2, local_chunks=1, outlier_chunks=1, rank=16, mode=mode)  # 2 chosen
    mixer = make_attention(policy)
    if mode == "step":
        y, state = mixer(x)
        y_steps, s_steps, _ = run_steps(mixer, x)
        assert_close(state, s_steps, "forward state vs stepped state")
        assert_close(y, y_steps, "forward vs steps")
    else:
        y_prompt, state = mixer(x[:, :prompt])
        y = torch.cat([y_prompt, run_steps(mixer, x[:, prompt:], state)[0]], 1)
    with torch.no_grad():
        expected = sparse_attention_by_hand(mixer, x, policy, prompt)
    assert_close(y, expected, f"{mode}: policy vs by hand", atol=1e-10, rtol=1e-8)
    assert not torch.allclose(y, make_attention()(x)[0])  # the selection matters here


def test_a_budget_covering_the_context_at_full_rank_is_full_attention():
    x = inputs(2, 20, seed=7)
    y_ref, _ = make_attention()(x)
    for mode in ("step", "prefill"):
        mixer = make_attention(ShadowKV(budget=40, chunk_size=2, rank=16, mode=mode))
        y, state = mixer(x[:, :12])
        y_steps, _, _ = run_steps(mixer, x[:, 12:], state)
        assert_close(torch.cat([y, y_steps], 1), y_ref, f"{mode}: budget >= length", atol=1e-10, rtol=1e-8)
        assert state.aux[POSITIONS].shape[2] == 10  # compressed, and all read


def test_state_and_resident_bytes():
    policy = ShadowKV(budget=12, chunk_size=4, local_chunks=1, outlier_chunks=1, rank=5, mode="prefill")  # 1 chosen
    mixer = make_attention(policy)
    _, state = mixer(inputs(2, 27, seed=8))
    # 27 tokens: 5 chunks of 4 compressed (N = 20), 7 exact; B = 2, H = 2, K = 8, float64
    exact = 2 * 2 * 7 * (2 * 8 * 8 + 4)
    factors = 2 * 20 * 5 * 8 + 2 * 2 * 5 * 8 * 8  # u (B, 1, N, r) and sv (B, H, r, K)
    values, positions, landmarks = 2 * 2 * 20 * 8 * 8, 2 * 20 * 4, 2 * 2 * 5 * 8 * 8
    outliers = 2 * 2 * 4 * 8 * 8 + 2 * 2 * 8 + 2 * 2 * 8  # exact keys, chunk indices, similarities
    total = exact + factors + values + positions + landmarks + outliers + 2 * 8
    assert mixer.state_bytes(state) == total == state_nbytes(state)
    assert [tuple(t.shape) for t in state.aux[:3]] == [(2, 1, 20, 5), (2, 2, 5, 8), (2, 2, 20, 8)]
    # resident: all but the offloaded values, plus the values of the 1 chosen + 1 outlier chunk read
    assert policy.resident_bytes(state) == total - values + 2 * 2 * 8 * 8 * 8
    assert state.aux[VALUES].shape[2] == 20
    unlimited = make_attention(ShadowKV())
    _, full = unlimited(inputs(2, 27, seed=8))
    assert full.aux == () and unlimited.kv_policy.policy.resident_bytes(full) == unlimited.state_bytes(full)


def test_state_properties_under_a_real_budget():
    check_state_properties(lambda mode: make_attention(ShadowKV(budget=6, chunk_size=2, local_chunks=1,
                                                                outlier_chunks=1, rank=3, mode=mode)))


def test_invalid_fields_are_named():
    for field, bad in [("chunk_size", 0), ("rank", 0), ("local_chunks", -1), ("outlier_chunks", -1),
                       ("rope_base", 0.0), ("rank", 2.5)]:
        with pytest.raises(ValueError, match=field):
            ShadowKV(budget=64, **{field: bad})
    least = r"budget must be >= \(local_chunks \+ outlier_chunks \+ 1\) \* chunk_size = 24"
    with pytest.raises(ValueError, match=least):
        make_attention(ShadowKV(budget=23))
    make_attention(ShadowKV(budget=24))
    assert ShadowKV.bounded is False and not ShadowKV(budget=24).closed_form
