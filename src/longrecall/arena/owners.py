"""Who and what wrote a result: the owner process of a claimed run, and the code and torch versions."""

from __future__ import annotations

import os
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

__all__ = ["default_owner", "owner_alive", "code_version", "torch_version"]


def default_owner() -> str:
    """``host:pid`` of the calling process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """False only when ``owner`` is a process on this host that no longer exists."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell for another machine: assume it is still working
    try:
        pid_int = int(pid)
    except ValueError:
        return False
    if pid_int <= 0:
        return False
    try:
        os.kill(pid_int, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


@lru_cache(maxsize=None)
def code_version() -> str:
    """``git describe --always --dirty`` of the package's repository, else the package version."""
    package_dir = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=package_dir, capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from .. import __version__

    return __version__


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch.__version__
