"""
Serving chat replies over HTTP from a pool of model workers: the machinery under
scripts/chat_web.py, whose own file keeps the API itself (request bodies, routes, flags).

A request body is read defensively (size, time and nesting limits: anyone who can reach the
port can send one), checked by the script's pydantic models, and refused as a BadRequest whose
message says what to fix; `explain` words a pydantic error that way, naming the field.

An accepted request is a ChatRequest, and a Generation runs it: it waits in the WorkerPool's
queue for a free worker (one model replica per GPU), generates on that worker's own thread
(torch releases the GIL in its kernels) and hands each piece of text to the event loop. A
client that goes away, while queued or mid-reply, stops its generation at the next token, and
the worker is free again as soon as its thread stops. The reply goes back as the UI's
server-sent events (UIEvents) or OpenAI's chunks or whole body (OpenAIChunks).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Discriminator, StrictStr, Tag, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nanochat.chat import LoadedModel, Reply, load_chat_model, stream_reply
from nanochat.common import logger
from nanochat.engine import Engine

MAX_JSON_DEPTH = 64  # a chat request is 4 levels deep; deeper bodies are refused, not recursed into
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


# ---- what a request may ask, and refusing it in words ----


@dataclass(frozen=True)
class Settings:
    """The server's defaults and limits (from the flags)."""

    temperature: float
    top_k: int
    max_tokens: int
    max_messages: int
    max_message_chars: int
    max_conversation_chars: int
    max_max_tokens: int
    body_timeout: float = 10.0  # seconds a client has to send its whole request body

    @property
    def max_body_bytes(self) -> int:
        # JSON escapes can make a character six bytes (\uXXXX); anything larger cannot pass the limits
        return 6 * self.max_conversation_chars + 256 * self.max_messages + 65536


@dataclass
class ChatRequest:
    """One generation, as asked for, with the server's defaults filled in."""

    messages: list[dict[str, str]]  # roles checked, content joined into a str
    temperature: float
    top_k: int | None  # None: no top-k
    max_tokens: int
    seed: int
    stream: bool = False
    model: str | None = None
    include_usage: bool = False
    max_tokens_asked: bool = False  # the client set max_tokens (or max_completion_tokens) itself


class BadRequest(Exception):
    """A request we refuse, with a message for the person who sent it."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, close: bool = False,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code
        self.close = close  # the body was not read to its end: the connection cannot carry another request


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which its clients turn into an exception carrying the message."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def read_json(request: Request, settings: Settings) -> Any:
    """The request body as JSON, refusing a body that is oversized, too slow to arrive, or nested too deeply."""
    raw = await _read_body(request, settings.max_body_bytes, settings.body_timeout)
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object like {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}")
    too_deep = BadRequest(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8 text") from None
    except RecursionError:  # the parser's own recursion limit, around 1000 levels
        raise too_deep from None
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise too_deep
    return body


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    too_big = BadRequest(f"the request body is over {limit} bytes; the conversation cannot fit the server's limits",
                         status=413, close=True)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:  # refused before a byte of it is read
        raise too_big

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    try:  # a client that announces a body and stalls must not hold its connection forever
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(f"the request body did not arrive within {timeout:g} s", status=408, close=True) from None


def _json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:  # deeper is refused anyway
                stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def describe(value: Any) -> str:
    """A value as JSON, cut short, to quote back in an error."""
    text = json.dumps(value)  # ASCII: a lone surrogate quoted back cannot break the response's encoding
    return f"{text[:40]}..." if len(text) > 40 else text


# The request models' own checks raise these two pydantic error types: a "problem" reads after the field's
# name ("messages[0].content" + " is empty"), a "refusal" is a whole sentence with the param in its ctx.
def problem(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("problem", message, ctx)


def refusal(message: str, param: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("refusal", message, {**ctx, "param": param})


class TextPart(BaseModel):
    """One part of OpenAI's list-of-parts content."""

    type: str
    text: StrictStr

    @model_validator(mode="before")
    @classmethod
    def only_text(cls, part: Any) -> Any:
        if isinstance(part, dict) and part.get("type") != "text":
            raise problem('has type {type}; only "text" parts are supported', type=describe(part.get("type")))
        return part


# A message's content: a string, or a list of text parts. The discriminator makes anything else one
# clear error rather than one per union member; pydantic puts the branch's tag in an error's location.
CONTENT_TAGS = ("str", "parts")
Content = Annotated[
    Annotated[StrictStr, Tag("str")] | Annotated[list[TextPart], Tag("parts")],
    Discriminator(lambda v: "str" if isinstance(v, str) else "parts" if isinstance(v, list) else None,
                  custom_error_type="content_type", custom_error_message="not a string or a list of text parts"),
]

# what each pydantic type error expects, in words
EXPECTED = {"float_type": "a number", "finite_number": "a number", "int_type": "an integer", "bool_type": "true or false",
            "string_type": "a string", "dict_type": "an object", "model_type": "an object", "list_type": "an array",
            "content_type": "a string or a list of text parts"}
VALUE_SHOWN = {"float_type", "finite_number", "int_type", "bool_type"}  # scalars are quoted back; structures named


def explain(error: ErrorDetails, body_model: type[BaseModel]) -> BadRequest:
    """
    A pydantic validation error as the 400 a person can act on: what is wrong, where, and what
    was sent. A top-level field's description, when it has one, is the range its errors quote.
    """
    loc = [x for x in error["loc"] if x not in CONTENT_TAGS]
    param = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or None
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "refusal":
        return BadRequest(error["msg"], ctx["param"])
    where = f"'{param}'" if len(loc) == 1 else param or "the request body"
    field_info = body_model.model_fields.get(loc[0]) if len(loc) == 1 else None
    what = f" {field_info.description}" if field_info is not None and field_info.description else ""
    if kind == "problem":
        message = f"{where} {error['msg']}"
    elif kind == "missing":
        message = f"{where} is required" if len(loc) == 1 else f"{where.rsplit('.', 1)[0]} has no '{loc[-1]}'"
    elif kind in ("greater_than_equal", "less_than_equal"):
        message = f"{where} must be{what}, got {describe(value)}"
    elif kind == "too_short":
        message = f"{where} is empty; send at least one user message"
    elif kind == "too_long":
        message = f"too many {loc[-1]}: {ctx['actual_length']} (the limit is {ctx['max_length']}); start a new conversation"
    elif kind == "literal_error":
        message = f"{where} is {describe(value)}; it must be one of {ctx['expected']}"
    elif kind in EXPECTED:
        expected = "a JSON object" if not loc else f"an array of {loc[-1]}" if kind == "list_type" else EXPECTED[kind]
        got = f"{describe(value)} ({json_type(value)})" if kind in VALUE_SHOWN else json_type(value)
        message = f"{where} must be {expected}{what}, got {got}"
    else:
        message = f"{where}: {error['msg']}"
    return BadRequest(message, param)


# ---- workers and generation ----


@dataclass
class Worker:
    """One model replica and its engine; it generates one reply at a time."""

    index: int
    loaded: LoadedModel
    engine: Engine


def load_workers(source: str, devices: list[torch.device], dtype: str, model_tag: str | None,
                 step: int | None) -> list[Worker]:
    """One worker per device, each with its own copy of the stage's checkpoint."""
    workers = []
    for i, device in enumerate(devices):
        loaded = load_chat_model(source, device, dtype, model_tag, step)
        workers.append(Worker(i, loaded, Engine(loaded.model, loaded.tokenizer)))
    return workers


class WorkerPool:
    """Free workers wait in a queue; a request takes one, generates, and puts it back."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.free: asyncio.Queue[Worker] = asyncio.Queue()
        for w in workers:
            self.free.put_nowait(w)
        # one thread per worker, so a generation never waits for a thread
        self.executor = ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="generate")
        self.waiting = 0  # requests queued for a worker

    @property
    def busy(self) -> int:
        return len(self.workers) - self.free.qsize()

    async def acquire(self, request: Request) -> Worker | None:
        """The next free worker, or None when the client went away while it waited."""
        getter = asyncio.ensure_future(self.free.get())
        self.waiting += 1
        handed_over = False
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=0.25)
                if done:
                    handed_over = True
                    return getter.result()
                if await request.is_disconnected():
                    return None
        finally:
            self.waiting -= 1
            if not handed_over:  # cancelled or disconnected: never lose a worker taken at the last moment
                if getter.done() and not getter.cancelled():
                    self.free.put_nowait(getter.result())
                else:
                    getter.cancel()


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    completed: int = 0
    cancelled: int = 0  # the client left before the reply was done
    failed: int = 0
    rejected: int = 0  # 4xx
    prompt_tokens: int = 0
    tokens_generated: int = 0


class GenerationFailed(Exception):
    """The model raised while writing a reply; the message is the exception's."""


class ServerState:
    """What every request shares: the worker pool, the limits, the counters, the shutdown flag."""

    def __init__(self, workers: list[Worker], settings: Settings, model_name: str) -> None:
        self.pool = WorkerPool(workers)
        self.settings = settings
        self.model_name = model_name
        self.tokenizer = workers[0].loaded.tokenizer
        # the context the model was trained on: its rotary tables are longer, but past this it writes noise
        self.context = workers[0].loaded.model.config.sequence_len
        self.stats = Stats()
        self.stopping = threading.Event()  # set at shutdown: every generation stops at its next token

    def job_finished(self, worker: Worker, reply: Reply) -> None:
        """Called on the event loop when a worker's thread has stopped: the worker is free again."""
        self.stats.tokens_generated += reply.completion_tokens
        self.pool.free.put_nowait(worker)

    def shutdown(self) -> None:
        self.stopping.set()
        self.pool.executor.shutdown(wait=True)


Outcome = Literal["ok", "failed", "disconnected"]


class Generation:
    """One request's reply: waits for a worker, streams its text, stops it if the client leaves, logs one line."""

    def __init__(self, state: ServerState, request: Request, chat: ChatRequest, prompt: list[int]) -> None:
        self.state, self.request, self.chat, self.prompt = state, request, chat, prompt
        self.reply = Reply()
        self.outcome: Outcome = "disconnected"  # until it finishes or fails
        self.started = time.perf_counter()
        self.queued_s = 0.0
        self.worker: Worker | None = None

    async def run(self) -> AsyncIterator[str]:
        """The reply's text pieces. Raises GenerationFailed; ends early (quietly) if the client leaves."""
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        try:
            self.worker = await self.state.pool.acquire(self.request)
            self.queued_s = time.perf_counter() - self.started
            if self.worker is None:
                return
            self._start_thread(self.worker, events, cancel)
            while True:
                kind, value = await events.get()
                if kind == "done":
                    self.outcome = "ok"
                    return
                if kind == "error":
                    self.outcome = "failed"
                    raise GenerationFailed(value)
                yield value
                if await self.request.is_disconnected():
                    return
        finally:
            # no awaiting here: this also runs when the stream is cancelled because the client left
            cancel.set()
            self._finish()

    def _start_thread(self, worker: Worker, events: asyncio.Queue, cancel: threading.Event) -> None:
        """Generate on the worker's thread, posting ("text", piece), then ("done", None) or ("error", why)."""
        loop = asyncio.get_running_loop()
        state, chat, reply = self.state, self.chat, self.reply

        def call_on_loop(*call: Any) -> None:
            try:
                loop.call_soon_threadsafe(*call)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass

        def work() -> None:
            if worker.loaded.device.type == "cuda":  # the current CUDA device is per thread
                torch.cuda.set_device(worker.loaded.device)
            pieces = stream_reply(worker.engine, self.prompt, reply, chat.max_tokens, chat.temperature, chat.top_k, chat.seed)
            try:
                with worker.loaded.autocast():
                    for piece in pieces:
                        if cancel.is_set() or state.stopping.is_set():
                            return
                        if piece:
                            call_on_loop(events.put_nowait, ("text", piece))
                call_on_loop(events.put_nowait, ("done", None))
            except Exception as e:  # reported to the client; the worker goes on serving
                logger.exception("generation failed on worker %d", worker.index)
                call_on_loop(events.put_nowait, ("error", f"{type(e).__name__}: {e}"))
            finally:
                pieces.close()
                call_on_loop(state.job_finished, worker, reply)

        loop.run_in_executor(state.pool.executor, work)

    def _timing(self) -> tuple[float, float]:
        """Seconds since the request arrived, and the reply's tokens per second from when it got a worker."""
        seconds = time.perf_counter() - self.started
        return seconds, self.reply.completion_tokens / max(seconds - self.queued_s, 1e-9)

    def _finish(self) -> None:
        """Count the request and log its line (the request log skips generations: only here are the tokens known)."""
        stats = self.state.stats
        if self.outcome == "ok":
            stats.completed += 1
        elif self.outcome == "failed":
            stats.failed += 1
        else:
            stats.cancelled += 1
        stats.prompt_tokens += len(self.prompt)
        seconds, rate = self._timing()
        status = {"ok": 200, "failed": 500, "disconnected": 499}[self.outcome]
        what = f"finish={self.reply.finish_reason}" if self.outcome == "ok" else self.outcome
        logger.info("%s %s %d %s prompt=%d completion=%d %s %.2fs (queued %.2fs, %.1f tok/s) worker=%s",
                    self.request.method, self.request.url.path, status, "stream" if self.chat.stream else "-",
                    len(self.prompt), self.reply.completion_tokens, what, seconds, self.queued_s, rate,
                    self.worker.index if self.worker else "-")

    def usage(self) -> dict[str, int]:
        n = self.reply.completion_tokens
        return {"prompt_tokens": len(self.prompt), "completion_tokens": n, "total_tokens": len(self.prompt) + n}

    def summary(self) -> dict[str, Any]:
        seconds, rate = self._timing()
        return {"finish_reason": self.reply.finish_reason, "prompt_tokens": len(self.prompt),
                "completion_tokens": self.reply.completion_tokens, "seconds": round(seconds, 3),
                "tokens_per_second": round(rate, 1)}


# ---- the reply, in the UI's format or OpenAI's ----


def sse(data: Any) -> bytes:
    """One server-sent event carrying `data` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


class UIEvents:
    """The UI's stream: {"token": text} per piece, then {"done": true, ...summary}, or {"error": ...}."""

    def start(self) -> list[bytes]:
        return []

    def piece(self, text: str) -> bytes:
        return sse({"token": text})

    def failed(self, message: str) -> bytes:
        return sse({"error": message})

    def done(self, gen: Generation) -> list[bytes]:
        return [sse({"done": True, **gen.summary()})]


class OpenAIChunks:
    """OpenAI's chat.completion.chunk stream (a role, content deltas, the finish reason, usage, [DONE]) and its whole-reply body."""

    def __init__(self, model: str, chat: ChatRequest) -> None:
        self.model, self.include_usage = model, chat.include_usage
        self.id, self.created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": choices, **extra})

    def _delta(self, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def start(self) -> list[bytes]:
        return [self._delta({"role": "assistant", "content": ""})]

    def piece(self, text: str) -> bytes:
        return self._delta({"content": text})

    def failed(self, message: str) -> bytes:
        return sse(error_body(message, "server_error"))

    def done(self, gen: Generation) -> list[bytes]:
        usage = [self._chunk([], usage=gen.usage())] if self.include_usage else []
        return [self._delta({}, gen.reply.finish_reason), *usage, b"data: [DONE]\n\n"]

    def completion(self, text: str, gen: Generation) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": gen.reply.finish_reason}],
                "usage": gen.usage()}


def sse_response(gen: Generation, events: UIEvents | OpenAIChunks) -> StreamingResponse:
    """The reply as server-sent events, piece by piece as the worker writes them."""

    async def stream() -> AsyncIterator[bytes]:
        for event in events.start():
            yield event
        try:
            async for piece in gen.run():
                yield events.piece(piece)
        except GenerationFailed as e:  # the 200 is already sent: the failure is the stream's last event
            yield events.failed(f"generation failed: {e}")
            return
        if gen.outcome == "ok":
            for event in events.done(gen):
                yield event

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


async def completion_response(gen: Generation, chunks: OpenAIChunks) -> Response:
    """The whole reply as one chat.completion body, once the worker has written it."""
    try:
        text = "".join([piece async for piece in gen.run()])
    except GenerationFailed as e:
        return JSONResponse(error_body(f"generation failed: {e}", "server_error"), status_code=500)
    if gen.outcome != "ok":  # the client left; nobody reads this
        return Response(status_code=499)
    return JSONResponse(chunks.completion(text, gen))


# ---- the request log ----


class RequestLog:
    """
    ASGI middleware: one log line per request, with the reason of a refusal (an exception
    handler puts it in the scope as "nanochat.error"). A generation that got under way (a 200
    on one of `self_logged`) logs its own line when it ends, with its tokens, so it is skipped.
    """

    def __init__(self, app: ASGIApp, self_logged: tuple[str, ...] = ()) -> None:
        self.app, self.self_logged = app, self_logged

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not (scope["path"] in self.self_logged and status == 200):
                error = scope.get("nanochat.error")
                logger.info("%s %s %d %.3fs%s", scope["method"], scope["path"], status, time.perf_counter() - started,
                            f": {error}" if error else "")
