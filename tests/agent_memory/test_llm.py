"""The optional LLM step against a local stand-in for an OpenAI-compatible server: the request each call sends,
retries on 429/5xx only, clear errors for a rejected request, a refused connection and a timeout, the parsing
of each step's reply, and that nothing in the package touches the network unless a client is used."""

import ast
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import longrecall.agent_memory as agent_memory
from longrecall.agent_memory.llm import (
    ABSTENTION_JUDGE_PROMPT,
    JUDGE_CRITERIA,
    LLMClient,
    LLMError,
    UnclearReplyError,
    answer_question,
    extract_facts,
    judge_answer,
    parse_fact_lines,
    parse_yes_no,
    render_turns,
    summarise_session,
)
from longrecall.validation import ArgumentError

MODEL = "stand-in-model"
HANG_LIMIT_S = 10  # a hanging reply is released at teardown; this only bounds a broken test


class StandIn:
    """What the stand-in server replies (a queue of actions, then ``default_reply``) and what it was sent."""

    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}/v1"
        self.requests = []  # {"path", "headers" (lowercased names), "body" (parsed JSON or None)}
        self.script = []  # ("reply", content) | ("status", code, body, headers) | ("raw", code, bytes) | ("hang",)
        self.default_reply = "ok"
        self.release = threading.Event()
        self.lock = threading.Lock()

    def problem(self, path, body):
        """Why a request breaks the OpenAI schema the client promises, or None."""
        if path != "/v1/chat/completions":
            return 404, f"unknown path {path}"
        if not isinstance(body, dict) or set(body) != {"model", "messages", "temperature", "max_tokens"}:
            return 400, f"body must hold exactly model, messages, temperature, max_tokens: {body!r}"
        messages_ok = isinstance(body["messages"], list) and body["messages"] and all(
            isinstance(m, dict) and set(m) == {"role", "content"} for m in body["messages"])
        if body["model"] != MODEL or not messages_ok or not isinstance(body["max_tokens"], int):
            return 400, f"malformed request: {body!r}"
        return None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        stand_in = self.server.stand_in
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with stand_in.lock:
            stand_in.requests.append({"path": self.path, "body": body,
                                      "headers": {name.lower(): value for name, value in self.headers.items()}})
            action = stand_in.script.pop(0) if stand_in.script else ("reply", stand_in.default_reply)
        problem = stand_in.problem(self.path, body)
        if problem:
            action = ("status", problem[0], {"error": {"message": problem[1], "type": "invalid_request_error"}}, {})
        if action[0] == "hang":
            stand_in.release.wait(HANG_LIMIT_S)
            action = ("reply", "too late")
        if action[0] == "reply":
            completion = {"id": "cmpl-1", "object": "chat.completion", "model": MODEL,
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": action[1]}}]}
            self._send(200, json.dumps(completion).encode(), {})
        elif action[0] == "status":
            payload = action[2] if isinstance(action[2], bytes) else json.dumps(action[2]).encode()
            self._send(action[1], payload, action[3])
        else:
            self._send(action[1], action[2], {})

    def _send(self, code, payload, headers):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output clean
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out and left is expected here
        pass


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = QuietServer(("127.0.0.1", 0), Handler)
    server.stand_in = StandIn(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.stand_in
    server.stand_in.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


def client_for(stand_in, **options):
    options.setdefault("retry_backoff", 0)
    return LLMClient(stand_in.url, MODEL, **options)


def sent_prompt(stand_in, index=-1):
    return stand_in.requests[index]["body"]["messages"][0]["content"]


# --- the client ---------------------------------------------------------------------------------------------


def test_chat_round_trip_sends_the_openai_body_and_no_key(stand_in):
    stand_in.default_reply = "Hello there."
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert client_for(stand_in).chat(messages, temperature=0.5, max_tokens=7) == "Hello there."
    (request,) = stand_in.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {"model": MODEL, "messages": messages, "temperature": 0.5, "max_tokens": 7}
    assert request["headers"]["content-type"] == "application/json"
    assert "authorization" not in request["headers"]


def test_trailing_slash_in_base_url_is_one_path(stand_in):
    LLMClient(stand_in.url + "/", MODEL).chat([{"role": "user", "content": "x"}])
    assert stand_in.requests[0]["path"] == "/v1/chat/completions"


def test_api_key_from_argument_then_environment(stand_in, monkeypatch):
    hello = [{"role": "user", "content": "hello"}]
    client_for(stand_in, api_key="sk-argument").chat(hello)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-environment")
    client_for(stand_in).chat(hello)
    client_for(stand_in, api_key="sk-argument").chat(hello)  # the argument wins over the environment
    monkeypatch.setenv("OPENAI_API_KEY", "")
    client_for(stand_in).chat(hello)  # an empty key is no key
    sent = [request["headers"].get("authorization") for request in stand_in.requests]
    assert sent == ["Bearer sk-argument", "Bearer sk-environment", "Bearer sk-argument", None]
    assert "sk-argument" not in repr(client_for(stand_in, api_key="sk-argument"))


def test_retries_a_500_then_succeeds(stand_in):
    stand_in.script = [("status", 500, {"error": {"message": "overloaded"}}, {}), ("reply", "second time lucky")]
    assert client_for(stand_in, max_retries=2).chat([{"role": "user", "content": "q"}]) == "second time lucky"
    assert len(stand_in.requests) == 2
    assert stand_in.requests[0]["body"] == stand_in.requests[1]["body"]


def test_retries_a_429_with_retry_after(stand_in):
    stand_in.script = [("status", 429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})]
    assert client_for(stand_in, max_retries=1).chat([{"role": "user", "content": "q"}]) == "ok"
    assert len(stand_in.requests) == 2


def test_gives_up_after_max_retries_with_the_last_status(stand_in):
    stand_in.script = [("status", 503, {"error": {"message": "model loading"}}, {})] * 3
    with pytest.raises(LLMError) as caught:
        client_for(stand_in, max_retries=2).chat([{"role": "user", "content": "q"}])
    assert len(stand_in.requests) == 3
    assert (caught.value.status, caught.value.attempts, caught.value.server_message) == (503, 3, "model loading")
    assert stand_in.url + "/chat/completions" in str(caught.value) and "HTTP 503" in str(caught.value)


def test_a_400_is_not_retried_and_quotes_the_server(stand_in):
    stand_in.script = [("status", 400, {"error": {"message": "max_tokens is too large", "type": "invalid"}}, {})]
    with pytest.raises(LLMError) as caught:
        client_for(stand_in, max_retries=2).chat([{"role": "user", "content": "q"}])
    assert len(stand_in.requests) == 1
    message = str(caught.value)
    assert stand_in.url + "/chat/completions" in message and "HTTP 400" in message
    assert "max_tokens is too large" in message and caught.value.status == 400


def test_a_wrong_path_is_a_404_with_the_servers_plain_text(stand_in):
    stand_in.script = [("status", 404, b"no route here", {})]
    with pytest.raises(LLMError) as caught:
        client_for(stand_in, max_retries=2).chat([{"role": "user", "content": "q"}])
    assert (caught.value.status, caught.value.server_message, len(stand_in.requests)) == (404, "no route here", 1)


def test_a_reply_without_content_or_json_is_an_error(stand_in):
    stand_in.script = [("raw", 200, b'{"choices": []}'), ("raw", 200, b"<html>proxy error</html>")]
    with pytest.raises(LLMError, match=r"choices\[0\]\.message\.content"):
        client_for(stand_in).chat([{"role": "user", "content": "q"}])
    with pytest.raises(LLMError, match="not JSON.*proxy error"):
        client_for(stand_in).chat([{"role": "user", "content": "q"}])


def test_connection_refused_on_a_closed_port_is_a_clear_error():
    with socket.socket() as probe:  # a port that was free a moment ago, now closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LLMError) as caught:
        LLMClient(f"http://127.0.0.1:{port}/v1", MODEL, max_retries=1, retry_backoff=0).chat(
            [{"role": "user", "content": "q"}])
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in message and "could not connect" in message
    assert caught.value.status is None and caught.value.attempts == 2


def test_a_timeout_is_a_clear_error_and_is_retried(stand_in):
    stand_in.script = [("hang",)]
    with pytest.raises(LLMError, match=r"failed: timed out \(") as caught:
        client_for(stand_in, timeout=0.2, max_retries=0).chat([{"role": "user", "content": "q"}])
    assert caught.value.status is None
    stand_in.script = [("hang",), ("reply", "answered on retry")]
    assert client_for(stand_in, timeout=0.2, max_retries=1).chat([{"role": "user", "content": "q"}]) == \
        "answered on retry"


@pytest.mark.parametrize("build, arg", [
    (lambda url: LLMClient("localhost:8000/v1", MODEL), "base_url"),
    (lambda url: LLMClient(url, ""), "model"),
    (lambda url: LLMClient(url, MODEL, timeout=0), "timeout"),
    (lambda url: LLMClient(url, MODEL, max_retries=-1), "max_retries"),
    (lambda url: LLMClient(url, MODEL, api_key=123), "api_key"),
    (lambda url: LLMClient(url, MODEL).chat([]), "messages"),
    (lambda url: LLMClient(url, MODEL).chat([{"role": "user"}]), "messages"),
    (lambda url: LLMClient(url, MODEL).chat([{"role": "user", "content": "q"}], temperature=3), "temperature"),
    (lambda url: LLMClient(url, MODEL).chat([{"role": "user", "content": "q"}], max_tokens=0), "max_tokens"),
])
def test_bad_arguments_are_refused_before_any_request(stand_in, build, arg):
    with pytest.raises(ArgumentError) as caught:
        build(stand_in.url)
    assert caught.value.arg == arg and stand_in.requests == []


# --- the steps ----------------------------------------------------------------------------------------------

TURNS = [{"speaker": "Caroline", "text": "I adopted a puppy\nfrom the shelter!", "date_time": "8 May, 2023"},
         {"speaker": "Mel", "text": "Lovely. I start a pottery class next week."}]


def test_render_turns_one_line_each_with_date_and_speaker():
    assert render_turns(TURNS + ["a bare line"]) == ("[8 May, 2023] Caroline: I adopted a puppy from the shelter!\n"
                                                     "Mel: Lovely. I start a pottery class next week.\na bare line")
    with pytest.raises(ArgumentError, match=r"turns\[1\]"):
        render_turns(["fine", {"speaker": "x"}])


def test_extract_facts_sends_the_turns_and_parses_a_bulleted_reply(stand_in):
    stand_in.default_reply = ("Here are the facts:\n\n- Caroline adopted a puppy in May 2023.\n"
                              "2. Mel starts a pottery class in May 2023.\n\n"
                              "* **Caroline** got the puppy from a shelter.")
    facts = extract_facts(client_for(stand_in), TURNS)
    assert facts == ["Caroline adopted a puppy in May 2023.", "Mel starts a pottery class in May 2023.",
                     "Caroline got the puppy from a shelter."]
    body = stand_in.requests[0]["body"]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 512
    assert "[8 May, 2023] Caroline: I adopted a puppy from the shelter!" in sent_prompt(stand_in)


@pytest.mark.parametrize("reply, facts", [
    ("1. Ana runs.\n2) Ben swims.\n(3) Cy rows.\n[4] Di skis.", ["Ana runs.", "Ben swims.", "Cy rows.", "Di skis."]),
    ("• Ana runs.\n+ Ben swims.\n– Cy rows.\n5 - Di skis.", ["Ana runs.", "Ben swims.", "Cy rows.", "Di skis."]),
    ("Fact 1: Ana runs.\nFact: Ben swims.\n\n   \n\"Cy rows.\"", ["Ana runs.", "Ben swims.", "Cy rows."]),
    ("Ana runs.\n- ana runs.\nAna runs 5 km.", ["Ana runs.", "Ana runs 5 km."]),  # repeats dropped, digits kept
    ("## Facts:\nNONE", []),
    ("None.", []),
    ("- Key dates:\n2023 was busy for Ana.", ["Key dates:", "2023 was busy for Ana."]),  # a marked line is a fact
])
def test_parse_fact_lines(reply, facts):
    assert parse_fact_lines(reply) == facts


def test_steps_on_no_turns_send_nothing(stand_in):
    assert extract_facts(client_for(stand_in), []) == []
    assert summarise_session(client_for(stand_in), []) == ""
    assert stand_in.requests == []


def test_summarise_session_strips_the_label(stand_in):
    stand_in.default_reply = "Summary: Caroline adopted a puppy; Mel starts pottery.\n"
    summary = summarise_session(client_for(stand_in), TURNS, max_words=40)
    assert summary == "Caroline adopted a puppy; Mel starts pottery."
    assert "at most 40 words" in sent_prompt(stand_in) and "Mel: Lovely." in sent_prompt(stand_in)


def test_answer_question_numbers_the_memories_and_dates_the_question(stand_in):
    stand_in.default_reply = "Answer: a puppy"
    memories = ["Caroline adopted a puppy.", "Mel\npots."]
    answer = answer_question(client_for(stand_in), "What did Caroline adopt?", memories, question_date="2023/05/30")
    assert answer == "a puppy"
    prompt = sent_prompt(stand_in)
    assert "1. Caroline adopted a puppy.\n2. Mel pots." in prompt
    assert "Today's date: 2023/05/30\nQuestion: What did Caroline adopt?" in prompt
    with pytest.raises(ArgumentError, match="retrieved_texts"):
        answer_question(client_for(stand_in), "q?", "not a list")


@pytest.mark.parametrize("reply, verdict", [
    ("yes", True), ("Yes.", True), ("YES", True), ("**Yes**", True), ("yes, the response is correct", True),
    ("Answer: yes", True), ("Correct", True), ("no", False), ("No.", False), ("  NO  \n", False),
    ("Incorrect.", False), ("The answer is no.", False),
    ("No, although the response says yes at the end.", False),  # the reference's substring test would say yes
])
def test_judge_reads_yes_and_no_in_several_forms(stand_in, reply, verdict):
    stand_in.default_reply = reply
    assert judge_answer(client_for(stand_in), "Where is Ben's marathon?", "Lisbon", "In Lisbon.") is verdict
    body = stand_in.requests[0]["body"]
    assert body["max_tokens"] == 10 and body["temperature"] == 0.0
    assert "Correct answer: Lisbon" in sent_prompt(stand_in) and "Model response: In Lisbon." in sent_prompt(stand_in)


@pytest.mark.parametrize("reply", ["maybe", "", "I cannot say yes or no"])
def test_judge_reply_without_a_verdict_is_an_error(reply):
    with pytest.raises(UnclearReplyError, match="yes or no"):
        parse_yes_no(reply)


def test_judge_prompt_follows_question_type_and_abstention(stand_in):
    stand_in.default_reply = "yes"
    client = client_for(stand_in)
    judge_answer(client, "How many days between?", "18 days", "19 days", question_type="temporal-reasoning")
    assert JUDGE_CRITERIA["temporal-reasoning"] in sent_prompt(stand_in)
    judge_answer(client, "What is Ben's cat called?", "Ben never mentions a cat.", "No cat was mentioned.",
                 abstention=True)
    assert sent_prompt(stand_in) == ABSTENTION_JUDGE_PROMPT.format(
        question="What is Ben's cat called?", gold="Ben never mentions a cat.", prediction="No cat was mentioned.")
    with pytest.raises(ArgumentError, match="question_type"):
        judge_answer(client, "q?", "a", "b", question_type="multi-hop")
    assert len(stand_in.requests) == 2


# --- no network unless a client is used ---------------------------------------------------------------------

NETWORK_MODULES = ("urllib", "http", "socket", "ssl", "requests", "httpx", "aiohttp")


def test_no_module_imports_the_network_at_import_time():
    for path in sorted(Path(agent_memory.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = tree.body if path.name == "llm.py" else list(ast.walk(tree))  # llm.py imports urllib when posting
        imported = [alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in nodes if isinstance(node, ast.ImportFrom) and not node.level]
        assert not [name for name in imported if name.split(".")[0] in NETWORK_MODULES], path.name


def test_importing_the_package_and_building_a_client_opens_no_connection():
    script = """
import importlib, pkgutil, sys
events = []
sys.addaudithook(lambda event, args: events.append(event) if event in
                 ("socket.connect", "socket.getaddrinfo", "urllib.Request", "http.client.connect") else None)
import longrecall.agent_memory as package
for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(package.__name__ + "." + info.name)
from longrecall.agent_memory.llm import LLMClient, parse_fact_lines, parse_yes_no, render_turns
repr(LLMClient("http://127.0.0.1:9/v1", "m", api_key="k"))
parse_fact_lines("- a fact"), parse_yes_no("yes"), render_turns(["a turn"])
print(events)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
