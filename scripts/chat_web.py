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

Workers: one model replica per GPU (one on CPU or MPS), each generating one reply at a time on
its own thread; a client that goes away stops its generation at the next token. The machinery
(reading bodies defensively, the worker pool, generations, the two reply formats) is
nanochat.serving's; this file is the API: its request bodies, its routes, its flags.

Replies are text: tool calls show inline as `[python: 3*4+1 → 13]` (nanochat.chat). An
assistant message sent back in a later turn is taken as plain text.
"""

from __future__ import annotations

import importlib.resources
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanochat.chat import prompt_for
from nanochat.common import autodetect_device_type, compute_init, logger, run_main
from nanochat.serving import (BadRequest, ChatRequest, Content, Generation, OpenAIChunks, RequestLog, ServerState,
                              Settings, TextPart, UIEvents, Worker, completion_response, describe, error_body,
                              explain, load_workers, problem, read_json, refusal, sse_response)
from scripts.flags import ArgumentParser, add_chat_args, check_sampling_args, positive_int
from tasks.common import validate_messages

GENERATION_PATHS = ("/chat/completions", "/v1/chat/completions")
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 200


# ---- request bodies ----


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


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


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
                                  got=describe(value))
            if self.stop not in (None, [], ""):
                raise refusal("'stop' sequences are not supported; the model stops at the end of its turn", "stop")
            unknown = sorted(set(self.model_extra or {}) - BOOKKEEPING - set(UNSUPPORTED))
            if unknown:  # as vLLM does: a newer client's extra fields are ignored, and the log says which
                logger.warning("ignored unknown request fields: %s", ", ".join(unknown))
            return self

    return ChatBody, OpenAIBody


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


# ---- the app ----


def create_app(workers: list[Worker], settings: Settings, model_name: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the worker queue belongs to the server's event loop, so it is made here
        app.state.server = ServerState(workers, settings, model_name)
        yield
        app.state.server.shutdown()

    app = FastAPI(title="nanochat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestLog, self_logged=GENERATION_PATHS)
    ui_html = importlib.resources.files("nanochat").joinpath("ui.html").read_text(encoding="utf-8")
    ui_body, openai_body = request_models(settings)

    def server() -> ServerState:
        return app.state.server

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        server().stats.rejected += 1
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
        """The checked request and its prompt, which must leave the reply room in the model's context."""
        s = server()
        chat = parse_chat_request(await read_json(request, s.settings), openai_body if openai else ui_body, s.settings)
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

    async def generate(request: Request, openai: bool) -> Response:
        """Both endpoints' one path: check the request, queue for a worker, stream (or collect) the reply."""
        chat, prompt = await prepare(request, openai)
        gen = Generation(server(), request, chat, prompt)
        if not chat.stream:  # only OpenAI's endpoint can ask for a whole reply
            return await completion_response(gen, OpenAIChunks(model_name, chat))
        return sse_response(gen, OpenAIChunks(model_name, chat) if openai else UIEvents())

    @app.post("/chat/completions")
    async def ui_chat(request: Request) -> Response:
        return await generate(request, openai=False)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        return await generate(request, openai=True)

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(ui_html)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "ready": True, "workers": len(server().pool.workers)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        s = server()
        return {
            "model": model_name,
            "workers": {"total": len(s.pool.workers), "busy": s.pool.busy, "waiting": s.pool.waiting},
            "requests": {"completed": s.stats.completed, "cancelled": s.stats.cancelled, "failed": s.stats.failed,
                         "rejected": s.stats.rejected},
            "prompt_tokens": s.stats.prompt_tokens,
            "tokens_generated": s.stats.tokens_generated,
            "uptime_seconds": round(time.time() - s.stats.started, 1),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(server().stats.started),
                                            "owned_by": "nanochat"}]}

    return app


# ---- the command line ----


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Serve a nanochat model: a chat UI at / and an OpenAI-compatible API at /v1.")
    add_chat_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the server (which has no authentication) to the network")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--num_gpus", type=positive_int, default=1,
                   help="model replicas, one per GPU; requests go to the next free one (CPU: one)")
    p.add_argument("--max_messages", type=positive_int, default=500, help="most messages in a conversation")
    p.add_argument("--max_message_chars", type=positive_int, default=8000, help="most characters in one message")
    p.add_argument("--max_conversation_chars", type=positive_int, default=32000, help="most characters in a whole conversation")
    p.add_argument("--max_max_tokens", type=positive_int, default=4096, help="the largest max_tokens a request may ask for")
    p.add_argument("--body_timeout", type=float, default=10.0,
                   help="seconds a client has to send its request body; a slower one gets a 408 and is disconnected")
    args = p.parse_args(argv)
    check_sampling_args(p, args)
    if args.temperature > MAX_TEMPERATURE or args.top_k > MAX_TOP_K:
        p.error(f"--temperature must be at most {MAX_TEMPERATURE:g} and --top_k at most {MAX_TOP_K}")
    if args.max_tokens > args.max_max_tokens:
        p.error(f"--max_tokens ({args.max_tokens}) is over --max_max_tokens ({args.max_max_tokens})")
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
    workers = load_workers(args.source, devices, args.dtype, args.model_tag, args.step)
    settings = Settings(args.temperature, args.top_k, args.max_tokens, args.max_messages, args.max_message_chars,
                        args.max_conversation_chars, args.max_max_tokens, args.body_timeout)
    name = workers[0].loaded.name
    logger.info("serving %s with %d worker(s) at http://%s:%d", name, len(workers), args.host, args.port)
    uvicorn.run(create_app(workers, settings, name), host=args.host, port=args.port, access_log=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    run_main(main)
