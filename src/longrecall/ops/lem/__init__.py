"""LEM's recurrence as a fused C++ CPU kernel (compiled on first use; the mixer's step loop is the
fallback and the spec)."""

from .fused import fused_lem_available, lem_recurrence_fused

__all__ = ["lem_recurrence_fused", "fused_lem_available"]
