"""
SmolTalk: general chat conversations.
Hub: HuggingFaceTB/smol-smoltalk, splits train and test; column `messages`, a list of
{"role", "content"}: an optional system message, then user and assistant alternating.

Offline twin: multi-turn chats generated from nanochat/synthetic/'s material (greetings,
training-side questions on the fact tables, short stories, spelling, arithmetic in words,
tiny functions to complete as HumanEval asks them), 5000 train and 500 test, each
conversation from its own seeded RNG. Rows from the hub or data_files= are shuffled with
seed 42, as nanochat does, so `stop=N` takes a random subset.
"""

from __future__ import annotations

from nanochat.synthetic import smoltalk_twin
from tasks.common import Task, load_rows, validate_messages

SPLITS = ("train", "test")

# -----------------------------------------------------------------------------
# Task


class SmolTalk(Task):
    def __init__(self, split: str = "train", data_files=None, offline: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise ValueError(f"SmolTalk split must be one of {SPLITS}, not {split!r}")
        self.split = split
        self.ds = load_rows("HuggingFaceTB/smol-smoltalk", None, split, data_files, offline, lambda: smoltalk_twin(split))

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        # validated on access: checking all ~460k hub rows up front would slow every start-up
        messages = self.ds[index]["messages"]
        try:
            validate_messages(messages)
        except ValueError as e:
            raise ValueError(f"SmolTalk {self.split} row {index}: {e}") from None
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
