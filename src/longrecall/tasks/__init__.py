"""Synthetic tasks that probe memory. One file per task; the file name is the registry key."""

from . import mqar  # noqa: F401  (registers "mqar")
from .base import IGNORE_INDEX, Batch, Task

__all__ = ["Batch", "IGNORE_INDEX", "Task"]
