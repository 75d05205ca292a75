"""Rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864).

Positions are explicit integer tensors, not implied by a token's index in the cache: a KV cache
that evicts from the middle (sinks + window, heavy hitters) keeps each key rotated by its true
absolute position, so no re-rotation is ever needed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_angles(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (*positions.shape, head_dim // 2) for integer ``positions``."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., K/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :K/2], x[..., K/2:]) (the GPT-NeoX / Llama "rotate half" layout).

    x: (..., K); cos, sin broadcastable to (..., K/2). Computed in float32 or wider (float64 stays
    float64, so float64 checks of the parallel form against the step loop stay tight), returned in x's dtype.
    """
    half = x.shape[-1] // 2
    work = torch.promote_types(x.dtype, torch.float32)
    x1, x2 = x[..., :half].to(work), x[..., half:].to(work)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rotated.to(x.dtype)
