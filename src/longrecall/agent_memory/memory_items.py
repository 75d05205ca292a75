"""A memory store's item: its fields, their validation, and the SQLite schema that holds them.

``store.MemoryStore`` keeps plain items (issue 16: "write a turn/fact with time and speaker"): a text, a
``kind`` naming the retrieval unit it belongs to (``turn``, ``fact``, ``summary``, ``session``), a speaker,
a timestamp (ISO 8601; a naive one is ordered as UTC), a conversation id, the ids of the source turns it
came from, and JSON metadata. This module turns the arguments of a write into checked column values and
a row back into a ``MemoryItem``; it has no connection and no state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from ..validation import ArgumentError, check_choice
from .time_expressions import parse_timestamp

__all__ = ["KINDS", "MemoryItem", "Retrieved", "MemoryStoreError", "row_for_write", "item_from_row", "holds_store"]

KINDS = ("turn", "fact", "summary", "session")
APP = "longrecall.agent_memory"  # the store's meta table names its owner, so a foreign database is refused
SCHEMA_VERSION = 1
SQLITE_HEADER = b"SQLite format 3\x00"
COLUMNS = ("id, text, kind, speaker, timestamp, conversation_id, source_ids, metadata, version, retrieval_count, "
            "last_retrieved")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # seq never reuses a forgotten item's number (AUTOINCREMENT), so a generated id is never handed out twice
    "CREATE TABLE IF NOT EXISTS memory_items (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, "
    "text TEXT NOT NULL, kind TEXT NOT NULL, speaker TEXT, timestamp TEXT, ts_utc REAL, conversation_id TEXT, "
    "source_ids TEXT NOT NULL, metadata TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1, "
    "text_bytes INTEGER NOT NULL, retrieval_count INTEGER NOT NULL DEFAULT 0, "
    "last_retrieved INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS memory_items_scope ON memory_items (conversation_id, kind)",
)


class MemoryStoreError(ValueError):
    """A file that is not a memory store, a newer schema, or a store used after ``close()``."""


@dataclass(frozen=True)
class MemoryItem:
    """One remembered item. ``version`` starts at 1 and counts updates; ``last_retrieved`` is the store's
    retrieval clock at the last ``retrieve`` that returned it (0: never), ``retrieval_count`` how often."""

    id: str
    text: str
    kind: str
    speaker: str | None
    timestamp: str | None
    conversation_id: str | None
    source_ids: tuple[str, ...]
    metadata: dict
    version: int
    retrieval_count: int
    last_retrieved: int

    @property
    def nbytes(self) -> int:
        """The UTF-8 bytes of the text, what the store counts for this item."""
        return len(self.text.encode("utf-8"))


class Retrieved(NamedTuple):
    item: MemoryItem
    score: float


def item_from_row(row: Sequence) -> MemoryItem:
    return MemoryItem(row[0], row[1], row[2], row[3], row[4], row[5], tuple(json.loads(row[6])), json.loads(row[7]),
                      row[8], row[9], row[10])


def utc_seconds(moment: date | datetime) -> float:
    """Seconds since the epoch; a naive datetime or a date is read as UTC, so every timestamp orders."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def normalise_kinds(kinds: str | Iterable[str] | None, name: str = "kinds") -> tuple[str, ...] | None:
    """None (every kind), or the kinds as a tuple in ``KINDS`` order, so equal sets give equal index keys."""
    if kinds is None:
        return None
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise ArgumentError(name, f"None or a non-empty subset of {', '.join(KINDS)}", "()")
    for kind in kinds:
        check_choice(name, kind, KINDS)
    return tuple(sorted(set(kinds), key=KINDS.index))


def check_optional_str(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ArgumentError(name, "None or a str", repr(value))


def metadata_json(metadata: Any) -> str:
    """The metadata as canonical JSON (sorted keys; NaN and infinities refused, as JSON has none)."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict) or not all(isinstance(key, str) for key in metadata):
        raise ArgumentError("metadata", "None or a dict with str keys", repr(metadata)[:200])
    try:
        return json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ArgumentError("metadata", "a JSON-serialisable dict", f"{metadata!r:.200} ({error})") from None


def row_for_write(text: str, kind: str = "turn", speaker: str | None = None, timestamp: Any = None,
                  conversation_id: str | None = None, source_ids: Iterable[str] = (), metadata: dict | None = None,
                  item_id: str | None = None) -> tuple:
    """The validated column values of one new item."""
    if not isinstance(text, str):
        raise ArgumentError("text", "a str", repr(text)[:200])
    check_choice("kind", kind, KINDS)
    check_optional_str("speaker", speaker)
    check_optional_str("conversation_id", conversation_id)
    check_optional_str("item_id", item_id)
    if item_id is not None and (not item_id or is_generated_id(item_id)):
        raise ArgumentError("item_id", "None or a non-empty str not of the form 'item-<number>' (generated ids)",
                            repr(item_id))
    if isinstance(source_ids, str) or not isinstance(source_ids, Iterable):
        raise ArgumentError("source_ids", "an iterable of str ids", repr(source_ids)[:200])
    source_ids = list(source_ids)  # a generator is read once, here
    if not all(isinstance(s, str) for s in source_ids):
        raise ArgumentError("source_ids", "an iterable of str ids", repr(source_ids)[:200])
    stamp, seconds = None, None
    if timestamp is not None:
        moment = parse_timestamp(timestamp, "timestamp")
        stamp, seconds = moment.isoformat(), utc_seconds(moment)
    return (item_id, text, kind, speaker, stamp, seconds, conversation_id, json.dumps(source_ids),
            metadata_json(metadata), len(text.encode("utf-8")))


def is_generated_id(item_id: str) -> bool:
    """``item-<n>``: the form the store gives an item written without an id (reserved for it)."""
    return item_id.startswith("item-") and item_id[5:].isdigit()


def scope_clause(conversation_id: str | None, kinds: tuple[str, ...] | None) -> tuple[str, list]:
    """The SQL condition (and its parameters) selecting one conversation's items of some kinds (None: all)."""
    check_optional_str("conversation_id", conversation_id)
    clauses, params = ["1"], []
    if conversation_id is not None:
        clauses.append("conversation_id = ?")
        params.append(conversation_id)
    if kinds is not None:
        clauses.append(f"kind IN ({', '.join('?' * len(kinds))})")
        params.extend(kinds)
    return " AND ".join(clauses), params


def check_store_file(path: Path) -> None:
    """Refuse a directory, or a non-empty file that is not SQLite, before SQLite opens (and writes to) it."""
    if path.is_dir():
        raise MemoryStoreError(f"{path} is a directory, not a memory store file")
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            if f.read(16) != SQLITE_HEADER:
                raise MemoryStoreError(f"{path} is not a SQLite file; refusing to open it")


def holds_store(conn: sqlite3.Connection, path: Any) -> bool:
    """True for a memory store of a known schema, False for an empty database; raises for anything else."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "memory_meta" not in tables:
        if tables - {"sqlite_sequence"}:
            raise MemoryStoreError(f"{path} holds other tables ({', '.join(sorted(tables))}), not a memory store; "
                                   "refusing to write to it")
        return False
    meta = dict(conn.execute("SELECT key, value FROM memory_meta").fetchall())
    if meta.get("app") != APP:
        raise MemoryStoreError(f"{path} is not a longrecall memory store (app={meta.get('app')!r})")
    if int(meta.get("schema_version", "0")) > SCHEMA_VERSION:
        raise MemoryStoreError(f"{path} has schema {meta['schema_version']}, newer than this code's "
                               f"{SCHEMA_VERSION}: upgrade longrecall")
    return True


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables, and the counters the store keeps in ``memory_meta``: ``generation`` (bumped by every
    content write, so a process knows when its index is stale) and ``retrieval_clock``."""
    for statement in SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO memory_meta (key, value) VALUES (?, ?)",
                     [("app", APP), ("schema_version", str(SCHEMA_VERSION)), ("generation", "0"),
                      ("retrieval_clock", "0")])
