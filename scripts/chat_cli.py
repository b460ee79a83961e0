"""
Chat with a trained model in the terminal, the reply streaming in as it is generated.

    python -m scripts.chat_cli -i sft                 # interactive, multi-turn
    python -m scripts.chat_cli -i sft -p "Why is the sky blue?"   # one answer, then exit

In the interactive chat, `clear` starts a new conversation and `quit`, `exit`, Ctrl-D or
Ctrl-C at the prompt leave. Ctrl-C while a reply is streaming stops that reply only.

This module also holds what chat_web shares with it: the model flags, model loading with
the inference dtype, and `stream_reply`, which turns the engine's tokens into display text.
Tool calls in a reply are shown inline as `[python: 3*4+1 → 13]` (the call, then the
calculator's answer that the engine forced in), never as raw special tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nanochat.checkpoint_manager import SOURCES, CheckpointError, find_largest_model, load_model
from nanochat.common import autodetect_device_type, compute_init, get_base_dir, run_main, setup_default_logging
from nanochat.engine import Engine
from nanochat.gpt import GPT
from nanochat.tokenizer import RustBPETokenizer, TokenizerNotFoundError
from nanochat.training import autocast_context, resolve_dtype
from scripts.flags import ArgumentParser

# Special tokens that end a reply besides the engine's own stops (<|assistant_end|>, <|bos|>):
# a model that starts writing the user's turn has finished its own.
EXTRA_STOP_TOKENS = ("<|user_start|>", "<|user_end|>", "<|assistant_start|>")


# ---- flags and model loading (shared with chat_web) ----


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags that pick a checkpoint, a device and the sampling defaults."""
    p.add_argument("-i", "--source", default="sft", choices=["mid", "sft", "rl", "base"],
                   help="which stage's model to chat with (base only for debugging: it was never taught to chat)")
    p.add_argument("--model_tag", default=None, help="model tag, e.g. d20 (default: the deepest one)")
    p.add_argument("--step", "--model_step", dest="step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--device_type", default="", choices=["", "cuda", "cpu", "mps"], help="device (empty: autodetect)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 on CUDA, float32 elsewhere. bfloat16 on CPU converts the weights "
                        "(decoding is memory-bound, so this is ~1.3x faster)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0: greedy)")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens (0: no limit)")
    p.add_argument("--max_tokens", type=int, default=512, help="most tokens per reply")


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: RustBPETokenizer
    meta: dict[str, Any]
    name: str  # e.g. nanochat-sft-d20
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]  # a fresh context per use (autocast state is per thread)


def load_chat_model(args: argparse.Namespace, device: torch.device) -> LoadedModel:
    """Load the checkpoint the flags name onto `device`, set up for inference in the asked dtype."""
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    dtype = resolve_dtype(device.type, args.dtype)
    convert = device.type == "cpu" and dtype == torch.bfloat16
    if convert:
        # CPU autocast re-casts the fp32 weights at every matmul; converting them once halves
        # the memory each decoding step reads, and decoding is memory-bound
        model.to(torch.bfloat16)

    def autocast() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if convert else autocast_context(device.type, dtype)

    # load_model chose the tag when none was given; it is the deepest one, which we can name
    tag = args.model_tag or find_largest_model(os.path.join(get_base_dir(), SOURCES[args.source][0]))
    return LoadedModel(model, tokenizer, meta, f"nanochat-{args.source}-{tag}", device, autocast)


def load_or_exit(args: argparse.Namespace, device: torch.device) -> LoadedModel:
    """load_chat_model, or one clear line on stderr and exit status 1 when there is nothing to load."""
    try:
        return load_chat_model(args, device)
    except (CheckpointError, TokenizerNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def check_sampling_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top_k must be >= 0 (0: no limit), got {args.top_k}")
    if args.max_tokens < 1:
        p.error(f"--max_tokens must be >= 1, got {args.max_tokens}")


# ---- streaming a reply as text ----


class ReplyDecoder:
    """
    Turns a reply's token ids, one at a time, into display text plus the reply's structure
    (text / python / python_output parts, which the tokenizer renders back into tokens).

    A token can end in the middle of a UTF-8 character, so text is held back while the
    undecoded tail decodes to U+FFFD and released once the character is complete: every
    piece returned is final, and the pieces join to the whole reply.
    """

    def __init__(self, tokenizer: RustBPETokenizer) -> None:
        self.tokenizer = tokenizer
        sp = tokenizer.encode_special
        self.markers = {sp(name): name for name in ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")}
        self.pending: list[int] = []  # ids of the current part whose text is not all final yet
        self.shown = 0  # characters of decode(pending) already returned
        self.mode = "text"  # the kind of part being written: text, python or python_output
        self.part: dict[str, str] | None = None  # the part text is being added to
        self.bracket_open = False  # "[python: ..." was shown and its "]" not yet
        self.parts: list[dict[str, str]] = []
        self.text = ""  # everything returned so far

    def _release(self, final: bool) -> str:
        """New final text of the pending ids; with final, all of it (a cut character shows as U+FFFD)."""
        text = self.tokenizer.decode(self.pending)
        stable = text if final else text.rstrip("\ufffd")  # a trailing U+FFFD may be half a character
        new = stable[self.shown:]
        self.shown = max(self.shown, len(stable))
        if len(stable) == len(text):  # everything decoded cleanly: start afresh (keeps decoding O(n))
            if text:
                if self.part is None or self.part["type"] != self.mode:
                    self.part = {"type": self.mode, "text": ""}
                    self.parts.append(self.part)
                self.part["text"] += text
            self.pending, self.shown = [], 0
        return new

    def _start(self, mode: str) -> None:
        """Begin a new part (python call or tool output), empty until text arrives."""
        self.mode = mode
        self.part = {"type": mode, "text": ""}
        self.parts.append(self.part)

    def feed(self, token: int) -> str:
        """The text that became final with this token (often empty mid-character)."""
        marker = self.markers.get(token)
        out = ""
        if self.bracket_open and self.mode == "text" and marker != "<|output_start|>":
            out += "]"  # a python call that got no calculator answer
            self.bracket_open = False
        if marker is None:
            self.pending.append(token)
            out += self._release(final=False)
        elif marker == "<|python_start|>":
            out += self._release(final=True)
            if self.bracket_open:  # a call inside a call: close the first
                out += "]"
            out += "[python: "
            self.bracket_open = True
            self._start("python")
        elif marker == "<|python_end|>" and self.mode == "python":
            out += self._release(final=True)
            self.mode, self.part = "text", None  # "]" waits: the engine may force the answer in next
        elif marker == "<|output_start|>":
            out += self._release(final=True)
            out += " → " if self.bracket_open else "[output: "
            self.bracket_open = True
            self._start("python_output")
        elif marker == "<|output_end|>" and self.mode == "python_output":
            out += self._release(final=True) + "]"
            self.bracket_open = False
            self.mode, self.part = "text", None
        # an end marker with no matching start is dropped: there is nothing readable to show for it
        self.text += out
        return out

    def finish(self) -> str:
        """The held-back rest at the end of the reply."""
        out = self._release(final=True)
        if self.bracket_open:
            out += "]"
            self.bracket_open = False
        self.text += out
        return out

    def message_content(self) -> str | list[dict[str, str]]:
        """The reply as an assistant message's content: a str, or parts when it used the tool."""
        if all(p["type"] == "text" for p in self.parts):
            return "".join(p["text"] for p in self.parts)
        return [dict(p) for p in self.parts]


@dataclass
class Reply:
    """Filled in by stream_reply while it runs."""

    text: str = ""
    content: str | list[dict[str, str]] = ""  # for the next turn's conversation
    completion_tokens: int = 0  # tokens of the reply, forced tool output included, the stop token not
    finish_reason: str = "length"  # "stop" when the model ended its turn, "length" when cut off


def stream_reply(engine: Engine, prompt: list[int], reply: Reply, max_tokens: int | None, temperature: float,
                 top_k: int | None, seed: int) -> Iterator[str]:
    """
    Generate one reply, yielding once per generated token the text that became final (often
    ""), so a caller can stop between any two tokens; `reply` holds the totals at the end.
    Closing this generator early stops the engine.
    """
    tokenizer = engine.tokenizer
    stops = set(engine.stop_tokens) | {tokenizer.encode_special(s) for s in EXTRA_STOP_TOKENS}
    decoder = ReplyDecoder(tokenizer)
    steps = engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=temperature,
                            top_k=top_k or None, seed=seed)
    try:
        for column, _ in steps:
            token = column[0]
            if token in stops:
                reply.finish_reason = "stop"
                break
            reply.completion_tokens += 1
            yield decoder.feed(token)
        yield decoder.finish()
    finally:
        steps.close()
        reply.text = decoder.text
        reply.content = decoder.message_content()


def prompt_for(tokenizer: RustBPETokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt ids for the assistant's next turn: the chat so far, ending with <|assistant_start|>."""
    return tokenizer.render_for_completion({"messages": [*messages, {"role": "assistant", "content": ""}]})


# ---- the terminal chat ----


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
        except ValueError as e:  # the conversation no longer fits the model's context
            print(f"\nerror: {e}; type 'clear' to start over")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply.content or reply.text})


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Chat with a nanochat model in the terminal.")
    add_model_args(p)
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: a fresh one per reply)")
    p.add_argument("--verbose", action="store_true", help="show the library's log lines")
    args = p.parse_args(argv)
    check_sampling_args(p, args)

    # a chat reads better without "loaded checkpoint ..." lines; set up before compute_init logs
    setup_default_logging(logging.INFO if args.verbose else logging.WARNING)
    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    loaded = load_or_exit(args, device)
    engine = Engine(loaded.model, loaded.tokenizer)

    if args.prompt is not None:
        if not args.prompt.strip():
            p.error("-p/--prompt is empty")
        try:
            print_reply(loaded, engine, [{"role": "user", "content": args.prompt}], args, Reply())
        except KeyboardInterrupt:
            print()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        return
    interactive(loaded, engine, args)


if __name__ == "__main__":
    run_main(main)
