"""The LoCoMo and LongMemEval loaders on small fixtures written in the datasets' schemas, each known quirk
present at least once (fixtures/locomo_quirks.json, fixtures/longmemeval_quirks.json; no dataset text)."""

import json
from datetime import datetime
from pathlib import Path

import pytest

from longrecall.agent_memory.loaders import (
    load_locomo,
    load_longmemeval,
    parse_date_time,
    parse_locomo_evidence,
    read_hypotheses,
)
from longrecall.agent_memory.records import LOCOMO_CATEGORY_NAMES, LoadedBenchmark
from longrecall.validation import ArgumentError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def locomo() -> LoadedBenchmark:
    return load_locomo(FIXTURES / "locomo_quirks.json")


@pytest.fixture(scope="module")
def longmemeval() -> LoadedBenchmark:
    return load_longmemeval(FIXTURES / "longmemeval_quirks.json")


def by_id(items):
    return {item.question_id: item for item in items}


# ---------------------------------------------------------------------------------------------- LoCoMo


def test_locomo_category_names_are_the_reference_mapping():
    assert LOCOMO_CATEGORY_NAMES == {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop",
                                     5: "adversarial"}


def test_locomo_counts_and_structure(locomo):
    conversations, items, stats = locomo
    assert [c.conversation_id for c in conversations] == ["conv-a", "7"]  # an int sample_id becomes text
    assert (stats.conversations, stats.sessions, stats.turns, stats.questions) == (2, 4, 11, 9)
    first = conversations[0]
    assert [s.session_id for s in first.sessions] == ["session_1", "session_2", "session_4"]
    assert first.speakers == ("Ava", "Ben")
    assert [t.turn_id for t in first.sessions[1].turns] == ["D2:1", "D2:2", "D2:3", "D2:4"]


def test_locomo_session_dates(locomo):
    conversations, _, stats = locomo
    session_1, _, session_4 = conversations[0].sessions
    assert session_1.date_time == "1:56 pm on 8 May, 2023"
    assert session_1.timestamp == datetime(2023, 5, 8, 13, 56)
    assert session_1.turns[0].timestamp == datetime(2023, 5, 8, 13, 56)  # turns carry their session's date
    assert session_4.timestamp is None and session_4.date_time == "sometime in spring"
    assert stats.events["session_date_unparsed"] == 1
    assert stats.events["session_date_without_turns"] == 1  # session_3_date_time with no session_3


def test_locomo_image_turn_keeps_its_caption(locomo):
    turn = locomo.conversations[0].sessions[0].turns[2]
    assert turn.dia_id == "D1:3" and turn.text.startswith("I moved to Lisbon")
    assert turn.extras["blip_caption"] == "a photo of a harbour at dusk"


def test_locomo_clean_and_reformatted_evidence(locomo):
    items = by_id(locomo.items)
    assert items["conv-a:q0"].evidence_turn_ids == ("D1:3",)
    assert items["conv-a:q1"].evidence_turn_ids == ("D1:3",)  # "D1: 3"
    assert items["conv-a:q4"].evidence_turn_ids == ("D2:4",)  # "D:2:4"
    assert items["conv-a:q5"].evidence_turn_ids == ("D2:2",)  # "D2:02"; "D9:9" names no turn
    assert locomo.stats.events["evidence_reformatted"] == 3


def test_locomo_split_and_duplicate_evidence(locomo):
    items = by_id(locomo.items)
    assert items["conv-a:q2"].evidence_turn_ids == ("D1:2", "D2:3")  # "D1:2; D2:3"
    assert items["conv-a:q2"].evidence_session_ids == ("session_1", "session_2")
    assert items["conv-a:q3"].evidence_turn_ids == ("D2:1", "D2:2", "D2:4")  # space-joined, then "D2:2" again
    assert locomo.stats.events["evidence_split"] == 2
    assert locomo.stats.events["evidence_duplicate"] == 1


def test_locomo_dropped_evidence_is_counted_not_hidden(locomo):
    items, stats = by_id(locomo.items), locomo.stats
    assert items["conv-a:q6"].evidence_turn_ids == () and not items["conv-a:q6"].has_evidence  # "D"
    assert items["conv-a:q6"].extras["raw_evidence"] == ["D"]
    assert stats.events["evidence_unparseable"] == 1
    # "D9:9" in conv-a and "D2:3" in conversation 7 name no turn of their own conversation
    assert stats.events["evidence_missing_turn"] == 2
    assert items["7:q0"].evidence_turn_ids == ("D1:1",)
    assert stats.events["question_without_evidence"] == 2  # q6 and q7 (empty list)
    assert any("D9:9" in example for example in stats.examples["evidence_missing_turn"])


def test_locomo_adversarial_item_has_no_answer(locomo):
    item = by_id(locomo.items)["conv-a:q4"]
    assert item.category == 5 and item.category_name == "adversarial" and item.abstention
    assert item.answer is None and item.extras["adversarial_answer"] == "Miso"
    assert locomo.stats.events["answer_missing"] == 1


def test_locomo_categories_answers_and_unknown_category(locomo):
    items = by_id(locomo.items)
    assert [(items[f"conv-a:q{i}"].category, items[f"conv-a:q{i}"].category_name) for i in (0, 1, 2, 3)] == [
        (4, "single-hop"), (2, "temporal"), (1, "multi-hop"), (3, "open-domain")]
    assert items["conv-a:q3"].answer == "2022"  # an int answer becomes text
    assert (items["conv-a:q7"].category, items["conv-a:q7"].category_name) == (0, "unknown")
    assert locomo.stats.events["unknown_category"] == 1
    assert items["conv-a:q0"].question_date == "" and not items["conv-a:q0"].abstention


def test_locomo_turn_without_dia_id_and_duplicate_dia_id(locomo):
    conversation, stats = locomo.conversations[1], locomo.stats
    ids = [t.turn_id for t in conversation.turns()]
    assert ids[:2] == ["D1:1", "D1:2"] and len(set(ids)) == 3  # the positional id, then a renamed duplicate
    assert conversation.sessions[0].turns[1].dia_id is None
    assert stats.events["turn_without_dia_id"] == 1 and stats.events["turn_id_duplicate"] == 1
    assert conversation.speakers == ("Cleo", "Dan")


@pytest.mark.parametrize("raw, ids, leftover", [
    ("D1:3", ["D1:3"], ""), ("D1: 3", ["D1:3"], ""), ("D8:6; D9:17", ["D8:6", "D9:17"], ""),
    ("D9:1 D4:4 D4:6", ["D9:1", "D4:4", "D4:6"], ""), ("D:11:26", ["D11:26"], ""), ("D30:05", ["D30:5"], ""),
    ("D", [], "D"), ("", [], ""), ("D2:1, see D3", ["D2:1"], "see D3")])
def test_parse_locomo_evidence(raw, ids, leftover):
    assert parse_locomo_evidence(raw) == (ids, leftover)


def test_locomo_file_errors_name_the_path(tmp_path):
    with pytest.raises(ArgumentError) as error:
        load_locomo(tmp_path / "absent.json")
    assert error.value.arg == "path"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"samples": []}))
    with pytest.raises(ArgumentError, match="not a list of samples"):
        load_locomo(bad)
    bad.write_text(json.dumps([{"sample_id": "x", "qa": []}]))
    with pytest.raises(ArgumentError, match="no 'conversation'"):
        load_locomo(bad)


def test_locomo_single_sample_object(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"sample_id": "s", "conversation": {"speaker_a": "A", "speaker_b": "B",
                                                                  "session_1": [], "session_1_date_time": ""},
                               "qa": []}))
    conversations, items, stats = load_locomo(one)
    assert len(conversations) == 1 and items == [] and stats.events["session_without_date"] == 1


# ----------------------------------------------------------------------------------------- LongMemEval


def test_longmemeval_structure_and_turn_ids(longmemeval):
    conversations, items, stats = longmemeval
    assert (stats.conversations, stats.sessions, stats.turns, stats.questions) == (5, 13, 24, 5)
    first = conversations[0]
    assert first.conversation_id == "q_user_1" and first.speakers == ("user", "assistant")
    assert [t.turn_id for t in first.sessions[1].turns] == ["answer_u1_1_1", "answer_u1_1_2", "answer_u1_1_3"]
    assert first.sessions[0].timestamp == datetime(2023, 5, 20, 2, 21)
    assert items[0].question_date == "2023/06/01 (Thu) 10:00"


def test_longmemeval_evidence_from_has_answer_and_answer_sessions(longmemeval):
    items = by_id(longmemeval.items)
    single = items["q_user_1"]
    assert single.evidence_turn_ids == ("answer_u1_1_3",)  # has_answer: false on the session's first turn
    assert single.evidence_session_ids == ("answer_u1_1",)
    assert (single.category, single.category_name, single.answer) == (1, "single-session-user", "Lisbon")
    multi = items["q_multi_2"]
    assert multi.evidence_turn_ids == ("answer_m2_a_1", "answer_m2_b_1")
    assert multi.evidence_session_ids == ("answer_m2_a", "answer_m2_b")  # "answer_m2_missing" is not there
    assert multi.answer == "2"
    assert longmemeval.stats.events["answer_session_not_in_haystack"] == 1
    assert longmemeval.stats.events["session_date_unparsed"] == 1  # "yesterday"


def test_longmemeval_abstention(longmemeval):
    item = by_id(longmemeval.items)["q_temporal_3_abs"]
    assert item.abstention and item.category_name == "temporal-reasoning"
    assert item.evidence_turn_ids == () and item.evidence_session_ids == ("answer_t3_a",)
    assert longmemeval.stats.events["abstention_question"] == 1
    assert longmemeval.stats.events["answer_session_without_marked_turn"] == 1
    assert not by_id(longmemeval.items)["q_user_1"].abstention


def test_longmemeval_marked_turn_outside_answer_session_is_not_evidence(longmemeval):
    item = by_id(longmemeval.items)["q_assist_4"]
    assert item.evidence_turn_ids == ("answer_a4_1_2",)  # an assistant turn
    assert item.extras["marked_turns_outside_evidence"] == ["sharegpt_fill_5_1"]
    assert longmemeval.stats.events["marked_turn_outside_answer_session"] == 1


def test_longmemeval_inferred_answer_sessions_duplicates_and_unknown_type(longmemeval):
    item, stats = by_id(longmemeval.items)["q_legacy_5"], longmemeval.stats
    assert item.evidence_session_ids == ("answer_p5_1",) and item.evidence_turn_ids == ("answer_p5_1_1",)
    assert stats.events["answer_session_ids_inferred"] == 1
    assert (item.category, item.category_name) == (0, "preference") and stats.events["unknown_question_type"] == 1
    session_ids = [s.session_id for s in longmemeval.conversations[4].sessions]
    assert len(set(session_ids)) == 3 and stats.events["session_id_duplicate"] == 1


def test_longmemeval_schema_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question_id": "q", "question": "?", "haystack_session_ids": ["a", "b"],
                                "haystack_sessions": [[]], "haystack_dates": ["", ""]}]))
    with pytest.raises(ArgumentError, match="2 session ids, 1 sessions and 2 dates"):
        load_longmemeval(bad)
    bad.write_text(json.dumps([{"question_id": "q"}]))
    with pytest.raises(ArgumentError, match="lacks question, haystack_session_ids, haystack_sessions"):
        load_longmemeval(bad)


# ---------------------------------------------------------------------------------- dates, hypotheses


@pytest.mark.parametrize("text, expected", [
    ("1:56 pm on 8 May, 2023", datetime(2023, 5, 8, 13, 56)),
    ("12:05 am on 1 January, 2024", datetime(2024, 1, 1, 0, 5)),
    ("2023/05/20 (Sat) 02:21", datetime(2023, 5, 20, 2, 21)), ("2023-05-20", datetime(2023, 5, 20)),
    ("sometime in spring", None), ("", None)])
def test_parse_date_time(text, expected):
    assert parse_date_time(text) == expected


def test_read_hypotheses_formats(tmp_path):
    lines = tmp_path / "h.jsonl"
    lines.write_text('{"question_id": "a", "hypothesis": "Lisbon"}\n\n{"question_id": "b", "hypothesis": 2}\n')
    assert read_hypotheses(lines) == {"a": "Lisbon", "b": "2"}
    one_line = tmp_path / "one.jsonl"
    one_line.write_text('{"question_id": "a", "hypothesis": "x"}\n')
    assert read_hypotheses(one_line) == {"a": "x"}
    mapping = tmp_path / "h.json"
    mapping.write_text(json.dumps({"a": "Lisbon", "b": "Porto"}))
    assert read_hypotheses(mapping) == {"a": "Lisbon", "b": "Porto"}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": "a", "hypothesis": "x"}\n{"question_id": "b"}\n')
    with pytest.raises(ArgumentError, match="row 2"):
        read_hypotheses(broken)
    with pytest.raises(ArgumentError) as error:
        read_hypotheses(tmp_path / "absent.jsonl")
    assert error.value.arg == "path"
