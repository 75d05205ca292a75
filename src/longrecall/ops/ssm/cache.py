"""Memoise a module's parameter-only quantities (discretisation, kernels) at inference; training is unaffected."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

import torch
from torch import Tensor

__all__ = ["ParamCache"]


class ParamCache:
    """``get(tensors, build, key)``: ``build()``, reused while no graph is recorded and ``tensors`` keep their values.

    With grad enabled and any tensor requiring grad (training), or ``enabled=False``, it always rebuilds.
    Otherwise the results (the ``size`` most recently used keys, e.g. one kernel per length) are valid for a
    snapshot of the tensors' values, compared at every call (O(size of the tensors); values, since
    ``p.data.add_`` does not bump ``p._version``), and built outside inference mode so they serve any later
    context.  Holds no graph and no per-sequence data: outputs stay a pure function of the parameters.
    ``key in cache``, ``iter(cache)`` and ``values()`` show what is held (for tests and inspection).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._snapshot: tuple[Tensor, ...] | None = None
        self._values: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, tensors: tuple[Tensor, ...], build: Callable[[], Any], key: Hashable = None, *,
            enabled: bool = True) -> Any:
        if not enabled or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            return build()
        snap = self._snapshot
        if snap is None or len(snap) != len(tensors) or not all(
            a.dtype == t.dtype and a.device == t.device and a.shape == t.shape and torch.equal(a, t)
            for a, t in zip(snap, tensors, strict=True)
        ):
            self._values.clear()
            with torch.inference_mode(False), torch.no_grad():
                self._snapshot = tuple(t.detach().clone() for t in tensors)
        value = self._values.pop(key, None)
        if value is None:
            with torch.inference_mode(False), torch.no_grad():
                value = build()
        self._values[key] = value  # most recently used last
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._values)

    def values(self) -> list[Any]:
        return list(self._values.values())
