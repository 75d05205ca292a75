"""Retrievers: BM25 against rank_bm25 itself and on an obvious corpus, RRF on hand-computed ranks, date
prefixes, every time expression on fixed dates, and the date filter."""

from datetime import date, datetime

import pytest
from rank_bm25 import BM25Okapi

from longrecall.agent_memory.retrievers import (
    BM25Retriever,
    DateFilteredRetriever,
    DatePrefixRetriever,
    Retriever,
    RRFRetriever,
    date_prefixed,
    resolve_time_expression,
    tokenize,
)
from longrecall.validation import ArgumentError

CORPUS = [  # each query word below appears in at most two of the eight texts, so every idf is positive
    {"id": "t1", "text": "Ana adopted a puppy from the shelter last spring."},
    {"id": "t2", "text": "The puppy chewed my running shoes again."},
    {"id": "t3", "text": "Ben is training for the Lisbon marathon in October."},
    {"id": "t4", "text": "We cooked a lentil curry for the neighbours."},
    {"id": "t5", "text": "My sister moved to Porto for a new job."},
    {"id": "t6", "text": "I painted the kitchen a pale green."},
    {"id": "t7", "text": "The book club picked a novel about whales."},
    {"id": "t8", "text": "Running every morning clears my head."},
]


class FixedRanking:
    """A retriever stub whose ranking is given: the fused scores can then be computed by hand."""

    def __init__(self, order, size=8):
        self.order, self.size = order, size

    def index(self, items):
        self.ids = [item["id"] for item in items]

    def search(self, query, k):
        return [(item_id, 1.0) for item_id in self.order[:k]]

    def nbytes(self):
        return self.size


# -- tokenizing and BM25 --------------------------------------------------------------------------

def test_tokenize_lowercases_strips_punctuation_and_porter_stems():
    assert tokenize("Caroline's cats were RUNNING, happily!") == ["carolin", "cat", "were", "run", "happili"]
    assert tokenize("2023-05-08 e-mail") == ["2023", "05", "08", "e", "mail"]  # punctuation splits
    assert tokenize("snake_case ...") == ["snake", "case"]
    assert tokenize("") == [] and tokenize("?!") == []


def test_bm25_ranks_the_obvious_document_first():
    retriever = BM25Retriever()
    retriever.index(CORPUS)
    hits = retriever.search("When did Ana adopt the puppy?", 3)
    assert [item_id for item_id, _ in hits][:2] == ["t1", "t2"]  # both puppy words + Ana, then puppy alone
    assert hits[0][1] > hits[1][1] > 0
    assert [i for i, _ in retriever.search("marathon in Lisbon", 1)] == ["t3"]
    assert [i for i, _ in retriever.search("lentil curry", 1)] == ["t4"]


def test_bm25_scores_are_rank_bm25s_on_the_same_tokens():
    retriever = BM25Retriever(k1=1.2, b=0.6, epsilon=0.3)
    retriever.index(CORPUS)
    query = "running puppy shoes the"
    reference = BM25Okapi([tokenize(item["text"]) for item in CORPUS], k1=1.2, b=0.6, epsilon=0.3)
    expected = dict(zip([item["id"] for item in CORPUS], reference.get_scores(tokenize(query)), strict=True))
    hits = retriever.search(query, len(CORPUS))
    assert {item_id: score for item_id, score in hits} == pytest.approx(expected, abs=0, rel=1e-12)
    assert [score for _, score in hits] == sorted(expected.values(), reverse=True)


def test_bm25_breaks_ties_by_indexing_order_not_by_id():
    # "same" in 2 of 5 texts keeps its idf positive (rank_bm25 floors the idf of a term in over half)
    twins = [{"id": "z", "text": "same words"}, {"id": "a", "text": "same words"}, {"id": "m", "text": "other"},
             {"id": "n", "text": "more"}, {"id": "o", "text": "else"}]
    retriever = BM25Retriever()
    retriever.index(twins)
    hits = retriever.search("same", 3)
    assert [i for i, _ in hits] == ["z", "a", "m"] and hits[0][1] == hits[1][1] > 0
    retriever.index(list(reversed(twins)))
    assert [i for i, _ in retriever.search("same", 2)] == ["a", "z"]
    # nothing matches: every score is 0 and the first k in indexing order come back (rank_bm25's get_top_n
    # also returns k documents whatever their score)
    assert retriever.search("unrelated", 2) == [("o", 0.0), ("n", 0.0)]


def test_bm25_tie_order_holds_past_small_arrays():
    # numpy's default sort is not stable beyond a few dozen elements: interleaved equal scores catch it
    items = [{"id": f"d{i}", "text": "apple" if i % 3 == 1 else "pear"} for i in range(120)]
    retriever = BM25Retriever()
    retriever.index(items)
    hits = retriever.search("apple", 120)
    assert hits[0][1] > 0 and hits[40][1] == 0
    assert [i for i, _ in hits] == [f"d{i}" for i in range(1, 120, 3)] + [f"d{i}" for i in range(120) if i % 3 != 1]


def test_bm25_edge_cases():
    retriever = BM25Retriever()
    assert retriever.search("anything", 3) == [] and retriever.nbytes() == 0  # before indexing
    retriever.index([])
    assert retriever.search("anything", 3) == []
    retriever.index([{"id": "a", "text": ""}, {"id": "b", "text": "!!"}])  # no tokens at all
    assert retriever.search("anything", 5) == [("a", 0.0), ("b", 0.0)]
    retriever.index(CORPUS)
    assert len(retriever.search("puppy", 100)) == len(CORPUS)
    assert isinstance(retriever, Retriever)


def test_bm25_index_bytes_are_the_hand_counted_inverted_index():
    retriever = BM25Retriever()
    retriever.index([{"id": "a", "text": "cats cats dogs"}, {"id": "b", "text": "Dogs!"}])
    # terms "cat", "dog": 3 UTF-8 bytes + a float64 idf each; postings (cat,a) (dog,a) (dog,b): 8 bytes each;
    # two int32 document lengths
    assert retriever.nbytes() == (3 + 8) * 2 + 8 * 3 + 4 * 2
    retriever.index([{"id": "a", "text": "café"}])  # a multi-byte term: "café" is 5 UTF-8 bytes
    assert retriever.nbytes() == (len(tokenize("café")[0].encode()) + 8) + 8 + 4 == 5 + 8 + 8 + 4


@pytest.mark.parametrize("kwargs, arg", [({"k1": -1}, "k1"), ({"b": 1.5}, "b"), ({"epsilon": "x"}, "epsilon")])
def test_bm25_rejects_bad_parameters(kwargs, arg):
    with pytest.raises(ArgumentError) as error:
        BM25Retriever(**kwargs)
    assert error.value.arg == arg


def test_bad_items_and_k_are_refused():
    retriever = BM25Retriever()
    with pytest.raises(ArgumentError, match="distinct ids"):
        retriever.index([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(ArgumentError, match="id and a str text"):
        retriever.index([{"text": "no id"}])
    retriever.index(CORPUS)
    with pytest.raises(ArgumentError, match="k must be a positive int"):
        retriever.search("puppy", 0)


# -- reciprocal-rank fusion -----------------------------------------------------------------------

def test_rrf_matches_hand_computed_fusion():
    items = [{"id": i, "text": i} for i in "abc"]
    fused = RRFRetriever([FixedRanking(["a", "b", "c"]), FixedRanking(["c", "a", "b"])], weights=[1, 2])
    fused.index(items)
    expected = {"a": 1 / 61 + 2 / 62, "b": 1 / 62 + 2 / 63, "c": 1 / 63 + 2 / 61}
    hits = fused.search("q", 3)
    assert [i for i, _ in hits] == ["c", "a", "b"]  # 0.048660 > 0.048651 > 0.047875
    assert dict(hits) == pytest.approx(expected, rel=1e-15)
    assert fused.search("q", 1) == [("c", pytest.approx(expected["c"]))]
    assert fused.nbytes() == 16


def test_rrf_with_limited_depth_counts_only_what_each_retriever_returned():
    fused = RRFRetriever([FixedRanking(["a", "b", "c"]), FixedRanking(["c", "a", "b"])], rrf_k=10, depth=1)
    fused.index([{"id": i, "text": i} for i in "abc"])
    assert fused.search("q", 3) == [("a", pytest.approx(1 / 11)), ("c", pytest.approx(1 / 11)), ("b", 0.0)]


def test_rrf_ties_go_to_indexing_order():
    fused = RRFRetriever([FixedRanking(["b", "a"]), FixedRanking(["a", "b"])])
    fused.index([{"id": "b", "text": ""}, {"id": "a", "text": ""}])
    assert [i for i, _ in fused.search("q", 2)] == ["b", "a"]
    fused.index([{"id": "a", "text": ""}, {"id": "b", "text": ""}])
    assert [i for i, _ in fused.search("q", 2)] == ["a", "b"]


def test_rrf_of_real_retrievers_indexes_each_and_ranks_the_obvious_document_first():
    fused = RRFRetriever([BM25Retriever(), DatePrefixRetriever(BM25Retriever())])
    fused.index(CORPUS)
    assert fused.search("lentil curry", 1)[0][0] == "t4"
    assert fused.search("anything", 3) and RRFRetriever([BM25Retriever()]).search("x", 3) == []


@pytest.mark.parametrize("kwargs, arg", [
    ({"retrievers": []}, "retrievers"), ({"weights": [1]}, "weights"), ({"weights": [1, -1]}, "weights"),
    ({"weights": [0, 0]}, "weights"), ({"rrf_k": -1}, "rrf_k"), ({"depth": 0}, "depth")])
def test_rrf_rejects_bad_arguments(kwargs, arg):
    arguments = {"retrievers": [FixedRanking([]), FixedRanking([])], **kwargs}
    with pytest.raises(ArgumentError) as error:
        RRFRetriever(**arguments)
    assert error.value.arg == arg


# -- date prefixes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("timestamp, speaker, expected", [
    ("2023-05-08T13:56:00", "Caroline", '(1:56 pm on 8 May, 2023) Caroline said, "hi"'),
    ("2023-05-08T00:05:00", None, "(12:05 am on 8 May, 2023) hi"),
    ("2023-12-25T12:00:00+02:00", None, "(12:00 pm on 25 December, 2023) hi"),
    ("2023-05-08", "Ana", '(8 May, 2023) Ana said, "hi"'),
    (date(2022, 1, 2), None, "(2 January, 2022) hi"),
    (datetime(2022, 1, 2, 9, 30), None, "(9:30 am on 2 January, 2022) hi"),
    (None, "Ana", 'Ana said, "hi"'),
])
def test_date_prefixed_writes_locomos_turn_form(timestamp, speaker, expected):
    assert date_prefixed("hi", timestamp, speaker) == expected


def test_date_prefixed_rejects_a_timestamp_that_is_not_iso():
    with pytest.raises(ArgumentError, match="timestamp must be an ISO 8601"):
        date_prefixed("hi", "1:56 pm on 8 May, 2023")


def test_date_prefixes_let_a_month_in_the_query_find_the_turn():
    items = [{"id": "may", "text": "We went to the beach.", "timestamp": "2023-05-20", "speaker": "Ana"},
             {"id": "june", "text": "We went to the mountains.", "timestamp": "2023-06-03", "speaker": "Ana"},
             {"id": "july", "text": "We went to the lake.", "timestamp": "2023-07-09", "speaker": "Ana"}]
    prefixed = DatePrefixRetriever(BM25Retriever())
    prefixed.index(items)
    assert prefixed.search("Where did we go in June?", 1)[0][0] == "june"
    plain = BM25Retriever()
    plain.index(items)
    tied = plain.search("Where did we go in June?", 3)  # without the prefix the texts are alike to the query
    assert tied[0][0] == "may" and tied[0][1] == tied[1][1] == tied[2][1]
    assert prefixed.nbytes() > plain.nbytes()  # the prefixes are part of the index


# -- time expressions -----------------------------------------------------------------------------

NOW = date(2023, 5, 10)  # a Wednesday: its week runs Monday 8 May to Sunday 14 May


@pytest.mark.parametrize("text, start, end", [
    ("What did I eat yesterday?", date(2023, 5, 9), date(2023, 5, 9)),
    ("what happened TODAY", NOW, NOW),
    ("Who called 3 days ago?", date(2023, 5, 7), date(2023, 5, 7)),
    ("ten days ago", date(2023, 4, 30), date(2023, 4, 30)),
    ("a day ago", date(2023, 5, 9), date(2023, 5, 9)),
    ("this week", date(2023, 5, 8), date(2023, 5, 14)),
    ("What did we talk about last week?", date(2023, 5, 1), date(2023, 5, 7)),
    ("a week ago", date(2023, 5, 1), date(2023, 5, 7)),
    ("two weeks ago", date(2023, 4, 24), date(2023, 4, 30)),
    ("this month", date(2023, 5, 1), date(2023, 5, 31)),
    ("last month", date(2023, 4, 1), date(2023, 4, 30)),
    ("2 months ago", date(2023, 3, 1), date(2023, 3, 31)),
    ("five months ago", date(2022, 12, 1), date(2022, 12, 31)),
    ("this year", date(2023, 1, 1), date(2023, 12, 31)),
    ("last year", date(2022, 1, 1), date(2022, 12, 31)),
    ("three years ago", date(2020, 1, 1), date(2020, 12, 31)),
    ("What did Ana do in May 2023?", date(2023, 5, 1), date(2023, 5, 31)),
    ("May 2023", date(2023, 5, 1), date(2023, 5, 31)),
    ("in may, 2023", date(2023, 5, 1), date(2023, 5, 31)),
    ("Sept. 2022", date(2022, 9, 1), date(2022, 9, 30)),
    ("in February 2024", date(2024, 2, 1), date(2024, 2, 29)),
    ("December 1999", date(1999, 12, 1), date(1999, 12, 31)),
    ("Where did Ben travel in 2021?", date(2021, 1, 1), date(2021, 12, 31)),
    ("2023", date(2023, 1, 1), date(2023, 12, 31)),
    ("yesterday, not in May 2022", date(2023, 5, 9), date(2023, 5, 9)),  # the leftmost expression wins
])
def test_time_expressions_resolve_on_a_fixed_date(text, start, end):
    assert resolve_time_expression(text, NOW) == (start, end)


@pytest.mark.parametrize("now, text, start, end", [
    (date(2023, 1, 15), "last month", date(2022, 12, 1), date(2022, 12, 31)),  # across a year
    (date(2023, 3, 31), "last month", date(2023, 2, 1), date(2023, 2, 28)),
    (date(2024, 3, 31), "last month", date(2024, 2, 1), date(2024, 2, 29)),  # a leap year
    (date(2023, 1, 1), "last week", date(2022, 12, 19), date(2022, 12, 25)),  # 1 Jan 2023 is a Sunday
    (date(2023, 5, 8), "this week", date(2023, 5, 8), date(2023, 5, 14)),  # a Monday
    (date(2024, 3, 1), "yesterday", date(2024, 2, 29), date(2024, 2, 29)),
    (datetime(2023, 5, 10, 23, 59), "yesterday", date(2023, 5, 9), date(2023, 5, 9)),  # the time is ignored
    ("2023-05-10T08:00:00", "last year", date(2022, 1, 1), date(2022, 12, 31)),
])
def test_time_expressions_at_calendar_edges(now, text, start, end):
    assert resolve_time_expression(text, now) == (start, end)


@pytest.mark.parametrize("text", ["What is Ana's favourite food?", "I may go to the party", "in May",
                                  "it cost 1000 dollars", "room 2100", "99999 years ago", "20230 km", ""])
def test_no_time_expression_gives_none(text):
    assert resolve_time_expression(text, NOW) is None


def test_resolve_time_expression_rejects_bad_arguments():
    with pytest.raises(ArgumentError, match="now must be"):
        resolve_time_expression("yesterday", "last Tuesday")
    with pytest.raises(ArgumentError, match="text must be a str"):
        resolve_time_expression(None, NOW)


# -- the date filter -------------------------------------------------------------------------------

DATED = [
    {"id": "apr", "text": "We baked bread together.", "timestamp": "2023-04-12T18:00:00"},
    {"id": "may1", "text": "I baked a cake for mum.", "timestamp": "2023-05-02"},
    {"id": "may2", "text": "The cake recipe failed, so I baked bread.", "timestamp": "2023-05-20"},
    {"id": "undated", "text": "Bread is my favourite thing to bake.", "timestamp": None},
    {"id": "jun", "text": "I went swimming.", "timestamp": "2023-06-01"},
]


def test_date_filter_keeps_the_range_in_inner_order():
    inner = BM25Retriever()
    inner.index(DATED)
    unfiltered = [i for i, _ in inner.search("What did I bake in May 2023?", 5)]
    filtered = DateFilteredRetriever(BM25Retriever(), now=date(2023, 6, 30))
    filtered.index(DATED)
    hits = [i for i, _ in filtered.search("What did I bake in May 2023?", 5)]
    assert hits == [i for i in unfiltered if i in ("may1", "may2")] and sorted(hits) == ["may1", "may2"]
    assert filtered.search("What did I bake in May 2023?", 1)[0][0] == hits[0]
    assert filtered.resolved_range("bread last month") == (date(2023, 5, 1), date(2023, 5, 31))


def test_date_filter_falls_back_when_nothing_is_in_range_or_no_expression():
    filtered = DateFilteredRetriever(BM25Retriever(), now=date(2023, 6, 30))
    filtered.index(DATED)
    inner = BM25Retriever()
    inner.index(DATED)
    for query in ("What did I bake in May 2019?", "What did I bake?"):
        assert filtered.search(query, 3) == inner.search(query, 3)


def test_date_filter_fill_appends_the_rest_and_now_defaults_to_the_latest_date():
    filtered = DateFilteredRetriever(BM25Retriever(), fill=True)
    filtered.index(DATED)
    assert filtered.reference_date() == date(2023, 6, 1)  # the latest timestamp indexed
    hits = [i for i, _ in filtered.search("bread baked last month", 5)]  # May 2023, relative to 1 June
    assert set(hits[:2]) == {"may1", "may2"} and set(hits[2:]) == {"apr", "undated", "jun"}
    strict = DateFilteredRetriever(BM25Retriever())
    strict.index(DATED)
    assert sorted(i for i, _ in strict.search("bread baked last month", 5)) == ["may1", "may2"]
    assert strict.nbytes() == filtered.inner.nbytes() + 4 * len(DATED)


def test_date_filter_without_any_dates_does_not_filter():
    filtered = DateFilteredRetriever(BM25Retriever())
    filtered.index([{"id": "a", "text": "bread"}, {"id": "b", "text": "cake"}])
    assert filtered.reference_date() is None and filtered.resolved_range("bread yesterday") is None
    assert filtered.search("bread yesterday", 1)[0][0] == "a"
