"""The data model shared by the agent-memory loaders, store, retrievers, generator and metrics (issue 16).

A benchmark file, LoCoMo (Maharana et al. 2024, arXiv:2402.17753, github.com/snap-research/locomo) or
LongMemEval (Wu et al. 2024, arXiv:2410.10813, github.com/xiaowu0162/LongMemEval), is read into
``Conversation`` objects (sessions of dated turns) and ``QAItem`` objects (a question, its gold answer
and the ids of the turns and sessions that hold its evidence). Everything downstream speaks these types,
so a retriever never needs to know which benchmark a conversation came from. A loader or generator returns
a ``LoadedBenchmark(conversations, items, stats)`` whose ``LoadStats`` counts what was repaired or skipped.

Ids are strings and are unique within one conversation: a LoCoMo turn keeps its dialogue id
(``"D3:12"``: session 3, turn 12), a LongMemEval turn is ``"{session_id}_{turn index}"`` (1-based, the id
form the LongMemEval turn-level retrieval uses). Evidence is stated as those turn ids and session ids.

LoCoMo's question categories are integers whose names several re-distributions of the data get wrong.
The mapping used here, once, is the one stated in issue 16 and confirmed against the reference
evaluation, snap-research/locomo ``task_eval/evaluation.py`` (category 1 answers are split on commas and
scored per sub-answer, i.e. multi-hop; category 5 is scored by whether the prediction says the
information is not available, i.e. adversarial)::

    1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial

LongMemEval labels questions by a ``question_type`` string; the loader numbers those types in the order
of ``LONGMEMEVAL_QUESTION_TYPES`` so that both benchmarks group results by ``(category, category_name)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator, NamedTuple

__all__ = ["LOCOMO_CATEGORY_NAMES", "LONGMEMEVAL_QUESTION_TYPES", "Turn", "Session", "Conversation", "QAItem",
           "LoadStats", "LoadedBenchmark"]

# LoCoMo category number -> name (see the module docstring for the source).
LOCOMO_CATEGORY_NAMES: dict[int, str] = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop",
                                         5: "adversarial"}

# LongMemEval's ``question_type`` values (its README); the category number is the 1-based position here.
# An abstention question keeps its type and is flagged by ``QAItem.abstention`` instead.
LONGMEMEVAL_QUESTION_TYPES: tuple[str, ...] = ("single-session-user", "single-session-assistant",
                                               "single-session-preference", "multi-session",
                                               "temporal-reasoning", "knowledge-update")


@dataclass(frozen=True)
class Turn:
    """One utterance.

    Attributes:
        turn_id: unique within its conversation (``"D1:3"`` for LoCoMo, ``"{session_id}_{i}"`` for LongMemEval).
        session_id: the id of the session that holds it.
        speaker: who speaks (a LoCoMo speaker name; ``"user"`` or ``"assistant"`` for LongMemEval).
        text: what is said (LoCoMo image turns keep their text; the caption goes to ``extras``).
        date_time: the session's date as the source writes it (``"1:56 pm on 8 May, 2023"``,
            ``"2023/05/20 (Sat) 02:21"``), empty when the source gives none.
        timestamp: ``date_time`` parsed, or None when it could not be parsed.
        dia_id: the id exactly as the source file wrote it (LoCoMo ``dia_id``), None when the source has none.
        has_answer: LongMemEval's turn-level evidence flag (``has_answer: true``); False elsewhere.
        extras: any other source fields kept verbatim (e.g. LoCoMo ``img_url``, ``blip_caption``).
    """

    turn_id: str
    session_id: str
    speaker: str
    text: str
    date_time: str = ""
    timestamp: datetime | None = None
    dia_id: str | None = None
    has_answer: bool = False
    extras: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Session:
    """A dated run of turns.

    Attributes:
        session_id: unique within its conversation (``"session_3"`` for LoCoMo, the haystack session id
            for LongMemEval).
        date_time: the date as the source writes it (may be empty).
        timestamp: ``date_time`` parsed, or None.
        turns: the turns in order.
    """

    session_id: str
    date_time: str
    timestamp: datetime | None
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Conversation:
    """One history that questions are asked about (a LoCoMo sample; a LongMemEval question's haystack).

    Attributes:
        conversation_id: LoCoMo ``sample_id``; for LongMemEval the ``question_id`` whose haystack it is.
        sessions: the sessions in the order the source gives them.
        speakers: the distinct speakers, in order of first appearance.
    """

    conversation_id: str
    sessions: tuple[Session, ...]
    speakers: tuple[str, ...]

    def turns(self) -> Iterator[Turn]:
        """Every turn, session by session, in order."""
        for session in self.sessions:
            yield from session.turns

    def turn_ids(self) -> set[str]:
        """The set of turn ids (to check evidence ids against)."""
        return {turn.turn_id for turn in self.turns()}

    def session_ids(self) -> set[str]:
        """The set of session ids."""
        return {session.session_id for session in self.sessions}


@dataclass(frozen=True)
class QAItem:
    """A question with its gold answer and evidence.

    Attributes:
        question_id: unique within the loaded file (LoCoMo: ``"{sample_id}:q{index}"``; LongMemEval: its
            ``question_id``).
        conversation_id: the conversation it is asked about.
        question: the question text.
        answer: the gold answer as text; None when the source has none (LoCoMo adversarial items carry
            ``adversarial_answer`` instead, kept in ``extras``).
        category: the category number (``LOCOMO_CATEGORY_NAMES``; ``LONGMEMEVAL_QUESTION_TYPES`` position).
        category_name: its name (``"multi-hop"``, ``"temporal-reasoning"``...).
        evidence_turn_ids: the turn ids that hold the evidence, only those that exist in the conversation
            (the loaders count and report the ones they could not resolve).
        evidence_session_ids: the session ids that hold the evidence.
        question_date: when the question is asked, as the source writes it (LongMemEval
            ``question_date``); empty when the source gives none.
        abstention: True when the right answer is to decline (LongMemEval ``_abs`` questions, LoCoMo
            category 5).
        extras: other source fields kept verbatim (``adversarial_answer``, raw evidence strings...).
    """

    question_id: str
    conversation_id: str
    question: str
    answer: str | None
    category: int
    category_name: str
    evidence_turn_ids: tuple[str, ...] = ()
    evidence_session_ids: tuple[str, ...] = ()
    question_date: str = ""
    abstention: bool = False
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def has_evidence(self) -> bool:
        """Whether any valid evidence turn is known (LoCoMo recall@k is computed over these items only)."""
        return bool(self.evidence_turn_ids)


@dataclass
class LoadStats:
    """What a loader (``loaders.load_locomo``, ``load_longmemeval``) or a generator counted while building items.

    ``events`` counts named occurrences; ``examples`` keeps the first few of each as text. Events:
    ``evidence_split`` (one evidence string held several ids), ``evidence_reformatted`` (an id written
    oddly, repaired), ``evidence_unparseable`` (text with no id in it, dropped), ``evidence_missing_turn``
    (an id that names no turn, dropped), ``evidence_duplicate`` (an id listed twice, kept once),
    ``question_without_evidence`` (no valid evidence left: kept, but evidence recall skips it),
    ``answer_missing`` (no ``answer`` field: LoCoMo category 5 has ``adversarial_answer``),
    ``unknown_category`` / ``unknown_question_type``, ``abstention_question``, ``session_without_date``,
    ``session_date_unparsed``, ``session_date_without_turns``, ``turn_without_dia_id``,
    ``turn_id_duplicate``, ``session_id_duplicate``, ``answer_session_ids_inferred`` (no such field: sessions
    named ``answer...``), ``answer_session_not_in_haystack``, ``answer_session_without_marked_turn``,
    ``marked_turn_outside_answer_session`` (not evidence, as in the reference; listed in the item's extras).
    """

    source: str
    conversations: int = 0
    sessions: int = 0
    turns: int = 0
    questions: int = 0
    events: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    examples_kept: int = 5

    def note(self, event: str, example: str) -> None:
        """Count one occurrence of ``event``, keeping ``example`` if fewer than a handful are kept."""
        self.events[event] += 1
        kept = self.examples.setdefault(event, [])
        if len(kept) < self.examples_kept:
            kept.append(example)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for reports)."""
        return {"source": self.source, "conversations": self.conversations, "sessions": self.sessions,
                "turns": self.turns, "questions": self.questions, "events": dict(sorted(self.events.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())}}

    def summary(self) -> str:
        """One line per event, for logs."""
        head = (f"{self.source}: {self.conversations} conversations, {self.sessions} sessions, "
                f"{self.turns} turns, {self.questions} questions")
        lines = [f"  {event}: {count} (e.g. {'; '.join(self.examples.get(event, []))})"
                 for event, count in sorted(self.events.items())]
        return "\n".join([head, *lines])


class LoadedBenchmark(NamedTuple):
    """What a loader or generator returns; unpacks as ``conversations, items, stats``."""

    conversations: list[Conversation]
    items: list[QAItem]
    stats: LoadStats
