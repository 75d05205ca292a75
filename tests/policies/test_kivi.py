"""``kivi``: 2/4-bit keys per channel and values per token, packed; a full-precision residual window."""

import pytest
import torch

from longrecall.mixers.attention import Attention
from longrecall.policies.base import kept_positions
from longrecall.policies.kivi import KIVI, pack, quantise, unpack
from longrecall.protocol import state_nbytes

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


@pytest.mark.parametrize("bits", [2, 4])
def test_round_trip_error_is_at_most_half_a_step(bits):
    x = torch.randn(2, 3, 5, 32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    x[0, 0, 0, :, 0] = 1.5  # a constant channel: scale 0, exact
    for dim in (3, 4):  # per channel over a group of tokens (keys), per token over channels (values)
        codes, scale, lo = quantise(x, dim=dim, bits=bits)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
        error = (codes.double() * scale + lo - x).abs()
        assert (error <= scale / 2 * (1 + 1e-9) + 1e-12).all()
        assert (scale > 0).any()
    codes, scale, _ = quantise(x, dim=3, bits=bits)
    assert (scale[0, 0, 0, 0, 0] == 0) and (codes[0, 0, 0, :, 0] == 0).all()  # the constant channel
    codes = torch.randint(0, 2**bits, (4, 32, 8), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (4, 32 * bits // 8, 8) and packed.dtype == torch.uint8
    assert torch.equal(unpack(packed, bits), codes)


@pytest.mark.parametrize("mode", ["prefill", "step"])
def test_a_residual_window_longer_than_the_sequence_is_full_attention(mode):
    x = inputs(2, 40, seed=2)
    plain = make_attention()
    mixer = make_attention(KIVI(mode=mode, residual=64, group=8))
    y_ref, s_ref = plain(x)
    y, s = mixer(x)  # (step mode runs the step loop: equal to the parallel kernel up to rounding)
    # keys equal up to float64 rounding (the step loop rotates one token at a time)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0) and torch.allclose(s.k, s_ref.k, atol=1e-14, rtol=0)
    assert s.aux[-1].shape[2] == 0
    assert torch.equal(run_steps(mixer, x)[0], run_steps(plain, x)[0])


def expected_bytes(B, H, K, T, residual, group, bits, elem, value_group):
    n = max(T - residual, 0) // group  # quantised groups
    full = T - n * group
    per_group = 2 * group * bits // 8 * K + 2 * K * elem + 2 * group * (K // value_group) * elem + group * 4
    return B * H * (n * per_group + full * (2 * K * elem + 4)) + 8 * B


@pytest.mark.parametrize("bits", [2, 4])
def test_prefill_quantises_all_but_the_residual_and_counts_packed_bytes(bits):
    T, R, G = 22, 4, 4
    x = inputs(2, T + 4, seed=3)
    mixer = make_attention(KIVI(bits=bits, residual=R, group=G))
    plain = make_attention()
    y, state = mixer(x[:, :T])
    y_ref, full = plain(x[:, :T])
    assert torch.equal(y, y_ref), "the prompt itself attends in full precision"
    kc, ks, kz, vc, vs, vz, qpos = state.aux
    assert qpos.shape == (2, 2, 4, G) and kept_positions(state) == list(range(16, T))  # R <= 6 < R + G
    assert kc.shape == (2, 2, 4, G * bits // 8, 8) and kc.dtype == torch.uint8
    assert mixer.state_bytes(state) == state_nbytes(state) == expected_bytes(2, 2, 8, T, R, G, bits, 8, G)
    k, v, pos = mixer.kv_policy.policy.attend_view(state)
    assert torch.equal(pos, full.pos)
    key_err = (k - full.k).abs()[:, :, :16].reshape(2, 2, 4, G, 8)
    assert (key_err <= ks[:, :, :, None] / 2 + 1e-12).all()  # per channel of each group
    value_err = (v - full.v).abs()[:, :, :16].reshape(2, 2, 4, G, 2, 4)
    assert vs.shape == (2, 2, 4, G, 2)  # per token, per `group` = 4 channels (K = 8)
    assert (value_err <= vs[..., None] / 2 + 1e-12).all()
    assert torch.equal(k[:, :, 16:], full.k[:, :, 16:]) and torch.equal(v[:, :, 16:], full.v[:, :, 16:])
    # decoding quantises as the residual fills: after 2 steps, R + G = 8 exact tokens -> one more group
    for t in range(T, T + 2):
        _, state = mixer.step(x[:, t], state)
    assert state.aux[-1].shape[2] == 5 and kept_positions(state) == list(range(20, T + 2))


def test_step_mode_quantises_while_reading():
    x = inputs(2, 13, seed=4)
    mixer = make_attention(KIVI(mode="step", residual=2, group=4))
    y, _ = mixer(x)
    y_steps, _, states = run_steps(mixer, x)
    assert torch.allclose(y, y_steps, atol=1e-12)
    for t, state in enumerate(states):
        n = max(t + 1 - 2, 0) // 4
        assert state.aux[-1].shape[2] == n and state.pos.shape[2] == t + 1 - 4 * n
    assert not torch.allclose(y, make_attention()(x)[0], atol=1e-6), "step mode reads the quantised past"
    # a head width that is not a multiple of `group`: one value scale per token
    _, state = make_attention(KIVI(mode="step", residual=0, group=12))(x)
    assert state.aux[4].shape == (2, 2, 1, 12, 1) and state.pos.shape[2] == 1


def test_four_bits_are_closer_to_full_attention_than_two():
    x = inputs(2, 40, seed=5)
    y_ref = make_attention()(x)[0]
    errors = {bits: (make_attention(KIVI(mode="step", bits=bits, residual=4, group=8))(x)[0] - y_ref).abs().mean()
              for bits in (2, 4)}
    assert errors[4] < errors[2] / 2 and errors[2] < 0.25 * y_ref.abs().mean()


def test_bytes_at_512_tokens_against_a_float32_cache():
    torch.manual_seed(0)
    mixer, plain = Attention(64, n_heads=2), Attention(64, n_heads=2)  # float32, head width 32
    mixer.set_policy(KIVI())  # 2 bits, group 32, residual 32
    x = torch.randn(1, 512, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, state = mixer(x)
        _, full = plain(x)
    got, float32 = mixer.state_bytes(state), plain.state_bytes(full)
    assert got == expected_bytes(1, 2, 32, 512, 32, 32, 2, 4, 32) == 51208
    float16 = 512 * 2 * 2 * 32 * 2  # k and v of both heads at 2 bytes, no positions
    # 15 groups of 32 tokens at 2 bits (+ fp32 scale and min per key channel / value token, int32
    # positions) and 32 exact tokens: 0.192 of our float32 cache, 0.39 of a float16 k/v cache
    assert abs(got / float32 - 0.1923) < 1e-3 and abs(got / float16 - 0.3907) < 1e-3


@pytest.mark.parametrize("bits", [2, 4])
def test_registry_state_properties_while_quantising(bits):
    check_state_properties(lambda mode: make_attention(KIVI(mode=mode, bits=bits, residual=2, group=4)))


def test_invalid_fields_are_named():
    for field, bad in [("budget", 4), ("budget", 0.5), ("bits", 3), ("bits", 8), ("bits", True), ("bits", 2.0),
                       ("group", 0), ("group", 6), ("residual", -1), ("residual", 1.5)]:
        with pytest.raises(ValueError, match=field):
            KIVI(**{field: bad})
    KIVI(bits=4, group=6)  # 2 codes per byte at 4 bits
    assert KIVI().mode == "prefill" and not KIVI.bounded
