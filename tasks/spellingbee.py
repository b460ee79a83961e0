"""
Spelling tasks, generated on the fly (no data set to download but a word list).

SpellingBee: "How many r are in strawberry?" in many phrasings and a few languages. The
reply spells the word letter by letter keeping a running count, checks the count with a
python call `'strawberry'.count('r')` (whose output the engine forces at inference), and ends
with `#### 3`, so evaluation and reward reuse GSM8K's answer extraction.

SimpleSpelling: "Spell the word: apple" -> "apple:a,p,p,l,e".

Each SpellingBee question is on the test side or the training side by nanochat.synthetic's
is_held_out (its words decide), so no test question is ever trained on, here or in the
pretraining twin's spelling drills.

Words: the dwyl english-words list (downloaded once into <base_dir>/words_alpha.txt), or
offline nanochat.synthetic.WORDS. Example i of a split comes from its own RNG seeded by
(task, split, i): random access, identical in every process, and the test split's seeds
differ from train's.
"""

from __future__ import annotations

import os
import random
import string

from nanochat.common import get_base_dir
from nanochat.synthetic import draw, letter_tally
from tasks.common import Task, download_small_file, is_offline
from tasks.gsm8k import _same_number, extract_answer

WORD_LIST_URL = "https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt"
WORD_LIST_FILE = "words_alpha.txt"
SPLITS = ("train", "test")


def download_word_list(path: str, url: str = WORD_LIST_URL, timeout: float = 60.0) -> str:
    """Download the word list to path through a temp file + rename; a clear error if it fails."""
    return download_small_file(url, path, "the word list", "set NANOCHAT_DATASET=synthetic to use the built-in word list",
                               timeout)


def load_words(offline: bool | None = None) -> list[str]:
    """Lowercase a-z words: the downloaded list online (downloaded on first use), synthetic.WORDS offline."""
    if is_offline(offline):
        from nanochat.synthetic import WORDS

        return list(WORDS)
    path = os.path.join(get_base_dir(), WORD_LIST_FILE)
    if not os.path.exists(path):
        download_word_list(path)
    with open(path, encoding="utf-8") as f:
        words = [w.strip() for w in f]
    words = [w for w in words if w and w.isascii() and w.isalpha() and w.islower()]
    if not words:
        raise RuntimeError(f"the word list {path} holds no words: delete it to download it again")
    return words


class _GeneratedTask(Task):
    """size examples, example i generated from random.Random(f'{name}-{split}-{i}')."""

    name = "generated"

    def __init__(self, size: int = 1000, split: str = "train", offline: bool | None = None,
                 words: list[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__} split must be one of {SPLITS}, not {split!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size, self.split = size, split
        self.words = list(words) if words is not None else load_words(offline)

    def num_examples(self) -> int:
        return self.size

    def rng_for(self, index: int) -> random.Random:
        # a str seed is hashed with SHA-512: stable across processes, and no train seed equals a test seed
        return random.Random(f"{self.name}-{self.split}-{index}")

    def get_example(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(f"{type(self).__name__} index {index} out of range for {self.size} examples")
        return self.make_example(self.rng_for(index))

    def make_example(self, rng: random.Random) -> dict:
        raise NotImplementedError

# -----------------------------------------------------------------------------
# SpellingBee

# {l}: the letter, {w}: the word; quoting is added around them at random
_TEMPLATES = {
    "en": ["How many {l} are in {w}?", "How many {l}s are in the word {w}?", "How many times does the letter {l} appear in {w}?",
           "Count the number of {l} in {w}.", "In the word {w}, how many {l} are there?", "how many {l} in {w}",
           "What is the count of the letter {l} in {w}?", "Can you count how many {l} the word {w} has?",
           "How often does {l} occur in {w}?", "Tell me the number of {l}'s in {w}."],
    "es": ["¿Cuántas {l} hay en {w}?", "¿Cuántas veces aparece la letra {l} en {w}?",
           "Cuenta cuántas {l} tiene la palabra {w}."],
    "fr": ["Combien de {l} y a-t-il dans {w} ?", "Combien de fois la lettre {l} apparaît-elle dans {w} ?",
           "Compte les {l} dans le mot {w}."],
    "de": ["Wie viele {l} sind in {w}?", "Wie oft kommt der Buchstabe {l} in {w} vor?",
           "Zähle die {l} im Wort {w}."],
    "it": ["Quante {l} ci sono in {w}?", "Quante volte compare la lettera {l} nella parola {w}?"],
    "pt": ["Quantas letras {l} há em {w}?", "Quantas vezes a letra {l} aparece em {w}?"],
}
_LANGUAGES = ["en"] * 10 + ["es", "fr", "de", "it", "pt"] * 2  # mostly English
_QUOTES = ["", "", "'", '"']


def _quoted(rng: random.Random, text: str) -> str:
    q = rng.choice(_QUOTES)
    return f"{q}{text}{q}"


class SpellingBee(_GeneratedTask):
    name = "spellingbee"

    @property
    def eval_type(self) -> str:
        return "generative"

    def _question(self, rng: random.Random) -> tuple[str, str, str]:
        """(question, word, letter)"""
        word = rng.choice(self.words)
        # the count first, each count the word offers equally likely, then a letter with that count:
        # drawing the letter from the word would make "1" right most of the time, whatever the word
        by_count: dict[int, list[str]] = {}
        for ch in string.ascii_lowercase:
            by_count.setdefault(word.count(ch), []).append(ch)
        letter = rng.choice(by_count[rng.choice(sorted(by_count))])
        template = rng.choice(_TEMPLATES[rng.choice(_LANGUAGES)])
        # "{l}s" and "{l}'s" read badly with quotes around the letter
        shown_letter = letter if ("{l}s" in template or "{l}'" in template) else _quoted(rng, letter)
        question = template.format(l=shown_letter, w=_quoted(rng, word))
        if rng.random() < 0.3:
            question = question[0].upper() + question[1:]
        return question, word, letter

    def make_example(self, rng: random.Random) -> dict:
        # test questions from the held-out side, train from the training side: no test question is trained on
        question, word, letter = draw(rng, self._question, self.split == "test", lambda q: q[0])
        count = word.count(letter)

        # spell the word out, numbering each occurrence of the letter as it comes
        spelled = "\n".join(letter_tally(word, letter, "{ch} <- {n}"))
        manual = (f"We need to count the letter '{letter}' in the word '{word}'. "
                  f"Spelling it out one letter at a time and counting each '{letter}':\n\n{spelled}\n\n"
                  f"That makes {count}. Let me double-check with Python:\n\n")
        verb, noun = ("is", "occurrence") if count == 1 else ("are", "occurrences")
        final = f"\n\nBoth agree: there {verb} {count} {noun} of '{letter}' in '{word}'.\n\n#### {count}"
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": [
                    {"type": "text", "text": manual},
                    {"type": "python", "text": f"'{word}'.count('{letter}')"},
                    {"type": "python_output", "text": str(count)},
                    {"type": "text", "text": final},
                ]},
            ]
        }

    def evaluate(self, conversation: dict, response: str) -> bool:
        parts = conversation["messages"][-1]["content"]
        gold = extract_answer(parts[-1]["text"] if isinstance(parts, list) else parts)
        predicted = extract_answer(response)
        return gold is not None and predicted is not None and _same_number(predicted, gold)

    def reward(self, conversation: dict, response: str) -> float:
        return 1.0 if self.evaluate(conversation, response) else 0.0

# -----------------------------------------------------------------------------
# SimpleSpelling

_SPELL_PROMPTS = ["Spell the word: {w}", "Spell {w}", "How do you spell {w}?", "Spell out the word {w}.",
                  "Please spell: {w}"]


class SimpleSpelling(_GeneratedTask):
    name = "simplespelling"

    @property
    def eval_type(self) -> str:
        return "generative"

    def make_example(self, rng: random.Random) -> dict:
        word = rng.choice(self.words)
        return {
            "messages": [
                {"role": "user", "content": rng.choice(_SPELL_PROMPTS).format(w=word)},
                {"role": "assistant", "content": f"{word}:{','.join(word)}"},
            ]
        }

    def evaluate(self, conversation: dict, response: str) -> bool:
        return response.strip() == conversation["messages"][-1]["content"]
