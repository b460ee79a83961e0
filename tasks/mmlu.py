"""
MMLU: multiple-choice questions over 57 subjects, always 4 choices.
Hub: cais/mmlu, config "all" (splits test, validation, dev, auxiliary_train) or
"auxiliary_train" (split train); columns `question`, `subject`, `choices` (4 strings),
`answer` (index 0-3). In the auxiliary_train config each row's fields sit under a
`train` key; rows are unwrapped here whatever their source. Rows are shuffled with seed 42,
as nanochat does (tasks.common.load_rows): the hub's splits are sorted by subject.

Offline twin: questions about facts the pretraining twin states (nanochat/synthetic/:
capitals and continents, the calendar, opposites and plurals, small sums), each with an
MMLU-style subject. auxiliary_train asks only training-side questions, the other splits only
held-out ones (synthetic.is_held_out).
"""

from __future__ import annotations

from nanochat.synthetic import mmlu_twin
from tasks.common import (
    MultipleChoiceTask,
    load_rows,
    mc_conversation,
)

SUBSETS = ("all", "auxiliary_train")
SPLITS = {"all": ("test", "validation", "dev", "auxiliary_train"), "auxiliary_train": ("train",)}

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
        answer = int(row["answer"])
        if not 0 <= answer < len(choices):
            raise ValueError(f"MMLU row {index}: answer {answer} out of range for {len(choices)} choices")
        return {**mc_conversation(row["question"], choices, answer), "subject": row.get("subject", "")}
