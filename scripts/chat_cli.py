"""
Chat with a trained model in the terminal, the reply streaming in as it is generated.

    python -m scripts.chat_cli -i sft                 # interactive, multi-turn
    python -m scripts.chat_cli -i sft -p "Why is the sky blue?"   # one answer, then exit

In the interactive chat, `clear` starts a new conversation and `quit`, `exit`, Ctrl-D or
Ctrl-C at the prompt leave. Ctrl-C while a reply is streaming stops that reply only.
Loading, prompting and streaming are nanochat.chat's, shared with chat_web; tool calls show
inline as `[python: 3*4+1 → 13]`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
from typing import Any

from nanochat.chat import LoadedModel, Reply, load_chat_model, prompt_for, stream_reply
from nanochat.common import autodetect_device_type, compute_init, run_main, setup_default_logging
from nanochat.engine import ContextFullError, Engine
from scripts.flags import ArgumentParser, add_chat_args, check_sampling_args


def print_reply(loaded: LoadedModel, engine: Engine, messages: list[dict[str, Any]], args: argparse.Namespace,
                reply: Reply) -> None:
    """Stream the next reply to stdout; `reply` is filled in even when Ctrl-C cuts it short."""
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    pieces = stream_reply(engine, prompt_for(loaded.tokenizer, messages), reply, args.max_tokens, args.temperature,
                          args.top_k, seed)
    # closing() stops the engine and fills in `reply` right away, also when Ctrl-C interrupts
    with loaded.autocast(), contextlib.closing(pieces):
        for piece in pieces:
            print(piece, end="", flush=True)
    print()


def interactive(loaded: LoadedModel, engine: Engine, args: argparse.Namespace) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
    except ImportError:
        pass
    print(f"Chatting with {loaded.name} (step {loaded.meta.get('step', '?')}) on {loaded.device}.")
    print("Type 'clear' for a new conversation, 'quit' or 'exit' (or Ctrl-D) to leave.")
    messages: list[dict[str, Any]] = []
    while True:
        try:
            text = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text.lower() in ("quit", "exit"):
            return
        if text.lower() == "clear":
            messages = []
            print("(new conversation)")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("\nAssistant: ", end="", flush=True)
        reply = Reply()
        try:
            print_reply(loaded, engine, messages, args, reply)
        except KeyboardInterrupt:  # stop this reply, keep the conversation (with what was shown)
            print(" [stopped]")
        except ContextFullError as e:  # the conversation no longer fits the model's context
            print(f"\nerror: {e}; type 'clear' to start over")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply.content or reply.text})


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Chat with a nanochat model in the terminal.")
    add_chat_args(p)
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: a fresh one per reply)")
    p.add_argument("--verbose", action="store_true", help="show the library's log lines")
    args = p.parse_args(argv)
    check_sampling_args(p, args)

    # a chat reads better without "loaded checkpoint ..." lines; set up before compute_init logs
    setup_default_logging(logging.INFO if args.verbose else logging.WARNING)
    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    loaded = load_chat_model(args.source, device, args.dtype, args.model_tag, args.step)
    engine = Engine(loaded.model, loaded.tokenizer)

    if args.prompt is not None:
        if not args.prompt.strip():
            p.error("-p/--prompt is empty")
        try:
            print_reply(loaded, engine, [{"role": "user", "content": args.prompt}], args, Reply())
        except KeyboardInterrupt:
            print()
        return
    interactive(loaded, engine, args)


if __name__ == "__main__":
    run_main(main)
