"""
The CORE twin bundle: six small tasks in the real eval bundle's layout (core.yaml,
eval_meta_data.csv, eval_data/<category>/<label>.jsonl), about facts the pretraining twin
states. nanochat.core_eval writes it to disk (write_offline_bundle) and evaluates it like
the real one.
"""

from __future__ import annotations

import csv
import io
import json
import random

from nanochat.synthetic.facts import CAPITALS, DAYS, LEGS, MONTHS, OPPOSITES, ORDINALS, SOUNDS
from nanochat.synthetic.words import FEMALE_NAMES, MALE_NAMES, article, number_to_words, plural

def _capitals_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        (country, capital), *others = rng.sample(CAPITALS, 4)
        choices = [capital] + [c for _, c in others]
        rng.shuffle(choices)
        rows.append({"query": f"The capital of {country} is", "choices": choices, "gold": choices.index(capital)})
    return rows


def _sounds_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        (animal, sound), *others = rng.sample(SOUNDS, 4)
        choices = [sound] + [s for _, s in others]
        rng.shuffle(choices)
        rows.append({"query": f"Question: What sound does {article(animal)} make?", "choices": choices,
                     "gold": choices.index(sound)})
    return rows


def _legs_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    while len(rows) < n:
        (a, legs_a), (b, legs_b) = rng.sample(LEGS, 2)
        if legs_a == legs_b:
            continue
        options = [f"{article(a).capitalize()} has", f"{article(b).capitalize()} has"]
        continuation = "no legs." if legs_a == 0 else plural(legs_a, "leg", "legs") + "."
        gold = rng.randrange(2)
        if gold == 1:
            options.reverse()
        rows.append({"context_options": options, "continuation": continuation, "gold": gold})
    return rows


def _pronoun_rows(rng: random.Random, n: int) -> list[dict]:
    places = ["park", "beach", "market", "library", "zoo", "farm", "forest", "lake", "garden", "museum"]
    rows = []
    for _ in range(n):
        people = [(rng.choice(FEMALE_NAMES), "she", "her"), (rng.choice(MALE_NAMES), "he", "his")]
        rng.shuffle(people)
        place, gold = rng.choice(places), rng.randrange(2)
        _, he, his = people[gold]
        rows.append({"context_options": [f"{name} went to the {place}, and then" for name, _, _ in people],
                     "continuation": f"{he} went home to {his} family.", "gold": gold})
    return rows


def _relations_rows(rng: random.Random, n: int) -> list[dict]:
    facts = [(f"The opposite of {a} is", b) for pair in OPPOSITES for a, b in (pair, pair[::-1])]
    for seq, unit in ((DAYS, "day"), (MONTHS, "month")):
        for i, name in enumerate(seq):
            facts.append((f"The {unit} after {name} is", seq[(i + 1) % len(seq)]))
            facts.append((f"The {unit} before {name} is", seq[(i - 1) % len(seq)]))
    facts += [(f"The {ORDINALS[i]} month of the year is", MONTHS[i]) for i in range(12)]
    rows = [{"context": context, "continuation": continuation} for context, continuation in facts]
    rng.shuffle(rows)
    return rows[:n]


def _number_words_rows(rng: random.Random, n: int) -> list[dict]:
    return [{"context": f"The number {k} is written as", "continuation": number_to_words(k)}
            for k in rng.sample(range(1000), n)]


# label, category, type, num_fewshot, continuation_delimiter (None: the default " "), generator, options
OFFLINE_TASKS = [
    ("synthetic_capitals", "world_knowledge", "multiple_choice", 5, None, _capitals_rows, 4),
    ("synthetic_animal_sounds", "world_knowledge", "multiple_choice", 0, "\nAnswer: ", _sounds_rows, 4),
    ("synthetic_animal_legs", "commonsense_reasoning", "schema", 3, None, _legs_rows, 2),
    ("synthetic_pronouns", "language_understanding", "schema", 0, None, _pronoun_rows, 2),
    ("synthetic_relations", "language_understanding", "language_modeling", 10, None, _relations_rows, 0),
    ("synthetic_number_words", "symbolic_problem_solving", "language_modeling", 5, None, _number_words_rows, 0),
]
OFFLINE_ROWS_PER_TASK = 100


def _core_yaml(entries: list[dict]) -> str:
    """core.yaml in the real bundle's layout; JSON-quoted strings are valid YAML double-quoted scalars."""
    lines = ["icl_tasks:"]
    for entry in entries:
        for i, (key, value) in enumerate(entry.items()):
            plain = isinstance(value, str) and key != "continuation_delimiter"  # labels and paths need no quotes
            lines.append(f"{'- ' if i == 0 else '  '}{key}: {value if plain else json.dumps(value)}")
    return "\n".join(lines) + "\n"


def core_bundle_files() -> dict[str, str]:
    """Every file of the twin bundle, relative path -> text; a pure function of the code."""
    files, entries = {}, []
    meta = io.StringIO()
    writer = csv.writer(meta, lineterminator="\n")
    writer.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "#datapoints", "Random baseline", "Description"])
    for label, category, task_type, shots, delimiter, make_rows, n_options in OFFLINE_TASKS:
        rows = make_rows(random.Random(f"nanochat-core-offline-{label}"), OFFLINE_ROWS_PER_TASK)
        uri = f"{category}/{label}.jsonl"
        files[f"eval_data/{uri}"] = "".join(json.dumps(row) + "\n" for row in rows)
        entry = {"label": label, "dataset_uri": uri, "num_fewshot": [shots], "icl_task_type": task_type}
        if delimiter is not None:
            entry["continuation_delimiter"] = delimiter
        entries.append(entry)
        baseline = 100.0 / n_options if n_options else 0.0
        writer.writerow([label, category, task_type, shots, len(rows), baseline, "offline twin from nanochat.synthetic"])
    files["core.yaml"] = _core_yaml(entries)
    files["eval_meta_data.csv"] = meta.getvalue()
    return files
