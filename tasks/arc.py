"""
ARC (AI2 Reasoning Challenge): grade-school science questions with 3 to 5 choices.
Hub: allenai/ai2_arc, configs ARC-Easy and ARC-Challenge; columns `question`,
`choices` = {"text": [...], "label": [...]}, `answerKey`.

Offline twin: 4-choice questions built from the fact tables of nanochat/synthetic.py
(colours, animal sounds, capitals, legs, opposites, day and month order), so what the
model read in pretraining is what it is asked here. Row i of a split comes from its own
seeded RNG, and each split has its own seeds.
"""

from __future__ import annotations

import random

from nanochat import synthetic as syn
from tasks.common import (
    LETTERS,
    GeneratedRows,
    MultipleChoiceTask,
    load_rows,
    render_mc,
)

SUBSETS = ("ARC-Easy", "ARC-Challenge")
SPLITS = ("train", "validation", "test")
TWIN_SIZES = {"train": 1000, "validation": 200, "test": 200}

# -----------------------------------------------------------------------------
# Offline twin

_ALL_COLORS = sorted({color for _, color in syn._COLORS} | {"pink", "grey"})
# words whose opposites blur into each other: never offered as a wrong answer to one another
_CONFUSABLE = [{"up", "down", "high", "low"}, {"day", "night", "light", "dark"}, {"old", "young"}]


def _options(rng: random.Random, correct: str, pool: list[str], k: int = 3) -> tuple[list[str], int]:
    """The correct answer and k distinct wrong ones from pool, shuffled; returns (choices, answer index)."""
    wrong = rng.sample(sorted(set(pool) - {correct}), k)
    choices = wrong + [correct]
    rng.shuffle(choices)
    return choices, choices.index(correct)


def _q_color(rng):
    thing, color = rng.choice(syn._COLORS)
    q = rng.choice([f"What color is {thing}?", f"Which color best describes {thing}?"])
    return (q, *_options(rng, color, _ALL_COLORS))


def _q_sound(rng):
    animal, sound = rng.choice(syn._SOUNDS)
    q = rng.choice([f"What sound does {syn.article(animal)} make?", f"What does {syn.article(animal)} say?"])
    return (q, *_options(rng, sound, [s for _, s in syn._SOUNDS]))


def _q_animal_for_sound(rng):
    animal, sound = rng.choice(syn._SOUNDS)
    return (f"Which animal says {sound}?", *_options(rng, animal, [a for a, _ in syn._SOUNDS]))


def _q_capital(rng):
    country, capital = rng.choice(syn._CAPITALS)
    q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?"])
    return (q, *_options(rng, capital, [c for _, c in syn._CAPITALS]))


def _q_country_for_capital(rng):
    country, capital = rng.choice(syn._CAPITALS)
    return (f"{capital} is the capital of which country?", *_options(rng, country, [c for c, _ in syn._CAPITALS]))


def _q_legs(rng):
    animal, legs = rng.choice(syn._LEGS)
    choices, answer = _options(rng, str(legs), ["0", "2", "4", "6", "8", "10"])
    return (f"How many legs does {syn.article(animal)} have?", choices, answer)


def _q_opposite(rng):
    a, b = rng.choice(syn._OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    blocked = set().union(*(group for group in _CONFUSABLE if a in group or b in group))
    pool = [w for pair in syn._OPPOSITES for w in pair if w not in blocked and w != b]
    wrong = rng.sample(sorted(set(pool) - {a}), 2) + [a]  # the word itself is a classic wrong answer
    choices = wrong + [b]
    rng.shuffle(choices)
    return (f"What is the opposite of {a}?", choices, choices.index(b))


def _q_day(rng):
    i = rng.randrange(7)
    if rng.random() < 0.5:
        q, correct = f"Which day comes after {syn.DAYS[i]}?", syn.DAYS[(i + 1) % 7]
    else:
        q, correct = f"Which day comes before {syn.DAYS[i]}?", syn.DAYS[(i - 1) % 7]
    return (q, *_options(rng, correct, [d for d in syn.DAYS if d != syn.DAYS[i]]))


def _q_month(rng):
    i = rng.randrange(12)
    kind = rng.randrange(3)
    if kind == 0:
        q, correct = f"Which month comes after {syn.MONTHS[i]}?", syn.MONTHS[(i + 1) % 12]
    elif kind == 1:
        q, correct = f"Which month comes before {syn.MONTHS[i]}?", syn.MONTHS[(i - 1) % 12]
    else:
        return (f"Which month is the {syn._ORDINALS[i]} month of the year?",
                *_options(rng, syn.MONTHS[i], syn.MONTHS))
    return (q, *_options(rng, correct, [m for m in syn.MONTHS if m != syn.MONTHS[i]]))


def _q_days_later(rng):
    i, k = rng.randrange(7), rng.randint(2, 5)
    return (f"Today is {syn.DAYS[i]}. What day will it be in {k} days?",
            *_options(rng, syn.DAYS[(i + k) % 7], syn.DAYS))


def _q_months_later(rng):
    i, k = rng.randrange(12), rng.randint(2, 6)
    return (f"It is {syn.MONTHS[i]} now. Which month will it be in {k} months?",
            *_options(rng, syn.MONTHS[(i + k) % 12], syn.MONTHS))


def _q_most_legs(rng):
    by_legs = {}
    for animal, legs in syn._LEGS:
        by_legs.setdefault(legs, []).append(animal)
    counts = rng.sample(sorted(by_legs), 4)
    animals = [rng.choice(by_legs[c]) for c in counts]
    answer = counts.index(max(counts))
    return ("Which of these animals has the most legs?", animals, answer)


_EASY = [_q_color, _q_sound, _q_capital, _q_legs, _q_opposite, _q_day, _q_month]
_CHALLENGE = [_q_animal_for_sound, _q_country_for_capital, _q_days_later, _q_months_later, _q_most_legs,
              _q_opposite, _q_month]


def _twin_row(subset: str):
    kinds = _EASY if subset == "ARC-Easy" else _CHALLENGE

    def make(rng: random.Random, i: int) -> dict:
        question, choices, answer = rng.choice(kinds)(rng)
        labels = list(LETTERS[: len(choices)])
        return {"id": f"synthetic-{subset}-{i}", "question": question,
                "choices": {"text": choices, "label": labels}, "answerKey": labels[answer]}

    return make


def arc_twin(subset: str, split: str) -> GeneratedRows:
    return GeneratedRows(f"arc-twin-{subset}-{split}", TWIN_SIZES[split], _twin_row(subset))

# -----------------------------------------------------------------------------
# Task


class ARC(MultipleChoiceTask):
    def __init__(self, subset: str = "ARC-Easy", split: str = "train", data_files=None,
                 offline: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if subset not in SUBSETS:
            raise ValueError(f"ARC subset must be one of {SUBSETS}, not {subset!r}")
        if split not in SPLITS:
            raise ValueError(f"ARC split must be one of {SPLITS}, not {split!r}")
        self.subset, self.split = subset, split
        self.ds = load_rows("allenai/ai2_arc", subset, split, data_files, offline, lambda: arc_twin(subset, split))

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
        if row["answerKey"] not in labels:
            raise ValueError(f"ARC row {index}: answerKey {row['answerKey']!r} is not one of the labels {labels}")
        # a few ARC rows label their choices 1-4 instead of A-D: relabel them all A, B, C, ...
        letters = list(LETTERS[: len(texts)])
        answer = letters[labels.index(row["answerKey"])]
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, texts)},
                {"role": "assistant", "content": answer},
            ],
            "letters": letters,
        }
