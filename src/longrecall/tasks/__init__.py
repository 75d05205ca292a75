"""Synthetic tasks that probe memory. One file per task; the file name is the registry key.

The import line below is what registers them: add yours here.
"""

from . import copy, delayed_copy, listops, mqar, niah, order_recall, passkey, set_disjointness  # noqa: F401
from .base import IGNORE_INDEX, Batch, Task

__all__ = ["Batch", "IGNORE_INDEX", "Task"]
