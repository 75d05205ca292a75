"""Rule-based resolution of time expressions in a query into a date range, and timestamp parsing.

Time-aware retrieval for conversational memory (issue 16: "rule-based resolution of 'last month', 'in May
2023' into a date filter"; LongMemEval, Wu et al. 2024, arXiv:2410.10813, proposes time-aware query
expansion, which narrows the search to a time range inferred from the question) needs the range a
question points at; here rules infer it, where LongMemEval asks a language model. The rules are
calendar-based and resolved against ``now`` (a date; the time of day is ignored), with ``today`` the date
of ``now``, weeks running Monday to Sunday (ISO 8601) and every range ``(start, end)`` including both ends:

==========================  ==========================================================
expression                  range
==========================  ==========================================================
``today``                   today
``yesterday``               the day before today
``N days ago``              the single day ``today - N``
``this week``/``last week`` the week holding today / the week before it
``N weeks ago``             the week holding ``today - 7N`` (``a week ago`` = last week)
``this month``/``last month``  the calendar month of today / the one before it
``N months ago``            the calendar month ``N`` months before today's
``this year``/``last year`` the calendar year of today / the one before it
``N years ago``             the calendar year ``today.year - N``
``May 2023``, ``in May 2023``, ``May, 2023``, ``Sept. 2023``  that calendar month
``2023`` (1900-2099)        that calendar year
==========================  ==========================================================

``N`` is digits or a word from ``a``/``an``/``one`` to ``twelve``. Matching ignores case and needs word
boundaries. When a query holds several expressions the leftmost wins (the longest at the same start), so
``May 2023`` is a month, not its year. A month without a year (``in May``) is not resolved: ``may`` is
also a verb, and which May is meant needs more context than a rule has. Dates use ``datetime`` only.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from ..validation import ArgumentError

__all__ = ["resolve_time_expression", "parse_timestamp", "as_date"]

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_timestamp(value, name: str = "timestamp") -> date | datetime:
    """An ISO 8601 string (``Z`` accepted for UTC), a ``datetime`` or a ``date``; a date-only string gives a
    ``date``, so callers can tell "no time of day" from midnight."""
    if isinstance(value, (date, datetime)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if _DATE_ONLY.match(text):
                return date.fromisoformat(text)
            return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            pass
    raise ArgumentError(name, "an ISO 8601 date or datetime string, a datetime or a date", repr(value))


def as_date(value, name: str = "timestamp") -> date:
    """The calendar date of ``parse_timestamp(value)`` as written (no time-zone conversion)."""
    moment = parse_timestamp(value, name)
    return moment.date() if isinstance(moment, datetime) else moment


_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_NUMBER = r"(\d+|" + "|".join(_NUMBER_WORDS) + r")"
_MONTHS = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10,
           "nov": 11, "dec": 12}
_MONTH = (r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
          r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")

_PATTERNS = {
    "day_word": re.compile(r"\b(today|yesterday)\b", re.IGNORECASE),
    "this_last": re.compile(r"\b(this|last)\s+(week|month|year)\b", re.IGNORECASE),
    "ago": re.compile(r"\b" + _NUMBER + r"\s+(day|week|month|year)s?\s+ago\b", re.IGNORECASE),
    "month_year": re.compile(r"\b(?:in\s+)?" + _MONTH + r"\.?,?\s+((?:19|20)\d{2})\b", re.IGNORECASE),
    "year": re.compile(r"\b(?:in\s+)?((?:19|20)\d{2})\b", re.IGNORECASE),
}


def _month_range(year: int, month: int) -> tuple[date, date]:
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return date(year, month, 1), following - timedelta(days=1)


def _months_before(day: date, n: int) -> tuple[date, date]:
    index = day.year * 12 + (day.month - 1) - n
    return _month_range(index // 12, index % 12 + 1)


def _week_of(day: date) -> tuple[date, date]:
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)


def _resolve(kind: str, match: re.Match, today: date) -> tuple[date, date]:
    groups = [g.lower() for g in match.groups()]
    if kind == "day_word":
        day = today if groups[0] == "today" else today - timedelta(days=1)
        return day, day
    if kind == "this_last":
        back = 1 if groups[0] == "last" else 0
        unit = groups[1]
    elif kind == "ago":
        back = int(groups[0]) if groups[0].isdigit() else _NUMBER_WORDS[groups[0]]
        unit = groups[1]
    elif kind == "month_year":
        return _month_range(int(groups[1]), _MONTHS[groups[0][:3]])
    else:  # year
        year = int(groups[0])
        return date(year, 1, 1), date(year, 12, 31)
    if unit == "day":
        day = today - timedelta(days=back)
        return day, day
    if unit == "week":
        return _week_of(today - timedelta(weeks=back))
    if unit == "month":
        return _months_before(today, back)
    return date(today.year - back, 1, 1), date(today.year - back, 12, 31)


def resolve_time_expression(text: str, now: date | datetime | str) -> tuple[date, date] | None:
    """The date range ``(start, end)``, both included, that the leftmost time expression in ``text`` names
    relative to ``now`` (see the module docstring for the rules), or None when it has none, or names a
    date outside what ``datetime`` represents."""
    if not isinstance(text, str):
        raise ArgumentError("text", "a str", repr(text))
    today = as_date(now, "now")
    found = [(m.start(), -(m.end() - m.start()), kind, m) for kind, pattern in _PATTERNS.items()
             for m in pattern.finditer(text)]
    if not found:
        return None
    _, _, kind, match = min(found, key=lambda entry: entry[:2])
    try:
        return _resolve(kind, match, today)
    except (OverflowError, ValueError):  # "5000 years ago", "99999 days ago"
        return None
