"""
The offline twins, in one place: synthetic text in FineWeb-Edu's parquet layout, each
task's rows in its hub columns, and the CORE eval bundle, all generated from one set of
fact tables and generators.

With no network (tests, CI, the CPU demo) the pipeline still needs data that a tiny model
can visibly learn from in minutes, and on which each stage's effect shows. So the text is
templated and regular, yet varied enough in names, numbers and phrasing that it cannot just
be memorized; and every held-out question is one that no training text contains:

- the facts (colours, animals, capitals, calendar, words) are stated in the pretraining
  text in several ways, so the multiple-choice twins (ARC, MMLU) and the CORE twin can ask
  about them;
- a question belongs to the held-out side or the training side by a hash of its words
  (`is_held_out`), never by chance: the pretraining text, SmolTalk and every train split
  only ever use training-side questions, every test split only held-out ones.

Modules: heldout (the held-out rule), words (vocabulary, people, grammar), facts (the fact
tables and the questions about them), arithmetic (GSM8K-format word problems), spelling,
code (HumanEval-format functions), stories, pretraining (documents and shards), rows
(GeneratedRows), task_rows (each task's twin rows), core_bundle (the CORE twin bundle).
The generators are plain functions of a `random.Random`, so tasks can draw fresh examples
from the same distribution.

Write the pretraining shards with `NANOCHAT_DATASET=synthetic python -m nanochat.dataset -n 8`.
"""

from nanochat.synthetic.arithmetic import THINGS, make_arithmetic_problem
from nanochat.synthetic.code import CODE_KINDS, CodeKind, CodeProblem, make_code_problem, make_code_snippet
from nanochat.synthetic.core_bundle import OFFLINE_ROWS_PER_TASK, OFFLINE_TASKS, core_bundle_files
from nanochat.synthetic.facts import (ALL_COLORS, ALL_KINDS, ARC_CHALLENGE_KINDS, ARC_EASY_KINDS, BABIES, CAPITALS,
                                      COLORS, CONTINENTS, DAYS, HOMES, LEGS, MMLU_KINDS, MONTHS, OPPOSITES,
                                      ORDINALS, PLURALS, QUIZ_LETTERS, SENSES, SOUNDS, MultipleChoice, Question,
                                      make_fact, make_multiple_choice, make_question, make_quiz)
from nanochat.synthetic.heldout import HELD_OUT_PERCENT, draw, is_held_out, question_key
from nanochat.synthetic.pretraining import make_document, write_shards
from nanochat.synthetic.rows import GeneratedRows
from nanochat.synthetic.spelling import letter_tally, make_spelling_drill
from nanochat.synthetic.stories import make_story
from nanochat.synthetic.task_rows import (ARC_SIZES, GSM8K_SIZES, HUMANEVAL_SIZE, MMLU_SIZES, SMOLTALK_SIZES,
                                          arc_twin, gsm8k_twin, humaneval_twin, mmlu_twin, smoltalk_twin)
from nanochat.synthetic.words import (FEMALE_NAMES, MALE_NAMES, WORDS, Person, article, make_person,
                                      number_to_words, plural, two_people)

__all__ = [
    "THINGS", "make_arithmetic_problem",
    "CODE_KINDS", "CodeKind", "CodeProblem", "make_code_problem", "make_code_snippet",
    "OFFLINE_ROWS_PER_TASK", "OFFLINE_TASKS", "core_bundle_files",
    "ALL_COLORS", "ALL_KINDS", "ARC_CHALLENGE_KINDS", "ARC_EASY_KINDS", "BABIES", "CAPITALS", "COLORS", "CONTINENTS",
    "DAYS", "HOMES", "LEGS", "MMLU_KINDS", "MONTHS", "OPPOSITES", "ORDINALS", "PLURALS", "QUIZ_LETTERS", "SENSES",
    "SOUNDS", "MultipleChoice", "Question", "make_fact", "make_multiple_choice", "make_question", "make_quiz",
    "HELD_OUT_PERCENT", "draw", "is_held_out", "question_key",
    "make_document", "write_shards",
    "GeneratedRows",
    "letter_tally", "make_spelling_drill",
    "make_story",
    "ARC_SIZES", "GSM8K_SIZES", "HUMANEVAL_SIZE", "MMLU_SIZES", "SMOLTALK_SIZES",
    "arc_twin", "gsm8k_twin", "humaneval_twin", "mmlu_twin", "smoltalk_twin",
    "FEMALE_NAMES", "MALE_NAMES", "WORDS", "Person", "article", "make_person", "number_to_words", "plural", "two_people",
]
