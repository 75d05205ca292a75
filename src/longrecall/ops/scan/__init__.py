"""Selective-scan kernels (Mamba-1): a sequential reference and the chunked fast path."""

from .chunked import SCAN_METHODS, selective_scan_chunked
from .naive import selective_scan_naive

__all__ = ["selective_scan_naive", "selective_scan_chunked", "SCAN_METHODS"]
