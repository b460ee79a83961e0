"""
nanochat.chat's reply decoder and streaming (shared by chat_cli and chat_web), and the CLI run
for real in a subprocess over a tiny checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.chat import Reply, ReplyDecoder, stream_reply
from nanochat.engine import Engine
from scripted import ScriptedModel
from tiny import write_chat_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_cli(base_dir: Path, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}
    return subprocess.run([sys.executable, "-m", "scripts.chat_cli", *args], cwd=ROOT, env=env, input=stdin, check=False,
                          capture_output=True, text=True, timeout=timeout)


# ---- the decoder and stream_reply ----


def byte_tokens(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte: the worst case for streaming, every multi-byte character split."""
    return [tokenizer.enc.encode_single_token(bytes([b])) for b in text.encode("utf-8")]


def test_decoder_holds_back_split_characters(tiny_tokenizer):
    text = "a€b😀 café"
    decoder = ReplyDecoder(tiny_tokenizer)
    pieces = [decoder.feed(t) for t in byte_tokens(tiny_tokenizer, text)]
    pieces.append(decoder.finish())
    assert "".join(pieces) == text == decoder.text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[1:4] == ["", "", "€"]  # the euro sign's three bytes: held, held, released whole
    assert decoder.message_content() == text


def test_decoder_shows_a_cut_character_at_the_end(tiny_tokenizer):
    decoder = ReplyDecoder(tiny_tokenizer)
    pieces = [decoder.feed(t) for t in byte_tokens(tiny_tokenizer, "ok€")[:-1]]
    assert "".join(pieces) == "ok"
    assert decoder.finish() == "\ufffd"


def test_decoder_renders_tool_calls_readably(tiny_tokenizer):
    tok = tiny_tokenizer
    sp = tok.encode_special
    ids = (tok.encode("so ") + [sp("<|python_start|>")] + tok.encode("3*4+1") + [sp("<|python_end|>"), sp("<|output_start|>")]
           + tok.encode("13") + [sp("<|output_end|>")] + tok.encode(" then ") + [sp("<|python_start|>")] + tok.encode("1/0")
           + [sp("<|python_end|>")] + tok.encode(" done"))
    decoder = ReplyDecoder(tok)
    text = "".join(decoder.feed(t) for t in ids) + decoder.finish()
    assert text == "so [python: 3*4+1 → 13] then [python: 1/0] done"
    parts = decoder.message_content()
    assert parts == [{"type": "text", "text": "so "}, {"type": "python", "text": "3*4+1"}, {"type": "python_output", "text": "13"},
                     {"type": "text", "text": " then "}, {"type": "python", "text": "1/0"}, {"type": "text", "text": " done"}]
    # the parts render back into the very tokens the model wrote
    conversation = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": parts}]}
    rendered, _ = tok.render_conversation(conversation)
    assert rendered[-len(ids) - 1:-1] == ids


@pytest.mark.parametrize("stop", ["<|assistant_end|>", "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>"])
def test_stream_reply_stops_at_the_end_of_the_turn(tiny_tokenizer, stop):
    tok = tiny_tokenizer
    hello = tok.encode("hello there")
    engine = Engine(ScriptedModel(tok.get_vocab_size(), hello + [tok.encode_special(stop)] + hello), tok)
    reply = Reply()
    pieces = list(stream_reply(engine, [tok.get_bos_token_id()], reply, max_tokens=50, temperature=0.0, top_k=None, seed=0))
    assert "".join(pieces) == reply.text == "hello there"
    assert len(pieces) == len(hello) + 1  # one per token (so a caller can stop anywhere), then the held-back rest
    assert reply.finish_reason == "stop" and reply.completion_tokens == len(hello)


def test_stream_reply_is_cut_at_max_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    hello = tok.encode("hello there, how are you")
    engine = Engine(ScriptedModel(tok.get_vocab_size(), hello), tok)
    reply = Reply()
    text = "".join(stream_reply(engine, [tok.get_bos_token_id()], reply, max_tokens=3, temperature=0.0, top_k=None, seed=0))
    assert text == tok.decode(hello[:3])
    assert reply.finish_reason == "length" and reply.completion_tokens == 3


# ---- the CLI, run for real ----


@pytest.fixture
def checkpoint(base_dir, tiny_tokenizer) -> Path:
    write_chat_checkpoint(tiny_tokenizer)
    return base_dir


def test_one_prompt_prints_an_answer(checkpoint):
    result = run_cli(checkpoint, "-i", "sft", "--device_type", "cpu", "-p", "hello there", "--max_tokens", "8",
                     "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n"), "nothing was printed"
    assert "Traceback" not in result.stderr


def test_interactive_chat_over_stdin(checkpoint):
    result = run_cli(checkpoint, "-i", "sft", "--device_type", "cpu", "--max_tokens", "6", "--dtype", "bfloat16",
                     stdin="hello\nclear\nhi\n\nquit\n")
    assert result.returncode == 0, result.stderr
    assert "Chatting with nanochat-sft-d1" in result.stdout
    assert result.stdout.count("Assistant: ") == 2
    assert "(new conversation)" in result.stdout
    # Ctrl-D (end of input) leaves cleanly too, here after a two-turn conversation
    result = run_cli(checkpoint, "-i", "sft", "--device_type", "cpu", "--max_tokens", "4", stdin="hello\nand again\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Assistant: ") == 2


def test_missing_checkpoint_is_one_clear_line(base_dir):
    result = run_cli(base_dir, "-i", "sft", "--device_type", "cpu", "-p", "hello")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "chatsft_checkpoints" in lines[0] and "scripts.chat_sft" in lines[0]
