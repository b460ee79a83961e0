"""
Serve a chat model over HTTP: a single-page chat UI and an OpenAI-compatible API.

    python -m scripts.chat_web -i sft                    # http://127.0.0.1:8000
    python -m scripts.chat_web -i sft --num_gpus=8 --host=0.0.0.0

Endpoints:
    GET  /                     the chat UI (nanochat/ui.html; nothing loaded from outside the machine)
    POST /chat/completions     the UI's endpoint: {"messages", "temperature"?, "top_k"?, "max_tokens"?, "seed"?}
                               → server-sent events `data: {"token": "..."}` ..., then `data: {"done": true, ...}`
    POST /v1/chat/completions  OpenAI-compatible, streaming (`"stream": true`) or not
    GET  /v1/models            the one model served, e.g. nanochat-sft-d20
    GET  /health               {"status": "ok", "ready": true, "workers": N}
    GET  /stats                workers total/busy, requests, tokens generated, uptime

Every bad request gets a 4xx JSON error {"error": {"message", "type", "param"}} saying what is
wrong, hostile ones included: a body nested more than 64 levels deep is a 400, one that does not
arrive within --body_timeout seconds a 408 (and the connection is closed), and a prompt must fit
the context the model was trained on (`sequence_len`), where its reply also stops.

The OpenAI endpoint behaves as vLLM's does where the two could differ: a prompt plus an asked-for
`max_tokens` beyond the model's context is a 400 that gives the numbers (with no `max_tokens`
the reply may run to the end of the context, or --max_tokens, whichever is first); a `model`
other than the one served is a 404 `model_not_found` (no `model` at all means the one served).
Sampling is temperature plus top-k (`top_k` is an extension) and a `seed`. Parameters it cannot
honour are refused with a 400 naming them unless they ask for the default behaviour: `top_p`
(except 1), `logprobs` (except false), `top_logprobs`, `frequency_penalty` and
`presence_penalty` (except 0), `logit_bias` (except {}), `response_format` (except text),
`tools`/`functions` (except empty) and `tool_choice`/`function_call` (except "none"), `n`
other than 1, `stop` sequences. Bookkeeping fields (`user`, `metadata`, `store`,
`service_tier`, `parallel_tool_calls`) change nothing and are accepted; any other unknown field
is ignored with a warning in the server's log. A system message (or OpenAI's "developer") is
merged into the first user message, as the tokenizer renders it.

Workers: one model replica per GPU (one on CPU or MPS). A request waits for a free worker,
which generates in its own thread (torch releases the GIL in its kernels) and hands each
piece of text to the event loop. A client that goes away, while queued or mid-reply, stops
its generation at the next token, and the worker is free again as soon as its thread stops.

Replies are text: tool calls show inline as `[python: 3*4+1 → 13]` (nanochat.chat). An
assistant message sent back in a later turn is taken as plain text.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictStr, Tag, ValidationError,
                      field_validator, model_validator)
from pydantic_core import ErrorDetails, PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanochat.chat import LoadedModel, Reply, load_chat_model, prompt_for, stream_reply
from nanochat.common import autodetect_device_type, compute_init, logger, run_main
from nanochat.engine import Engine
from scripts.flags import ArgumentParser, add_chat_args, check_sampling_args
from tasks.common import validate_messages

GENERATION_PATHS = ("/chat/completions", "/v1/chat/completions")
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 200
MAX_JSON_DEPTH = 64  # a chat request is 4 levels deep; deeper bodies are refused, not recursed into
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


# ---- request bodies ----


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


class BadRequest(Exception):
    """A request we refuse, with a message for the person who sent it."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, close: bool = False,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code
        self.close = close  # the body was not read to its end: the connection cannot carry another request


# OpenAI parameters this server cannot honour: accepted only at the value that asks for nothing
# (the default), refused otherwise, so no reply silently ignores what its client asked for
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "top_p": (1, "nucleus sampling is not implemented (sampling is temperature plus top_k); omit 'top_p' or send 1"),
    "logprobs": (False, "log probabilities are not returned; omit 'logprobs' or send false"),
    "top_logprobs": (None, "log probabilities are not returned; omit 'top_logprobs'"),
    "frequency_penalty": (0, "repetition penalties are not implemented; omit 'frequency_penalty' or send 0"),
    "presence_penalty": (0, "repetition penalties are not implemented; omit 'presence_penalty' or send 0"),
    "logit_bias": ({}, "'logit_bias' is not implemented; omit it"),
    "response_format": ({"type": "text"}, "only plain text replies: JSON mode and JSON schemas are not supported; "
                                          "omit 'response_format' or send {\"type\": \"text\"}"),
    "tools": ([], "tool calling is not supported (the model's only tool is its built-in calculator); omit 'tools'"),
    "functions": ([], "function calling is not supported; omit 'functions'"),
    "tool_choice": ("none", "tool calling is not supported; omit 'tool_choice' or send \"none\""),
    "function_call": ("none", "function calling is not supported; omit 'function_call' or send \"none\""),
    "modalities": (["text"], "only text replies; omit 'modalities' or send [\"text\"]"),
    "audio": (None, "audio replies are not supported; omit 'audio'"),
    "prediction": (None, "predicted outputs are not supported; omit 'prediction'"),
}
# fields that change nothing a client gets back
BOOKKEEPING = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}


def _same_value(value: Any, default: Any) -> bool:
    """JSON equality: 1.0 is 1, but true is not 1 (Python's bool is an int)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return value == default


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
    if isinstance(value, list):
        return "array"
    return "object"


def _describe(value: Any) -> str:
    text = json.dumps(value)  # ASCII: a lone surrogate quoted back cannot break the response's encoding
    return f"{text[:40]}..." if len(text) > 40 else text


# Our own checks raise these two pydantic error types: a "problem" reads after the field's name
# ("messages[0].content" + " is empty"), a "refusal" is a whole sentence with the param in its ctx.
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
            raise problem('has type {type}; only "text" parts are supported', type=_describe(part.get("type")))
        return part


# a string, or a list of text parts; anything else is one clear error rather than one per union member
CONTENT_TAGS = ("str", "parts")  # the union's branch names, which pydantic puts in an error's location
Content = Annotated[
    Annotated[StrictStr, Tag("str")] | Annotated[list[TextPart], Tag("parts")],
    Discriminator(lambda v: "str" if isinstance(v, str) else "parts" if isinstance(v, list) else None,
                  custom_error_type="content_type", custom_error_message="not a string or a list of text parts"),
]


def request_models(settings: Settings) -> tuple[type[BaseModel], type[BaseModel]]:
    """
    The bodies the UI's endpoint and /v1/chat/completions accept, this server's limits as field
    constraints. A field's description is the range its errors quote; null means the default.
    """
    tokens = f"from 1 to {settings.max_max_tokens}"
    MaxTokens = Annotated[int, Field(strict=True, ge=1, le=settings.max_max_tokens)]

    class Message(BaseModel):
        role: Literal["system", "developer", "user", "assistant"]
        content: Content

        @field_validator("role")
        @classmethod
        def system(cls, role: str) -> str:
            return "system" if role == "developer" else role  # OpenAI's newer name for the system role

        @field_validator("content")
        @classmethod
        def text(cls, content: str | list[TextPart]) -> str:
            text = content if isinstance(content, str) else "\n".join(part.text for part in content)
            if not text.strip():
                raise problem("is empty")
            if len(text) > settings.max_message_chars:
                raise problem("is {n} characters; the limit is {limit}", n=len(text), limit=settings.max_message_chars)
            return text

    class ChatBody(BaseModel):
        """The UI's request; its unknown fields are ignored."""

        messages: Annotated[list[Message], Field(min_length=1, max_length=settings.max_messages)]
        temperature: Annotated[float, Field(strict=True, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)] | None = \
            Field(None, description=f"from 0 to {MAX_TEMPERATURE:g}")
        top_k: Annotated[int, Field(strict=True, ge=0, le=MAX_TOP_K)] | None = \
            Field(None, description=f"from 1 to {MAX_TOP_K} (0: no top-k)")
        max_tokens: MaxTokens | None = Field(None, description=tokens)
        seed: Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)] | None = Field(None, description="from 0 to 2^63-1")

        @model_validator(mode="after")
        def conversation(self) -> ChatBody:
            """Within the size limit; an optional system message, then user and assistant turns ending with user."""
            total = sum(len(m.content) for m in self.messages)
            if total > settings.max_conversation_chars:
                raise refusal("the conversation is {total} characters; the limit is {limit} (start a new conversation "
                              "or shorten it)", "messages", total=total, limit=settings.max_conversation_chars)
            try:
                validate_messages([m.model_dump() for m in self.messages], last="user")
            except ValueError as e:
                raise refusal("{reason}", "messages", reason=str(e)) from None
            return self

    class OpenAIBody(ChatBody):
        """/v1/chat/completions: OpenAI's fields too; unknown ones are kept to be logged."""

        model_config = ConfigDict(extra="allow")
        max_completion_tokens: MaxTokens | None = Field(None, description=tokens)  # OpenAI's newer name: it wins
        n: Annotated[int, Field(strict=True, ge=1, le=1)] | None = Field(None, description="1 (one choice per request)")
        stream: StrictBool | None = None
        stream_options: StreamOptions | None = None
        model: StrictStr | None = None
        stop: Any = None
        top_p: Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)] | None = \
            Field(None, description="from 0 to 1")

        @model_validator(mode="after")
        def honoured(self) -> OpenAIBody:
            """Refuse what this server cannot do, by name, unless it asks for the default."""
            asked = {**(self.model_extra or {}), "top_p": self.top_p}
            for name, (default, why) in UNSUPPORTED.items():
                value = asked.get(name)
                if value is not None and not _same_value(value, default):
                    raise refusal("'{name}' is not supported: {why} (got {got})", name, name=name, why=why,
                                  got=_describe(value))
            if self.stop not in (None, [], ""):
                raise refusal("'stop' sequences are not supported; the model stops at the end of its turn", "stop")
            unknown = sorted(set(self.model_extra or {}) - BOOKKEEPING - set(UNSUPPORTED))
            if unknown:  # as vLLM does: a newer client's extra fields are ignored, and the log says which
                logger.warning("ignored unknown request fields: %s", ", ".join(unknown))
            return self

    return ChatBody, OpenAIBody


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


# what each pydantic type error expects, in words
EXPECTED = {"float_type": "a number", "finite_number": "a number", "int_type": "an integer", "bool_type": "true or false",
            "string_type": "a string", "dict_type": "an object", "model_type": "an object", "list_type": "an array",
            "content_type": "a string or a list of text parts"}
VALUE_SHOWN = {"float_type", "finite_number", "int_type", "bool_type"}  # scalars are quoted back; structures named


def explain(error: ErrorDetails, body_model: type[BaseModel]) -> BadRequest:
    """A pydantic validation error as the 400 a person can act on: what is wrong, where, and what was sent."""
    loc = [x for x in error["loc"] if x not in CONTENT_TAGS]
    param = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or None
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "refusal":
        return BadRequest(error["msg"], ctx["param"])
    where = f"'{param}'" if len(loc) == 1 else param or "the request body"
    field = body_model.model_fields.get(loc[0]) if len(loc) == 1 else None
    what = f" {field.description}" if field is not None and field.description else ""
    if kind == "problem":
        message = f"{where} {error['msg']}"
    elif kind == "missing":
        message = f"{where} is required" if len(loc) == 1 else f"{where.rsplit('.', 1)[0]} has no '{loc[-1]}'"
    elif kind in ("greater_than_equal", "less_than_equal"):
        message = f"{where} must be{what}, got {_describe(value)}"
    elif kind == "too_short":
        message = f"{where} is empty; send at least one user message"
    elif kind == "too_long":
        message = f"too many {loc[-1]}: {ctx['actual_length']} (the limit is {ctx['max_length']}); start a new conversation"
    elif kind == "literal_error":
        message = f"{where} is {_describe(value)}; it must be one of {ctx['expected']}"
    elif kind in EXPECTED:
        expected = "a JSON object" if not loc else f"an array of {loc[-1]}" if kind == "list_type" else EXPECTED[kind]
        got = f"{_describe(value)} ({json_type(value)})" if kind in VALUE_SHOWN else json_type(value)
        message = f"{where} must be {expected}{what}, got {got}"
    else:
        message = f"{where}: {error['msg']}"
    return BadRequest(message, param)


def parse_chat_request(body: Any, model: type[BaseModel], settings: Settings) -> ChatRequest:
    """The generation a body asks for, with the server's defaults where it asks nothing; BadRequest otherwise."""
    try:
        parsed = model.model_validate(body)
    except ValidationError as e:
        raise explain(e.errors()[0], model) from None  # the first problem, as a person fixes them one by one
    asked = getattr(parsed, "max_completion_tokens", None) or parsed.max_tokens
    options = getattr(parsed, "stream_options", None)
    return ChatRequest(
        messages=[{"role": m.role, "content": m.content} for m in parsed.messages],
        temperature=float(settings.temperature if parsed.temperature is None else parsed.temperature),
        top_k=(settings.top_k if parsed.top_k is None else parsed.top_k) or None,
        max_tokens=asked or settings.max_tokens,
        seed=secrets.randbits(63) if parsed.seed is None else parsed.seed,  # no seed: a fresh one, so regenerating differs
        stream=bool(getattr(parsed, "stream", True)),  # the UI's endpoint always streams
        model=getattr(parsed, "model", None),
        include_usage=options is not None and options.include_usage,
        max_tokens_asked=asked is not None,
    )


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]  # roles checked, content joined into a str
    temperature: float
    top_k: int | None  # None: no top-k
    max_tokens: int
    seed: int
    stream: bool = False
    model: str | None = None
    include_usage: bool = False
    max_tokens_asked: bool = False  # the client set max_tokens (or max_completion_tokens) itself


async def read_json(request: Request, limit: int, timeout: float) -> Any:
    """The request body as JSON, refusing a body that is oversized, too slow to arrive, or nested too deeply."""
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
        raw = await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(f"the request body did not arrive within {timeout:g} s", status=408, close=True) from None
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


# ---- workers and generation ----


@dataclass
class Worker:
    index: int
    loaded: LoadedModel
    engine: Engine


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
    pass


class ServerState:
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


class Generation:
    """One request's reply: waits for a worker, streams its text, stops it if the client leaves, logs one line."""

    def __init__(self, state: ServerState, request: Request, chat: ChatRequest, prompt: list[int]) -> None:
        self.state, self.request, self.chat, self.prompt = state, request, chat, prompt
        self.reply = Reply()
        self.outcome = "disconnected"  # until it finishes or fails
        self.started = time.perf_counter()
        self.queued_s = 0.0
        self.worker: Worker | None = None

    def _start_thread(self, worker: Worker, events: asyncio.Queue, cancel: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        state, chat, reply = self.state, self.chat, self.reply

        def post(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
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
                            post(("text", piece))
                post(("done", None))
            except Exception as e:  # reported to the client; the worker goes on serving
                logger.exception("generation failed on worker %d", worker.index)
                post(("error", f"{type(e).__name__}: {e}"))
            finally:
                pieces.close()
                try:
                    loop.call_soon_threadsafe(state.job_finished, worker, reply)
                except RuntimeError:
                    pass

        loop.run_in_executor(state.pool.executor, work)

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

    def _timing(self) -> tuple[float, float]:
        """Seconds since the request arrived, and the reply's tokens per second from when it got a worker."""
        seconds = time.perf_counter() - self.started
        return seconds, self.reply.completion_tokens / max(seconds - self.queued_s, 1e-9)

    def _finish(self) -> None:
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


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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


# ---- the app ----


class RequestLog:
    """One log line per request; a generation that got under way logs its own line, with its tokens, when it ends."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not (scope["path"] in GENERATION_PATHS and status == 200):
                error = scope.get("nanochat.error")
                logger.info("%s %s %d %.3fs%s", scope["method"], scope["path"], status, time.perf_counter() - started,
                            f": {error}" if error else "")


def create_app(workers: list[Worker], settings: Settings, model_name: str) -> FastAPI:
    state_holder: dict[str, ServerState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the worker queue belongs to the server's event loop, so it is made here
        state_holder["state"] = ServerState(workers, settings, model_name)
        yield
        state_holder["state"].stopping.set()
        state_holder["state"].pool.executor.shutdown(wait=True)

    app = FastAPI(title="nanochat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestLog)
    ui_html = importlib.resources.files("nanochat").joinpath("ui.html").read_text(encoding="utf-8")

    ui_body, openai_body = request_models(settings)

    def state() -> ServerState:
        return state_holder["state"]

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        state().stats.rejected += 1
        request.scope["nanochat.error"] = e.message  # for the request's log line
        return JSONResponse(error_body(e.message, param=e.param, code=e.code), status_code=e.status,
                            headers={"Connection": "close"} if e.close else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path} (see GET /v1/models, POST /v1/chat/completions)"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(e.detail)
        return JSONResponse(error_body(message, "not_found" if e.status_code == 404 else "invalid_request_error"),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    async def prepare(request: Request, openai: bool) -> tuple[ChatRequest, list[int]]:
        s = state()
        body = await read_json(request, s.settings.max_body_bytes, s.settings.body_timeout)
        chat = parse_chat_request(body, openai_body if openai else ui_body, s.settings)
        if chat.model is not None and chat.model != s.model_name:
            raise BadRequest(f"the model `{chat.model}` does not exist; this server serves `{s.model_name}` "
                             "(GET /v1/models)", "model", status=404, code="model_not_found")
        prompt = prompt_for(s.tokenizer, chat.messages)
        if len(prompt) >= s.context:
            raise BadRequest(f"the conversation is {len(prompt)} tokens, but the model's context holds {s.context}; "
                             "shorten it or start a new conversation", "messages")
        room = s.context - len(prompt)
        if openai and chat.max_tokens_asked and chat.max_tokens > room:  # vLLM's answer, rather than a shorter reply
            raise BadRequest(f"this model's maximum context length is {s.context} tokens, but you requested "
                             f"{len(prompt) + chat.max_tokens} tokens ({len(prompt)} in the messages, {chat.max_tokens} "
                             "in the completion); reduce the length of the messages or max_tokens", "max_tokens")
        chat.max_tokens = min(chat.max_tokens, room)  # the reply stops at the context's end
        return chat, prompt

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(ui_html)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "ready": True, "workers": len(state().pool.workers)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        s = state()
        return {
            "model": s.model_name,
            "workers": {"total": len(s.pool.workers), "busy": s.pool.busy, "waiting": s.pool.waiting},
            "requests": {"completed": s.stats.completed, "cancelled": s.stats.cancelled, "failed": s.stats.failed,
                         "rejected": s.stats.rejected},
            "prompt_tokens": s.stats.prompt_tokens,
            "tokens_generated": s.stats.tokens_generated,
            "uptime_seconds": round(time.time() - s.stats.started, 1),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        s = state()
        return {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": int(s.stats.started),
                                            "owned_by": "nanochat"}]}

    async def generate(request: Request, openai: bool) -> Response:
        """Both endpoints' one path: check the request, queue for a worker, stream (or collect) the reply."""
        chat, prompt = await prepare(request, openai)
        gen = Generation(state(), request, chat, prompt)
        if not chat.stream:
            pieces = []
            try:
                async for piece in gen.run():
                    pieces.append(piece)
            except GenerationFailed as e:
                return JSONResponse(error_body(f"generation failed: {e}", "server_error"), status_code=500)
            if gen.outcome != "ok":  # the client left; nobody reads this
                return Response(status_code=499)
            return JSONResponse(OpenAIChunks(state().model_name, chat).completion("".join(pieces), gen))
        events = OpenAIChunks(state().model_name, chat) if openai else UIEvents()

        async def stream() -> AsyncIterator[bytes]:
            for event in events.start():
                yield event
            try:
                async for piece in gen.run():
                    yield events.piece(piece)
            except GenerationFailed as e:
                yield events.failed(f"generation failed: {e}")
                return
            if gen.outcome == "ok":
                for event in events.done(gen):
                    yield event

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/chat/completions")
    async def ui_chat(request: Request) -> Response:
        return await generate(request, openai=False)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        return await generate(request, openai=True)

    return app


# ---- the command line ----


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Serve a nanochat model: a chat UI at / and an OpenAI-compatible API at /v1.")
    add_chat_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the server (which has no authentication) to the network")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--num_gpus", type=int, default=1, help="model replicas, one per GPU; requests go to the next free one (CPU: one)")
    p.add_argument("--max_messages", type=int, default=500, help="most messages in a conversation")
    p.add_argument("--max_message_chars", type=int, default=8000, help="most characters in one message")
    p.add_argument("--max_conversation_chars", type=int, default=32000, help="most characters in a whole conversation")
    p.add_argument("--max_max_tokens", type=int, default=4096, help="the largest max_tokens a request may ask for")
    p.add_argument("--body_timeout", type=float, default=10.0,
                   help="seconds a client has to send its request body; a slower one gets a 408 and is disconnected")
    args = p.parse_args(argv)
    check_sampling_args(p, args)
    if args.temperature > MAX_TEMPERATURE or args.top_k > MAX_TOP_K:
        p.error(f"--temperature must be at most {MAX_TEMPERATURE:g} and --top_k at most {MAX_TOP_K}")
    if args.max_tokens > args.max_max_tokens:
        p.error(f"--max_tokens ({args.max_tokens}) is over --max_max_tokens ({args.max_max_tokens})")
    for name in ("max_messages", "max_message_chars", "max_conversation_chars", "max_max_tokens", "num_gpus"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 < args.body_timeout < math.inf:
        p.error(f"--body_timeout must be a positive number of seconds, got {args.body_timeout}")

    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    if device_type == "cuda":
        if args.num_gpus > torch.cuda.device_count():
            p.error(f"--num_gpus={args.num_gpus} but torch sees {torch.cuda.device_count()} CUDA devices")
        devices = [torch.device("cuda", i) for i in range(args.num_gpus)]
    else:
        if args.num_gpus > 1:
            logger.warning("--num_gpus=%d ignored on %s: one worker", args.num_gpus, device_type)
        devices = [device]
    workers = []
    for i, d in enumerate(devices):
        loaded = load_chat_model(args.source, d, args.dtype, args.model_tag, args.step)
        workers.append(Worker(i, loaded, Engine(loaded.model, loaded.tokenizer)))
    settings = Settings(args.temperature, args.top_k, args.max_tokens, args.max_messages, args.max_message_chars,
                        args.max_conversation_chars, args.max_max_tokens, args.body_timeout)
    app = create_app(workers, settings, workers[0].loaded.name)
    logger.info("serving %s with %d worker(s) at http://%s:%d", workers[0].loaded.name, len(workers), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    run_main(main)
