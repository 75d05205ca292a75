"""Read a LoCoMo or LongMemEval file into the shared records, counting every quirk instead of hiding it.

LoCoMo (arXiv:2402.17753; snap-research/locomo, ``data/locomo10.json``): a list of samples, each with
``sample_id``, ``conversation`` (``speaker_a``, ``speaker_b``, ``session_N`` lists of turns with
``speaker``, ``dia_id``, ``text`` and, for image turns, ``img_url`` / ``blip_caption``, and
``session_N_date_time`` such as ``"1:56 pm on 8 May, 2023"``) and ``qa`` (``question``, ``answer``,
``evidence`` dia ids, ``category``; category-5 items carry ``adversarial_answer`` instead of ``answer``).
Known defects of the released file handled here: evidence strings that pack several ids (``"D8:6; D9:17"``,
``"D9:1 D4:4 D4:6"``), ids written oddly (``"D1: 3"``, ``"D:11:26"``, ``"D30:05"``), strings with no id
at all (``"D"``) and ids that name no turn of the conversation.

LongMemEval (arXiv:2410.10813; xiaowu0162/LongMemEval README and ``src/retrieval/run_retrieval.py``): a
list of questions, each with ``question_id`` (ending ``_abs`` for abstention questions),
``question_type``, ``question``, ``answer``, ``question_date``, ``haystack_session_ids``,
``haystack_dates``, ``haystack_sessions`` (lists of ``{"role", "content"}`` turns, evidence turns marked
``has_answer: true``) and ``answer_session_ids`` (evidence session ids, which contain ``"answer"``). Each
question becomes its own ``Conversation`` (its haystack); turn ids are ``"{session_id}_{i}"`` with ``i``
the 1-based position among all the session's turns, as the reference turn-level retrieval numbers them.

Each loader returns a ``LoadedBenchmark(conversations, items, stats)``; ``stats`` counts every skipped,
repaired or suspicious entry by a named event (see ``LoadStats``), with a few examples of each.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from ..validation import ArgumentError
from .records import (
    LOCOMO_CATEGORY_NAMES,
    LONGMEMEVAL_QUESTION_TYPES,
    Conversation,
    LoadedBenchmark,
    LoadStats,
    QAItem,
    Session,
    Turn,
)

__all__ = ["load_locomo", "load_longmemeval", "parse_date_time", "parse_locomo_evidence", "read_hypotheses"]

# The date formats of the two benchmarks ("1:56 pm on 8 May, 2023"; "2023/05/20 (Sat) 02:21") and ISO.
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%Y/%m/%d (%a) %H:%M", "%Y/%m/%d %H:%M",
                 "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")

# One dialogue id inside an evidence string: "D", an optional stray colon, the session number, a colon,
# the turn number. Spaces are tolerated around the numbers ("D1: 3"); leading zeros are dropped later.
_DIA_ID = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")
_SEPARATORS = re.compile(r"[\s;,]+")
_LOCOMO_SESSION_KEY = re.compile(r"^session_(\d+)$")


def parse_date_time(text: str) -> datetime | None:
    """Parse a LoCoMo (``"1:56 pm on 8 May, 2023"``) or LongMemEval (``"2023/05/20 (Sat) 02:21"``) date; None if
    neither format (nor ISO) fits."""
    cleaned = " ".join(str(text).split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt)
        except ValueError:
            continue
    return None


def parse_locomo_evidence(raw: str) -> tuple[list[str], str]:
    """Split one LoCoMo evidence string into canonical dia ids (``"D<session>:<turn>"``, no leading zeros).

    Returns the ids in order and whatever text was left that is not an id or a separator (empty when the
    string parsed cleanly), e.g. ``"D8:6; D9:17"`` -> ``(["D8:6", "D9:17"], "")``, ``"D"`` -> ``([], "D")``.
    """
    ids = [f"D{int(session)}:{int(turn)}" for session, turn in _DIA_ID.findall(raw)]
    leftover = _SEPARATORS.sub(" ", _DIA_ID.sub(" ", raw)).strip()
    return ids, leftover


def _read_json_list(path: str | Path, what: str, rows: str) -> list:
    if not Path(path).is_file():
        raise ArgumentError("path", f"an existing {what} JSON file", repr(str(path)))
    with Path(path).open(encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and "conversation" in data:
        data = [data]  # a single LoCoMo sample saved on its own
    if not isinstance(data, list):
        raise _schema_error(path, what, f"the top level is a {type(data).__name__}, not a list of {rows}")
    return data


def _schema_error(path: str | Path, what: str, detail: str) -> ArgumentError:
    return ArgumentError("path", f"a {what} file", f"{str(path)!r} where {detail}")


def _session_timestamp(date_time: str, where: str, stats: LoadStats) -> datetime | None:
    timestamp = parse_date_time(date_time) if date_time else None
    if timestamp is None:
        stats.note("session_date_unparsed" if date_time else "session_without_date", f"{where}: {date_time!r}")
    return timestamp


def _speakers(turns: list[Turn], first: tuple[str, ...] = ()) -> tuple[str, ...]:
    seen = dict.fromkeys(s for s in first if s)
    seen.update(dict.fromkeys(turn.speaker for turn in turns))
    return tuple(seen)


# ---------------------------------------------------------------------------------------------- LoCoMo


def _locomo_session(conversation_id: str, number: int, raw_turns: list, date_time: str,
                    stats: LoadStats, taken_ids: set[str]) -> Session:
    session_id = f"session_{number}"
    timestamp = _session_timestamp(date_time, f"{conversation_id} {session_id}", stats)
    turns = []
    for position, raw in enumerate(raw_turns, start=1):
        raw_dia_id = raw.get("dia_id")
        ids, _ = parse_locomo_evidence(str(raw_dia_id)) if raw_dia_id is not None else ([], "")
        if len(ids) != 1:
            # keep the turn under its position so that nothing vanishes; evidence cannot name it anyway
            stats.note("turn_without_dia_id", f"{conversation_id} {session_id} turn {position}: {raw_dia_id!r}")
            ids = [f"D{number}:{position}"]
        turn_id = ids[0]
        if turn_id in taken_ids:
            stats.note("turn_id_duplicate", f"{conversation_id} {turn_id}")
            turn_id = f"{turn_id}#{position}@{session_id}"
        taken_ids.add(turn_id)
        extras = {k: v for k, v in raw.items() if k not in ("speaker", "dia_id", "text")}
        turns.append(Turn(turn_id=turn_id, session_id=session_id, speaker=str(raw.get("speaker", "")),
                          text=str(raw.get("text", "")), date_time=date_time, timestamp=timestamp,
                          dia_id=None if raw_dia_id is None else str(raw_dia_id), extras=extras))
    return Session(session_id=session_id, date_time=date_time, timestamp=timestamp, turns=tuple(turns))


def _locomo_evidence(question_id: str, raw_evidence: Any, turn_session: dict[str, str],
                     stats: LoadStats) -> list[str]:
    if raw_evidence is None:
        raw_evidence = []
    elif not isinstance(raw_evidence, list):
        raw_evidence = [raw_evidence]
    kept: list[str] = []
    for raw in raw_evidence:
        if not isinstance(raw, str):
            stats.note("evidence_unparseable", f"{question_id}: {raw!r}")
            continue
        ids, leftover = parse_locomo_evidence(raw)
        if leftover:
            stats.note("evidence_unparseable", f"{question_id}: {raw!r}")
        if len(ids) > 1:
            stats.note("evidence_split", f"{question_id}: {raw!r} -> {ids}")
        elif len(ids) == 1 and ids[0] != raw.strip():
            stats.note("evidence_reformatted", f"{question_id}: {raw!r} -> {ids[0]!r}")
        for dia_id in ids:
            if dia_id not in turn_session:
                stats.note("evidence_missing_turn", f"{question_id}: {dia_id}")
            elif dia_id in kept:
                stats.note("evidence_duplicate", f"{question_id}: {dia_id}")
            else:
                kept.append(dia_id)
    return kept


def load_locomo(path: str | Path) -> LoadedBenchmark:
    """Read a LoCoMo file (``locomo10.json`` or a file in its schema) into conversations and QA items.

    Question ids are ``"{sample_id}:q{i}"`` with ``i`` the 0-based position in the sample's ``qa`` list.
    Evidence ids are repaired where the intent is unambiguous and dropped (and counted) otherwise; the raw
    list stays in ``item.extras["raw_evidence"]``. LoCoMo gives no question date, so ``question_date`` is
    empty (the last session's date is the natural "now" for time-aware retrieval).
    """
    data = _read_json_list(path, "LoCoMo", "samples")
    stats = LoadStats(source="locomo")
    conversations, items = [], []
    for index, sample in enumerate(data):
        if not isinstance(sample, dict) or not isinstance(sample.get("conversation"), dict):
            raise _schema_error(path, "LoCoMo", f"sample {index} has no 'conversation' object")
        conversation_id = str(sample.get("sample_id", f"sample-{index}"))
        raw_conversation = sample["conversation"]
        numbers = sorted(int(m.group(1)) for key in raw_conversation if (m := _LOCOMO_SESSION_KEY.match(key)))
        for n in numbers:
            raw_turns = raw_conversation[f"session_{n}"] or []
            if not (isinstance(raw_turns, list) and all(isinstance(t, dict) for t in raw_turns)):
                raise _schema_error(path, "LoCoMo", f"{conversation_id} session_{n} is not a list of turn objects")
        for key, value in raw_conversation.items():
            m = re.match(r"^session_(\d+)_date_time$", key)
            if m and int(m.group(1)) not in numbers:
                stats.note("session_date_without_turns", f"{conversation_id} {key}={value!r}")
        taken_ids: set[str] = set()
        sessions = tuple(_locomo_session(conversation_id, n, raw_conversation[f"session_{n}"] or [],
                                         str(raw_conversation.get(f"session_{n}_date_time") or ""), stats, taken_ids)
                         for n in numbers)
        all_turns = [turn for session in sessions for turn in session.turns]
        conversation = Conversation(conversation_id=conversation_id, sessions=sessions, speakers=_speakers(
            all_turns, (str(raw_conversation.get("speaker_a", "")), str(raw_conversation.get("speaker_b", "")))))
        conversations.append(conversation)
        stats.conversations += 1
        stats.sessions += len(sessions)
        stats.turns += len(all_turns)

        turn_session = {turn.turn_id: turn.session_id for turn in all_turns}
        for q_index, raw_qa in enumerate(sample.get("qa") or []):
            if not isinstance(raw_qa, dict):
                raise _schema_error(path, "LoCoMo", f"{conversation_id} qa {q_index} is not an object")
            items.append(_locomo_item(conversation_id, q_index, raw_qa, turn_session, stats))
    stats.questions = len(items)
    return LoadedBenchmark(conversations, items, stats)


def _locomo_item(conversation_id: str, q_index: int, raw: dict, turn_session: dict[str, str],
                 stats: LoadStats) -> QAItem:
    question_id = f"{conversation_id}:q{q_index}"
    category = raw.get("category")
    if category in LOCOMO_CATEGORY_NAMES and isinstance(category, int):
        category_name = LOCOMO_CATEGORY_NAMES[category]
    else:
        stats.note("unknown_category", f"{question_id}: {category!r}")
        category, category_name = 0, "unknown"
    answer = raw.get("answer")
    if answer is None:
        stats.note("answer_missing", f"{question_id} (category {category})")
    evidence = _locomo_evidence(question_id, raw.get("evidence"), turn_session, stats)
    if not evidence:
        stats.note("question_without_evidence", f"{question_id}: {raw.get('evidence')!r}")
    sessions = list(dict.fromkeys(turn_session[t] for t in evidence))
    extras = {k: v for k, v in raw.items() if k not in ("question", "answer", "category", "evidence")}
    extras["raw_evidence"] = raw.get("evidence")
    return QAItem(question_id=question_id, conversation_id=conversation_id, question=str(raw.get("question", "")),
                  answer=None if answer is None else str(answer), category=category, category_name=category_name,
                  evidence_turn_ids=tuple(evidence), evidence_session_ids=tuple(sessions),
                  abstention=category_name == "adversarial", extras=extras)


# ----------------------------------------------------------------------------------------- LongMemEval


def load_longmemeval(path: str | Path) -> LoadedBenchmark:
    """Read a LongMemEval file (``longmemeval_s.json``, ``_m``, ``_oracle`` or one in their schema).

    Evidence sessions are ``answer_session_ids`` (those present in the haystack); evidence turns are the
    turns marked ``has_answer`` inside them (user or assistant: the reference indexes user turns only, so a
    retriever that does the same cannot reach assistant evidence). Abstention (``_abs``) questions are kept and
    flagged; the reference skips them when averaging retrieval metrics, and so do ``metrics``.
    """
    data = _read_json_list(path, "LongMemEval", "questions")
    stats = LoadStats(source="longmemeval")
    conversations, items = [], []
    for index, entry in enumerate(data):
        missing = [k for k in ("question_id", "question", "haystack_session_ids", "haystack_sessions")
                   if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise _schema_error(path, "LongMemEval", f"question {index} lacks {', '.join(missing)}")
        conversation, item = _longmemeval_entry(path, entry, stats)
        conversations.append(conversation)
        items.append(item)
    stats.questions = len(items)
    return LoadedBenchmark(conversations, items, stats)


def _longmemeval_entry(path: str | Path, entry: dict, stats: LoadStats) -> tuple[Conversation, QAItem]:
    question_id = str(entry["question_id"])
    session_ids, raw_sessions = entry["haystack_session_ids"], entry["haystack_sessions"]
    dates = entry.get("haystack_dates") or [""] * len(session_ids)
    if not len(session_ids) == len(raw_sessions) == len(dates):
        raise _schema_error(path, "LongMemEval", f"question {question_id!r} has {len(session_ids)} session ids, "
                                                 f"{len(raw_sessions)} sessions and {len(dates)} dates")
    listed = [str(s) for s in entry.get("answer_session_ids") or []]
    if "answer_session_ids" not in entry:  # fall back on the naming convention the reference relies on
        listed = [str(s) for s in session_ids if "answer" in str(s)]
        stats.note("answer_session_ids_inferred", f"{question_id}: {listed}")
    sessions, marked, seen_sessions = [], [], set()
    for raw_id, raw_turns, date_time in zip(session_ids, raw_sessions, dates, strict=True):
        session_id, date_time = str(raw_id), str(date_time or "")
        if session_id in seen_sessions:
            stats.note("session_id_duplicate", f"{question_id}: {session_id}")
            session_id = f"{session_id}#{len(sessions) + 1}"
        seen_sessions.add(session_id)
        timestamp = _session_timestamp(date_time, f"{question_id}: {session_id}", stats)
        turns = []
        for position, raw in enumerate(raw_turns or [], start=1):
            if not isinstance(raw, dict):
                raise _schema_error(path, "LongMemEval", f"{question_id} session {session_id} turn {position} "
                                                         f"is a {type(raw).__name__}, not a {{role, content}} object")
            has_answer = bool(raw.get("has_answer", False))
            turn = Turn(turn_id=f"{session_id}_{position}", session_id=session_id, speaker=str(raw.get("role", "")),
                        text=str(raw.get("content", "")), date_time=date_time, timestamp=timestamp,
                        has_answer=has_answer,
                        extras={k: v for k, v in raw.items() if k not in ("role", "content", "has_answer")})
            turns.append(turn)
            if has_answer:
                marked.append(turn)
        sessions.append(Session(session_id=session_id, date_time=date_time, timestamp=timestamp, turns=tuple(turns)))
    conversation = Conversation(conversation_id=question_id, sessions=tuple(sessions),
                                speakers=_speakers([t for s in sessions for t in s.turns]))
    stats.conversations += 1
    stats.sessions += len(sessions)
    stats.turns += sum(len(s.turns) for s in sessions)

    present, marked_sessions = {s.session_id for s in sessions}, {t.session_id for t in marked}
    evidence_sessions = [s for s in dict.fromkeys(listed) if s in present]
    for session_id in dict.fromkeys(listed):
        if session_id not in present:
            stats.note("answer_session_not_in_haystack", f"{question_id}: {session_id}")
        elif session_id not in marked_sessions:
            stats.note("answer_session_without_marked_turn", f"{question_id}: {session_id}")
    # the reference counts a marked turn as evidence only inside an evidence session ("answer" in its id)
    outside = [turn.turn_id for turn in marked if turn.session_id not in evidence_sessions]
    for turn_id in outside:
        stats.note("marked_turn_outside_answer_session", f"{question_id}: {turn_id}")
    evidence_turns = [turn.turn_id for turn in marked if turn.session_id in evidence_sessions]
    return conversation, _longmemeval_item(entry, question_id, evidence_turns, evidence_sessions, outside, stats)


def _longmemeval_item(entry: dict, question_id: str, evidence_turns: list[str], evidence_sessions: list[str],
                      outside: list[str], stats: LoadStats) -> QAItem:
    question_type = str(entry.get("question_type", ""))
    if question_type in LONGMEMEVAL_QUESTION_TYPES:
        category = LONGMEMEVAL_QUESTION_TYPES.index(question_type) + 1
    else:
        stats.note("unknown_question_type", f"{question_id}: {question_type!r}")
        category = 0
    abstention = question_id.endswith("_abs")
    if abstention:
        stats.note("abstention_question", question_id)
    if not evidence_turns and not evidence_sessions and not abstention:
        stats.note("question_without_evidence", question_id)
    answer = entry.get("answer")
    if answer is None:
        stats.note("answer_missing", question_id)
    known = ("question_id", "question_type", "question", "answer", "question_date", "haystack_session_ids",
             "haystack_dates", "haystack_sessions")
    extras = {k: v for k, v in entry.items() if k not in known}
    if outside:
        extras["marked_turns_outside_evidence"] = outside
    return QAItem(question_id=question_id, conversation_id=question_id, question=str(entry["question"]),
                  answer=None if answer is None else str(answer), category=category,
                  category_name=question_type or "unknown", evidence_turn_ids=tuple(evidence_turns),
                  evidence_session_ids=tuple(evidence_sessions), question_date=str(entry.get("question_date") or ""),
                  abstention=abstention, extras=extras)


def read_hypotheses(path: str | Path) -> dict[str, str]:
    """Read answers produced elsewhere: JSON lines of ``{"question_id", "hypothesis"}`` (LongMemEval's format)
    or one JSON object mapping question id to answer text."""
    path = Path(path)
    if not path.is_file():
        raise ArgumentError("path", "an existing hypothesis file (.jsonl or .json)", repr(str(path)))
    text = path.read_text(encoding="utf-8")
    accepted = "JSON lines of {'question_id', 'hypothesis'}, or a JSON object mapping question id to answer"
    try:
        whole = json.loads(text)
        rows = whole if isinstance(whole, list) else [whole]  # a JSON list of rows, or a one-line JSONL file
    except json.JSONDecodeError:
        whole, rows = None, []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                rows.extend([json.loads(line)] if line.strip() else [])
            except json.JSONDecodeError as error:
                raise ArgumentError("path", accepted, f"{str(path)!r}, line {number}: {error}") from None
    if isinstance(whole, dict) and not {"question_id", "hypothesis"} <= whole.keys():
        return {str(k): str(v) for k, v in whole.items()}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "question_id" not in row or "hypothesis" not in row:
            raise ArgumentError("path", accepted, f"{str(path)!r} whose row {number} is {str(row)[:80]!r}")
    return {str(row["question_id"]): str(row["hypothesis"]) for row in rows}
