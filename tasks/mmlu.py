"""
MMLU: multiple-choice questions over 57 subjects, always 4 choices.
Hub: cais/mmlu, config "all" (splits test, validation, dev, auxiliary_train) or
"auxiliary_train" (split train); columns `question`, `subject`, `choices` (4 strings),
`answer` (index 0-3). In the auxiliary_train config each row's fields sit under a
`train` key; rows are unwrapped here whatever their source.

Offline twin: a different mix from ARC's twin, about numbers (arithmetic facts, number
words, comparisons, parity, counting letters of short words), phrased like exam questions.
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

SUBSETS = ("all", "auxiliary_train")
SPLITS = {"all": ("test", "validation", "dev", "auxiliary_train"), "auxiliary_train": ("train",)}
TWIN_SIZES = {("auxiliary_train", "train"): 5000, ("all", "auxiliary_train"): 5000,
              ("all", "test"): 300, ("all", "validation"): 300, ("all", "dev"): 25}

# -----------------------------------------------------------------------------
# Offline twin


def _numeric_options(rng: random.Random, correct: int, spread: int, low: int = 0) -> tuple[list[str], int]:
    """The correct number and three distinct nearby wrong ones (never below `low`), shuffled."""
    wrong: set[int] = set()
    while len(wrong) < 3:
        candidate = correct + rng.choice([-1, 1]) * rng.randint(1, spread)
        if candidate >= low and candidate != correct:
            wrong.add(candidate)
    choices = sorted(wrong) + [correct]
    rng.shuffle(choices)
    return [str(c) for c in choices], choices.index(correct)


def _q_add(rng):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return "elementary_mathematics", f"What is {a} + {b}?", *_numeric_options(rng, a + b, 11)


def _q_sub(rng):
    a, b = sorted(rng.sample(range(2, 100), 2), reverse=True)
    return "elementary_mathematics", f"What is {a} - {b}?", *_numeric_options(rng, a - b, 9)


def _q_mul(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return "elementary_mathematics", f"What is {a} times {b}?", *_numeric_options(rng, a * b, max(3, a + b))


def _q_div(rng):
    b, c = rng.randint(2, 12), rng.randint(2, 12)
    return "elementary_mathematics", f"What is {b * c} divided by {b}?", *_numeric_options(rng, c, 4, low=1)


def _q_words_to_number(rng):
    n = rng.randint(0, 999)
    question = f"Which number is written as \"{syn.number_to_words(n)}\"?"
    return "elementary_mathematics", question, *_numeric_options(rng, n, 30)


def _q_number_to_words(rng):
    n = rng.randint(0, 960)  # wrong answers stay within 30 of n, and number_to_words stops at 999
    numbers, answer = _numeric_options(rng, n, 30)
    return "elementary_mathematics", f"How is the number {n} written in words?", [syn.number_to_words(int(x)) for x in numbers], answer


def _q_largest(rng):
    numbers = rng.sample(range(1000), 4)
    smallest = rng.random() < 0.5
    target = min(numbers) if smallest else max(numbers)
    question = f"Which of these numbers is the {'smallest' if smallest else 'largest'}?"
    return "high_school_mathematics", question, [str(n) for n in numbers], numbers.index(target)


def _q_parity(rng):
    even = rng.random() < 0.5
    matching = rng.randrange(1, 100) // 2 * 2 + (0 if even else 1)
    others = set()
    while len(others) < 3:
        n = rng.randrange(1, 100) // 2 * 2 + (1 if even else 0)
        others.add(n)
    numbers = sorted(others) + [matching]
    rng.shuffle(numbers)
    return "elementary_mathematics", f"Which of these numbers is {'even' if even else 'odd'}?", [str(n) for n in numbers], numbers.index(matching)


def _q_word_length(rng):
    word = rng.choice(syn.WORDS)
    return "miscellaneous", f"How many letters are in the word \"{word}\"?", *_numeric_options(rng, len(word), 3, low=1)


def _q_first_letter(rng):
    word = rng.choice(syn.WORDS)
    wrong = rng.sample(sorted(set("abcdefghijklmnopqrstuvwxyz") - {word[0]}), 3)
    choices = wrong + [word[0]]
    rng.shuffle(choices)
    return "miscellaneous", f"What is the first letter of the word \"{word}\"?", choices, choices.index(word[0])


_KINDS = [_q_add, _q_sub, _q_mul, _q_div, _q_words_to_number, _q_number_to_words, _q_largest, _q_parity,
          _q_word_length, _q_first_letter]


def _twin_row(rng: random.Random, i: int) -> dict:
    subject, question, choices, answer = rng.choice(_KINDS)(rng)
    return {"question": question, "subject": subject, "choices": choices, "answer": answer}


def mmlu_twin(subset: str, split: str) -> GeneratedRows:
    return GeneratedRows(f"mmlu-twin-{subset}-{split}", TWIN_SIZES[(subset, split)], _twin_row)

# -----------------------------------------------------------------------------
# Task


class MMLU(MultipleChoiceTask):
    def __init__(self, subset: str = "all", split: str = "test", data_files=None,
                 offline: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if subset not in SUBSETS:
            raise ValueError(f"MMLU subset must be one of {SUBSETS}, not {subset!r}")
        if split not in SPLITS[subset]:
            raise ValueError(f"MMLU subset {subset!r} has splits {SPLITS[subset]}, not {split!r}")
        self.subset, self.split = subset, split
        self.ds = load_rows("cais/mmlu", subset, split, data_files, offline, lambda: mmlu_twin(subset, split))

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        if isinstance(row.get("train"), dict):  # the auxiliary_train config wraps each row
            row = row["train"]
        choices = list(row["choices"])
        letters = list(LETTERS[: len(choices)])
        answer = int(row["answer"])
        if not 0 <= answer < len(choices):
            raise ValueError(f"MMLU row {index}: answer {answer} out of range for {len(choices)} choices")
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, choices)},
                {"role": "assistant", "content": letters[answer]},
            ],
            "letters": letters,
            "subject": row.get("subject", ""),
        }
