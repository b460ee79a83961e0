"""
ARC (AI2 Reasoning Challenge): grade-school science questions with 3 to 5 choices.
Hub: allenai/ai2_arc, configs ARC-Easy and ARC-Challenge; columns `question`,
`choices` = {"text": [...], "label": [...]}, `answerKey`. Rows are shuffled with seed 42,
as nanochat does (tasks.common.load_rows).

Offline twin: 4-choice questions about nature facts that the pretraining twin states
(nanochat/synthetic/: colours, animal sounds, legs, babies and homes, the senses); Easy
asks from the thing to the fact ("What does a cow say?"), Challenge the other way round
("Which animal says moo?"). The train split asks only training-side questions, validation
and test only held-out ones (synthetic.is_held_out), so every test question is worded in a
way no training text uses, about a fact the model could have read. Row i of a split comes
from its own seeded RNG.
"""

from __future__ import annotations

from nanochat.synthetic import arc_twin
from tasks.common import (
    MultipleChoiceTask,
    load_rows,
    mc_conversation,
)

SUBSETS = ("ARC-Easy", "ARC-Challenge")
SPLITS = ("train", "validation", "test")

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
        return mc_conversation(row["question"], texts, labels.index(row["answerKey"]))
