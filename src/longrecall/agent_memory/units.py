"""The retrieval units a conversation is written to memory as: raw turns, sessions, facts and summaries.

``build_items(conversation, unit, builder=...)`` returns the rows ``MemoryStore.write_many`` takes (``text``,
``kind``, ``speaker``, ``timestamp``, ``conversation_id``, ``item_id``, ``source_ids``). ``source_ids`` are the
turn ids an item was made from, so a ranking of any unit can be scored against turn-level evidence
(``evaluate``). Ids are unique within one conversation:

* ``turn``: one item per turn, its text verbatim, id the turn id (``"D3:12"``).
* ``session``: one item per non-empty session, its turns joined as ``speaker: text`` lines, id the session id.
* ``fact``, builder ``extractive`` (``extractive_facts``): a rule-based stand-in for the LLM fact extraction of
  mem0 (Chhikara et al. 2025, arXiv:2504.19413) and LoCoMo's "observations" (Maharana et al. 2024,
  arXiv:2402.17753): it measures what pruning a conversation to its content-bearing sentences buys, with no
  model. Each turn is split into sentences (``split_sentences``); a sentence is kept when it does not end
  with ``?`` and holds at least ``MIN_CONTENT_WORDS`` (3) content words, i.e. words not in ``STOPWORDS``
  (English function words, contractions and chat interjections); first-person pronouns are then replaced by
  the speaker's name (``resolve_first_person``) so the fact reads on its own. One item per kept sentence, id
  ``"{turn_id}#{n}"`` (n: the sentence's 1-based position in the turn), with the turn's speaker, timestamp
  and ``source_ids = [turn_id]``.
* ``summary``, builder ``extractive`` (``extractive_summaries``): per session, the kept sentences above ranked
  by continuous LexRank (Erkan & Radev 2004, "LexRank: Graph-based Lexical Centrality as Salience in Text
  Summarization", JAIR 22: the stationary distribution of a random walk on the TF-IDF cosine graph of the
  sentences, damping 0.15), taken greedily best first while they fit a word budget (``SUMMARY_WORDS`` = 120,
  the budget ``llm.summarise_session`` asks for), then written in their original order. One item per
  session, id ``"{session_id}#summary"``, kind ``summary``, the session's timestamp, no speaker,
  ``source_ids`` the turns its sentences came from. Unlike LexRank's MEAD setting, no redundancy filter runs.
* ``fact`` and ``summary``, builder ``llm``: ``llm.extract_facts`` and ``llm.summarise_session`` on each session's
  turns, through any ``llm.ChatClient``. A model's fact cannot be traced to one turn (the prompt asks for no
  ids, unlike LoCoMo's observations, which cite dia_ids), so its ``source_ids`` are all of its session's turns;
  ids ``"{session_id}#fact{n}"`` and ``"{session_id}#summary"``, the session's timestamp, no speaker.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ..validation import ArgumentError, check_choice, check_int
from . import llm
from .records import Conversation, Session

__all__ = ["UNITS", "BUILDERS", "STOPWORDS", "MIN_CONTENT_WORDS", "SUMMARY_WORDS", "split_sentences", "content_words",
           "is_content_sentence", "resolve_first_person", "lexrank_scores", "turn_rows", "session_rows",
           "extractive_facts", "extractive_summaries", "llm_facts", "llm_summaries", "build_items", "check_client"]

UNITS = ("turn", "session", "fact", "summary")
BUILDERS = ("extractive", "llm")
MIN_CONTENT_WORDS = 3
SUMMARY_WORDS = 120
LEXRANK_DAMPING = 0.15  # Erkan & Radev's d: the chance the walk jumps to a random sentence

STOPWORDS = frozenset("""
a an the and or but nor if so as at by for from in into of off on onto out over to up down with about after
before again just than then too very also i me my mine myself we us our ours you your yours he him his she her
hers it its they them their theirs this that these those who whom whose which what when where why how am is
are was were be been being have has had do does did done will would shall should can could may might must not
no yes all any some each every both more most much many such only own same other there here now still really
pretty quite always never ever even lot lots thing things something anything everything nothing one get got
go going gonna gotta wanna let lets kind sort way like
i'm i've i'll i'd it's that's don't didn't doesn't can't won't isn't wasn't aren't weren't haven't hasn't
couldn't wouldn't shouldn't you're you've you'll you'd we're we've we'll they're they've there's here's what's
let's he's she's who's how's
oh ohh wow hey hi hello yeah yep yup nope ok okay haha hahaha lol um uh ah ahh aw aww hmm thanks thank bye
please sure well actually anyway anyways honestly totally definitely basically literally seriously though maybe
probably already soon yet few
""".split())

# the end of a sentence: its punctuation and any closing quote or bracket, followed by a space
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
_CLOSERS = " \"'”’)]"
# (pattern, replacement with {name}); contractions and "I am"/"I have" first, so "I'm" never becomes "Ana'm"
_FIRST_PERSON = tuple((re.compile(pattern, re.IGNORECASE), replacement) for pattern, replacement in (
    (r"\bI['’]m\b", "{name} is"), (r"\bI['’]ve\b", "{name} has"), (r"\bI['’]ll\b", "{name} will"),
    (r"\bI['’]d\b", "{name} would"), (r"\bI am\b", "{name} is"), (r"\bI have\b", "{name} has"),
    (r"\bmy\b", "{name}'s"), (r"\bmine\b", "{name}'s"), (r"\bmyself\b", "{name}"), (r"\bme\b", "{name}"),
    (r"\bI\b", "{name}")))


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: a line break, or ``.``/``!``/``?`` (with any closing quote or bracket) followed by
    a space, ends one. Abbreviations ("Dr. Li") are split too: a known simplification."""
    sentences = []
    for line in text.splitlines():
        start = 0
        for end in _SENTENCE_END.finditer(line):
            sentences.append(line[start:end.end()])
            start = end.end()
        sentences.append(line[start:])
    return [s.strip() for s in sentences if s.strip()]


def content_words(sentence: str) -> list[str]:
    """The lowercased words of ``sentence`` (letters and digits, inner apostrophes kept) that are not ``STOPWORDS``."""
    words = (w.lower().replace("’", "'") for w in _WORD.findall(sentence))
    return [w for w in words if w not in STOPWORDS]


def is_content_sentence(sentence: str) -> bool:
    """The fact rule: not a question (ends with ``?``, closers aside) and at least ``MIN_CONTENT_WORDS`` content
    words. "Wow, how exciting!" (2) and "How was the trip?" are dropped; "I adopted a beagle in May." is kept."""
    return not sentence.rstrip(_CLOSERS).endswith("?") and len(content_words(sentence)) >= MIN_CONTENT_WORDS


def resolve_first_person(sentence: str, speaker: str | None) -> str:
    """Replace the speaker's first-person pronouns by their name: "I'm"/"I am" -> "Ana is", "I've"/"I have" ->
    "Ana has", "I'll" -> "Ana will", "I'd" -> "Ana would", "my"/"mine" -> "Ana's", "me"/"myself"/"I" -> "Ana".
    Other verbs keep their first-person form ("I love" -> "Ana love"); "we", "our" and "you" are left, as their
    referents are not known from one turn. No speaker: the sentence unchanged."""
    if not speaker:
        return sentence
    name = speaker.replace("\\", "\\\\")  # re.sub reads backslashes in a replacement as escapes
    for pattern, replacement in _FIRST_PERSON:
        sentence = pattern.sub(replacement.format(name=name), sentence)
    return sentence


def lexrank_scores(token_lists: list[list[str]], idf: dict[str, float]) -> np.ndarray:
    """Continuous LexRank centrality of each sentence (its tokens): the stationary distribution ``p`` of
    ``p = d / n + (1 - d) M^T p``, M the row-normalised TF-IDF cosine matrix (self-similarity included), solved
    exactly. Sums to 1; a lone sentence scores 1."""
    n = len(token_lists)
    if n == 0:
        return np.zeros(0)
    vocabulary = {term: i for i, term in enumerate(sorted({t for tokens in token_lists for t in tokens}))}
    vectors = np.zeros((n, len(vocabulary)))
    for row, tokens in enumerate(token_lists):
        for term in tokens:
            vectors[row, vocabulary[term]] += idf.get(term, 1.0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, 1.0)  # a sentence without tokens still has a row to leave from
    transition = similarity / similarity.sum(axis=1, keepdims=True)
    system = np.eye(n) - (1 - LEXRANK_DAMPING) * transition.T
    return np.linalg.solve(system, np.full(n, LEXRANK_DAMPING / n))


def _iso(timestamp: Any) -> str | None:
    return None if timestamp is None else timestamp.isoformat()


def turn_rows(conversation: Conversation) -> list[dict]:
    """One row per turn, its text verbatim."""
    return [dict(text=t.text, kind="turn", speaker=t.speaker, timestamp=_iso(t.timestamp),
                 conversation_id=conversation.conversation_id, item_id=t.turn_id, source_ids=[t.turn_id])
            for t in conversation.turns()]


def session_rows(conversation: Conversation) -> list[dict]:
    """One row per non-empty session, its turns as ``speaker: text`` lines."""
    return [dict(text="\n".join(f"{t.speaker}: {t.text}" for t in s.turns), kind="session",
                 timestamp=_iso(s.timestamp), conversation_id=conversation.conversation_id, item_id=s.session_id,
                 source_ids=[t.turn_id for t in s.turns])
            for s in conversation.sessions if s.turns]


def _kept_sentences(session: Session) -> list[tuple[Any, int, str]]:
    """(turn, 1-based sentence position, sentence with pronouns resolved) of each sentence the fact rule keeps."""
    kept = []
    for turn in session.turns:
        for position, sentence in enumerate(split_sentences(turn.text), start=1):
            if is_content_sentence(sentence):
                kept.append((turn, position, resolve_first_person(sentence, turn.speaker)))
    return kept


def extractive_facts(conversation: Conversation) -> list[dict]:
    """One ``fact`` row per content sentence of every turn (the module docstring's rule)."""
    return [dict(text=text, kind="fact", speaker=turn.speaker, timestamp=_iso(turn.timestamp),
                 conversation_id=conversation.conversation_id, item_id=f"{turn.turn_id}#{position}",
                 source_ids=[turn.turn_id])
            for session in conversation.sessions for turn, position, text in _kept_sentences(session)]


def extractive_summaries(conversation: Conversation, max_words: int = SUMMARY_WORDS) -> list[dict]:
    """One ``summary`` row per session with a content sentence: its most central sentences (LexRank over the
    session, IDF over the whole conversation's kept sentences) that fit ``max_words`` words, in order.

    Sentences are taken best first (ties: earlier first); one that would overflow the budget is skipped and
    smaller ones after it may still fit. A session whose every kept sentence is longer than the budget gets
    no summary."""
    check_int(max_words=max_words)
    per_session = [(session, _kept_sentences(session)) for session in conversation.sessions]
    documents = [set(content_words(text)) for _, kept in per_session for _, _, text in kept]
    frequency: dict[str, int] = {}
    for document in documents:
        for term in document:
            frequency[term] = frequency.get(term, 0) + 1
    # smoothed IDF (never 0, so a term in every sentence still counts a little)
    idf = {term: math.log((1 + len(documents)) / (1 + df)) + 1 for term, df in frequency.items()}
    rows = []
    for session, kept in per_session:
        if not kept:
            continue
        scores = lexrank_scores([content_words(text) for _, _, text in kept], idf)
        chosen, words = [], 0
        for index in np.argsort(-scores, kind="stable"):
            length = len(kept[index][2].split())
            if words + length <= max_words:
                chosen.append(int(index))
                words += length
        if not chosen:
            continue
        chosen.sort()
        rows.append(dict(text=" ".join(kept[i][2] for i in chosen), kind="summary", speaker=None,
                         timestamp=_iso(session.timestamp), conversation_id=conversation.conversation_id,
                         item_id=f"{session.session_id}#summary",
                         source_ids=list(dict.fromkeys(kept[i][0].turn_id for i in chosen))))
    return rows


def check_client(client: Any) -> None:
    """Raise ArgumentError unless ``client`` has a callable ``chat`` (what ``builder='llm'`` needs)."""
    if not callable(getattr(client, "chat", None)):
        raise ArgumentError("client", "a ChatClient (an object with chat(messages, ...)) when builder='llm'",
                            type(client).__name__)


def llm_facts(conversation: Conversation, client: llm.ChatClient) -> list[dict]:
    """``llm.extract_facts`` on each session: one ``fact`` row per fact, sourced to every turn of its session."""
    check_client(client)
    rows = []
    for session in conversation.sessions:
        if not session.turns:
            continue
        sources = [t.turn_id for t in session.turns]
        for n, fact in enumerate(llm.extract_facts(client, list(session.turns)), start=1):
            rows.append(dict(text=fact, kind="fact", speaker=None, timestamp=_iso(session.timestamp),
                             conversation_id=conversation.conversation_id, item_id=f"{session.session_id}#fact{n}",
                             source_ids=sources))
    return rows


def llm_summaries(conversation: Conversation, client: llm.ChatClient, max_words: int = SUMMARY_WORDS) -> list[dict]:
    """``llm.summarise_session`` on each session: one ``summary`` row per non-empty reply."""
    check_client(client)
    check_int(max_words=max_words)
    rows = []
    for session in conversation.sessions:
        if not session.turns:
            continue
        text = llm.summarise_session(client, list(session.turns), max_words=max_words).strip()
        if text:
            rows.append(dict(text=text, kind="summary", speaker=None, timestamp=_iso(session.timestamp),
                             conversation_id=conversation.conversation_id,
                             item_id=f"{session.session_id}#summary", source_ids=[t.turn_id for t in session.turns]))
    return rows


def build_items(conversation: Conversation, unit: str, *, builder: str = "extractive", client: Any = None,
                max_words: int = SUMMARY_WORDS) -> list[dict]:
    """The rows of ``conversation`` as retrieval ``unit`` (``UNITS``), for ``MemoryStore.write_many``.

    ``builder`` (``BUILDERS``) chooses how facts and summaries are made; ``turn`` and ``session`` ignore it.
    ``builder="llm"`` needs ``client``, a ``llm.ChatClient``; ``max_words`` bounds each summary."""
    check_choice("unit", unit, UNITS)
    check_choice("builder", builder, BUILDERS)
    if unit == "turn":
        return turn_rows(conversation)
    if unit == "session":
        return session_rows(conversation)
    if builder == "llm":
        check_client(client)
        return llm_facts(conversation, client) if unit == "fact" else llm_summaries(conversation, client, max_words)
    return extractive_facts(conversation) if unit == "fact" else extractive_summaries(conversation, max_words)
