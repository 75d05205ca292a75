"""Long causal convolutions: ``naive`` (the spec) and ``fft`` (O(T log T))."""

from .fft import causal_conv_fft, causal_conv_fft_freq, kernel_rfft
from .naive import causal_conv_naive

__all__ = ["causal_conv_naive", "causal_conv_fft", "causal_conv_fft_freq", "kernel_rfft"]
