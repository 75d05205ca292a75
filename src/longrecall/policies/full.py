"""``full``: keep every token, the reference every other policy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError
from .base import Policy


@register_policy("full")
@dataclass
class Full(Policy):
    """Full attention: keep every token (no eviction), the reference for every other policy.

    Computes exactly what plain ``attention`` computes, with the same bytes (the registry suite checks
    it); only the state type differs (``PolicyKVState``, no statistics).

    Args:
        budget: must be None (the cache is unlimited).
        mode: "step" or "prefill"; both keep everything.
    """

    position_only = True
    bounded = False

    def validate(self) -> None:
        super().validate()
        if self.budget is not None:
            raise ArgumentError("budget", "None for the full policy (it keeps every token)", repr(self.budget))

    def keep_position(self, pos: Tensor, length: Tensor, budget: Tensor) -> Tensor:
        return pos >= 0
