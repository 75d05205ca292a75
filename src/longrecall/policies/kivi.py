"""``kivi``: asymmetric 2/4-bit quantisation, keys per channel and values per token, recent tokens exact."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_choice, check_int
from .base import Observation, Policy, PolicyKVState, keep_mask

BITS = (2, 4)


def quantise(x: Tensor, dim: int | tuple[int, ...], bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric min-max quantisation over ``dim``: (codes uint8, scale, min) with x ~ codes * scale + min."""
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    scale = (hi - lo) / (2**bits - 1)
    codes = torch.where(scale > 0, (x - lo) / scale.masked_fill(scale == 0, 1), torch.zeros_like(x))
    return codes.round().clamp(0, 2**bits - 1).to(torch.uint8), scale, lo


def pack(codes: Tensor, bits: int) -> Tensor:
    """(..., G, K) uint8 codes < 2**bits -> (..., G * bits / 8, K), 8 / bits codes per byte along G."""
    per = 8 // bits
    grouped = codes.reshape(*codes.shape[:-2], codes.shape[-2] // per, per, codes.shape[-1])
    shifts = torch.arange(per, device=codes.device, dtype=torch.uint8)[:, None] * bits
    return (grouped << shifts).sum(dim=-2, dtype=torch.uint8)


def unpack(packed: Tensor, bits: int) -> Tensor:
    """Inverse of ``pack``: (..., G * bits / 8, K) -> (..., G, K) uint8 codes."""
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8)[:, None] * bits
    codes = (packed[..., None, :] >> shifts) & (2**bits - 1)
    return codes.reshape(*packed.shape[:-2], packed.shape[-2] * per, packed.shape[-1])


@register_policy("kivi")
@dataclass
class KIVI(Policy):
    """KIVI (Liu et al. 2024): 2/4-bit keys per channel, values per token, recent tokens in full precision.

    "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache" (arXiv 2402.02750, ICML 2024);
    reference ``jy-yuan/KIVI:models/llama_kivi.py``, ``quant/new_pack.py``.  No token is evicted.  Once
    the full-precision recent tokens (``k, v, pos``) number ``residual + group``, the oldest ``group``
    are quantised (asymmetric min-max, ``c = round((x - min) / scale)``, ``scale = (max - min) /
    (2**bits - 1)``, error <= scale / 2) into ``aux``: keys per channel over the group's tokens (key
    outliers sit in fixed channels), values per token, per ``group`` channels when the head width is a
    multiple of ``group`` (the reference's layout), else over all channels.  Codes are packed 8 / bits
    per uint8 along the tokens, ``state_bytes`` counts them packed, scales are in the cache dtype (the
    reference: fp16 with fp16 caches); ``attend_view`` dequantises them.  ``aux = (key codes (B, H, n,
    group*bits/8, K) uint8, key scale, key min (B, H, n, K), value codes (as keys), value scale, value
    min (B, H, n, group, K / value group), pos (B, H, n, group) int32)``.  Deviation from the reference:
    one residual window for keys and values (aligned by token); KIVI keeps 0..residual-1 keys (it
    quantises the whole key residual once full) and exactly ``residual`` values, here ``residual`` to
    ``residual + group - 1`` tokens stay exact, never fewer.

    Args:
        budget: must be None (every token is kept; quantisation is the compression).
        mode: quantisation runs after attention at every call (``observe``), so decoding quantises as
            the residual fills in both modes; "prefill" (the paper's protocol, default): the prompt
            attends in full precision, then is quantised; "step": every token sees the quantised past.
        bits: 2 or 4 bits per key and value element (2, the paper's).
        group: tokens per quantised group (keys' per-channel statistics) and value channels per
            scale; a multiple of 8 / bits (32, the paper's).
        residual: most recent tokens always kept in full precision (32; paper: 32 to 128).
    """

    mode: str = "prefill"
    bits: int = 2
    group: int = 32
    residual: int = 32

    bounded = False

    def validate(self) -> None:
        super().validate()
        if self.budget is not None:
            raise ArgumentError("budget", "None for kivi (it keeps every token, quantised)", repr(self.budget))
        check_int(bits=self.bits)  # first: 2.0 == 2 would pass the choice
        check_choice("bits", self.bits, BITS)
        check_int(group=self.group)
        if self.group % (8 // self.bits):
            raise ArgumentError("group", f"a multiple of {8 // self.bits} (codes per byte at bits={self.bits})",
                                repr(self.group))
        check_int(residual=self.residual, minimum=0)

    def value_group(self, head_dim: int) -> int:
        return self.group if head_dim % self.group == 0 else head_dim

    def adopt(self, state) -> PolicyKVState:
        state = super().adopt(state)
        if not state.aux:
            B, H, _, K = state.k.shape
            z, G, gb, kg = state.k.new_zeros, self.group, self.group * self.bits // 8, K // self.value_group(K)
            codes = state.pos.new_zeros(B, H, 0, gb, K, dtype=torch.uint8)
            state = state._replace(aux=(codes, z(B, H, 0, K), z(B, H, 0, K), codes.clone(), z(B, H, 0, G, kg),
                                        z(B, H, 0, G, kg), state.pos.new_zeros(B, H, 0, G)))
        return state

    def observe(self, state: PolicyKVState, obs: Observation) -> PolicyKVState:
        """Quantise the oldest groups of the residual window once it holds ``residual + group`` tokens."""
        G = self.group
        valid = state.pos >= 0
        n = ((valid.sum(-1) - self.residual).clamp(min=0) // G) * G  # (B, H) tokens to quantise
        m = int(n.max()) if n.numel() else 0
        if m == 0:
            return state
        flush = valid & (valid.cumsum(-1) <= n[..., None])  # the oldest n valid tokens
        order = torch.sort((~flush).to(torch.int8), dim=-1, stable=True).indices[..., :m]
        ok = torch.arange(m, device=n.device) < n[..., None]  # (B, H, m): whole groups
        B, H, _, K = state.k.shape
        kg = self.value_group(K)

        def take(t: Tensor) -> Tensor:  # (B, H, m, K) -> (B, H, m / G, G, K), empty groups zeroed
            t = torch.gather(t, 2, order[..., None].expand(-1, -1, -1, K)) * ok[..., None]
            return t.reshape(B, H, m // G, G, K)

        kc, ks, kz = quantise(take(state.k), dim=3, bits=self.bits)  # per channel over the group's tokens
        v = take(state.v).reshape(B, H, m // G, G, K // kg, kg)
        vc, vs, vz = quantise(v, dim=5, bits=self.bits)  # per token (per kg channels)
        pos = torch.gather(state.pos, 2, order).masked_fill(~ok, -1).reshape(B, H, m // G, G)
        new = (pack(kc, self.bits), ks[:, :, :, 0], kz[:, :, :, 0], pack(vc.reshape(B, H, m // G, G, K), self.bits),
               vs[..., 0], vz[..., 0], pos)
        aux = tuple(torch.cat([old, fresh], 2) for old, fresh in zip(state.aux, new, strict=True))
        return keep_mask(state, valid & ~flush)._replace(aux=aux)

    def attend_view(self, state: PolicyKVState) -> tuple[Tensor, Tensor, Tensor]:
        kc, ks, kz, vc, vs, vz, qpos = state.aux
        if qpos.shape[2] == 0:
            return state.k, state.v, state.pos
        B, H, n, G = qpos.shape
        K = state.k.shape[3]
        k = unpack(kc, self.bits).to(ks.dtype) * ks[:, :, :, None] + kz[:, :, :, None]  # (B, H, n, G, K)
        kg = K // vs.shape[-1]
        v = unpack(vc, self.bits).to(vs.dtype).reshape(B, H, n, G, K // kg, kg) * vs[..., None] + vz[..., None]
        k, v = k.reshape(B, H, n * G, K).to(state.k.dtype), v.reshape(B, H, n * G, K).to(state.v.dtype)
        pos = torch.cat([qpos.reshape(B, H, n * G), state.pos], 2)
        return torch.cat([k, state.k], 2), torch.cat([v, state.v], 2), pos
