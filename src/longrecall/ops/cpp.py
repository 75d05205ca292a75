"""Optional C++ CPU kernels, compiled on first use, with a clean fallback to the PyTorch forms.

Some recurrences are bound on a CPU by the memory traffic of tensors the PyTorch forms must
materialise (Mamba-1's selective scan writes and reads (B, T, E, N) tensors, 32x its activations),
not by arithmetic.  A small C++ kernel that keeps each row's state in registers removes that
traffic.  It is compiled here, on the machine that runs it, with ``torch.utils.cpp_extension.load``
(a C++ compiler and the ``ninja`` package; ~30 s once, then cached under ``TORCH_EXTENSIONS_DIR``).

The fallback is part of the contract: when the kernel cannot be built (no compiler, no ninja,
``LONGRECALL_CPP_KERNELS=0``), ``load_kernel`` returns None once, with one warning naming the
reason, and callers use their PyTorch form, which computes the same function (tests hold every
kernel to its sequential reference: outputs, final state and gradients).

The compile flags include ``-march=native`` (the cache key carries a hash of this CPU's flags, so a
cache copied to another machine is never loaded there) and ``-ffast-math`` for the compile step only
(it vectorises ``exp``; it is kept off the link line, so loading the library does not switch the
process to flush-denormals-to-zero, which tests check).
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path
from types import ModuleType

__all__ = ["load_kernel", "kernel_status", "ENV_FLAG"]

ENV_FLAG = "LONGRECALL_CPP_KERNELS"  # "0" disables every C++ kernel
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]

_loaded: dict[str, ModuleType | None] = {}
_status: dict[str, str] = {}


def _cpu_signature() -> str:
    """What the compiled code depends on beyond its source: machine, CPU flags and flags used."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()}|{flags}|{' '.join(CFLAGS)}"


def kernel_status() -> dict[str, str]:
    """``{kernel name: "compiled" | "disabled (...)" | "unavailable (...)"}`` for kernels asked for so far."""
    return dict(_status)


def load_kernel(name: str, source: str | Path) -> ModuleType | None:
    """The compiled extension for ``source`` (a .cpp file), or None when it cannot be built here."""
    if name in _loaded:
        return _loaded[name]
    module = None
    if os.environ.get(ENV_FLAG, "1").strip().lower() in ("0", "false", "no", "off"):
        _status[name] = f"disabled ({ENV_FLAG}=0)"
    else:
        source = Path(source)
        digest = hashlib.sha256(source.read_bytes() + _cpu_signature().encode()).hexdigest()[:12]
        try:
            from torch.utils.cpp_extension import load

            module = load(f"longrecall_{name}_{digest}", [str(source)], extra_cflags=CFLAGS,
                          extra_ldflags=LDFLAGS, verbose=False)
            _status[name] = "compiled"
        except Exception as error:  # no compiler, no ninja, a failed build: fall back
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _status[name] = f"unavailable ({reason})"
            warnings.warn(f"longrecall: the C++ kernel {name!r} could not be built ({reason}); using the PyTorch "
                          f"form instead (same results, slower on CPU). Set {ENV_FLAG}=0 to silence this.",
                          RuntimeWarning, stacklevel=2)
    _loaded[name] = module
    return module
