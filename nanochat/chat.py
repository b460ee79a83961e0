"""
Serving a chat model, as chat_cli and chat_web do: load a checkpoint for inference in the asked
dtype, build the prompt for the assistant's next turn, and stream a reply as display text.

Tool calls in a reply are shown inline as `[python: 3*4+1 → 13]` (the call, then the
calculator's answer that the engine forced in), never as raw special tokens. The reply also
keeps its structure (text / python / python_output parts), so the next turn's conversation
renders back into the very tokens the model wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine
from nanochat.gpt import GPT
from nanochat.precision import autocast_context, resolve_dtype
from nanochat.tokenizer import RustBPETokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: RustBPETokenizer
    meta: dict[str, Any]
    name: str  # e.g. nanochat-sft-d20
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]  # a fresh context per use (autocast state is per thread)


def load_chat_model(source: str, device: torch.device, dtype: str = "auto", model_tag: str | None = None,
                    step: int | None = None) -> LoadedModel:
    """
    A stage's checkpoint on `device`, set up for inference in `dtype` (auto, float32 or bfloat16).
    Raises CheckpointError or TokenizerNotFoundError when there is nothing to load.
    """
    model, tokenizer, meta = load_model(source, device, phase="eval", model_tag=model_tag, step=step)
    torch_dtype = resolve_dtype(device.type, dtype)
    convert = device.type == "cpu" and torch_dtype == torch.bfloat16
    if convert:
        # CPU autocast re-casts the fp32 weights at every matmul; converting them once halves
        # the memory each decoding step reads, and decoding is memory-bound
        model.to(torch.bfloat16)

    def autocast() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if convert else autocast_context(device.type, torch_dtype)

    return LoadedModel(model, tokenizer, meta, f"nanochat-{source}-{meta['model_tag']}", device, autocast)


def prompt_for(tokenizer: RustBPETokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt ids for the assistant's next turn: the chat so far, ending with <|assistant_start|>."""
    return tokenizer.render_for_completion({"messages": [*messages, {"role": "assistant", "content": ""}]})


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
    Closing this generator early stops the engine. `top_k` 0 or None: no top-k.
    """
    decoder = ReplyDecoder(engine.tokenizer)
    steps = engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=temperature,
                            top_k=top_k or None, seed=seed)
    try:
        for column, _ in steps:
            token = column[0]
            if token in engine.stop_tokens:
                reply.finish_reason = "stop"
                break
            reply.completion_tokens += 1
            yield decoder.feed(token)
        yield decoder.finish()
    finally:
        steps.close()
        reply.text = decoder.text
        reply.content = decoder.message_content()
