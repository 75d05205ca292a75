"""Diagonal linear scans ``x_t = exp(log_decay) ⊙ x_{t-1} + b_t`` (real or complex, time-invariant decay):
``naive`` (the spec) and ``chunked`` (about 2 sqrt(T) small steps)."""

from .chunked import diag_scan
from .naive import diag_scan_naive

__all__ = ["diag_scan", "diag_scan_naive"]
