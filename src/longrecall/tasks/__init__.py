"""Synthetic tasks that probe memory. One file per task; the file name is the registry key.

The import line below is what registers them: add yours here.
"""

from . import (  # noqa: F401 - imported to register
    copy,
    delayed_copy,
    fact_update,
    induction,
    listops,
    mqar,
    multi_hop,
    niah,
    order_recall,
    passkey,
    selective_copy,
    set_disjointness,
)
from .base import IGNORE_INDEX, Batch, Task

__all__ = ["Batch", "IGNORE_INDEX", "Task"]
