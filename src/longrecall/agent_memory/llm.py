"""The optional LLM step of agent memory (issue 16, item 2): an OpenAI-compatible chat client and the steps
that need a language model, fact extraction, session summaries, answer generation and answer judging.

Nothing else in ``longrecall.agent_memory`` needs this module. A step takes any ``ChatClient`` (an object with
``chat(messages, *, temperature, max_tokens)``); ``LLMClient`` POSTs ``{"model", "messages", "temperature",
"max_tokens"}`` to ``{base_url}/chat/completions`` and reads ``choices[0].message.content``, the OpenAI schema
that vLLM, llama.cpp's server and Ollama's ``/v1`` also serve. Standard library only, with ``urllib`` imported
at the first request, so importing this module or building a client opens nothing. Connection errors,
timeouts, HTTP 429 and 5xx are retried (``max_retries`` times, waiting ``retry_backoff * 2**attempt`` s or the
server's ``Retry-After``); any other status fails at once, since resending a rejected request gets the same
answer. A failure raises ``LLMError`` naming the URL, the status and the server's own error message.

The steps and where their prompts come from (each prompt is a constant below, written for this project):

- ``extract_facts``: self-contained facts from turns, mem0's memory unit (Chhikara et al. 2025, arXiv:2504.19413).
- ``summarise_session``: a session summary, a retrieval unit of LoCoMo (Maharana et al. 2024, arXiv:2402.17753).
- ``answer_question``: a short answer read from retrieved memories, as LongMemEval's reader does (Wu et al.
  2024, arXiv:2410.10813), with the question's date when it is known.
- ``judge_answer``: LongMemEval's yes/no judge (xiaowu0162/LongMemEval ``src/evaluation/evaluate_qa.py``,
  ``get_anscheck_prompt``): the same decision rules per question type and for abstention questions, the
  same sampling (one user message, temperature 0, 10 tokens). It departs in reading the verdict: the
  reference counts a reply as yes when ``'yes'`` occurs anywhere in it (so "No, ... yes ..." is yes);
  ``parse_yes_no`` reads the first word, else a lone yes or no, and raises on a reply that says neither.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..validation import ArgumentError, check_bool, check_choice, check_int, check_number, check_positive
from .records import LONGMEMEVAL_QUESTION_TYPES

__all__ = ["ChatClient", "LLMClient", "LLMError", "UnclearReplyError", "FACT_EXTRACTION_PROMPT", "ANSWER_PROMPT",
           "SESSION_SUMMARY_PROMPT", "JUDGE_PROMPT", "JUDGE_CRITERIA", "ABSTENTION_JUDGE_PROMPT", "render_turns",
           "parse_fact_lines", "parse_yes_no", "extract_facts", "summarise_session", "answer_question", "judge_answer"]

MAX_RETRY_WAIT_S = 30.0  # a Retry-After longer than this is not honoured: the caller's loop should decide instead
SERVER_MESSAGE_CHARS = 500  # how much of a non-JSON error body an LLMError quotes

# {conversation}: the turns, one ``[date] speaker: text`` line each (``render_turns``).
FACT_EXTRACTION_PROMPT = """You keep the long-term memory of a conversation. Read the conversation below and \
write down every fact worth remembering about the people in it: events, plans, preferences, relationships, \
possessions, places and dates. Each fact must make sense on its own: name the person instead of writing "I", \
"he" or "she", and turn relative dates into absolute ones using the dates of the turns (write "in May 2023", \
not "last month"). Write one fact per line, with no numbering and no commentary. If nothing is worth \
remembering, write NONE.

Conversation:
{conversation}

Facts:"""

# {conversation}: the session's turns as above; {max_words}: the length limit.
SESSION_SUMMARY_PROMPT = """Summarise the conversation session below for a long-term memory, in at most \
{max_words} words of plain prose. Keep who said or did what, dates, numbers, decisions, plans and anything \
that changed since before; leave out greetings and small talk. Name the people, and use absolute dates where \
the session's date allows.

Session:
{conversation}

Summary:"""

# {memories}: the retrieved texts, numbered; {date_line}: "Today's date: ...\n" when the question is dated.
ANSWER_PROMPT = """Answer the question using only the memories below, which were retrieved from earlier \
conversations. If the memories do not hold the answer, say that the information is not available. Answer \
with a short phrase and no explanation.

Memories:
{memories}

{date_line}Question: {question}
Answer:"""

# The judge for an answerable question; {criteria} is the rule its question type adds (JUDGE_CRITERIA).
JUDGE_PROMPT = """Below are a question, its correct answer and a response from a model. Say yes if the \
response gives the correct answer, something equivalent to it, or all the steps that lead to it. Say no if \
it gives another answer, or only part of what the correct answer needs.{criteria}

Question: {question}

Correct answer: {gold}

Model response: {prediction}

Is the model response correct? Reply with yes or no only."""

# Extra rules by LongMemEval question type (the reference's per-type templates); other types add none.
JUDGE_CRITERIA: dict[str, str] = {
    "temporal-reasoning": " Do not count an off-by-one in a number of days, weeks or months as wrong: 19 days "
                          "when the correct answer is 18 is still correct.",
    "knowledge-update": " If the response also mentions older information but gives the updated answer as its "
                        "answer, it is correct.",
    "single-session-preference": " Here the correct answer is a rubric for a personalised response: say yes if "
                                 "the response recalls and uses the user's personal information correctly, even if "
                                 "it does not cover every point of the rubric.",
}

# The judge for a question the history cannot answer (LongMemEval ``_abs``; LoCoMo category 5).
ABSTENTION_JUDGE_PROMPT = """Below are a question that the conversation history cannot answer, an explanation \
of why, and a response from a model. Say yes if the response recognises that it cannot answer: for instance \
it says the information is missing, or that something else was mentioned but not what is asked. Say no if it \
answers as though it knew.

Question: {question}

Explanation: {gold}

Model response: {prediction}

Does the model response recognise that the question cannot be answered? Reply with yes or no only."""


class LLMError(RuntimeError):
    """A chat request that failed: ``url`` posted to, HTTP ``status`` (None for a connection error or timeout),
    the server's own error ``server_message`` (None when it sent none) and the number of ``attempts`` made."""

    def __init__(self, url: str, reason: str, *, status: int | None = None, server_message: str | None = None,
                 attempts: int = 1):
        text = f"POST {url} failed" + (f" with HTTP {status}" if status is not None else "") + f": {reason}"
        text += (f"; the server said: {server_message}" if server_message else "") + (
            f" (after {attempts} attempts)" if attempts > 1 else "")
        super().__init__(text)
        self.url, self.status, self.server_message, self.attempts = url, status, server_message, attempts


class UnclearReplyError(ValueError):
    """A model reply that a step could not read (a judge that said neither yes nor no); ``reply`` holds it."""

    def __init__(self, what: str, reply: str):
        super().__init__(f"{what}, got {reply[:200]!r}")
        self.reply = reply


@runtime_checkable
class ChatClient(Protocol):
    """What the steps need from a model: a chat completion's text."""

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 256) -> str:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""


class LLMClient:
    """An OpenAI-compatible chat-completions client over HTTP (standard library only).

    Args:
        base_url: the API root, e.g. ``"http://localhost:8000/v1"``; requests go to ``{base_url}/chat/completions``.
        model: the model name sent with each request.
        api_key: sent as ``Authorization: Bearer ...``; None reads ``OPENAI_API_KEY``; none or empty sends no header.
        timeout: seconds to wait for a connection and for each read.
        max_retries: how many times a transient failure (connection, timeout, 429, 5xx) is retried.
        retry_backoff: the first wait between attempts in seconds, doubled at each retry.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60,
                 max_retries: int = 2, *, retry_backoff: float = 0.5):
        if not isinstance(base_url, str) or not re.match(r"https?://[^/\s]+", base_url):
            raise ArgumentError("base_url", "an http:// or https:// URL such as 'http://localhost:8000/v1'",
                                repr(base_url))
        if not isinstance(model, str) or not model.strip():
            raise ArgumentError("model", "a non-empty model name", repr(model))
        if api_key is not None and not isinstance(api_key, str):
            raise ArgumentError("api_key", "None or a string", type(api_key).__name__)  # never echo a key
        check_positive(timeout=timeout)
        check_int(minimum=0, max_retries=max_retries)
        check_number("retry_backoff", retry_backoff, 0, MAX_RETRY_WAIT_S)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.max_retries, self.retry_backoff = model, timeout, max_retries, retry_backoff
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        key = "set" if self._api_key else "unset"
        return f"LLMClient(url={self.url!r}, model={self.model!r}, api_key={key})"

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 256) -> str:
        """Post ``messages`` and return ``choices[0].message.content``; raises ``LLMError`` on failure."""
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages or not all(
                isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ArgumentError("messages", "a non-empty list of {'role': str, 'content': str} mappings",
                                repr(messages)[:200])
        check_number("temperature", temperature, 0, 2)
        check_int(max_tokens=max_tokens)
        body = {"model": self.model, "messages": [dict(m) for m in messages], "temperature": temperature,
                "max_tokens": max_tokens}
        reply = self._post(json.dumps(body).encode("utf-8"))
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise LLMError(self.url, "the reply has no choices[0].message.content text",
                           server_message=json.dumps(reply)[:SERVER_MESSAGE_CHARS])
        return content

    def _post(self, data: bytes) -> Any:
        # imported here so that importing the package never loads the network stack for users without a model
        import http.client
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        failure: LLMError | None = None
        for attempt in range(self.max_retries + 1):
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:  # before OSError: HTTPError is a URLError is an OSError
                status, server_message = error.code, _server_message(error)
                retry_after = error.headers.get("Retry-After") if error.headers else None
                error.close()
                failure = LLMError(self.url, error.reason if isinstance(error.reason, str) else "HTTP error",
                                   status=status, server_message=server_message, attempts=attempt + 1)
                if status != 429 and status < 500:  # the request itself is wrong: resending cannot help
                    raise failure from None
            except (OSError, http.client.HTTPException) as error:  # refused, reset, DNS, timeout, cut-off reply
                reason = getattr(error, "reason", None) or error
                kind = "timed out" if isinstance(reason, TimeoutError) else "could not connect or read the reply"
                failure = LLMError(self.url, f"{kind} ({type(reason).__name__}: {reason})", attempts=attempt + 1)
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise LLMError(self.url, "the reply is not JSON",
                                   server_message=raw[:SERVER_MESSAGE_CHARS].decode("utf-8", "replace")) from None
            if attempt < self.max_retries:
                time.sleep(self._wait(attempt, retry_after))
        assert failure is not None  # the loop runs at least once and returns or records a failure each time
        raise failure

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before the next attempt: the server's Retry-After in seconds (an HTTP date is ignored), else
        exponential backoff; at most ``MAX_RETRY_WAIT_S``."""
        given = retry_after is not None and re.fullmatch(r"\d+(\.\d+)?", retry_after.strip())
        return min(float(retry_after) if given else self.retry_backoff * 2 ** attempt, MAX_RETRY_WAIT_S)


def _server_message(error: Any) -> str | None:
    """The message in an error reply: OpenAI's ``{"error": {"message"}}``, vLLM's ``{"message"}``, else the text."""
    try:
        text = error.read().decode("utf-8", "replace").strip()
    except OSError:
        return None
    try:
        body = json.loads(text)
    except ValueError:  # not JSON: an HTML page from a proxy, a plain-text error
        body = None
    if isinstance(body, dict):
        inner = body.get("error")
        for message in (inner.get("message") if isinstance(inner, dict) else inner, body.get("message"),
                        body.get("detail")):
            if isinstance(message, str) and message.strip():
                return message.strip()[:SERVER_MESSAGE_CHARS]
    return text[:SERVER_MESSAGE_CHARS] or None


def _field(turn: Any, name: str) -> Any:
    return turn.get(name) if isinstance(turn, Mapping) else getattr(turn, name, None)


def render_turns(turns: Sequence[Any]) -> str:
    """One ``[date] speaker: text`` line per turn (date and speaker left out when unknown). A turn is a string,
    a ``records.Turn``, a ``store.MemoryItem`` or a mapping with ``text`` (and ``speaker``, ``date_time``)."""
    if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence):
        raise ArgumentError("turns", "a sequence of turns (strings, Turn or MemoryItem objects, or mappings)",
                            type(turns).__name__)
    lines = []
    for position, turn in enumerate(turns):
        text = turn if isinstance(turn, str) else _field(turn, "text")
        if not isinstance(text, str):
            raise ArgumentError(f"turns[{position}]", "a string, or a turn or mapping with a 'text' string",
                                repr(turn)[:100])
        speaker, when = ("", "") if isinstance(turn, str) else (
            _field(turn, "speaker"), _field(turn, "date_time") or _field(turn, "timestamp"))
        prefix = (f"[{when}] " if when else "") + (f"{speaker}: " if speaker else "")
        lines.append(prefix + " ".join(text.split()))  # one line per turn, whatever newlines the text holds
    return "\n".join(lines)


# A list marker a model puts before a line: "-", "*", "•", "1.", "2)", "(3)", "[4]", "5 -", "Fact 6:".
_LIST_MARKER = re.compile(r"^(?:[-*•+–—]+\s*|\(?\d{1,3}[.)]\s*|\[\d{1,3}\]\s*|\d{1,3}\s*[-:]\s+|fact\s*\d*\s*[:.)]\s*)",
                          re.IGNORECASE)
_NOTHING = {"none", "n/a", "no facts", "nothing", "no new facts", "nothing worth remembering"}


def parse_fact_lines(reply: str) -> list[str]:
    """The facts in a model's reply: one per non-blank line, without list markers, markdown emphasis or quotes;
    a heading line ending in ``:`` ("Here are the facts:"), a "NONE" line and repeats are dropped."""
    facts: list[str] = []
    seen: set[str] = set()
    for line in reply.splitlines():
        line = line.strip().lstrip("#").strip()
        marked = _LIST_MARKER.match(line)
        line = _LIST_MARKER.sub("", line, count=1).replace("**", "").replace("__", "").strip().strip("\"'“”").strip()
        if not line or line.lower().rstrip(".!") in _NOTHING or (not marked and line.endswith(":")):
            continue
        if line.lower() not in seen:
            seen.add(line.lower())
            facts.append(line)
    return facts


_YES_WORDS = {"yes", "y", "true", "correct"}
_NO_WORDS = {"no", "n", "false", "incorrect", "wrong"}


def parse_yes_no(reply: str) -> bool:
    """A judge's verdict: its first word ("Yes.", "**no**", "Correct"), else the one of "yes"/"no" it contains
    ("Answer: yes"). Raises ``UnclearReplyError`` when it says neither, or both after a preamble."""
    words = re.findall(r"[a-z]+", reply.lower())
    if words and words[0] in _YES_WORDS | _NO_WORDS:
        return words[0] in _YES_WORDS
    said = {word for word in words if word in ("yes", "no")}
    if len(said) == 1:
        return said == {"yes"}
    raise UnclearReplyError("a judge reply must say yes or no", reply)


def _strip_label(reply: str, label: str) -> str:  # a model often repeats the prompt's last label
    text = reply.strip()
    return text[len(label):].strip() if text.lower().startswith(label.lower()) else text


def _ask(client: ChatClient, prompt: str, max_tokens: int) -> str:
    if not callable(getattr(client, "chat", None)):
        raise ArgumentError("client", "a ChatClient (an object with a chat(messages, ...) method)",
                            type(client).__name__)
    return client.chat([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=max_tokens)


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ArgumentError(name, "a non-empty string", repr(value)[:100])


def extract_facts(client: ChatClient, turns: Sequence[Any], *, max_tokens: int = 512) -> list[str]:
    """Self-contained facts stated in ``turns`` (``FACT_EXTRACTION_PROMPT``); no request when there are no turns."""
    conversation = render_turns(turns)
    if not conversation.strip():
        return []
    return parse_fact_lines(_ask(client, FACT_EXTRACTION_PROMPT.format(conversation=conversation), max_tokens))


def summarise_session(client: ChatClient, turns: Sequence[Any], *, max_words: int = 120,
                      max_tokens: int = 256) -> str:
    """A prose summary of one session's turns (``SESSION_SUMMARY_PROMPT``); "" without a request when empty."""
    check_int(max_words=max_words)
    conversation = render_turns(turns)
    if not conversation.strip():
        return ""
    prompt = SESSION_SUMMARY_PROMPT.format(conversation=conversation, max_words=max_words)
    return _strip_label(_ask(client, prompt, max_tokens), "Summary:")


def answer_question(client: ChatClient, question: str, retrieved_texts: Sequence[str], *,
                    question_date: str | None = None, max_tokens: int = 128) -> str:
    """A short answer to ``question`` from the retrieved memories, best first (``ANSWER_PROMPT``). With none the
    model is still asked, so that it can say the information is not available."""
    _check_text("question", question)
    if isinstance(retrieved_texts, str) or not isinstance(retrieved_texts, Sequence) or not all(
            isinstance(text, str) for text in retrieved_texts):
        raise ArgumentError("retrieved_texts", "a sequence of strings", repr(retrieved_texts)[:100])
    if question_date is not None:
        _check_text("question_date", question_date)
    memories = "\n".join(f"{rank}. {' '.join(text.split())}" for rank, text in enumerate(retrieved_texts, 1))
    prompt = ANSWER_PROMPT.format(memories=memories or "(none)", question=" ".join(question.split()),
                                  date_line=f"Today's date: {question_date}\n" if question_date else "")
    return _strip_label(_ask(client, prompt, max_tokens), "Answer:")


def judge_answer(client: ChatClient, question: str, gold: str, prediction: str, *, question_type: str | None = None,
                 abstention: bool = False) -> bool:
    """Whether ``prediction`` answers ``question`` as ``gold`` does, by LongMemEval's yes/no judge (``JUDGE_PROMPT``
    with the rule ``JUDGE_CRITERIA`` gives a LongMemEval ``question_type``). With ``abstention`` the history holds no
    answer, ``gold`` explains why, and the judge asks whether the prediction says so (``ABSTENTION_JUDGE_PROMPT``)."""
    _check_text("question", question)
    _check_text("gold", gold)
    if not isinstance(prediction, str):
        raise ArgumentError("prediction", "a string", type(prediction).__name__)
    if question_type is not None:
        check_choice("question_type", question_type, LONGMEMEVAL_QUESTION_TYPES)
    check_bool(abstention=abstention)
    if abstention:
        prompt = ABSTENTION_JUDGE_PROMPT.format(question=question, gold=gold, prediction=prediction)
    else:
        prompt = JUDGE_PROMPT.format(question=question, gold=gold, prediction=prediction,
                                     criteria=JUDGE_CRITERIA.get(question_type or "", ""))
    return parse_yes_no(_ask(client, prompt, max_tokens=10))  # 10 tokens, as the reference judge asks for
