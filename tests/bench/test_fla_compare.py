"""The fla comparison harness: plumbing with our own reference as the 'other' implementation (runs
everywhere), and the real comparison where flash-linear-attention's references are installed."""

import pytest
import torch

from longrecall.bench import fla_compare
from longrecall.bench.fla_compare import Case, compare, fla_available, to_markdown
from longrecall.ops.linear_attn import linear_attn, linear_attn_naive


def _make(B, H, T, K, V, g):
    return {"q": torch.randn(B, H, T, K, generator=g), "k": torch.randn(B, H, T, K, generator=g),
            "v": torch.randn(B, H, T, V, generator=g), "g": -torch.rand(B, H, T, generator=g)}


def test_harness_reports_agreement_and_speed():
    case = Case("scalar decay", "our naive reference", _make,
                lambda x: linear_attn(x["q"], x["k"], x["v"], x["g"], chunk_size=16),
                lambda x: linear_attn_naive(x["q"], x["k"], x["v"], x["g"]))
    rows = compare([case], [40], heads=2, key_dim=8, value_dim=8, repeats=1)
    (row,) = rows
    assert row["T"] == 40 and row["max_abs_diff_output"] < 1e-4 and row["max_abs_diff_state"] < 1e-4
    assert row["speedup"] > 0 and row["ours_tokens_per_s"] > 0
    assert "| scalar decay | 40 |" in to_markdown(rows)


def test_lengths_the_reference_cannot_take_are_rejected():
    case = Case("delta", "ref", _make, lambda x: None, lambda x: None, multiple_of=32)
    with pytest.raises(ValueError, match="lengths"):
        compare([case], [40])


def test_cli_without_fla_says_how_to_install(monkeypatch, capsys):
    from longrecall.cli import main

    monkeypatch.setattr(fla_compare, "fla_available", lambda: False)
    assert main(["bench", "--compare-fla"]) == 2
    assert "pip install flash-linear-attention triton" in capsys.readouterr().out


@pytest.mark.skipif(not fla_available(), reason="flash-linear-attention + triton not installed (the `compare` extra)")
def test_our_kernels_compute_what_fla_references_compute():
    rows = compare(fla_compare.fla_cases(), [64, 96], heads=2, key_dim=16, value_dim=24, repeats=1)
    for row in rows:
        assert row["max_abs_diff_output"] < 1e-4 * max(1.0, row["output_scale"]), row
        assert row["max_abs_diff_state"] < 1e-4, row
