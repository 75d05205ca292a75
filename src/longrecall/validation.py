"""Argument checks shared by mixers, tasks, policies and the config.

Every check raises an ``ArgumentError`` whose ``arg`` names the argument, so a caller (the arena's
spec validation) can point at the offending key without reading the message::

    check_int(n_heads=n_heads, chunk_size=chunk_size)   # n_heads must be a positive int, got 0
    check_ratio("power_a", power_a, low_open=True)      # power_a must be a number in (0, 1], got 2.0
    raise ArgumentError("dt_min", "<= dt_max", f"dt_min={dt_min} > dt_max={dt_max}")  # a relation

Checks that take several values at once take them as keywords; the others take ``(name, value, ...)``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ArgumentError", "is_int", "is_number", "check_int", "check_positive", "check_number", "check_ratio",
           "check_bool", "check_choice", "check_divisor"]


class ArgumentError(ValueError):
    """A bad argument value: ``"{arg} must be {accepted}, got {got}"``.

    Attributes:
        arg: the argument's name.
        accepted: what it accepts, e.g. ``"a positive int"``.
        got: what was given, as text (a repr, or the values a relation compares).
    """

    def __init__(self, arg: str, accepted: str, got: str):
        super().__init__(f"{arg} must be {accepted}, got {got}")
        self.arg, self.accepted, self.got = arg, accepted, got

    def __reduce__(self):  # picklable, as errors raised in Ray or multiprocessing workers must be
        return type(self), (self.arg, self.accepted, self.got)


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def check_int(*, minimum: int = 1, maximum: int | None = None, allow_none: bool = False, **values: Any) -> None:
    """Each value an int (not a bool) in ``[minimum, maximum]``; None too when ``allow_none``."""
    if maximum is not None:
        accepted = f"an int in [{minimum}, {maximum}]"
    else:
        accepted = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
    if allow_none:
        accepted = "None or " + accepted
    for name, value in values.items():
        if allow_none and value is None:
            continue
        if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
            raise ArgumentError(name, accepted, repr(value))


def check_positive(**values: Any) -> None:
    """Each value a number > 0 (sizes and rates; NaN is rejected)."""
    for name, value in values.items():
        if not is_number(value) or not value > 0:
            raise ArgumentError(name, "a positive number", repr(value))


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
                 allow_none: bool = False) -> None:
    """A number in the interval from ``low`` to ``high``, each end closed unless ``*_open``."""
    if allow_none and value is None:
        return
    inside = is_number(value) and (low < value if low_open else low <= value)
    if inside and (value < high if high_open else value <= high):
        return
    if high == math.inf:
        accepted = f"a {'finite ' if high_open else ''}number {'>' if low_open else '>='} {_text(low)}"
    else:
        accepted = f"a number in {'(' if low_open else '['}{_text(low)}, {_text(high)}{')' if high_open else ']'}"
    raise ArgumentError(name, ("None or " if allow_none else "") + accepted, repr(value))


def check_ratio(name: str, value: Any, *, low_open: bool = False, high_open: bool = False,
                allow_none: bool = False) -> None:
    """A number in [0, 1] (ends open as asked)."""
    check_number(name, value, 0, 1, low_open=low_open, high_open=high_open, allow_none=allow_none)


def check_bool(**values: Any) -> None:
    """Each value exactly ``True`` or ``False`` (not 0 or 1)."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ArgumentError(name, "True or False", repr(value))


def check_choice(name: str, value: Any, choices: tuple | list) -> None:
    """One of a closed set of values (listed in the message)."""
    if value not in choices:
        raise ArgumentError(name, f"one of {', '.join(map(repr, choices))}", repr(value))


def check_divisor(name: str, value: Any, total: int, total_name: str) -> None:
    """A positive int that divides ``total`` (heads dividing a width)."""
    if not is_int(value) or value <= 0 or total % value:
        raise ArgumentError(name, f"an int dividing {total_name}={total}", repr(value))
