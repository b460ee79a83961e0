"""
GSM8K: grade-school math word problems with worked answers.
Hub: openai/gsm8k, configs "main" and "socratic", splits train (7473) and test (1319);
columns `question` and `answer`. The answer's steps carry calculator annotations
`<<expr=result>>` and the answer ends with a line `#### N`.

Here the assistant's reply is a list of parts: every annotation becomes a python call
(`expr`) and its output (`result`), so the model learns to use the calculator tool. The
final `#### N` stays in the text; evaluation and the RL reward read the number after it.

Offline twin: multi-step problems from nanochat.synthetic.make_arithmetic_problem (GSM8K's
exact format; half the answers work their sums without the calculator, one text part), 8000
train and 500 test: train only training-side questions, test only
held-out ones (synthetic.is_held_out), so no test question is in the train split or in the
pretraining twin. Rows from the hub or data_files= are shuffled with seed 42, as nanochat does.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from nanochat.synthetic import gsm8k_twin
from tasks.common import Task, assistant_text, load_rows

SUBSETS = ("main", "socratic")
SPLITS = ("train", "test")

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
# after "####": an optional sign and dollar sign in either order, then digits with commas and a decimal point
_NUMBER = re.compile(r"\s*([-+]?)\s*\$?\s*([-+]?)\s*(\d[\d,]*(?:\.\d*)?|\.\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the last '####' (commas, '$' and a trailing '.' removed), or None."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1]
    m = _NUMBER.match(tail)
    if m is None:
        return None
    sign = "-" if "-" in (m.group(1) + m.group(2)) else ""
    number = m.group(3).replace(",", "").rstrip(".")
    return sign + number


def _same_number(a: str, b: str) -> bool:
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a == b


def answer_to_parts(answer: str) -> list[dict]:
    """Split a GSM8K answer into text / python / python_output parts at each <<expr=result>>."""
    parts: list[dict] = []
    pos = 0
    for m in _ANNOTATION.finditer(answer):
        inner = m.group(1)
        if "=" not in inner:
            raise ValueError(f"calculator annotation without '=': <<{inner}>>")
        expr, result = inner.rsplit("=", 1)
        if m.start() > pos:
            parts.append({"type": "text", "text": answer[pos:m.start()]})
        parts.append({"type": "python", "text": expr})
        parts.append({"type": "python_output", "text": result})
        pos = m.end()
    if pos < len(answer):
        parts.append({"type": "text", "text": answer[pos:]})
    return parts


class GSM8K(Task):
    def __init__(self, subset: str = "main", split: str = "train", data_files=None,
                 offline: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if subset not in SUBSETS:
            raise ValueError(f"GSM8K subset must be one of {SUBSETS}, not {subset!r}")
        if split not in SPLITS:
            raise ValueError(f"GSM8K split must be one of {SPLITS}, not {split!r}")
        self.subset, self.split = subset, split
        self.ds = load_rows("openai/gsm8k", subset, split, data_files, offline, lambda: gsm8k_twin(split))

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        try:
            parts = answer_to_parts(row["answer"])
        except ValueError as e:
            raise ValueError(f"GSM8K row {index}: {e}") from None
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": parts},
            ]
        }

    def evaluate(self, conversation: dict, response: str) -> bool:
        gold = extract_answer(assistant_text(conversation["messages"][-1]))
        if gold is None:
            raise ValueError("the reference answer has no '#### N' line")
        predicted = extract_answer(response)
        return predicted is not None and _same_number(predicted, gold)

    def reward(self, conversation: dict, response: str) -> float:
        return 1.0 if self.evaluate(conversation, response) else 0.0
