"""A LoCoMo-style synthetic benchmark: personas, a temporal event graph, dated multi-session dialogue and
questions of LoCoMo's five categories with their evidence turn ids, offline, at any size, from a seed.

LoCoMo (Maharana et al. 2024, "Evaluating Very Long-Term Conversational Memory of LLM Agents", arXiv
2402.17753; snap-research/locomo, ``data/locomo10.json`` and ``task_eval/evaluation.py``) grounds each
conversation in two personas and a temporal event graph (life events over months, some caused by others)
that LLM agents turn into dated sessions; annotators then write questions with the turns that answer them.
That dataset cannot be shipped (CC BY-NC 4.0): this module draws the same skeleton from the word lists of
``generator_words`` and renders it with templates, in LoCoMo's JSON schema, to measure evidence retrieval:

* persona: a name, a home town (and what they love about it), a job at a company, a pet (species, name,
  breed), two hobbies (since when); events, each dated between the session before the one that reports it
  and that session: a new job; a move, always caused by a new job (it updates where they live); a hobby
  taken up after a move; another pet; a trip (city, purpose); a concert (band, companion); a book (title,
  author); a restaurant (name, dish). A name, city, job, hobby, band, book or restaurant occurs at most
  once per conversation, so a question about it has one owner;
* sessions dated like ``"1:56 pm on 8 May, 2023"``, 4 to 28 days apart; speakers alternate; 40% of the
  turns between the greeting and the goodbye state one fact each, told by its owner with a relative date
  (``relative_date``: yesterday, two days ago, last week, last weekend, last month, on 12 April); the other
  turns are small talk and reactions that state nothing;
* questions, numbered as LoCoMo: 4 single-hop (one turn: "What breed is Alma's dog Biscuit?"; also "Where
  does Alma live now?" and "What is Alma's job now?", answered by the latest move or job turn and always
  asked when the fact was updated); 2 temporal ("When did Alma adopt Miso?": the turn's relative date
  resolved against its session's date, in LoCoMo's "the week before 8 May 2023" style); 1 multi-hop (two
  or more turns: lists joined by ", " as LoCoMo's scorer splits them, the job that caused a move, the city
  before a move, where someone lived or worked when an event happened); 3 open-domain (a persona fact plus
  common knowledge, answer and reason split by ";" as in LoCoMo: a city's country, "Would Alma likely
  enjoy a bike tour?" for a cyclist); 5 adversarial (LoCoMo's speaker swap: a detail question about the
  other speaker, whose premise was never said of them; ``adversarial_answer`` the trap and no ``answer``,
  evidence the trap's turn; expected answer ``NOT_MENTIONED``, which LoCoMo's scorer accepts).

Worked example (``generate(1, 6, 10, 1, seed=0)``: one question per category; other turns are small talk)::

    session_5 "8:45 pm on 13 January, 2023"  D5:6 Alma: I saw The Static Lanterns live two days ago with my ...
    session_6 "2:12 pm on 27 January, 2023"  D6:5 Zora: Big news: I started a new job as a translator at ...
                                             D6:7 Zora: I moved to Toronto two days ago for the new job. ...
    {"question": "What job took Zora to Toronto?", "answer": "translator", "evidence": ["D6:5", "D6:7"], ...: 1}
    {"question": "Where does Zora live now?", "answer": "Toronto", "evidence": ["D6:7"], "category": 4}
    {"question": "When did Alma see The Static Lanterns live?", "answer": "11 January 2023", ...: ["D5:6"], ...}
    {"question": "What breed is Alma's parrot Pixel?", "adversarial_answer": "African grey", ...: ["D1:6"], ...}

Conversation ``i`` depends only on ``(seed, i)``: a larger run extends a smaller one. ``annotate=True`` adds,
outside LoCoMo's schema, each sample's ``facts`` (the event graph) and each question's ``key_facts`` (per
evidence turn, the words of it that carry the fact), for tests. (Pixel above is Zora's parrot: D1:6 is hers.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

from ..checkpoint import atomic_write_json
from ..validation import ArgumentError, check_bool, check_int, is_int
from . import generator_words as words

__all__ = ["CATEGORIES", "LOCOMO_QUESTIONS_PER_CONVERSATION", "NOT_MENTIONED", "generate", "relative_date",
           "write_locomo"]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
# locomo10.json's 282 / 321 / 96 / 841 / 446 questions (1,986) over its 10 conversations, rounded
LOCOMO_QUESTIONS_PER_CONVERSATION = {1: 28, 2: 32, 3: 10, 4: 84, 5: 45}
NOT_MENTIONED = "Not mentioned in the conversation"
FACT_TURN_SHARE = 0.4
MAX_LIST = 6  # multi-hop lists longer than this are not asked (LoCoMo's list a few items)
MONTHS = "January February March April May June July August September October November December".split()
# how often each kind of new event is drawn; a move or a new hobby only follows another event (see _next_fact)
EVENT_WEIGHTS = {"new_job": 1, "adopt": 1, "trip": 3, "concert": 2, "book": 2, "restaurant": 2}
NEEDS = {"new_job": ("jobs", "companies"), "adopt": ("pet_names",), "trip": ("cities", "purposes"),
         "concert": ("bands",), "book": ("books", "authors"), "restaurant": ("restaurants",), "move": ("cities",),
         "new_hobby": ("hobbies",)}


@dataclass(eq=False)
class _Fact:
    owner: int
    kind: str
    handle: str
    detail: str
    extra: str = ""  # species, country, skill or outing
    cause: _Fact | None = None
    date: date | None = None  # None for persona facts, which hold from before the first session
    when: str = ""
    when_answer: str = ""
    dia_id: str = ""
    order: tuple[int, int] = (0, 0)

    def fill(self, template: str, name: str = "") -> str:
        return template.format(n=name, h=self.handle, d=self.detail, x=self.extra, w=self.when,
                               ah=_a(self.handle), ad=_a(self.detail), ax=_a(self.extra))


@dataclass
class _Persona:
    name: str
    agenda: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    species: set = field(default_factory=set)
    facts: list = field(default_factory=list)


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _day(day: date) -> str:  # LoCoMo's answers write dates as "7 May 2023"
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def relative_date(event: date, session: date) -> tuple[str, str]:
    """How a speaker on ``session`` day names ``event`` day, and the answer it gives to "When did ...?".

    Weeks run Monday to Sunday: "last week" is the week before the session's, "last month" the calendar month
    before it (for events at least a week old); other days are named outright.
    """
    days = (session - event).days
    if days < 1:
        raise ArgumentError("event", "a day before the session", f"event={event}, session={session}")
    if days <= 2:
        return ("yesterday" if days == 1 else "two days ago"), _day(event)
    monday = session - timedelta(days=session.weekday())
    if monday - timedelta(days=7) <= event < monday:
        if event.weekday() >= 5:
            return "last weekend", f"the weekend before {_day(session)}"
        return "last week", f"the week before {_day(session)}"
    previous = session.replace(day=1) - timedelta(days=1)
    if days >= 7 and (event.year, event.month) == (previous.year, previous.month):
        return "last month", f"{MONTHS[event.month - 1]} {event.year}"
    year = f" {event.year}" if event.year != session.year else ""
    return f"on {event.day} {MONTHS[event.month - 1]}{year}", _day(event)


def _session_time(when: datetime) -> str:
    hour = when.hour % 12 or 12
    noon = "am" if when.hour < 12 else "pm"
    return f"{hour}:{when.minute:02d} {noon} on {when.day} {MONTHS[when.month - 1]}, {when.year}"


def _make(kind: str, owner: int, persona: _Persona, pools: dict, rng: random.Random, cause=None) -> _Fact | None:
    if any(not pools[pool] for pool in NEEDS.get(kind, ())):
        return None
    if kind in ("pet", "adopt"):
        species = rng.choice(sorted(set(words.SPECIES) - persona.species))
        persona.species.add(species)
        return _Fact(owner, kind, pools["pet_names"].pop(), rng.choice(words.SPECIES[species]), species)
    if kind in ("hometown", "move", "trip"):
        city, country = pools["cities"].pop()
        if kind == "trip":
            return _Fact(owner, kind, city, pools["purposes"].pop(), country)
        detail = rng.choice(words.FEATURES) if kind == "hometown" else "for the new job"
        return _Fact(owner, kind, city, detail, country, cause)
    if kind in ("job", "new_job"):
        job, skill = pools["jobs"].pop()
        return _Fact(owner, kind, job, pools["companies"].pop(), skill)
    if kind in ("hobby", "new_hobby"):
        hobby, outing = pools["hobbies"].pop()
        detail = rng.choice(words.SINCE if kind == "hobby" else words.WEEKDAYS)
        return _Fact(owner, kind, hobby, detail, outing, cause)
    if kind == "book":
        return _Fact(owner, kind, pools["books"].pop(), pools["authors"].pop())
    handle = pools["bands" if kind == "concert" else "restaurants"].pop()
    return _Fact(owner, kind, handle, rng.choice(words.COMPANIONS if kind == "concert" else words.DISHES))


def _next_fact(owner: int, persona: _Persona, pools: dict, rng: random.Random) -> _Fact | None:
    """The persona's next fact to tell: persona facts first, then follow-ups of earlier events, then new ones."""
    if persona.agenda:
        return persona.agenda.pop(0)
    fact = None
    while persona.pending and fact is None:
        kind, cause = persona.pending.pop(0)
        fact = _make(kind, owner, persona, pools, rng, cause)
    if fact is None:
        kinds = [k for k in EVENT_WEIGHTS if all(pools[p] for p in NEEDS[k])
                 and (k != "adopt" or len(persona.species) < 3)]
        if not kinds:
            return None  # every word list is spent: the turn becomes small talk
        fact = _make(rng.choices(kinds, [EVENT_WEIGHTS[k] for k in kinds])[0], owner, persona, pools, rng)
    # the event graph's causal edges: a new job often takes them to a new city, a move to a new hobby
    if fact.kind == "new_job" and rng.random() < 0.7:
        persona.pending.append(("move", fact))
    if fact.kind == "move" and rng.random() < 0.6:
        persona.pending.append(("new_hobby", fact))
    return fact


def _conversation(index: int, seed: int, n_sessions: int, n_turns: int):
    rng = random.Random(f"longrecall.agent_memory.generator:{seed}:{index}")
    pools = {key: rng.sample(values, len(values)) for key, values in (  # shuffled copies, drawn from the end
        ("names", words.NAMES), ("cities", words.CITIES), ("jobs", words.JOBS), ("companies", words.COMPANIES),
        ("pet_names", words.PET_NAMES), ("hobbies", words.HOBBIES), ("purposes", words.PURPOSES),
        ("bands", words.BANDS), ("books", words.BOOKS), ("authors", words.AUTHORS),
        ("restaurants", words.RESTAURANTS))}
    personas = [_Persona(pools["names"].pop()) for _ in range(2)]
    for owner, persona in enumerate(personas):
        rest = [_make(kind, owner, persona, pools, rng) for kind in ("job", "pet", "hobby", "hobby")]
        rng.shuffle(rest)
        persona.agenda = [_make("hometown", owner, persona, pools, rng)] + rest
    day = date(2022, 1, 1) + timedelta(days=rng.randrange(730))
    conversation: dict[str, Any] = {"speaker_a": personas[0].name, "speaker_b": personas[1].name}
    previous = None
    for s in range(1, n_sessions + 1):
        day += timedelta(days=rng.randint(4, 28) if s > 1 else 0)
        when = datetime(day.year, day.month, day.day, rng.randint(8, 21), rng.randrange(60))
        first = rng.randrange(2)
        speakers = [(first + i) % 2 for i in range(n_turns)]
        eligible = list(range(1, n_turns - 1)) if n_turns >= 4 else list(range(n_turns))
        chosen = sorted(rng.sample(eligible, round(FACT_TURN_SHARE * len(eligible))))
        slots = {i: _next_fact(speakers[i], personas[speakers[i]], pools, rng) for i in chosen}
        window = 30 if previous is None else (day - previous).days - 1
        for owner in (0, 1):  # events happened since the last session, in the order they are told
            events = [f for i, f in sorted(slots.items()) if f is not None and f.owner == owner and f.kind in
                      words.EVENT_PHRASES]
            back = (rng.sample(range(1, window + 1), len(events)) if len(events) <= window
                    else [rng.randint(1, window) for _ in events])
            for fact, days in zip(events, sorted(back, reverse=True), strict=True):
                fact.date = day - timedelta(days=days)
                fact.when, fact.when_answer = relative_date(fact.date, day)
        turns = []
        for i, speaker in enumerate(speakers):
            other, fact = personas[1 - speaker].name, slots.get(i)
            after_fact = slots.get(i - 1) is not None
            if fact is not None:
                text = fact.fill(words.TEXT[fact.kind])
                if after_fact:  # answer the other speaker's news before telling one's own
                    text = rng.choice(words.SHORT_REACTIONS) + " " + text
                fact.dia_id, fact.order = f"D{s}:{i + 1}", (s, i + 1)
                personas[speaker].facts.append(fact)
            elif n_turns >= 4 and i in (0, n_turns - 1):
                text = rng.choice(words.GREETINGS if i == 0 else words.GOODBYES).format(o=other)
            else:  # never the line just said, which would read as an echo
                text = rng.choice([t for t in (words.REACTIONS if after_fact else words.SMALL_TALK)
                                   if not turns or t != turns[-1]["text"]])
            turns.append({"speaker": personas[speaker].name, "dia_id": f"D{s}:{i + 1}", "text": text})
        conversation[f"session_{s}_date_time"] = _session_time(when)
        conversation[f"session_{s}"] = turns
        previous = day
    return conversation, personas, rng


def _candidates(personas: list[_Persona]) -> dict[int, list[tuple]]:
    """Every question the conversation supports, by category: (question, answer, [(fact, key)], priority),
    where ``key`` is the text of the fact's turn that carries what the question needs."""
    out: dict[int, list[tuple]] = {c: [] for c in CATEGORIES}

    def add(category, question, answer, evidence, priority=False):
        out[category].append((question, answer, sorted(evidence, key=lambda e: e[0].order), priority))

    for owner, persona in enumerate(personas):
        name, other, facts = persona.name, personas[1 - owner].name, persona.facts
        cities = [f for f in facts if f.kind in ("hometown", "move")]
        jobs = [f for f in facts if f.kind in ("job", "new_job")]
        for current, question in ((cities, "Where does {n} live now?"), (jobs, "What is {n}'s job now?")):
            if current:
                add(4, question.format(n=name), current[-1].handle, [(current[-1], current[-1].handle)],
                    priority=len(current) > 1)
        if cities:
            country = cities[-1].extra
            add(3, f"Which country does {name} live in now?", f"{country}; {cities[-1].handle} is in {country}",
                [(cities[-1], cities[-1].handle)])
        for fact in facts:
            add(4, fact.fill(words.DETAIL_QUESTION[fact.kind], name), fact.detail, [(fact, fact.detail)])
            add(5, fact.fill(words.DETAIL_QUESTION[fact.kind], other), fact.detail, [(fact, fact.handle)])
            if fact.kind in words.HANDLE_QUESTION:
                add(4, fact.fill(words.HANDLE_QUESTION[fact.kind], name), fact.handle, [(fact, fact.handle)])
            if fact.kind in ("hometown", "trip"):
                question = (f"In which country did {name} grow up?" if fact.kind == "hometown" else
                            f"Which country did {name} visit for {fact.detail}?")
                add(3, question, f"{fact.extra}; {fact.handle} is in {fact.extra}", [(fact, fact.handle)])
            elif fact.kind in ("job", "new_job"):
                add(3, f"Would {name} likely know how to {fact.extra}?",
                    f"Likely yes; {name} has worked as {_a(fact.handle)}", [(fact, fact.handle)])
            elif fact.kind in ("hobby", "new_hobby"):
                add(3, f"Would {name} likely enjoy {fact.extra}?", f"Likely yes; {name} is into {fact.handle}",
                    [(fact, fact.handle)])
            elif fact.kind in ("pet", "adopt"):
                walks = "Yes" if fact.extra == "dog" else "No"  # dogs are walked daily; cats, rabbits... are not
                add(3, f"Would {name} likely need to take {fact.handle} for walks?",
                    f"{walks}; {fact.handle} is {_a(fact.extra)}", [(fact, fact.handle)])
            if fact.date is None:
                continue
            present, past = words.EVENT_PHRASES[fact.kind]
            add(2, f"When did {name} {fact.fill(present)}?", fact.when_answer, [(fact, fact.when)])
            if fact.kind == "move" and fact.cause is not None:
                add(1, f"What job took {name} to {fact.handle}?", fact.cause.handle,
                    [(fact.cause, fact.cause.handle), (fact, fact.handle)], priority=True)
            if fact.kind == "new_hobby" and fact.cause is not None:
                add(1, f"Which hobby did {name} take up after moving to {fact.cause.handle}?", fact.handle,
                    [(fact.cause, fact.cause.handle), (fact, fact.handle)], priority=True)
            if fact.kind == "move":
                before = cities[cities.index(fact) - 1]
                add(1, f"Where did {name} live before moving to {fact.handle}?", before.handle,
                    [(before, before.handle), (fact, fact.handle)], priority=True)
            # the state at the time of the event: the latest city (job) told of before it, dated strictly earlier
            for states, question in ((cities, "Where was {n} living when they {p}?"),
                                     (jobs, "What was {n}'s job when they {p}?")):
                if fact in states:
                    continue
                earlier = [f for f in states if f.order < fact.order]
                later = [f for f in states if f.order > fact.order]  # a change on the event's day is ambiguous
                if earlier and (earlier[-1].date is None or earlier[-1].date < fact.date) and not (
                        later and later[0].date == fact.date):
                    add(1, question.format(n=name, p=fact.fill(past)), earlier[-1].handle,
                        [(earlier[-1], earlier[-1].handle), (fact, fact.handle)])
        for kinds, question in words.LISTS:
            items = [f for f in facts if f.kind in kinds.split()]
            if 2 <= len(items) <= MAX_LIST:
                add(1, question.format(n=name), ", ".join(f.handle for f in items), [(f, f.handle) for f in items],
                    priority=True)
    for kinds, question in words.LISTS[4:]:  # shared lists: both speakers' trips, concerts, books, restaurants
        both = [[f for f in p.facts if f.kind == kinds] for p in personas]
        if all(both) and len(both[0]) + len(both[1]) <= MAX_LIST:
            items = sorted(both[0] + both[1], key=lambda f: f.order)
            shared = question.replace("has {n}", f"have {personas[0].name} and {personas[1].name}")
            add(1, shared, ", ".join(f.handle for f in items), [(f, f.handle) for f in items], priority=True)
    return out


def _question_counts(questions_per_category) -> dict[int, int]:
    if is_int(questions_per_category):
        check_int(minimum=0, questions_per_category=questions_per_category)
        return dict.fromkeys(CATEGORIES, questions_per_category)
    if not isinstance(questions_per_category, Mapping) or not set(questions_per_category) <= set(CATEGORIES):
        raise ArgumentError("questions_per_category", "a non-negative int or a mapping from categories 1-5 "
                            "(1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial) to such ints",
                            repr(questions_per_category))
    for category, count in questions_per_category.items():
        check_int(minimum=0, **{f"questions_per_category[{category}]": count})
    return {c: questions_per_category.get(c, 0) for c in CATEGORIES}


def generate(n_conversations: int = 10, sessions_per_conversation: int = 19, turns_per_session: int = 16,
             questions_per_category: int | Mapping[int, int] = LOCOMO_QUESTIONS_PER_CONVERSATION, seed: int = 0,
             annotate: bool = False) -> list[dict]:
    """Conversations with questions, as LoCoMo's top-level list of samples.

    Args:
        n_conversations: samples to make (each with its own two personas).
        sessions_per_conversation: dated sessions per conversation.
        turns_per_session: turns per session (at least 2); 40% of those between the greeting and the goodbye
            state a fact, so the questions a conversation supports grow with sessions times turns.
        questions_per_category: questions per conversation, one count for every category or a mapping
            {category: count} (missing categories get none); more than a conversation supports raises.
        seed: the whole output is a function of it.
        annotate: add the ``facts`` of each sample and the ``key_facts`` of each question (not LoCoMo fields).

    Returns:
        ``[{"sample_id", "conversation": {"speaker_a", "speaker_b", "session_N_date_time", "session_N": [{"speaker",
        "dia_id", "text"}]}, "qa": [{"question", "answer" | "adversarial_answer", "evidence", "category"}]}]``.
    """
    check_int(n_conversations=n_conversations, sessions_per_conversation=sessions_per_conversation)
    check_int(minimum=2, turns_per_session=turns_per_session)
    check_int(minimum=0, seed=seed)
    check_bool(annotate=annotate)
    counts = _question_counts(questions_per_category)
    samples = []
    for index in range(n_conversations):
        conversation, personas, rng = _conversation(index, seed, sessions_per_conversation, turns_per_session)
        candidates, qa = _candidates(personas), []
        for category in CATEGORIES:
            unique = list({c[0]: c for c in candidates[category]}.values())
            if counts[category] > len(unique):
                raise ArgumentError(
                    "questions_per_category", f"at most {len(unique)} {CATEGORIES[category]} (category {category}) "
                    f"questions in conversation {index} at sessions_per_conversation={sessions_per_conversation}, "
                    f"turns_per_session={turns_per_session} (more sessions or turns allow more)",
                    str(counts[category]))
            # priority: single-hop questions on updated facts, all asked; multi-hop lists, causes and the city
            # before a move, up to half (the rest, "where/what job when ...", are many more and alike)
            priority = [c for c in unique if c[3]]
            cap = (counts[category] + 1) // 2 if category == 1 else counts[category]
            first = rng.sample(priority, min(cap, len(priority))) if category == 1 else priority[:cap]
            rest = [c for c in unique if c not in first]
            for question, answer, evidence, _ in first + rng.sample(rest, counts[category] - len(first)):
                item = {"question": question, "adversarial_answer" if category == 5 else "answer": answer,
                        "evidence": [fact.dia_id for fact, _ in evidence], "category": category}
                if annotate:
                    item["key_facts"] = [key for _, key in evidence]
                qa.append(item)
        plain = [q for q in qa if q["category"] != 5]
        rng.shuffle(plain)
        sample = {"sample_id": f"synth-{index + 1}", "conversation": conversation,
                  "qa": plain + [q for q in qa if q["category"] == 5]}
        if annotate:
            sample["facts"] = [{"speaker": p.name, "kind": f.kind, "handle": f.handle, "detail": f.detail,
                                "date": f.date.isoformat() if f.date else None, "dia_id": f.dia_id,
                                "cause": f.cause.dia_id if f.cause else None}
                               for p in personas for f in p.facts]
        samples.append(sample)
    return samples


def write_locomo(path: str | Path, data: list[dict]) -> None:
    """Write ``generate``'s samples as a LoCoMo JSON file, atomically (temporary file, then rename)."""
    if not isinstance(data, list) or not all(isinstance(s, dict) and {"conversation", "qa"} <= set(s) for s in data):
        raise ArgumentError("data", "a list of LoCoMo samples (dicts with 'conversation' and 'qa')",
                            type(data).__name__)
    atomic_write_json(path, data)
