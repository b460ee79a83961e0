"""
Held-out questions: a question belongs to the held-out side or the training side by a hash
of its words, never by chance, so no training text of any twin can hold a held-out question.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HELD_OUT_PERCENT = 20


def question_key(text: str) -> str:
    """The words of a text, lowercased and single-spaced: quoting, case and punctuation do not make a new question."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def is_held_out(question: str) -> bool:
    """Whether a question is reserved for evaluation: a stable hash of its key (not Python's salted hash())."""
    digest = hashlib.sha256(question_key(question).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def draw(rng: random.Random, make: Callable[[random.Random], T], held_out: bool,
         question: Callable[[T], str]) -> T:
    """make(rng) again and again until the item's question is on the asked side (held out or training)."""
    for _ in range(10_000):
        item = make(rng)
        if is_held_out(question(item)) == held_out:
            return item
    raise RuntimeError(f"{make.__name__} made no {'held-out' if held_out else 'training'} question in 10,000 tries")
