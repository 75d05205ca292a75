"""The agent memory store: round trips, updates, forgetting rules, exact byte accounting, durability across
reopening and a crash, concurrent readers in other processes, and retrieval through a retriever.

(Named test_memory_store.py: tests/arena/test_store.py already holds the bare name, see tests/conftest.py.)"""

import multiprocessing
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone

import pytest

from longrecall.agent_memory.retrievers import BM25Retriever, tokenize
from longrecall.agent_memory.store import MemoryItem, MemoryStore, MemoryStoreError
from longrecall.validation import ArgumentError

CTX = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
WAIT_S = 120  # only a guard against a hung child process; no assertion depends on time


class CountingRetriever(BM25Retriever):
    """BM25 that counts how often it is (re)built."""

    def __init__(self):
        super().__init__()
        self.builds = 0

    def index(self, items):
        self.builds += 1
        super().index(items)


@contextmanager
def running(processes):
    """Start child processes; whatever happens in the block, none is left running after it."""
    for process in processes:
        process.daemon = True
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            process.join(WAIT_S if process.is_alive() else 0)
            if process.is_alive():
                process.terminate()
                process.join()


@pytest.fixture
def store():
    with MemoryStore(":memory:") as s:
        yield s


def turn(text, **fields):
    return {"text": text, **fields}


# -- writing and reading ----------------------------------------------------------------------------

def test_write_and_get_round_trip_every_field(store):
    item_id = store.write("I moved to Lisbon.", kind="fact", speaker="Ana", timestamp="2023-05-08T13:56:00Z",
                          conversation_id="c1", source_ids=["D1:3", "D1:4"], metadata={"topic": "home", "n": 2})
    item = store.get(item_id)
    assert item == MemoryItem(id="item-1", text="I moved to Lisbon.", kind="fact", speaker="Ana",
                              timestamp="2023-05-08T13:56:00+00:00", conversation_id="c1",
                              source_ids=("D1:3", "D1:4"), metadata={"topic": "home", "n": 2}, version=1,
                              retrieval_count=0, last_retrieved=0)
    bare = store.get(store.write("ok"))
    assert (bare.id, bare.kind, bare.speaker, bare.timestamp, bare.source_ids, bare.metadata) == \
        ("item-2", "turn", None, None, (), {})
    assert store.get(store.write("d", timestamp=date(2023, 1, 2))).timestamp == "2023-01-02"
    assert store.get(store.write("t", timestamp=datetime(2023, 1, 2, 3, 4))).timestamp == "2023-01-02T03:04:00"
    assert store.write("named", item_id="D1:1") == "D1:1" and "D1:1" in store and "nope" not in store
    assert store.get(store.write("g", source_ids=(f"D2:{i}" for i in (1, 2)))).source_ids == ("D2:1", "D2:2")
    assert len(store) == 6
    with pytest.raises(KeyError, match="nope"):
        store.get("nope")


def test_items_keep_write_order_and_filter_by_conversation_and_kind(store):
    ids = store.write_many([turn("a", conversation_id="c2"), turn("b", conversation_id="c1", kind="fact"),
                            turn("c", conversation_id="c2", kind="summary"), turn("d")])
    assert ids == ["item-1", "item-2", "item-3", "item-4"]
    assert [i.text for i in store.items()] == ["a", "b", "c", "d"]
    assert [i.text for i in store.items(conversation_id="c2")] == ["a", "c"]
    assert [i.text for i in store.items(kinds=("fact", "summary"))] == ["b", "c"]
    assert [i.text for i in store.items(conversation_id="c2", kinds="turn")] == ["a"]
    assert store.conversation_ids() == ["c2", "c1"]


def test_generated_ids_are_never_reused_after_forgetting(store):
    store.write_many([turn("a"), turn("b")])
    store.forget("item-2")
    assert store.write("c") == "item-3"


@pytest.mark.parametrize("fields, arg", [
    ({"kind": "episode"}, "kind"), ({"text": 3}, "text"), ({"speaker": 1}, "speaker"),
    ({"timestamp": "8 May, 2023"}, "timestamp"), ({"source_ids": "D1:3"}, "source_ids"),
    ({"source_ids": 3}, "source_ids"), ({"source_ids": ["D1:3", 4]}, "source_ids"),
    ({"metadata": {"x": object()}}, "metadata"), ({"metadata": {"x": float("nan")}}, "metadata"),
    ({"metadata": [1]}, "metadata"), ({"item_id": "item-7"}, "item_id"), ({"item_id": ""}, "item_id"),
    ({"conversation_id": 5}, "conversation_id"), ({"colour": "red"}, "items"),
])
def test_bad_writes_are_refused_naming_the_argument(store, fields, arg):
    with pytest.raises(ArgumentError) as error:
        store.write_many([{"text": "x", **fields}])
    assert error.value.arg == arg
    assert len(store) == 0


def test_write_many_is_all_or_nothing(store):
    store.write("kept", item_id="dup")
    with pytest.raises(ArgumentError, match="item_id must be an id not already in the store"):
        store.write_many([turn("new 1"), turn("new 2", item_id="dup"), turn("new 3")])
    assert [i.text for i in store.items()] == ["kept"]


def test_update_replaces_text_or_metadata_and_counts_versions(store):
    item_id = store.write("Ana lives in Porto.", kind="fact", metadata={"confidence": 0.5})
    updated = store.update(item_id, text="Ana lives in Lisbon.")
    assert (updated.text, updated.metadata, updated.version) == ("Ana lives in Lisbon.", {"confidence": 0.5}, 2)
    updated = store.update(item_id, metadata={"confidence": 0.9})
    assert (updated.text, updated.metadata, updated.version) == ("Ana lives in Lisbon.", {"confidence": 0.9}, 3)
    assert store.get(item_id) == updated and store.bytes() == len("Ana lives in Lisbon.")
    with pytest.raises(KeyError):
        store.update("missing", text="x")
    with pytest.raises(ArgumentError, match="update must be a new text or metadata"):
        store.update(item_id)
    with pytest.raises(ArgumentError) as error:
        store.update(item_id, metadata={"bad": {1, 2}})
    assert error.value.arg == "metadata" and store.get(item_id).version == 3


# -- forgetting -------------------------------------------------------------------------------------

def test_forget_by_id_and_by_rule(store):
    store.write_many([turn("a", kind="fact", metadata={"stale": True}), turn("b", kind="fact"),
                      turn("c", metadata={"stale": True}), turn("d", kind="fact", metadata={"stale": True},
                                                               conversation_id="c9")])
    assert store.forget("item-2") is True and store.forget("item-2") is False
    gone = store.forget_where(lambda item: item.kind == "fact" and item.metadata.get("stale", False),
                              conversation_id=None)
    assert gone == ["item-1", "item-4"] and [i.text for i in store.items()] == ["c"]
    assert store.forget_where(lambda item: True, kinds="fact") == []
    with pytest.raises(ArgumentError, match="rule must be a callable"):
        store.forget_where("stale")


def test_forget_older_than_reads_naive_times_as_utc_and_keeps_undated_items(store):
    store.write_many([turn("old", timestamp="2023-01-01T10:00:00"), turn("undated"),
                      turn("aware", timestamp="2023-03-01T01:00:00+02:00"),  # 2023-02-28T23:00 UTC
                      turn("day", timestamp="2023-03-01"), turn("new", timestamp="2023-06-01T00:00:00")])
    assert store.forget_older_than("2023-03-01") == ["item-1", "item-3"]  # midnight UTC; "day" is not before
    # 31 May 23:00 at UTC-2 is 1 June 01:00 UTC: "new" (1 June 00:00, naive so UTC) is before it
    assert store.forget_older_than(datetime(2023, 5, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2)))) == \
        ["item-4", "item-5"]
    assert [i.text for i in store.items()] == ["undated"]
    with pytest.raises(ArgumentError, match="cutoff must be"):
        store.forget_older_than("soon")


def test_forget_to_budget_drops_the_oldest_until_the_text_fits(store):
    store.write_many([turn("aaaa", timestamp="2023-03-01"), turn("bb", timestamp="2023-01-01"),
                      turn("cccccc"), turn("dd", timestamp="2023-02-01", kind="fact")])  # 14 bytes
    assert store.forget_to_budget(14) == [] and store.bytes() == 14
    # undated first ("cccccc"), then by time: "bb" (Jan) ... until at most 6 bytes are left
    assert store.forget_to_budget(6) == ["item-3", "item-2"] and store.bytes() == 6
    assert store.forget_to_budget(0, kinds="fact") == ["item-4"]
    assert [i.text for i in store.items()] == ["aaaa"]
    for bad in (-1, 1.5, None):
        with pytest.raises(ArgumentError):
            store.forget_to_budget(bad)
    with pytest.raises(ArgumentError, match="order must be one of 'oldest', 'least_retrieved'"):
        store.forget_to_budget(1, order="random")


def test_forget_to_budget_can_drop_the_least_recently_retrieved():
    with MemoryStore(retriever=BM25Retriever()) as store:
        store.write_many([turn(text) for text in ("apple pie", "banana bread", "cherry tart", "plum jam",
                                                  "pear cider")])  # 9 + 12 + 11 + 8 + 10 = 50 bytes
        store.retrieve("cherry", 1)
        store.retrieve("apple", 1)
        store.retrieve("cherry", 1)
        assert [(i.text, i.retrieval_count, i.last_retrieved) for i in store.items() if i.retrieval_count] == \
            [("apple pie", 1, 2), ("cherry tart", 2, 3)]
        # never retrieved go first in write order, then apple (clock 2) before cherry (clock 3)
        assert store.forget_to_budget(11, order="least_retrieved") == ["item-2", "item-4", "item-5", "item-1"]
        assert [i.text for i in store.items()] == ["cherry tart"]


# -- bytes --------------------------------------------------------------------------------------------

def test_bytes_count_the_utf8_text_of_live_items_exactly(store):
    assert store.bytes() == 0
    store.write_many([turn("café", conversation_id="c1"), turn("日本", kind="fact", conversation_id="c1"),
                      turn("🙂 ok", conversation_id="c2", speaker="a long speaker name", metadata={"x": "y" * 99})])
    # é is 2 bytes, each kanji 3, the emoji 4: speakers and metadata are not counted
    assert store.bytes() == 5 + 6 + 7
    assert store.bytes(conversation_id="c1") == 11 and store.bytes(kinds="fact") == 6
    report = store.byte_report()
    assert report == {"items": 3, "text_bytes": 18, "index_bytes": None, "index_counted": False, "total": 18}
    store.update("item-1", text="cafe")
    store.forget("item-2")
    assert store.bytes() == 4 + 7
    assert store.get("item-3").nbytes == 7


def test_bytes_add_the_retrievers_index_when_asked():
    with MemoryStore(retriever=BM25Retriever(), index_kinds="turn") as store:
        store.write_many([turn("cats cats dogs", conversation_id="c1"), turn("Dogs!", conversation_id="c1"),
                          turn("a summary nobody indexes", kind="summary", conversation_id="c1"),
                          turn("birds", conversation_id="c2")])
        index_c1 = (3 + 8) * 2 + 8 * 3 + 4 * 2  # terms cat, dog; 3 postings; 2 documents (test_retrievers)
        report = store.byte_report(conversation_id="c1")
        assert report == {"items": 3, "text_bytes": 14 + 5 + 24, "index_bytes": index_c1, "index_counted": True,
                          "total": 43 + index_c1}
        assert store.bytes(conversation_id="c1", include_index=False) == 43
        excluded = store.byte_report(conversation_id="c1", include_index=False)
        assert excluded["index_counted"] is False and excluded["index_bytes"] == index_c1
        index_all = (3 + 8) * 2 + (len(tokenize("birds")[0]) + 8) + 8 * 4 + 4 * 3
        assert store.bytes() == 48 + index_all


# -- retrieval -----------------------------------------------------------------------------------------

def test_retrieve_scores_are_the_retrievers_and_the_unit_is_configurable():
    texts = ["Ana adopted a puppy", "Ben runs marathons", "Ana paints walls", "Cleo plays chess", "Dan sails"]
    with MemoryStore(retriever=BM25Retriever(), index_kinds=("turn",)) as store:
        store.write_many([turn(t, conversation_id="c1") for t in texts])
        store.write("Ana owns a puppy called Rex", kind="fact", conversation_id="c1")
        direct = BM25Retriever()
        direct.index([{"id": f"item-{n}", "text": t} for n, t in enumerate(texts, start=1)])
        hits = store.retrieve("Ana's puppy", 3, conversation_id="c1", touch=False)
        assert [(item.id, score) for item, score in hits] == direct.search("Ana's puppy", 3)
        assert all(item.kind == "turn" for item, _ in hits)
        facts = store.retrieve("Ana's puppy", 3, kinds="fact", touch=False)
        assert [item.text for item, _ in facts] == ["Ana owns a puppy called Rex"]
        assert store.retrieve("chess", 2, conversation_id="other") == []


def test_the_index_is_rebuilt_only_when_the_content_or_scope_changes():
    retriever = CountingRetriever()
    with MemoryStore(retriever=retriever) as store:
        store.write_many([turn("apple", conversation_id="a"), turn("pear", conversation_id="b")])
        store.retrieve("apple", 1)
        store.retrieve("pear", 1)  # the touches of retrieve are not content changes
        store.bytes()
        assert retriever.builds == 1
        store.retrieve("apple", 1, conversation_id="a")
        store.retrieve("apple", 1, conversation_id="a")
        assert retriever.builds == 2
        store.update("item-1", text="apple tart")
        assert store.retrieve("tart", 1, conversation_id="a")[0].item.text == "apple tart"
        assert retriever.builds == 3


def test_a_write_from_another_connection_is_seen_by_the_next_retrieve(tmp_path):
    path = tmp_path / "memory.sqlite"
    with MemoryStore(path, retriever=BM25Retriever()) as reader, MemoryStore(path) as writer:
        writer.write_many([turn("apple"), turn("pear"), turn("plum")])
        assert reader.retrieve("apple", 1)[0].item.text == "apple"
        writer.write("fig jam")
        assert reader.retrieve("fig", 1)[0].item.text == "fig jam"
        writer.forget("item-1")
        assert "apple" not in [hit.item.text for hit in reader.retrieve("apple", 5)]


def test_retrieve_needs_a_retriever_and_good_arguments(store):
    with pytest.raises(MemoryStoreError, match="no retriever"):
        store.retrieve("x")
    with MemoryStore(retriever=BM25Retriever()) as s:
        with pytest.raises(ArgumentError, match="k must be"):
            s.retrieve("x", k=0)
        with pytest.raises(ArgumentError, match="query must be a str"):
            s.retrieve(None)
    with pytest.raises(ArgumentError, match="retriever must be"):
        MemoryStore(retriever="bm25")
    with pytest.raises(ArgumentError, match="index_kinds must be one of"):
        MemoryStore(index_kinds=("turns",))


# -- durability and files -------------------------------------------------------------------------------

def test_a_file_store_survives_reopening(tmp_path):
    path = tmp_path / "nested" / "memory.sqlite"
    with MemoryStore(path) as store:
        store.write_many([turn("one", metadata={"a": 1}), turn("two", conversation_id="c")])
        store.update("item-1", text="uno")
        store.forget("item-2")
        before = store.items()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with MemoryStore(path) as reopened:
        assert reopened.items() == before and before[0].version == 2
        assert reopened.write("three") == "item-3"


def _write_and_die(path):
    store = MemoryStore(path)
    store.write("committed before the crash")
    os._exit(0)  # no close(), no cleanup: only the commit itself makes it durable


def test_a_committed_write_survives_the_writer_dying(tmp_path):
    path = tmp_path / "memory.sqlite"
    MemoryStore(path).close()
    with running([CTX.Process(target=_write_and_die, args=(path,))]) as (child,):
        child.join(WAIT_S)
    assert child.exitcode == 0
    with MemoryStore(path) as store:
        assert [i.text for i in store.items()] == ["committed before the crash"]


def test_files_that_are_not_memory_stores_are_refused_untouched(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database")
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE runs (id TEXT)")
    raw.close()
    for path, message in ((text_file, "not a SQLite file"), (foreign, "holds other tables"),
                          (tmp_path, "is a directory")):
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(MemoryStoreError, match=message):
            MemoryStore(path)
        assert before is None or path.read_bytes() == before
    with sqlite3.connect(foreign) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    raw.close()


def test_a_closed_store_and_writes_inside_a_snapshot_are_refused(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite")
    store.write("x")
    with store.read_snapshot():
        with pytest.raises(MemoryStoreError, match="inside read_snapshot"):
            store.write("y")
        assert len(store) == 1
    store.close()
    with pytest.raises(MemoryStoreError, match="closed"):
        store.items()


# -- concurrency ----------------------------------------------------------------------------------------

def _snapshot_reader(path, in_snapshot, committed, results):
    store = MemoryStore(path)
    with store.read_snapshot():
        before = len(store)
        in_snapshot.wait(WAIT_S)  # every reader holds its snapshot ...
        committed.wait(WAIT_S)  # ... while the writer commits
        during = [item.text for item in store.items()]
    after = [item.text for item in store.items()]
    results.put((before, during, after))
    store.close()


def test_readers_in_other_processes_keep_their_snapshot_while_a_writer_commits(tmp_path):
    path = tmp_path / "memory.sqlite"
    writer = MemoryStore(path)
    writer.write_many([turn("a"), turn("b"), turn("c")])
    in_snapshot, committed = CTX.Barrier(3), CTX.Barrier(3)
    results = CTX.Queue()
    readers = [CTX.Process(target=_snapshot_reader, args=(path, in_snapshot, committed, results)) for _ in range(2)]
    with running(readers):
        in_snapshot.wait(WAIT_S)
        try:  # in rollback-journal mode this commit would wait for the readers and fail; in WAL it goes through
            writer.write_many([turn("d"), turn("e")])
            writer.update("item-1", text="A")
        finally:
            committed.wait(WAIT_S)
        outcomes = [results.get(timeout=WAIT_S) for _ in readers]
    assert [reader.exitcode for reader in readers] == [0, 0]
    writer.close()
    assert outcomes == [(3, ["a", "b", "c"], ["A", "b", "c", "d", "e"])] * 2


BATCH, BATCHES = 4, 25


def _looping_reader(path, started, results):
    store = MemoryStore(path)
    started.wait(WAIT_S)
    counts, torn = [], 0
    while not counts or counts[-1] < BATCH * BATCHES:
        items = store.items()
        batches = {}
        for item in items:
            batches.setdefault(item.metadata["batch"], []).append(item.metadata["i"])
        # a batch is one transaction: a reader sees all of it or none of it
        torn += sum(sorted(seen) != list(range(BATCH)) for seen in batches.values())
        counts.append(len(items))
    results.put((counts == sorted(counts), torn, counts[-1]))
    store.close()


def test_concurrent_readers_never_see_a_partial_batch(tmp_path):
    path = tmp_path / "memory.sqlite"
    writer = MemoryStore(path)
    started, results = CTX.Barrier(3), CTX.Queue()
    readers = [CTX.Process(target=_looping_reader, args=(path, started, results)) for _ in range(2)]
    with running(readers):
        started.wait(WAIT_S)
        for b in range(BATCHES):
            writer.write_many([turn(f"batch {b} item {i}", metadata={"batch": b, "i": i}) for i in range(BATCH)])
        outcomes = [results.get(timeout=WAIT_S) for _ in readers]
    writer.close()
    assert outcomes == [(True, 0, BATCH * BATCHES)] * 2


def test_threads_share_a_store_each_with_its_own_connection(tmp_path):
    for path in (":memory:", tmp_path / "threads.sqlite"):
        with MemoryStore(path, retriever=BM25Retriever()) as store:
            errors = []

            def work(n, store=store, errors=errors):
                try:
                    for i in range(10):
                        store.write(f"thread {n} note {i}")
                        store.retrieve(f"thread {n}", 2)
                except Exception as error:  # collected: an assertion in a thread would be lost
                    errors.append(error)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT_S)
            assert errors == [] and len(store) == 30
