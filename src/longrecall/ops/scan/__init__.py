"""Selective-scan kernels (Mamba-1): a sequential reference, the chunked PyTorch form and a fused
C++ CPU kernel (compiled on first use, with the chunked form as its fallback)."""

from .chunked import SCAN_METHODS, selective_scan_chunked
from .fused import fused_scan_available, selective_scan_fused
from .naive import selective_scan_naive

__all__ = ["selective_scan_naive", "selective_scan_chunked", "selective_scan_fused", "fused_scan_available",
           "SCAN_METHODS"]
