"""Our linear-attention kernels against flash-linear-attention's pure-PyTorch references.

fla's Triton kernels need a GPU driver, but its ``naive`` reference functions are plain PyTorch and
run on this CPU once ``flash-linear-attention`` and ``triton`` are installed (the ``compare`` extra;
see cpu_performance_notes.md section 1). Each case feeds the same tensors to our kernel (chunked,
the default path the mixers use) and to fla's reference for the same recurrence, checks that
outputs and final states agree, and times both in the same process, same run:

| case | ours | fla reference |
|---|---|---|
| scalar decay (RetNet, Mamba-2/SSD) | ``linear_attn`` | ``simple_gla.naive.naive_chunk_simple_gla`` |
| per-channel decay (GLA) | ``linear_attn`` | ``gla.naive.naive_recurrent_gla`` |
| decay + bonus (RWKV-6) | ``linear_attn(bonus=u)`` | ``rwkv6.recurrent_naive.naive_recurrent_rwkv6`` |
| delta rule (DeltaNet) | ``delta_rule`` | ``delta_rule.naive.delta_rule_chunkwise`` |
| gated delta rule (Gated DeltaNet) | ``delta_rule(log_decay=g)`` | \
``gated_delta_rule.naive.naive_chunk_gated_delta_rule`` |

The layouts differ (fla's are (B, T, H, K) for some functions and (B, H, T, K) for others) and some
of fla's references scale q by K^-0.5 internally; each case adapts to that so both sides compute
the same function. Quote the ratio, not the absolute times.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.linear_attn import delta_rule, linear_attn
from .speed import _median_time

__all__ = ["Case", "fla_available", "fla_cases", "compare", "to_markdown"]


@dataclass
class Case:
    """One comparison: ``make(B, H, T, K, V, generator)`` -> inputs; both sides -> (o (B,H,T,V), S)."""

    name: str
    reference: str
    make: Callable[..., dict]
    ours: Callable[[dict], tuple[Tensor, Tensor]]
    theirs: Callable[[dict], tuple[Tensor, Tensor]]
    multiple_of: int = 1  # T must be a multiple of this for the reference (fla's chunkwise delta rule)


def fla_available() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fla.ops.delta_rule.naive  # noqa: F401 - a probe: needs triton installed, not a GPU
        return True
    except Exception:  # ImportError, or triton failing to initialise
        return False


def _qkv(B, H, T, K, V, g: torch.Generator) -> dict:
    q = torch.randn(B, H, T, K, generator=g) * K ** -0.5
    k = torch.randn(B, H, T, K, generator=g)
    return {"q": q, "k": k, "v": torch.randn(B, H, T, V, generator=g)}


def _bthk(x: Tensor) -> Tensor:  # (B, H, T, ...) -> (B, T, H, ...)
    return x.transpose(1, 2).contiguous()


def fla_cases() -> list[Case]:
    """The five comparisons; raises ImportError with the install line when fla cannot be imported."""
    if not fla_available():
        raise ImportError("flash-linear-attention's references need `pip install flash-linear-attention triton` "
                          "(the `compare` extra); they run on CPU, the Triton kernels do not")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fla.ops.delta_rule.naive import delta_rule_chunkwise
        from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
        from fla.ops.gla.naive import naive_recurrent_gla
        from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6
        from fla.ops.simple_gla.naive import naive_chunk_simple_gla

    def scalar(B, H, T, K, V, g):
        return {**_qkv(B, H, T, K, V, g), "g": -F.softplus(torch.randn(B, H, T, generator=g)) * 0.1}

    def channel(B, H, T, K, V, g):
        return {**_qkv(B, H, T, K, V, g), "g": F.logsigmoid(torch.randn(B, H, T, K, generator=g)) / 16}

    def bonus(B, H, T, K, V, g):
        return {**channel(B, H, T, K, V, g), "u": torch.randn(H, K, generator=g) * 0.5}

    def delta(B, H, T, K, V, g):
        x = _qkv(B, H, T, K, V, g)
        x["k"] = F.normalize(x["k"], dim=-1)
        return {**x, "beta": torch.sigmoid(torch.randn(B, H, T, generator=g)),
                "g": -F.softplus(torch.randn(B, H, T, generator=g)) * 0.1}

    def fla_scalar(x):
        o, S = naive_chunk_simple_gla(_bthk(x["q"]), _bthk(x["k"]), _bthk(x["v"]), _bthk(x["g"]),
                                      output_final_state=True, chunk_size=64, scale=1.0)
        return _bthk(o), S

    def fla_gla(x):  # scales q by K^-0.5 itself
        K = x["q"].shape[-1]
        o, S = naive_recurrent_gla(_bthk(x["q"] * K ** 0.5), _bthk(x["k"]), _bthk(x["v"]), _bthk(x["g"]),
                                   output_final_state=True)
        return _bthk(o), S

    def fla_rwkv6(x):
        return naive_recurrent_rwkv6(x["q"], x["k"], x["v"], x["g"], x["u"], scale=1.0, output_final_state=True)

    def fla_delta(x):  # scales q by K^-0.5 itself; needs T % chunk_size == 0
        K = x["q"].shape[-1]
        return delta_rule_chunkwise(x["q"] * K ** 0.5, x["k"], x["v"], x["beta"], chunk_size=32)

    def fla_gated_delta(x):
        o, S = naive_chunk_gated_delta_rule(_bthk(x["q"]), _bthk(x["k"]), _bthk(x["v"]), _bthk(x["g"]),
                                            _bthk(x["beta"]), chunk_size=64, scale=1.0, output_final_state=True)
        return _bthk(o), S

    return [
        Case("scalar decay (RetNet, Mamba-2/SSD)", "fla.ops.simple_gla.naive.naive_chunk_simple_gla", scalar,
             lambda x: linear_attn(x["q"], x["k"], x["v"], x["g"]), fla_scalar),
        Case("per-channel decay (GLA)", "fla.ops.gla.naive.naive_recurrent_gla", channel,
             lambda x: linear_attn(x["q"], x["k"], x["v"], x["g"]), fla_gla),
        Case("decay + bonus (RWKV-6)", "fla.ops.rwkv6.recurrent_naive.naive_recurrent_rwkv6", bonus,
             lambda x: linear_attn(x["q"], x["k"], x["v"], x["g"], bonus=x["u"]), fla_rwkv6),
        Case("delta rule (DeltaNet)", "fla.ops.delta_rule.naive.delta_rule_chunkwise", delta,
             lambda x: delta_rule(x["q"], x["k"], x["v"], x["beta"]), fla_delta, multiple_of=32),
        Case("gated delta rule (Gated DeltaNet)", "fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule",
             delta, lambda x: delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"]), fla_gated_delta),
    ]


def compare(cases: list[Case], lengths: list[int], *, batch: int = 1, heads: int = 2, key_dim: int = 64,
            value_dim: int = 64, repeats: int = 3, threads: int = 1, seed: int = 0) -> list[dict]:
    """Forward time and agreement of ours vs theirs for every case and length (float32, no grad)."""
    torch.set_num_threads(threads)
    rows = []
    for case in cases:
        for T in lengths:
            if T % case.multiple_of:
                raise ValueError(f"lengths: {case.name}'s reference needs T divisible by {case.multiple_of}, got {T}")
            x = case.make(batch, heads, T, key_dim, value_dim, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                o_ours, s_ours = case.ours(x)
                o_theirs, s_theirs = case.theirs(x)
                ours = _median_time(partial(case.ours, x), repeats)
                theirs = _median_time(partial(case.theirs, x), repeats)
            scale = float(o_theirs.abs().max())
            rows.append({
                "case": case.name, "reference": case.reference, "T": T, "batch": batch, "heads": heads,
                "key_dim": key_dim, "value_dim": value_dim,
                "ours_tokens_per_s": batch * T / ours, "theirs_tokens_per_s": batch * T / theirs,
                "speedup": theirs / ours,
                "max_abs_diff_output": float((o_ours.float() - o_theirs.float()).abs().max()),
                "max_abs_diff_state": float((s_ours.float() - s_theirs.float()).abs().max()),
                "output_scale": scale,
            })
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| case | T | ours tok/s | fla reference tok/s | ours / reference speed | "
             "max abs diff (output, state) | reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['T']} | {r['ours_tokens_per_s']:,.0f} | {r['theirs_tokens_per_s']:,.0f} | "
                     f"{r['speedup']:.1f}x | {r['max_abs_diff_output']:.1e}, {r['max_abs_diff_state']:.1e} | "
                     f"`{r['reference']}` |")
    return "\n".join(lines) + "\n"
