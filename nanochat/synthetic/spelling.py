"""
Spelling drills for the pretraining text: letters spelled out, counted and reversed.
"""

from __future__ import annotations

import random
import string

from nanochat.synthetic.heldout import draw
from nanochat.synthetic.words import WORDS, plural

def _letter_count_question(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
    question = rng.choice([f"How many {letter} are in {word}?",
                           f"How many times does the letter {letter} appear in {word}?",
                           f"Count the letter {letter} in the word {word}."])
    return question, word, letter


def letter_tally(word: str, letter: str, mark: str) -> list[str]:
    """The word's letters in order, each occurrence of `letter` written as mark.format(ch=..., n=its number so far)."""
    tally, n = [], 0
    for ch in word:
        if ch == letter:
            n += 1
            tally.append(mark.format(ch=ch, n=n))
        else:
            tally.append(ch)
    return tally


def make_spelling_drill(rng: random.Random) -> str:
    """
    A short drill on the letters of a word. Tokenizers hide letters inside tokens, so the
    model has to learn spelling from text that spells words out letter by letter.
    """
    kind = rng.random()
    if kind < 0.45:  # count one letter, with a running tally
        question, word, letter = draw(rng, _letter_count_question, False, lambda q: q[0])
        tally, count = letter_tally(word, letter, "{ch}({n})"), word.count(letter)
        verb = "is" if count == 1 else "are"
        # the python call is the one SpellingBee's answers make: the word as it looks in quotes
        return (f"{question} Spelling it out and counting each {letter}: {'-'.join(tally)}. "
                f"So there {verb} {count} {letter} in {word}. In Python, '{word}'.count('{letter}') is {count}.")
    word = rng.choice(WORDS)
    spelled = "-".join(word)
    if kind < 0.7:
        return rng.choice([f"The word {word} is spelled {spelled}.",
                           f"How do you spell {word}? It is spelled {spelled}.",
                           f"Spell {word}: {spelled}."])
    if kind < 0.82:
        return f"The word {word} is spelled {spelled}. It has {plural(len(word), 'letter', 'letters')}."
    if kind < 0.92:
        return f"The first letter of {word} is {word[0]} and the last letter is {word[-1]}."
    return f"The word {word} spelled backwards is {'-'.join(reversed(word))}."
