"""The LoCoMo-style generator: determinism, LoCoMo's schema, evidence that holds its fact, dates, updates."""

import json
import re
from collections import Counter
from datetime import date, datetime, timedelta
from itertools import pairwise

import pytest

from longrecall.agent_memory.generator import (
    CATEGORIES,
    LOCOMO_QUESTIONS_PER_CONVERSATION,
    generate,
    relative_date,
    write_locomo,
)
from longrecall.validation import ArgumentError

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SESSION_TIME = re.compile(r"^(\d{1,2}):(\d{2}) (am|pm) on (\d{1,2}) ([A-Z][a-z]+), (\d{4})$")
EXPRESSION = re.compile(r"\b(yesterday|two days ago|last weekend|last week|last month|on (\d{1,2}) ("
                        + "|".join(MONTHS) + r")(?: (\d{4}))?)\b")
COUNTS = {1: 10, 2: 10, 3: 6, 4: 20, 5: 10}


@pytest.fixture(scope="module")
def data():
    return generate(3, 12, 14, COUNTS, seed=7, annotate=True)


def session_datetime(text):
    hour, minute, noon, day, month, year = SESSION_TIME.match(text).groups()
    hour = int(hour) % 12 + (12 if noon == "pm" else 0)
    return datetime(int(year), MONTHS.index(month) + 1, int(day), hour, int(minute))


def sessions(conversation):
    k = 1
    while f"session_{k}" in conversation:
        yield k, session_datetime(conversation[f"session_{k}_date_time"]), conversation[f"session_{k}"]
        k += 1


def turns_by_id(conversation):
    return {t["dia_id"]: (t, when.date()) for _, when, turns in sessions(conversation) for t in turns}


def mentions(text, phrase):
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def day_text(day):
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def resolve(expression, session_day):
    """What a relative date said on ``session_day`` means, written the generator's (LoCoMo's) way."""
    match = EXPRESSION.fullmatch(expression)
    if expression in ("yesterday", "two days ago"):
        return day_text(session_day - timedelta(days=1 if expression == "yesterday" else 2))
    if expression in ("last week", "last weekend"):
        return f"the {expression.split()[1]} before {day_text(session_day)}"
    if expression == "last month":
        previous = session_day.replace(day=1) - timedelta(days=1)
        return f"{MONTHS[previous.month - 1]} {previous.year}"
    day, month, year = match.group(2), match.group(3), match.group(4) or str(session_day.year)
    return f"{int(day)} {month} {year}"


def test_deterministic_and_extends_with_more_conversations():
    one = generate(2, 6, 12, 2, seed=3)
    assert json.dumps(one) == json.dumps(generate(2, 6, 12, 2, seed=3))
    assert json.dumps(one) != json.dumps(generate(2, 6, 12, 2, seed=4))
    assert generate(3, 6, 12, 2, seed=3)[:2] == one  # conversation i depends on (seed, i) only


def test_locomo_schema():
    data = generate(2, 5, 12, 2, seed=1)
    for sample in data:
        assert set(sample) == {"sample_id", "conversation", "qa"}
        conversation = sample["conversation"]
        a, b = conversation["speaker_a"], conversation["speaker_b"]
        assert a != b
        expected = {"speaker_a", "speaker_b"} | {f"session_{k}{s}" for k in range(1, 6) for s in ("", "_date_time")}
        assert set(conversation) == expected
        for k, _, turns in sessions(conversation):
            assert len(turns) == 12
            for i, turn in enumerate(turns, 1):
                assert set(turn) == {"speaker", "dia_id", "text"} and turn["dia_id"] == f"D{k}:{i}"
                assert turn["speaker"] in (a, b) and turn["text"]
            assert all(x["speaker"] != y["speaker"] for x, y in pairwise(turns))  # speakers alternate
        questions = [q["question"] for q in sample["qa"]]
        assert len(set(questions)) == len(questions)
        for q in sample["qa"]:
            answer_key = "adversarial_answer" if q["category"] == 5 else "answer"
            assert set(q) == {"question", answer_key, "evidence", "category"}
            assert isinstance(q[answer_key], str) and q[answer_key]
            assert q["evidence"] and all(re.fullmatch(r"D\d+:\d+", e) for e in q["evidence"])
        assert [q["category"] for q in sample["qa"]][-2:] == [5, 5]  # adversarial questions come last
    assert json.loads(json.dumps(data)) == data


def test_category_counts_as_requested(data):
    for sample in data:
        assert Counter(q["category"] for q in sample["qa"]) == COUNTS
    only_some = generate(1, 6, 12, {2: 3, 5: 1}, seed=0)[0]["qa"]
    assert Counter(q["category"] for q in only_some) == {2: 3, 5: 1}
    for sample in generate(2):  # LoCoMo's sizes: 19 sessions of 16 turns, its questions per conversation
        assert Counter(q["category"] for q in sample["qa"]) == LOCOMO_QUESTIONS_PER_CONVERSATION
        assert sum(len(turns) for _, _, turns in sessions(sample["conversation"])) == 19 * 16


def test_session_dates_increase(data):
    for sample in data:
        times = [when for _, when, _ in sessions(sample["conversation"])]
        assert len(times) == 12
        assert all(4 <= (y.date() - x.date()).days <= 28 for x, y in pairwise(times))


def test_every_evidence_turn_exists_and_holds_the_fact(data):
    checked = Counter()
    for sample in data:
        conversation = sample["conversation"]
        names = (conversation["speaker_a"], conversation["speaker_b"])
        turns = turns_by_id(conversation)
        for q in sample["qa"]:
            evidence = [turns[e] for e in q["evidence"]]  # KeyError: an id naming no turn
            assert len(q["key_facts"]) == len(evidence)
            for (turn, _), key in zip(evidence, q["key_facts"], strict=True):
                assert mentions(turn["text"], key), (q, turn)
            asked = [n for n in names if mentions(q["question"], n)]
            category = q["category"]
            if category == 1:
                assert len(evidence) >= 2
                for part in q["answer"].split(", "):  # LoCoMo scores multi-hop answers split at commas
                    assert any(mentions(turn["text"], part) for turn, _ in evidence), (q, part)
            elif category == 5:
                (turn, _), = evidence
                assert "answer" not in q and mentions(turn["text"], q["adversarial_answer"])
                assert asked and turn["speaker"] not in asked  # the premise is the other speaker's fact
                said_by_asked = [t["text"] for t, _ in turns.values() if t["speaker"] == asked[0]]
                assert not any(mentions(text, q["key_facts"][0]) for text in said_by_asked)
            else:
                (turn, session_day), = evidence
                assert asked == [turn["speaker"]]
                if category == 4:
                    assert mentions(turn["text"], q["answer"])
                elif category == 3:
                    assert ";" in q["answer"]
                else:
                    found = [m.group(1) for m in EXPRESSION.finditer(turn["text"])]
                    assert len(found) == 1 and resolve(found[0], session_day) == q["answer"], (q, turn)
            checked[category] += 1
    assert checked == {c: 3 * n for c, n in COUNTS.items()}


def test_handles_are_said_in_one_turn_only(data):
    """Small talk and reactions state nothing, so a fact's handle names exactly its own turn."""
    for sample in data:
        texts = {dia_id: turn["text"] for dia_id, (turn, _) in turns_by_id(sample["conversation"]).items()}
        for fact in sample["facts"]:
            assert [d for d, text in texts.items() if mentions(text, fact["handle"])] == [fact["dia_id"]], fact


def test_event_graph_dates_and_causes(data):
    for sample in data:
        days = {k: when.date() for k, when, _ in sessions(sample["conversation"])}
        facts = {f["dia_id"]: f for f in sample["facts"]}
        order = {d: tuple(map(int, d[1:].split(":"))) for d in facts}
        for fact in facts.values():
            k = order[fact["dia_id"]][0]
            if fact["date"] is not None:  # an event happened since the previous session
                happened = date.fromisoformat(fact["date"])
                assert happened < days[k] and (k == 1 or happened > days[k - 1])
            if fact["kind"] == "move":
                cause = facts[fact["cause"]]
                assert cause["kind"] == "new_job" and cause["speaker"] == fact["speaker"]
                assert order[cause["dia_id"]] < order[fact["dia_id"]] and cause["date"] <= fact["date"]


def test_updated_facts_are_asked_with_the_latest_turn(data):
    updated = 0
    for sample in data:
        qa = {q["question"]: q for q in sample["qa"]}
        texts = {d: t for d, (t, _) in turns_by_id(sample["conversation"]).items()}
        for name in (sample["conversation"]["speaker_a"], sample["conversation"]["speaker_b"]):
            facts = [f for f in sample["facts"] if f["speaker"] == name]
            for kinds, question in (({"hometown", "move"}, f"Where does {name} live now?"),
                                    ({"job", "new_job"}, f"What is {name}'s job now?")):
                states = [f for f in facts if f["kind"] in kinds]
                if len(states) < 2:
                    continue
                updated += 1
                q = qa[question]  # always asked when the fact changed
                assert q["answer"] == states[-1]["handle"] != states[0]["handle"]
                assert q["evidence"] == [states[-1]["dia_id"]]
            moves = [d for d, t in texts.items() if t["speaker"] == name and "I moved to" in t["text"]]
            if f"Where does {name} live now?" in qa and moves:  # independent of the annotation: the last move
                assert qa[f"Where does {name} live now?"]["evidence"] == [moves[-1]]
    assert updated >= 3


def test_multi_hop_answers_follow_the_timeline():
    """Recomputed from the event graph: the state when an event happened, the city before a move, its cause."""
    checked = Counter()
    for sample in generate(3, 19, 16, {1: 60}, seed=11, annotate=True):
        by_id = {f["dia_id"]: f for f in sample["facts"]}
        position = {d: tuple(map(int, d[1:].split(":"))) for d in by_id}
        for q in sample["qa"]:
            facts = [by_id[d] for d in q["evidence"]]
            speaker = facts[-1]["speaker"]
            cities = [f for f in sample["facts"] if f["speaker"] == speaker and f["kind"] in ("hometown", "move")]
            jobs = [f for f in sample["facts"] if f["speaker"] == speaker and f["kind"] in ("job", "new_job")]
            when = re.match(r"(Where was|What was) .+ when they ", q["question"])
            if when:
                event = facts[-1]
                states = cities if when.group(1) == "Where was" else jobs
                before = [f for f in states if position[f["dia_id"]] < position[event["dia_id"]]]
                assert q["answer"] == before[-1]["handle"] and q["evidence"] == [before[-1]["dia_id"], event["dia_id"]]
                assert before[-1]["date"] is None or before[-1]["date"] < event["date"]
                checked["when"] += 1
            elif q["question"].startswith("What job took"):
                move = facts[-1]
                assert move["kind"] == "move" and q["answer"] == by_id[move["cause"]]["handle"]
                checked["cause"] += 1
            elif q["question"].startswith("Where did") and "before moving to" in q["question"]:
                move = facts[-1]
                assert q["answer"] == cities[cities.index(move) - 1]["handle"]
                checked["before"] += 1
    assert min(checked["when"], checked["cause"], checked["before"]) >= 3, checked


@pytest.mark.parametrize("event, session, expected", [
    (date(2023, 5, 7), date(2023, 5, 8), ("yesterday", "7 May 2023")),
    (date(2023, 5, 6), date(2023, 5, 8), ("two days ago", "6 May 2023")),
    (date(2023, 5, 3), date(2023, 5, 8), ("last week", "the week before 8 May 2023")),
    (date(2023, 5, 6), date(2023, 5, 10), ("last weekend", "the weekend before 10 May 2023")),
    (date(2023, 4, 29), date(2023, 5, 8), ("last month", "April 2023")),
    (date(2023, 5, 9), date(2023, 5, 12), ("on 9 May", "9 May 2023")),  # same week, same month
    (date(2023, 3, 15), date(2023, 5, 8), ("on 15 March", "15 March 2023")),
    (date(2022, 12, 20), date(2023, 1, 20), ("last month", "December 2022")),
    (date(2022, 11, 20), date(2023, 1, 20), ("on 20 November 2022", "20 November 2022")),
])
def test_relative_date_cases(event, session, expected):
    assert relative_date(event, session) == expected
    assert resolve(expected[0], session) == expected[1]


def test_relative_date_names_an_interval_holding_the_event():
    for session in (date(2023, 1, 2) + timedelta(days=d) for d in range(0, 400, 3)):
        for back in range(1, 40):
            event = session - timedelta(days=back)
            _, answer = relative_date(event, session)
            monday = session - timedelta(days=session.weekday()) - timedelta(days=7)
            if answer.startswith("the week before"):
                assert monday <= event < monday + timedelta(days=5)
            elif answer.startswith("the weekend before"):
                assert monday + timedelta(days=5) <= event < monday + timedelta(days=7)
            elif answer.count(" ") == 1:
                assert answer == f"{MONTHS[event.month - 1]} {event.year}" and back >= 7
            else:
                assert answer == day_text(event)
    with pytest.raises(ArgumentError) as error:
        relative_date(date(2023, 5, 8), date(2023, 5, 8))
    assert error.value.arg == "event"


def test_worked_example_in_the_docstring():
    sample = generate(1, 6, 10, 1, seed=0)[0]
    turns = turns_by_id(sample["conversation"])
    assert sample["conversation"]["session_6_date_time"] == "2:12 pm on 27 January, 2023"
    assert turns["D6:7"][0]["text"].startswith("I moved to Toronto two days ago for the new job.")
    qa = {q["question"]: q for q in sample["qa"]}
    assert qa["What job took Zora to Toronto?"] == {"question": "What job took Zora to Toronto?",
                                                    "answer": "translator", "evidence": ["D6:5", "D6:7"],
                                                    "category": 1}
    assert qa["When did Alma see The Static Lanterns live?"]["answer"] == "11 January 2023"
    assert qa["What breed is Alma's parrot Pixel?"]["adversarial_answer"] == "African grey"
    assert [CATEGORIES[q["category"]] for q in sample["qa"]].count("adversarial") == 1


def test_write_locomo_is_atomic_and_round_trips(tmp_path):
    data = generate(1, 4, 10, 1, seed=2)
    path = tmp_path / "out" / "synthetic_locomo.json"
    write_locomo(path, data)
    assert json.loads(path.read_text()) == data
    assert [p.name for p in path.parent.iterdir()] == ["synthetic_locomo.json"]  # no temporary file left
    with pytest.raises(ArgumentError) as error:
        write_locomo(path, {"qa": []})
    assert error.value.arg == "data"


@pytest.mark.parametrize("kwargs, arg", [
    (dict(n_conversations=0), "n_conversations"),
    (dict(sessions_per_conversation=0), "sessions_per_conversation"),
    (dict(turns_per_session=1), "turns_per_session"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(annotate=1), "annotate"),
    (dict(questions_per_category=-1), "questions_per_category"),
    (dict(questions_per_category={6: 1}), "questions_per_category"),
    (dict(questions_per_category={2: "3"}), "questions_per_category[2]"),
    (dict(questions_per_category={2: 500}), "questions_per_category"),  # more than the conversation holds
])
def test_bad_arguments_name_themselves(kwargs, arg):
    args = dict(n_conversations=1, sessions_per_conversation=4, turns_per_session=10, questions_per_category=1)
    with pytest.raises(ArgumentError) as error:
        generate(**{**args, **kwargs})
    assert error.value.arg == arg


def test_too_many_questions_says_how_many_fit():
    with pytest.raises(ArgumentError, match=r"at most \d+ temporal \(category 2\) questions in conversation 0"):
        generate(1, 2, 6, {2: 50})
