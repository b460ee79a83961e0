"""
scripts.chat_web served for real (uvicorn in a subprocess on 127.0.0.1) over a tiny checkpoint:
the OpenAI client, the UI's SSE endpoint, the small endpoints, every kind of bad input,
concurrent and dropped streams, and the UI itself in headless chromium.

The tiny model never ends a reply on its own (see write_chat_checkpoint), so every reply is
exactly max_tokens long, and at temperature 0 it is deterministic.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tiny import write_chat_checkpoint  # the same tiny checkpoint the CLI tests use

ROOT = Path(__file__).resolve().parents[1]

GENERATION_PATHS = ("/v1/chat/completions", "/chat/completions")

CHROMIUM = "/usr/bin/chromium"
MAX_MESSAGES, MAX_MESSAGE_CHARS, MAX_CONVERSATION_CHARS, MAX_MAX_TOKENS = 8, 200, 600, 8000
SEQUENCE_LEN = 8192  # the context the tiny model is "trained" for: a reply of MAX_MAX_TOKENS fits
BODY_TIMEOUT_S = 2.0  # --body_timeout: how long the server waits for a request body
MODEL = "nanochat-sft-d1"  # the name the server gives the model it serves (GET /v1/models)


@dataclass
class Server:
    url: str
    tokenizer: object
    log: Path

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats").json()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_tokenizer, tmp_path_factory) -> Server:
    base = tmp_path_factory.mktemp("chat_web")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCHAT_BASE_DIR", str(base))
        # a long context, so a reply of MAX_MAX_TOKENS tokens takes seconds even on a fast CPU
        write_chat_checkpoint(tiny_tokenizer, sequence_len=SEQUENCE_LEN)
    port = free_port()
    log = base / "server.log"
    cmd = [sys.executable, "-m", "scripts.chat_web", "-i", "sft", "--device_type", "cpu", "--port", str(port),
           "--max_tokens", "24", "--max_messages", str(MAX_MESSAGES), "--max_message_chars", str(MAX_MESSAGE_CHARS),
           "--max_conversation_chars", str(MAX_CONVERSATION_CHARS), "--max_max_tokens", str(MAX_MAX_TOKENS),
           "--body_timeout", str(BODY_TIMEOUT_S)]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "NANOCHAT_BASE_DIR": str(base)},
                                stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chat_web exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"chat_web did not come up in 90 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield Server(url, tiny_tokenizer, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), log.read_text()


def prompt_length(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.render_for_completion({"messages": [*messages, {"role": "assistant", "content": ""}]}))


def sse_events(lines) -> list:
    """The JSON payloads of a server-sent event stream ([DONE] as the string)."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---- the OpenAI-compatible API ----


def test_openai_client_non_streaming_and_streaming_agree(server):
    client = server.client()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "the cat sat on"}]
    settings = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 12, "seed": 5}
    r = client.chat.completions.create(**settings)
    text = r.choices[0].message.content
    assert isinstance(text, str) and text
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"  # it ran into max_tokens
    assert r.usage.prompt_tokens == prompt_length(server.tokenizer, messages)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12

    chunks = list(client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1, "the reply should arrive in pieces"
    assert "".join(content) == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens

    # OpenAI's list-of-parts content is the same conversation as the joined string
    parts = [messages[0], {"role": "user", "content": [{"type": "text", "text": "the cat"}, {"type": "text", "text": "sat on"}]}]
    r2 = client.chat.completions.create(**{**settings, "messages": parts})
    joined = [messages[0], {"role": "user", "content": "the cat\nsat on"}]
    assert r2.usage.prompt_tokens == prompt_length(server.tokenizer, joined)


def test_sampling_is_seeded_and_top_k_one_is_greedy(server):
    client = server.client()
    messages = [{"role": "user", "content": "apple river"}]

    def reply(**kw) -> str:
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, **kw).choices[0].message.content

    assert reply(temperature=1.0, seed=1) == reply(temperature=1.0, seed=1)
    assert reply(temperature=1.0, top_p=1, extra_body={"top_k": 1}, seed=2) == reply(temperature=0)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3


def test_openai_errors_reach_the_client(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="'messages' is empty"):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.NotFoundError, match="`gpt-4o` does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="'top_p' is not supported"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], top_p=0.5)


# ---- the UI's endpoint and the small ones ----


def test_ui_endpoint_streams_tokens_then_done(server):
    body = {"messages": [{"role": "user", "content": "over the hill"}], "temperature": 0, "max_tokens": 9, "seed": 1}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    tokens = [e["token"] for e in events if "token" in e]
    assert len(tokens) > 1 and events[-1]["done"] is True
    assert events[-1]["completion_tokens"] == 9 and events[-1]["finish_reason"] == "length"
    assert events[-1]["prompt_tokens"] == prompt_length(server.tokenizer, body["messages"])
    expected = server.client().chat.completions.create(model=MODEL, messages=body["messages"], temperature=0, max_tokens=9)
    assert "".join(tokens) == expected.choices[0].message.content


def test_models_health_and_stats(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "ready": True, "workers": 1}
    before = server.stats()
    server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=7)
    httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    after = server.stats()
    assert after["workers"] == {"total": 1, "busy": 0, "waiting": 0}
    assert after["requests"]["completed"] == before["requests"]["completed"] + 1
    assert after["requests"]["rejected"] == before["requests"]["rejected"] + 1
    assert after["tokens_generated"] == before["tokens_generated"] + 7
    assert after["prompt_tokens"] > before["prompt_tokens"]
    assert after["uptime_seconds"] >= before["uptime_seconds"] > 0
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<title>nanochat</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from outside the machine


# ---- bad input ----

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
LONG = "x" * (MAX_MESSAGE_CHARS - 10)
OPENAI_ONLY = {"n", "stop", "stream", "max_completion_tokens"}  # fields the UI's endpoint does not look at

BAD_REQUESTS = {
    "malformed JSON": (b'{"messages": [', "not valid JSON"),
    "empty body": (b"", "the request body is empty"),
    "body not an object": ([USER], "must be a JSON object, got array"),
    "no messages": ({}, "'messages' is required"),
    "messages not a list": ({"messages": "hi"}, "'messages' must be an array of messages, got string"),
    "empty messages": ({"messages": []}, "'messages' is empty"),
    "message not an object": ({"messages": ["hi"]}, "messages[0] must be an object"),
    "no role": ({"messages": [{"content": "hi"}]}, "messages[0] has no 'role'"),
    "unknown role": ({"messages": [{"role": "tool", "content": "hi"}]}, 'messages[0].role is "tool"'),
    "no content": ({"messages": [{"role": "user"}]}, "messages[0] has no 'content'"),
    "empty content": ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content is empty"),
    "number content": ({"messages": [{"role": "user", "content": 42}]}, "must be a string or a list of text parts, got number"),
    "image part": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                   'messages[0].content[0] has type "image_url"; only "text" parts'),
    "too many messages": ({"messages": [USER, ASSISTANT] * 4 + [USER]}, f"too many messages: 9 (the limit is {MAX_MESSAGES})"),
    "message too long": ({"messages": [{"role": "user", "content": "x" * (MAX_MESSAGE_CHARS + 1)}]},
                         f"messages[0].content is {MAX_MESSAGE_CHARS + 1} characters; the limit is {MAX_MESSAGE_CHARS}"),
    "conversation too long": ({"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": LONG},
                                            {"role": "user", "content": LONG}, {"role": "assistant", "content": LONG},
                                            {"role": "user", "content": "hi"}]},
                              f"the limit is {MAX_CONVERSATION_CHARS}"),
    "ends with assistant": ({"messages": [USER, ASSISTANT]}, "must end with a user message"),
    "not alternating": ({"messages": [USER, USER]}, 'messages[1] has role "user" where "assistant" was expected'),
    "starts with assistant": ({"messages": [ASSISTANT, USER]}, 'messages[0] has role "assistant" where "user"'),
    "late system message": ({"messages": [USER, ASSISTANT, {"role": "system", "content": "x"}, USER]},
                            "messages[2] is a system message; only the first"),
    "only system": ({"messages": [{"role": "system", "content": "be nice"}]}, "only a system message"),
    "temperature too high": ({"messages": [USER], "temperature": 3}, "'temperature' must be from 0 to 2, got 3"),
    "temperature negative": ({"messages": [USER], "temperature": -0.5}, "'temperature' must be from 0 to 2"),
    "temperature a string": ({"messages": [USER], "temperature": "hot"}, "'temperature' must be a number"),
    "temperature a bool": ({"messages": [USER], "temperature": True}, "'temperature' must be a number"),
    "top_k too big": ({"messages": [USER], "top_k": 500}, "'top_k' must be from 1 to 200 (0: no top-k), got 500"),
    "top_k fractional": ({"messages": [USER], "top_k": 2.5}, "'top_k' must be an integer"),
    "max_tokens zero": ({"messages": [USER], "max_tokens": 0}, f"'max_tokens' must be from 1 to {MAX_MAX_TOKENS}, got 0"),
    "max_tokens too big": ({"messages": [USER], "max_tokens": 10**6}, f"'max_tokens' must be from 1 to {MAX_MAX_TOKENS}"),
    "max_tokens a string": ({"messages": [USER], "max_tokens": "10"}, "'max_tokens' must be an integer"),
    "max_completion_tokens too big": ({"messages": [USER], "max_completion_tokens": 10**6}, "'max_completion_tokens' must be"),
    "seed negative": ({"messages": [USER], "seed": -1}, "'seed' must be from 0"),
    "n of 2": ({"messages": [USER], "n": 2}, "'n' must be 1"),
    "stop sequences": ({"messages": [USER], "stop": ["\n"]}, "'stop' sequences are not supported"),
    "stream not a bool": ({"messages": [USER], "stream": "yes"}, "'stream' must be true or false"),
}


@pytest.mark.parametrize("body,message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_a_clear_4xx(server, body, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.url}/v1/chat/completions", headers={"Content-Type": "application/json"}, timeout=30, **kwargs)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"], error["message"]
    if not (isinstance(body, dict) and OPENAI_ONLY & body.keys()):  # the UI's endpoint makes the same checks
        r = httpx.post(f"{server.url}/chat/completions", headers={"Content-Type": "application/json"}, timeout=30, **kwargs)
        assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_other_errors_and_the_server_goes_on(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"x" * 2_000_000)
    assert r.status_code == 413 and "request body is over" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/nothing-here")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/chat/completions")
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]["message"]
    r = server.client().chat.completions.create(model=MODEL, messages=[USER], max_tokens=4)
    assert r.usage.completion_tokens == 4 and r.choices[0].message.content


# ---- hostile input (issue 16) ----


def raw_request(server: Server, head: bytes, timeout: float = 30) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(head)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("depth", [100, 1000, 10_000, 200_000])
@pytest.mark.parametrize("where", ["body", "temperature", "content"])
def test_deeply_nested_json_is_a_4xx(server, depth, where):
    # issue 16: depth >= 1000 gave a 500 or a reset (RecursionError)
    nested = "[" * depth + "]" * depth
    body = {
        "body": nested,
        "temperature": '{"messages": [{"role": "user", "content": "hi"}], "temperature": %s}' % nested,
        "content": '{"messages": [{"role": "user", "content": %s}]}' % ('{"a":' * depth + "1" + "}" * depth),
    }[where].encode()
    for path in GENERATION_PATHS:
        r = httpx.post(f"{server.url}{path}", content=body, timeout=30)
        message = r.json()["error"]["message"]
        if r.status_code == 413:  # 200,000 levels take more bytes than any conversation the server accepts
            assert len(body) > 60_000 and "the request body is over" in message
        else:
            assert r.status_code == 400 and message == "the request body is nested more than 64 levels deep", r.text
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_half_sent_bodies_are_dropped(server):
    # issue 16: a body announced huge and never sent held its connection open indefinitely
    # (300 held in the trial); now each gets a 408 after --body_timeout and the connection closes
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000\r\n\r\n" + b'{"messages": [')  # under the body size limit
    start = time.time()
    socks = [raw_request(server, head) for _ in range(50)]
    for sock in socks:
        response = read_response(sock)  # returns only when the server closes the connection
        assert response.startswith(b"HTTP/1.1 408 "), response[:200]
        assert b"did not arrive within" in response
        sock.close()
    assert time.time() - start < BODY_TIMEOUT_S + 10
    # a Content-Length over the limit is refused at once, before any body is sent
    sock = raw_request(server, b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    start = time.time()
    response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 ") and time.time() - start < BODY_TIMEOUT_S, response[:200]
    sock.close()
    r = server.client().chat.completions.create(model=MODEL, messages=[USER], max_tokens=3)
    assert r.usage.completion_tokens == 3


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40, 1e-7])
def test_tiny_temperature_is_greedy_not_nan(server, temperature):
    # issue 16: 1e-300 overflowed logits / temperature into NaN probabilities and returned garbage
    messages = [{"role": "user", "content": "the cat sat on"}]
    greedy = server.client().chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10, seed=1)
    tiny = server.client().chat.completions.create(model=MODEL, messages=messages, temperature=temperature, max_tokens=10,
                                                   seed=2)
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


def hostile_requests(count: int) -> list[tuple[str, str, dict, bytes]]:
    """`count` malformed requests (method, path, headers, body), reproducible: broken and
    truncated JSON, random bytes, invalid UTF-8, wrong types and absurd values in every field,
    deep nesting, lone surrogates, odd paths and methods."""
    import random

    rng = random.Random(16)
    valid = {"model": MODEL, "messages": [USER, ASSISTANT, USER], "temperature": 0.5, "top_k": 5, "max_tokens": 1,
             "seed": 3, "stream": False}
    valid_text = json.dumps(valid)
    fields = ["messages", "temperature", "top_k", "max_tokens", "seed", "n", "stop", "stream", "model", "top_p",
              "stream_options", "max_completion_tokens"]
    weird = ["null", "true", "-0", "1e999", "-1e999", "NaN", "Infinity", "1" + "0" * 400, "-" + "9" * 30, '""',
             '"x"', '"' + "x" * 5000 + '"', "[]", "{}", "[[[]]]", '"\\ud800"', '"\\u0000"', "[null]", '[{"role": 1}]',
             '[{"role": "user", "content": "\\udfff\\ud800"}]', '[{"role": "user", "content": [{"type": "text"}]}]',
             '[{"role": "user", "content": {"text": "hi"}}]', '{"include_usage": [1]}', "0.1e-310", "4.9e-324"]
    requests = []
    for i in range(count):
        kind = i % 10
        method, path, headers = "POST", GENERATION_PATHS[i % 2], {"Content-Type": "application/json"}
        if kind == 0:  # random bytes
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        elif kind == 1:  # truncated JSON
            body = valid_text[: rng.randrange(1, len(valid_text) - 1)].encode()
        elif kind in (2, 3, 4):  # one field replaced by something absurd
            field, value = rng.choice(fields), rng.choice(weird)
            body = ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "%s": %s}' % (field, value)).encode()
            if field == "messages" and value in ("null", "[]"):
                body = body.replace(b'"messages": [{"role": "user", "content": "hi"}], ', b"")
        elif kind == 5:  # deep nesting somewhere
            depth = rng.choice([65, 500, 999, 1000, 5000, 50_000])
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            nested = opener * depth + "1" + closer * depth if opener != "[" else "[" * depth + "]" * depth
            body = rng.choice([nested, '{"messages": %s}' % nested, '{"messages": [USER], "seed": %s}' % nested]).encode()
        elif kind == 6:  # strings the server must not choke on when it quotes them back
            role = rng.choice(["\\ud800", "\\u0000", "\u202eresu", "🙂" * 50, "x" * 10_000, "\\\\" * 100])
            body = ('{"messages": [{"role": "%s", "content": "hi"}]}' % role).encode()
        elif kind == 7:  # invalid UTF-8 and odd encodings inside otherwise valid JSON
            body = rng.choice([b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "\ufeff{}".encode(),
                               b'{"messages": [{"role": "user", "content": "hi"}]}'.decode().encode("utf-16"),
                               b"\x00" * 50])
        elif kind == 8:  # odd paths and methods
            method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "POST"])
            path = rng.choice(["/v1/chat/completions/", "/%ff%fe", "/v1/" + "a" * 2000, "/chat/completions?x=%00",
                               "/../../etc/passwd", "/stats/", "/v1/models/x", "//", "/health?a=" + "b" * 3000])
            body = b"{}"
        else:  # wrong or missing content type, duplicate keys, a BOM, a JSON scalar
            headers = rng.choice([{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/json; charset=latin-1"}])
            body = rng.choice([b'{"messages": 1, "messages": 2}', b'"hello"', b"42", b"null", b"[]", b"  \n  "])
        requests.append((method, path, headers, body))
    return requests


def test_hostile_requests_get_no_5xx(server):
    # issue 16: 1,300 hostile requests; deep nesting, half-sent bodies and tiny temperatures broke the server
    requests = hostile_requests(1200)
    statuses: dict[int, int] = {}
    failures = []
    start = time.time()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, headers, body in requests:
            try:
                r = client.request(method, path, headers=headers, content=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    failures.append((r.status_code, method, path, body[:120], r.text[:200]))
            except httpx.HTTPError as e:  # a reset or a hang is a failure too
                failures.append(("error", method, path, body[:120], repr(e)))
            assert time.time() - start < 240, "the hostile requests took too long"
    assert not failures, failures[:10]
    assert sum(n for code, n in statuses.items() if 400 <= code < 500) >= 1000, statuses
    # and the server answers normally afterwards
    r = server.client().chat.completions.create(model=MODEL, messages=[USER], max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4 and r.choices[0].message.content
    assert httpx.get(f"{server.url}/health").json()["ready"] is True


# ---- concurrency and clients that leave ----


def test_concurrent_streams_all_complete(server):
    client = server.client()
    prompts = ["the cat", "a dog ran", "seven twelve", "over hill river"]
    expected = {p: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}], temperature=0,
                                                  max_tokens=16).choices[0].message.content for p in prompts}
    results, errors = {}, []

    def stream(p: str) -> None:
        try:
            chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}], temperature=0,
                                                    max_tokens=16, stream=True)
            results[p] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except Exception as e:  # reported below, with the thread's prompt
            errors.append((p, e))

    threads = [threading.Thread(target=stream, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == expected
    assert server.stats()["workers"] == {"total": 1, "busy": 0, "waiting": 0}


def open_stream(server: Server, max_tokens: int) -> socket.socket:
    """A raw HTTP streaming request, so the test can drop the connection whenever it likes."""
    body = json.dumps({"model": MODEL, "messages": [USER], "temperature": 0, "max_tokens": max_tokens, "stream": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before {marker!r}: {data!r}"
        data += chunk
    return data


def wait_for(condition, what: str, timeout: float = 10.0) -> float:
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.time() - start


def test_clients_that_leave_free_the_worker(server):
    before = server.stats()
    # A takes the only worker on a reply far longer than the test; B queues behind it
    a = open_stream(server, MAX_MAX_TOKENS)
    read_until(a, b'"content":"')  # a first piece of A's reply arrived
    b = open_stream(server, MAX_MAX_TOKENS)
    wait_for(lambda: server.stats()["workers"]["waiting"] == 1, "B to queue")
    b.close()  # leaves while queued: it must not take the worker when A is done
    wait_for(lambda: server.stats()["workers"]["waiting"] == 0, "B to leave the queue")
    assert server.stats()["workers"]["busy"] == 1
    a.close()  # leaves mid-reply: its generation must stop at once
    freed = wait_for(lambda: server.stats()["workers"]["busy"] == 0, "A's worker to be free")
    after = server.stats()
    assert after["requests"]["cancelled"] == before["requests"]["cancelled"] + 2
    assert after["tokens_generated"] - before["tokens_generated"] < MAX_MAX_TOKENS / 2, "A's generation was not stopped"
    assert freed < 5
    start = time.time()
    r = server.client().chat.completions.create(model=MODEL, messages=[USER], max_tokens=5)
    assert r.usage.completion_tokens == 5 and time.time() - start < 10
    assert "499 stream" in server.log.read_text()  # the log line of a request whose client left


# ---- the UI in a real browser ----


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_ui_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, args=args,
                                                       headless=True, viewport={"width": 390, "height": 800})
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(server.url + "/")
            expect(page.locator("#model")).to_have_text("nanochat-sft-d1")
            page.fill("#input", "hello there")
            page.press("#input", "Enter")
            expect(page.locator(".msg.user .bubble")).to_have_text("hello there")
            expect(page.locator("body")).to_have_attribute("data-busy", "false", timeout=30_000)
            replies = page.locator(".msg.assistant .bubble")
            expect(replies).to_have_count(1)
            first = replies.first.text_content()
            assert first
            expect(page.locator(".msg.assistant .meta")).to_contain_text("tokens")

            page.click("button.regenerate")
            expect(page.locator("body")).to_have_attribute("data-busy", "false", timeout=30_000)
            expect(replies).to_have_count(1)  # replaced, not added
            assert replies.first.text_content()

            # Shift+Enter is a new line, not a send
            page.fill("#input", "two")
            page.press("#input", "Shift+Enter")
            page.type("#input", "lines")
            assert page.input_value("#input") == "two\nlines"
            page.press("#input", "Enter")
            expect(page.locator("body")).to_have_attribute("data-busy", "false", timeout=30_000)
            expect(page.locator(".msg.user")).to_have_count(2)
            expect(replies).to_have_count(2)

            # editing the first message cuts the conversation there and answers it again
            page.locator(".msg.user button.edit").first.click()
            page.fill(".edit-box textarea", "edited question")
            page.click(".edit-box button.save")
            expect(page.locator("body")).to_have_attribute("data-busy", "false", timeout=30_000)
            expect(page.locator(".msg.user .bubble")).to_have_text(["edited question"])
            expect(replies).to_have_count(1)
            page.screenshot(path=str(tmp_path / "ui.png"))

            # Stop (the send button while busy) ends a long reply and frees the server's worker
            page.click("#settings summary")
            page.fill("#max_tokens", str(MAX_MAX_TOKENS))
            page.fill("#input", "a long one")
            page.press("#input", "Enter")
            expect(replies.last).not_to_have_text("", timeout=30_000)
            expect(page.locator("#send")).to_have_text("Stop")
            page.click("#send")
            expect(page.locator("body")).to_have_attribute("data-busy", "false")
            expect(page.locator(".msg.assistant .meta").last).to_contain_text("stopped")
            wait_for(lambda: server.stats()["workers"]["busy"] == 0, "the stopped reply's worker to be free")

            page.click("#new")
            expect(page.locator(".msg")).to_have_count(0)
            assert all(u.startswith((server.url, "data:")) for u in requests), requests
        finally:
            browser.close()


def test_missing_checkpoint_exits_with_one_clear_line(tmp_path):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "scripts.chat_web", "-i", "rl", "--device_type", "cpu", "--port", "1"],
                            check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "chatrl_checkpoints" in result.stderr


@pytest.fixture
def tiny_app(tiny_tokenizer):
    """
    In-process (no subprocess needed): the app over a model whose context is 40 tokens, served
    as "nanochat-tiny", whose replies run to max_tokens (a zero head: uniform logits, greedy
    decoding never picks a stop token). Server default --max_tokens=100, past the context.
    """
    import contextlib

    import torch
    from fastapi.testclient import TestClient

    from nanochat.engine import Engine
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.chat import LoadedModel
    from nanochat.serving import Settings, Worker
    from scripts.chat_web import create_app

    model = GPT(GPTConfig(sequence_len=40, vocab_size=tiny_tokenizer.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1, n_embd=8))
    model.init_weights()
    loaded = LoadedModel(model, tiny_tokenizer, {}, "nanochat-tiny", torch.device("cpu"), contextlib.nullcontext)
    settings = Settings(temperature=0.0, top_k=50, max_tokens=100, max_messages=10, max_message_chars=1000,
                        max_conversation_chars=1000, max_max_tokens=100)
    with TestClient(create_app([Worker(0, loaded, Engine(model, tiny_tokenizer))], settings, "nanochat-tiny")) as client:
        yield client


HI = [{"role": "user", "content": "hi"}]


def test_conversation_over_the_models_context_is_refused(tiny_app):
    context = 40  # what it was trained for; its rotary tables hold 400 positions, which issue 16 found used instead
    r = tiny_app.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "0123456789" * 10}]})
    assert r.status_code == 400
    assert f"but the model's context holds {context}; shorten it or start a new conversation" in r.json()["error"]["message"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_openai_max_tokens_past_the_context_is_a_400_with_the_numbers(tiny_app, tiny_tokenizer, field):
    prompt = prompt_length(tiny_tokenizer, HI)
    r = tiny_app.post("/v1/chat/completions", json={"messages": HI, field: 100})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "max_tokens" and error["type"] == "invalid_request_error"
    assert (f"maximum context length is 40 tokens, but you requested {prompt + 100} tokens ({prompt} in the messages, "
            "100 in the completion)") in error["message"]
    # exactly what fits is served, to the last token of the context
    r = tiny_app.post("/v1/chat/completions", json={"messages": HI, field: 40 - prompt})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 40 - prompt


def test_without_max_tokens_the_reply_runs_to_the_end_of_the_context(tiny_app, tiny_tokenizer):
    prompt = prompt_length(tiny_tokenizer, HI)
    for path in ("/v1/chat/completions", "/chat/completions"):
        r = tiny_app.post(path, json={"messages": HI})
        assert r.status_code == 200, r.text
    body = tiny_app.post("/v1/chat/completions", json={"messages": HI}).json()
    assert body["usage"]["completion_tokens"] == 40 - prompt and body["choices"][0]["finish_reason"] == "length"
    # the UI's own endpoint keeps cutting an asked-for length at the context (its slider can ask for more)
    events = sse_events(tiny_app.post("/chat/completions", json={"messages": HI, "max_tokens": 100}).text.splitlines())
    assert events[-1]["completion_tokens"] == 40 - prompt


def test_an_unknown_model_is_a_404_as_openai_answers(tiny_app):
    r = tiny_app.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "max_tokens": 2})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "`gpt-4o` does not exist" in error["message"] and "nanochat-tiny" in error["message"]
    for body in ({"model": "nanochat-tiny", "messages": HI, "max_tokens": 2}, {"messages": HI, "max_tokens": 2}):
        r = tiny_app.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.json()["model"] == "nanochat-tiny"


REFUSED = {
    "top_p": 0.9, "logprobs": True, "top_logprobs": 3, "frequency_penalty": 0.5, "presence_penalty": -1,
    "logit_bias": {"17": 5}, "response_format": {"type": "json_object"}, "tools": [{"type": "function"}],
    "functions": [{"name": "f"}], "tool_choice": "auto", "function_call": "auto", "modalities": ["text", "audio"],
    "audio": {"voice": "alloy"}, "prediction": {"type": "content", "content": "x"},
}


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_parameters_it_cannot_honour_are_refused_by_name(tiny_app, field):
    r = tiny_app.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, field: REFUSED[field]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"'{field}' is not supported: ")


def test_their_default_values_and_bookkeeping_fields_are_accepted(tiny_app, monkeypatch):
    import scripts.chat_web as chat_web

    warnings = []
    monkeypatch.setattr(chat_web.logger, "warning", lambda message, *args: warnings.append(message % args))
    defaults = {"top_p": 1, "logprobs": False, "top_logprobs": None, "frequency_penalty": 0, "presence_penalty": 0.0,
                "logit_bias": {}, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                "modalities": ["text"], "user": "u-1", "metadata": {"k": "v"}, "store": False,
                "parallel_tool_calls": True, "service_tier": "auto"}
    r = tiny_app.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, **defaults})
    assert r.status_code == 200, r.text
    assert warnings == []
    r = tiny_app.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, "top_p": 1.0, "some_new_field": 1})
    assert r.status_code == 200, r.text
    assert warnings == ["ignored unknown request fields: some_new_field"]
    # JSON's true is not the number 1
    r = tiny_app.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, "frequency_penalty": False})
    assert r.status_code == 400


@pytest.mark.parametrize("body,param,message", [
    ({"messages": HI, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
     "stream_options.include_usage must be true or false, got \"yes\" (string)"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}, "messages[0].content[0].text",
     "messages[0].content[0].text must be a string, got number"),
    ({"messages": HI, "top_k": 1e999}, "top_k", "'top_k' must be an integer from 1 to 200 (0: no top-k), got Infinity (number)"),
])
def test_a_body_the_models_refuse_is_a_400_naming_the_field(tiny_app, body, param, message):
    # the request bodies are pydantic models; their errors read as a sentence, with the field as `param`
    r = tiny_app.post("/v1/chat/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": None}


def test_each_request_logs_one_line_and_a_refusal_says_why(tiny_app, monkeypatch):
    import nanochat.serving as serving

    lines = []
    monkeypatch.setattr(serving.logger, "info", lambda message, *args: lines.append(message % args))
    tiny_app.post("/v1/chat/completions", json={"messages": []})
    tiny_app.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
    tiny_app.get("/health")
    assert len(lines) == 3, lines
    assert lines[0].startswith("POST /v1/chat/completions 400 ") and lines[0].endswith(": 'messages' is empty; send at least one user message")
    # a generation logs its own line, with its tokens, instead of the request log's
    assert lines[1].startswith("POST /v1/chat/completions 200 - prompt=") and "completion=2 finish=length" in lines[1]
    assert lines[2].startswith("GET /health 200 ")
