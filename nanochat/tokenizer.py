"""
Byte-level BPE tokenizer: trained with rustbpe, run with tiktoken.

rustbpe learns the merges fast; tiktoken encodes fast (and on many threads). The trained
tokenizer is a pickled tiktoken `Encoding` whose vocabulary is the 256 byte tokens, the
learned merges, then the nine special tokens below. This module also renders chat
conversations into token ids plus a mask of the tokens the assistant is trained on.
"""

from __future__ import annotations

import copy
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from nanochat.common import NanochatError, atomic_write, found_elsewhere, get_base_dir

SPECIAL_TOKENS = [
    "<|bos|>",  # starts every document
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the python tool
    "<|python_end|>",
    "<|output_start|>",  # the tool's answer, written by the engine, not the model
    "<|output_end|>",
]

# GPT-4's split pattern, except that numbers split into groups of at most two digits:
# with a small vocabulary, three-digit number tokens waste merges.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

TOKENIZER_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.pt"


class TokenizerNotFoundError(NanochatError, FileNotFoundError):
    pass


class RustBPETokenizer:
    """A tiktoken Encoding plus the chat-format helpers nanochat's stages need."""

    def __init__(self, enc: Any, bos_token: str = "<|bos|>") -> None:
        self.enc = enc
        self.bos_token_id = self.encode_special(bos_token)

    # ---- training, saving, loading ----

    @classmethod
    def train_from_iterator(cls, text_iterator: Iterable[str], vocab_size: int) -> "RustBPETokenizer":
        """Learn merges so the final vocabulary (bytes + merges + specials) has vocab_size tokens."""
        import rustbpe
        import tiktoken

        vocab_size_no_special = vocab_size - len(SPECIAL_TOKENS)
        if vocab_size_no_special < 256:
            raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + specials), got {vocab_size}")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(text_iterator), vocab_size_no_special, pattern=SPLIT_PATTERN)
        mergeable_ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        # a small corpus may run out of pairs to merge before reaching vocab_size
        offset = len(mergeable_ranks)
        special_tokens = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(
            name="rustbpe",
            pat_str=trainer.get_pattern(),
            mergeable_ranks=mergeable_ranks,
            special_tokens=special_tokens,
        )
        return cls(enc)

    @classmethod
    def from_directory(cls, tokenizer_dir: str) -> "RustBPETokenizer":
        path = os.path.join(tokenizer_dir, TOKENIZER_FILE)
        if not os.path.exists(path):
            raise TokenizerNotFoundError(f"no tokenizer at {path}: train one with `python -m scripts.tok_train`"
                                         f"{found_elsewhere(os.path.join('tokenizer', TOKENIZER_FILE))}")
        try:
            with open(path, "rb") as f:
                enc = pickle.load(f)
        except Exception as e:  # a truncated or foreign pickle fails in many ways
            raise TokenizerNotFoundError(
                f"could not read the tokenizer {path} ({type(e).__name__}: {e}); "
                "delete it and re-run `python -m scripts.tok_train`"
            ) from e
        return cls(enc)

    @classmethod
    def from_pretrained(cls, tiktoken_name: str) -> "RustBPETokenizer":
        """A tiktoken encoding such as "gpt2" or "cl100k_base" (downloaded by tiktoken, then cached)."""
        import tiktoken

        enc = tiktoken.get_encoding(tiktoken_name)
        # those encodings have no <|bos|>; <|endoftext|> plays its role
        return cls(enc, bos_token="<|endoftext|>")

    def save(self, tokenizer_dir: str) -> str:
        """Write tokenizer.pkl and token_bytes.pt atomically; returns the pickle's path."""
        os.makedirs(tokenizer_dir, exist_ok=True)
        path = os.path.join(tokenizer_dir, TOKENIZER_FILE)
        atomic_write(path, lambda f: pickle.dump(self.enc, f))
        token_bytes = self.token_byte_lengths()
        atomic_write(os.path.join(tokenizer_dir, TOKEN_BYTES_FILE), lambda f: torch.save(token_bytes, f))
        return path

    def token_byte_lengths(self) -> torch.Tensor:
        """UTF-8 byte length of every token id, 0 for special tokens (they carry no text for bits-per-byte)."""
        special_ids = {self.enc.encode_single_token(name) for name in self.enc.special_tokens_set}
        lengths = [0 if i in special_ids else len(self.enc.decode_single_token_bytes(i)) for i in range(self.get_vocab_size())]
        return torch.tensor(lengths, dtype=torch.int32)

    # ---- vocabulary ----

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> set[str]:
        return set(self.enc.special_tokens_set)

    def id_to_token(self, token_id: int) -> str:
        return self.enc.decode([token_id])

    def encode_special(self, text: str) -> int:
        try:
            return self.enc.encode_single_token(text)
        except KeyError:
            raise ValueError(f"unknown special token {text!r}; known: {sorted(self.get_special_tokens())}") from None

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    # ---- encoding ----

    def _as_id(self, token: int | str | None) -> int | None:
        if token is None or isinstance(token, int):
            return token
        return self.encode_special(token)

    def encode(
        self,
        text: str | list[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int] | list[list[int]]:
        """Encode ordinary text: special-token strings in it are encoded as plain text, never as specials."""
        prepend_id, append_id = self._as_id(prepend), self._as_id(append)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if prepend_id is not None:
                ids.insert(0, prepend_id)
            if append_id is not None:
                ids.append(append_id)
            return ids
        if not isinstance(text, list):
            raise TypeError(f"encode takes a str or a list of str, not {type(text).__name__}")
        batch = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        if prepend_id is not None:
            batch = [[prepend_id] + ids for ids in batch]
        if append_id is not None:
            for ids in batch:
                ids.append(append_id)
        return batch

    def __call__(self, *args: Any, **kwargs: Any) -> list[int] | list[list[int]]:
        return self.encode(*args, **kwargs)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    # ---- chat format ----

    def render_conversation(self, conversation: dict, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """
        Token ids of a whole conversation, and a mask that is 1 exactly on what the assistant
        must learn to write: its text, its python calls with their delimiters, and
        <|assistant_end|>. BOS, user turns and tool outputs are 0. Truncated to max_tokens.
        """
        ids: list[int] = []
        mask: list[int] = []

        def add(token_ids: int | list[int], mask_value: int) -> None:
            if isinstance(token_ids, int):
                token_ids = [token_ids]
            ids.extend(token_ids)
            mask.extend([mask_value] * len(token_ids))

        messages = _merge_system_message(_checked_messages(conversation))
        offset = len(conversation["messages"]) - len(messages)  # 1 when a system message was merged
        special = {name: self.encode_special(name) for name in SPECIAL_TOKENS}
        add(self.bos_token_id, 0)
        for i, message in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise ValueError(f"message {i + offset} has role {message['role']!r}, expected {expected!r} "
                                 "(user and assistant alternate, after an optional first system message)")
            content = message["content"]
            if expected == "user":
                add(special["<|user_start|>"], 0)
                add(self.encode(content), 0)
                add(special["<|user_end|>"], 0)
                continue
            add(special["<|assistant_start|>"], 0)
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                tokens = self.encode(part["text"])
                if part["type"] == "text":
                    add(tokens, 1)
                elif part["type"] == "python":
                    add(special["<|python_start|>"], 1)
                    add(tokens, 1)
                    add(special["<|python_end|>"], 1)
                else:  # python_output: the engine forces tool output at inference; the model never predicts it
                    add(special["<|output_start|>"], 0)
                    add(tokens, 0)
                    add(special["<|output_end|>"], 0)
            add(special["<|assistant_end|>"], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: dict) -> list[int]:
        """The conversation minus its last (assistant) message, primed with <|assistant_start|>."""
        messages = _checked_messages(conversation)
        if messages[-1]["role"] != "assistant":
            raise ValueError("render_for_completion expects a conversation that ends with an assistant message")
        trimmed = copy.deepcopy(conversation)
        trimmed["messages"] = messages[:-1]
        ids, _ = self.render_conversation(trimmed, max_tokens=1 << 62)
        ids.append(self.encode_special("<|assistant_start|>"))
        return ids


_ROLES = ("system", "user", "assistant")
_PART_TYPES = ("text", "python", "python_output")


def _checked_messages(conversation: dict) -> list[dict]:
    """The conversation's messages, after checking their shape; a ValueError says what is malformed."""
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise ValueError('a conversation must be a dict {"messages": [{"role": ..., "content": ...}, ...]}, '
                         f"got {conversation!r:.200}")
    messages = conversation["messages"]
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', not {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"message {i} has no {key!r} (its keys: {list(message)})")
        role, content = message["role"], message["content"]
        if role not in _ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}; roles are {', '.join(_ROLES)}")
        if role == "system" and i != 0:
            raise ValueError(f"message {i} is a system message; only the first message may be one")
        if role != "assistant":
            if not isinstance(content, str):
                raise ValueError(f"{role} message {i} must have str content, not {type(content).__name__}")
            continue
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"assistant message {i} content must be str or a list of parts, not {type(content).__name__}")
        for j, part in enumerate(content):
            where = f"assistant message {i} part {j}"
            if not isinstance(part, dict):
                raise ValueError(f"{where} must be a dict {{'type': ..., 'text': ...}}, not {type(part).__name__}")
            if part.get("type") not in _PART_TYPES:
                raise ValueError(f"{where} has unknown part type {part.get('type')!r}; types are {', '.join(_PART_TYPES)}")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where} must have str 'text', not {type(part.get('text')).__name__}")
    return messages


def _merge_system_message(messages: list[dict]) -> list[dict]:
    if messages[0]["role"] != "system":
        return messages
    if len(messages) < 2 or messages[1]["role"] != "user":
        raise ValueError("a system message must be followed by a user message")
    merged = dict(messages[1])
    merged["content"] = messages[0]["content"] + "\n\n" + messages[1]["content"]
    return [merged] + list(messages[2:])


def get_tokenizer_dir() -> str:
    return os.path.join(get_base_dir(), "tokenizer")


def get_tokenizer() -> RustBPETokenizer:
    """The tokenizer trained by scripts.tok_train under $NANOCHAT_BASE_DIR/tokenizer."""
    return RustBPETokenizer.from_directory(get_tokenizer_dir())


def get_token_bytes(device: str | torch.device = "cpu") -> torch.Tensor:
    path = os.path.join(get_tokenizer_dir(), TOKEN_BYTES_FILE)
    if not os.path.exists(path):
        raise TokenizerNotFoundError(f"no token_bytes at {path}: train a tokenizer with `python -m scripts.tok_train`")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, wrong magic: each fails differently
        raise TokenizerNotFoundError(
            f"could not read {path} ({type(e).__name__}: {e}); delete the tokenizer folder and re-run "
            "`python -m scripts.tok_train`"
        ) from e


def text_iterator(batches: Iterator[list[str]], max_chars: int, doc_cap: int) -> Iterator[str]:
    """Documents from batches, each cut to doc_cap chars, stopping after max_chars in all."""
    seen = 0
    for batch in batches:
        for doc in batch:
            doc = doc[:doc_cap]
            yield doc
            seen += len(doc)
            if seen >= max_chars:
                return


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> tuple[RustBPETokenizer, float]:
    """Train and time; a thin helper so scripts and benchmarks measure the same thing."""
    t0 = time.time()
    tokenizer = RustBPETokenizer.train_from_iterator(texts, vocab_size)
    return tokenizer, time.time() - t0
