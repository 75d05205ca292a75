"""Name -> class registries for mixers, KV-cache policies and tasks.

Registration happens at the definition site with a decorator; discovery is by the explicit import
lines in ``mixers/__init__.py`` (and ``tasks/__init__.py``), so there is one list to read::

    @register_mixer("s4d")
    class S4D(Mixer): ...

Keys are short lowercase names equal to the file name.  Unknown names raise a ``KeyError`` with
close matches and every registered name.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """A named collection of classes of one kind (``"mixer"``, ``"policy"``, ``"task"``)."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        if not isinstance(name, str) or not _KEY.match(name):
            raise ValueError(f"{self.kind} name must be lowercase letters, digits and '_', got {name!r}")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name].__name__}")
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}, got {cls!r}")
            cls.registry_key = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise KeyError(self._unknown_message(name)) from None

    def _unknown_message(self, name: object) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        available = ", ".join(names) if names else "(none registered yet)"
        return f"Unknown {self.kind} {name!r}.{hint} Available {self.kind}s: {available}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, type[T]]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _mixer_base():
    from .protocol import Mixer

    return Mixer


MIXERS: Registry = Registry("mixer", _mixer_base())
TASKS: Registry = Registry("task")
POLICIES: Registry = Registry("policy")  # filled by the KV-cache policies issue

register_mixer = MIXERS.register
register_task = TASKS.register
register_policy = POLICIES.register


def get_mixer(name: str) -> type:
    return MIXERS.get(name)


def get_task(name: str) -> type:
    return TASKS.get(name)


def get_policy(name: str) -> type:
    return POLICIES.get(name)
