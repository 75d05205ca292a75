"""A durable text memory for agents: items written, updated, forgotten and retrieved, kept in SQLite.

    store = MemoryStore("memory.sqlite", retriever=BM25Retriever(), index_kinds=("turn",))
    store.write("I moved to Lisbon in May.", kind="turn", speaker="Ana", timestamp="2023-05-08T13:56:00",
                conversation_id="c1", source_ids=["D1:3"])
    for item, score in store.retrieve("where does Ana live?", k=5, conversation_id="c1"): ...
    store.forget_to_budget(64_000, order="least_retrieved")   # drop items until the text fits
    store.bytes()                                             # UTF-8 text of live items + the index

The store of issue 16 item 1: the operations of the agent memories it surveys (MemGPT/Letta's archival
memory, Packer et al. 2023, arXiv:2310.08560; mem0's add/update/delete/search, Chhikara et al. 2025,
arXiv:2504.19413) on SQLite, the embedded default. Items are plain (``memory_items``): nothing here knows
a benchmark's data model.

Guarantees:

* Durable: the file is in WAL mode with ``synchronous = FULL``, so a committed write survives a crash of
  the process (and of the machine); every write (including a batch from ``write_many``) is one
  ``BEGIN IMMEDIATE`` transaction, all or nothing.
* Concurrent readers: each thread and each process opens its own connection (a forked child never
  reuses its parent's). In WAL mode readers never block the writer nor see a half-written transaction;
  ``read_snapshot()`` holds one consistent view across several reads.
* Forgetting deletes the rows, with ``secure_delete`` on so their text is overwritten in the file too.
* ``":memory:"`` keeps everything in one connection that threads share under a lock (tests, throwaway
  runs): not shared across processes, gone when closed.

Retrieval goes through a pluggable ``retrievers.Retriever``: the items of the ``index_kinds`` (the
retrieval unit: turns, sessions, facts or summaries) in the requested conversation are indexed on first
use, and again only after the content changed (a counter bumped by every content write, in any process).
``retrieve`` records which items it returned (a retrieval clock) for forgetting the least recently used.

``bytes()`` is what the memory keeps: the UTF-8 bytes of the text of its live items, plus the index the
retriever holds for that scope (its ``nbytes()``) when there is a retriever; ``byte_report()`` says whether
the index was counted. Speakers, timestamps, ids and metadata are bookkeeping and are not counted.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..validation import ArgumentError, check_choice, check_int
from .memory_items import (
    COLUMNS,
    KINDS,
    MemoryItem,
    MemoryStoreError,
    Retrieved,
    check_store_file,
    create_schema,
    holds_store,
    item_from_row,
    metadata_json,
    normalise_kinds,
    row_for_write,
    scope_clause,
    utc_seconds,
)
from .retrievers import Retriever
from .time_expressions import parse_timestamp

__all__ = ["MemoryStore", "MemoryItem", "Retrieved", "MemoryStoreError", "KINDS", "FORGET_ORDERS"]

FORGET_ORDERS = ("oldest", "least_retrieved")
BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's write before failing


class MemoryStore:
    """A memory of plain text items in one SQLite file (or ``":memory:"``); see the module docstring.

    ``retriever`` answers ``retrieve`` (None: a store without retrieval); ``index_kinds`` are the kinds it
    indexes, the retrieval unit (``"turn"``, ``("fact", "summary")``, ...; None: every kind).
    """

    def __init__(self, path: str | Path = ":memory:", *, retriever: Retriever | None = None,
                 index_kinds: str | Iterable[str] = ("turn",)):
        if retriever is not None and not isinstance(retriever, Retriever):
            raise ArgumentError("retriever", "None or an object with index, search and nbytes", repr(retriever))
        self.in_memory = str(path) == ":memory:"
        self.path = str(path) if self.in_memory else Path(path)
        self.retriever = retriever
        self.index_kinds = normalise_kinds(index_kinds, "index_kinds")
        self._lock = threading.RLock()  # the retriever's index; in memory mode, the one connection too
        self._local = threading.local()
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._shared: sqlite3.Connection | None = None
        self._index_key: tuple | None = None
        self._closed = False
        if not self.in_memory:
            check_store_file(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._conn()
            holds_store(conn, self.path)  # read-only: a foreign database is refused before anything is written
            if not self.in_memory:
                conn.execute("PRAGMA journal_mode = WAL")
            with self._write() as conn:
                if not holds_store(conn, self.path):  # re-checked under the write lock: another process may
                    create_schema(conn)                # have created it meanwhile
        except BaseException:
            self.close()
            raise

    # -- connections and transactions -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() can close every thread's connection; each is used by one
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
        self._connections.append((os.getpid(), conn))
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise MemoryStoreError(f"the memory store {self.path} is closed")
        if self.in_memory:
            if self._shared is None:
                self._shared = self._connect()
            return self._shared
        if getattr(self._local, "pid", None) != os.getpid():  # a new thread, or a forked child
            self._local.conn, self._local.pid = self._connect(), os.getpid()
        return self._local.conn

    def _guard(self):
        return self._lock if self.in_memory else nullcontext()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._guard():
            conn = self._conn()
            if conn.in_transaction:
                raise MemoryStoreError("cannot write inside read_snapshot(): leave the snapshot first")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite rolls some failures back itself
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read_snapshot(self) -> Iterator["MemoryStore"]:
        """Reads inside the block see one consistent state of the store (a WAL read transaction)."""
        with self._guard():
            conn = self._conn()
            if conn.in_transaction:  # nested: the outer snapshot holds
                yield self
                return
            conn.execute("BEGIN")
            try:
                yield self
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @staticmethod
    def _bump(conn: sqlite3.Connection, key: str = "generation") -> int:
        conn.execute("UPDATE memory_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ?", (key,))
        return int(conn.execute("SELECT value FROM memory_meta WHERE key = ?", (key,)).fetchone()[0])

    def close(self) -> None:
        """Close this process's connections; the store cannot be used afterwards."""
        with self._lock:
            for pid, conn in self._connections:
                if pid == os.getpid():
                    conn.close()
            self._connections, self._shared, self._closed = [], None, True

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, index_kinds={self.index_kinds})"

    # -- writing and updating ---------------------------------------------------------------------

    def write(self, text: str, *, kind: str = "turn", speaker: str | None = None, timestamp: Any = None,
              conversation_id: str | None = None, source_ids: Iterable[str] = (), metadata: dict | None = None,
              item_id: str | None = None) -> str:
        """Add one item; returns its id (``item_id``, or a generated ``item-<n>``). ``timestamp`` is an ISO
        8601 string, a datetime or a date (stored as ISO; a naive one is ordered as UTC)."""
        return self.write_many([dict(text=text, kind=kind, speaker=speaker, timestamp=timestamp,
                                     conversation_id=conversation_id, source_ids=source_ids, metadata=metadata,
                                     item_id=item_id)])[0]

    def write_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Add several items (mappings with ``write``'s argument names) in one transaction; returns their ids."""
        rows = []
        for entry in items:
            if not isinstance(entry, Mapping):
                raise ArgumentError("items", "mappings with write()'s argument names", repr(entry)[:200])
            try:
                rows.append(row_for_write(**entry))
            except TypeError as error:  # an unknown or missing key
                raise ArgumentError("items", "mappings with write()'s argument names (text required)",
                                    f"{sorted(entry)} ({error})") from None
        ids = []
        with self._write() as conn:
            for row in rows:
                try:
                    seq = conn.execute("INSERT INTO memory_items (id, text, kind, speaker, timestamp, ts_utc, "
                                       "conversation_id, source_ids, metadata, text_bytes) "
                                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid
                except sqlite3.IntegrityError:
                    raise ArgumentError("item_id", "an id not already in the store", repr(row[0])) from None
                if row[0] is None:
                    conn.execute("UPDATE memory_items SET id = ? WHERE seq = ?", (f"item-{seq}", seq))
                ids.append(row[0] or f"item-{seq}")
            self._bump(conn)
        return ids

    def update(self, item_id: str, *, text: str | None = None, metadata: dict | None = None) -> MemoryItem:
        """Replace an item's text and/or metadata (the whole dict); its version goes up by one."""
        if text is None and metadata is None:
            raise ArgumentError("update", "a new text or metadata", "neither")
        if text is not None and not isinstance(text, str):
            raise ArgumentError("text", "None or a str", repr(text)[:200])
        new_metadata = None if metadata is None else metadata_json(metadata)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM memory_items WHERE id = ?", (item_id,)).fetchone() is None:
                raise KeyError(f"no memory item {item_id!r}")
            if text is not None:
                conn.execute("UPDATE memory_items SET text = ?, text_bytes = ? WHERE id = ?",
                             (text, len(text.encode("utf-8")), item_id))
            if new_metadata is not None:
                conn.execute("UPDATE memory_items SET metadata = ? WHERE id = ?", (new_metadata, item_id))
            conn.execute("UPDATE memory_items SET version = version + 1 WHERE id = ?", (item_id,))
            self._bump(conn)
            row = conn.execute(f"SELECT {COLUMNS} FROM memory_items WHERE id = ?", (item_id,)).fetchone()
        return item_from_row(row)

    # -- reading ----------------------------------------------------------------------------------

    def items(self, *, conversation_id: str | None = None, kinds: str | Iterable[str] | None = None
              ) -> list[MemoryItem]:
        """The live items (of one conversation, of some kinds), in the order they were written."""
        where, params = scope_clause(conversation_id, normalise_kinds(kinds))
        with self.read_snapshot():
            rows = self._conn().execute(f"SELECT {COLUMNS} FROM memory_items WHERE {where} ORDER BY seq", params)
            return [item_from_row(row) for row in rows.fetchall()]

    def get(self, item_id: str) -> MemoryItem:
        with self.read_snapshot():
            row = self._conn().execute(f"SELECT {COLUMNS} FROM memory_items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no memory item {item_id!r}")
        return item_from_row(row)

    def __contains__(self, item_id: object) -> bool:
        with self.read_snapshot():
            return self._conn().execute("SELECT 1 FROM memory_items WHERE id = ?", (item_id,)).fetchone() is not None

    def __len__(self) -> int:
        with self.read_snapshot():
            return self._conn().execute("SELECT COUNT(*) FROM memory_items").fetchone()[0]

    def conversation_ids(self) -> list[str]:
        """The conversations with live items, in the order their first live item was written."""
        with self.read_snapshot():
            rows = self._conn().execute("SELECT conversation_id FROM memory_items WHERE conversation_id IS NOT NULL "
                                        "GROUP BY conversation_id ORDER BY MIN(seq)").fetchall()
        return [row[0] for row in rows]

    # -- forgetting -------------------------------------------------------------------------------

    def _delete(self, conn: sqlite3.Connection, ids: list[str]) -> list[str]:
        if ids:
            conn.executemany("DELETE FROM memory_items WHERE id = ?", [(i,) for i in ids])
            self._bump(conn)
        return ids

    def forget(self, item_id: str) -> bool:
        """Delete one item; returns whether it was there."""
        with self._write() as conn:
            return bool(self._delete(conn, [row[0] for row in conn.execute(
                "SELECT id FROM memory_items WHERE id = ?", (item_id,)).fetchall()]))

    def forget_where(self, rule: Callable[[MemoryItem], bool], *, conversation_id: str | None = None,
                     kinds: str | Iterable[str] | None = None) -> list[str]:
        """Delete every item (in scope) for which ``rule(item)`` is true, e.g.
        ``lambda item: item.kind == "fact" and item.metadata.get("stale")``; returns the ids deleted."""
        if not callable(rule):
            raise ArgumentError("rule", "a callable taking a MemoryItem and returning a bool", repr(rule))
        where, params = scope_clause(conversation_id, normalise_kinds(kinds))
        with self._write() as conn:
            rows = conn.execute(f"SELECT {COLUMNS} FROM memory_items WHERE {where} ORDER BY seq", params).fetchall()
            return self._delete(conn, [item.id for item in map(item_from_row, rows) if rule(item)])

    def forget_older_than(self, cutoff: Any, *, conversation_id: str | None = None,
                          kinds: str | Iterable[str] | None = None) -> list[str]:
        """Delete the items (in scope) whose timestamp is before ``cutoff`` (ISO string, datetime or date; naive
        ones read as UTC); items without a timestamp are kept. Returns the ids deleted."""
        seconds = utc_seconds(parse_timestamp(cutoff, "cutoff"))
        where, params = scope_clause(conversation_id, normalise_kinds(kinds))
        with self._write() as conn:
            rows = conn.execute(f"SELECT id FROM memory_items WHERE {where} AND ts_utc < ? ORDER BY seq",
                                params + [seconds]).fetchall()
            return self._delete(conn, [row[0] for row in rows])

    def forget_to_budget(self, max_bytes: int, *, order: str = "oldest", conversation_id: str | None = None,
                         kinds: str | Iterable[str] | None = None) -> list[str]:
        """Delete items (in scope) until the UTF-8 text of those left is at most ``max_bytes``.

        ``order="oldest"`` drops by timestamp (items without one first, then earliest), ties in write order;
        ``order="least_retrieved"`` drops the items ``retrieve`` returned least recently (never-returned
        first), ties in write order. Returns the ids deleted, in the order dropped.
        """
        check_int(max_bytes=max_bytes, minimum=0)
        check_choice("order", order, FORGET_ORDERS)
        where, params = scope_clause(conversation_id, normalise_kinds(kinds))
        sort = "ts_utc IS NOT NULL, ts_utc, seq" if order == "oldest" else "last_retrieved, seq"
        with self._write() as conn:
            rows = conn.execute(f"SELECT id, text_bytes FROM memory_items WHERE {where} ORDER BY {sort}",
                                params).fetchall()
            held, dropped = sum(row[1] for row in rows), []
            for item_id, nbytes in rows:
                if held <= max_bytes:
                    break
                dropped.append(item_id)
                held -= nbytes
            return self._delete(conn, dropped)

    # -- retrieval and bytes ----------------------------------------------------------------------

    def _ensure_index(self, conversation_id: str | None, kinds: tuple[str, ...]) -> dict[str, MemoryItem]:
        """Index the scope's items unless the retriever already holds exactly them (caller holds the lock)."""
        where, params = scope_clause(conversation_id, kinds)
        with self.read_snapshot():
            conn = self._conn()
            key = (conversation_id, kinds,
                   conn.execute("SELECT value FROM memory_meta WHERE key = 'generation'").fetchone()[0])
            if key == self._index_key:
                return self._indexed
            rows = conn.execute(f"SELECT {COLUMNS} FROM memory_items WHERE {where} ORDER BY seq", params).fetchall()
        items = [item_from_row(row) for row in rows]
        self._index_key = None  # a failing index() must not leave a key that claims the old index is current
        self.retriever.index(items)
        self._index_key, self._indexed = key, {item.id: item for item in items}
        return self._indexed

    def retrieve(self, query: str, k: int = 5, *, conversation_id: str | None = None,
                 kinds: str | Iterable[str] | None = None, touch: bool = True) -> list[Retrieved]:
        """The ``k`` best items of the retrieval unit (``kinds``, default ``index_kinds``) for ``query``, in
        one conversation or all, as ``(item, score)`` best first. ``touch`` marks the items returned as
        retrieved (a small write), for ``forget_to_budget(order="least_retrieved")``."""
        if self.retriever is None:
            raise MemoryStoreError("this store has no retriever: MemoryStore(path, retriever=BM25Retriever())")
        if not isinstance(query, str):
            raise ArgumentError("query", "a str", repr(query)[:200])
        check_int(k=k)
        with self._lock:
            indexed = self._ensure_index(conversation_id, normalise_kinds(kinds) or self.index_kinds)
            hits = self.retriever.search(query, k)
        if not (touch and hits):
            return [Retrieved(indexed[item_id], score) for item_id, score in hits]
        ids = [item_id for item_id, _ in hits]
        with self._write() as conn:
            clock = self._bump(conn, "retrieval_clock")
            conn.executemany("UPDATE memory_items SET retrieval_count = retrieval_count + 1, last_retrieved = ? "
                             "WHERE id = ?", [(clock, item_id) for item_id in ids])
            rows = conn.execute(f"SELECT {COLUMNS} FROM memory_items WHERE id IN ({', '.join('?' * len(ids))})",
                                ids).fetchall()
        fresh = {item.id: item for item in map(item_from_row, rows)}
        # an item another process forgot since the index was built is gone: it is not returned
        return [Retrieved(fresh[item_id], score) for item_id, score in hits if item_id in fresh]

    def byte_report(self, *, conversation_id: str | None = None, kinds: str | Iterable[str] | None = None,
                    include_index: bool = True) -> dict:
        """``{"items", "text_bytes", "index_bytes", "index_counted", "total"}`` for one conversation or all:
        the UTF-8 text of the live items (of ``kinds``, default every kind) and, when there is a retriever
        and ``include_index``, the ``nbytes()`` of the index ``retrieve`` uses for that scope (built if
        needed); ``index_bytes`` is None when there is no retriever."""
        where, params = scope_clause(conversation_id, normalise_kinds(kinds))
        with self.read_snapshot():
            count, text_bytes = self._conn().execute(
                f"SELECT COUNT(*), COALESCE(SUM(text_bytes), 0) FROM memory_items WHERE {where}", params).fetchone()
        index_bytes = None
        if self.retriever is not None:
            with self._lock:
                self._ensure_index(conversation_id, self.index_kinds)
                index_bytes = int(self.retriever.nbytes())
        counted = include_index and index_bytes is not None
        return {"items": count, "text_bytes": text_bytes, "index_bytes": index_bytes, "index_counted": counted,
                "total": text_bytes + (index_bytes if counted else 0)}

    def bytes(self, *, conversation_id: str | None = None, kinds: str | Iterable[str] | None = None,
              include_index: bool = True) -> int:
        """The bytes the memory keeps: ``byte_report(...)["total"]``."""
        return self.byte_report(conversation_id=conversation_id, kinds=kinds, include_index=include_index)["total"]
