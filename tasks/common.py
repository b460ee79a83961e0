"""
The Task interface shared by every data set used after pretraining, plus the helpers the
task modules share: mixtures and sequences of tasks, the multiple-choice prompt, the offline
switch, local-file loading and conversation validation.

A task is a list of conversations. A conversation is
    {"messages": [{"role": "user"|"assistant"|"system", "content": str | list of parts}, ...]}
where an assistant's content may be a list of parts {"type": "text"|"python"|"python_output",
"text": str}. Categorical (multiple-choice) examples also carry "letters", the letters the
answer is chosen from.
"""

from __future__ import annotations

import bisect
import operator
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

# -----------------------------------------------------------------------------
# Task, TaskMixture, TaskSequence


class Task(ABC):
    """
    A view over a data set with list-like slicing: the task's examples are
    get_example(start), get_example(start + step), ... up to (not including) stop.
    Subclasses implement num_examples() and get_example(); evaluable tasks also implement
    eval_type and evaluate(), and optionally reward().
    """

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if stop is not None and stop < start:
            raise ValueError(f"stop ({stop}) must be >= start ({start})")
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.start, self.stop, self.step = start, stop, step

    # ---- to implement ----

    @abstractmethod
    def num_examples(self) -> int:
        """Number of examples in the whole underlying data set, ignoring start/stop/step."""

    @abstractmethod
    def get_example(self, index: int) -> dict:
        """The conversation at `index` of the whole underlying data set."""

    @property
    def eval_type(self) -> str:
        """'generative' (sample a response, then evaluate it) or 'categorical' (pick one of the letters)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be evaluated")

    def evaluate(self, conversation: dict, response: str) -> bool | int:
        raise NotImplementedError(f"{type(self).__name__} cannot be evaluated")

    def reward(self, conversation: dict, response: str) -> float:
        return float(self.evaluate(conversation, response))

    # ---- list-like view ----

    def _range(self) -> range:
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)
        return range(self.start, max(stop, self.start), self.step)

    def __len__(self) -> int:
        return len(self._range())

    def __getitem__(self, i: int) -> dict:
        try:
            i = operator.index(i)  # ints, numpy ints, ...
        except TypeError:
            raise TypeError(f"task indices must be integers, not {type(i).__name__}") from None
        indices = self._range()
        try:
            index = indices[i]  # range handles negative indices and raises IndexError past the end
        except IndexError:
            raise IndexError(f"{type(self).__name__} index {i} out of range for {len(indices)} examples") from None
        return self.get_example(index)

    def __iter__(self) -> Iterator[dict]:
        for index in self._range():
            yield self.get_example(index)


class TaskMixture(Task):
    """
    Every example of every task, in one shuffled order that depends only on the seed (and the
    tasks' lengths), so every process of a distributed run sees the same order. Listing a task
    twice oversamples it: all of its examples appear twice.
    """

    def __init__(self, tasks: Sequence[Task], seed: int = 42, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("TaskMixture needs at least one task")
        self.seed = seed
        index = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(seed).shuffle(index)
        self._index = index

    def num_examples(self) -> int:
        return len(self._index)

    def get_example(self, index: int) -> dict:
        t, i = self._index[index]
        return self.tasks[t][i]


class TaskSequence(Task):
    """The tasks one after another: all of the first, then all of the second, ..."""

    def __init__(self, tasks: Sequence[Task], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("TaskSequence needs at least one task")
        self._ends: list[int] = []
        total = 0
        for task in self.tasks:
            total += len(task)
            self._ends.append(total)

    def num_examples(self) -> int:
        return self._ends[-1]

    def get_example(self, index: int) -> dict:
        if not 0 <= index < self._ends[-1]:
            raise IndexError(f"TaskSequence index {index} out of range for {self._ends[-1]} examples")
        t = bisect.bisect_right(self._ends, index)
        begin = self._ends[t - 1] if t > 0 else 0
        return self.tasks[t][index - begin]


# -----------------------------------------------------------------------------
# Multiple choice

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """
    The user prompt of a multiple-choice question; the assistant answers with one letter.

    Each choice sits on its own line as "A: text". This is for the tokenizer: under the
    GPT-4-style split pattern a newline is always its own pre-token (or ends the punctuation
    run before it) and the ":" after the letter is not a letter, so the letter at the start of
    a line is a pre-token by itself, exactly like the bare "A" the assistant writes as its whole
    answer. Both therefore become the same single token, and the model can learn to copy the
    label of the right line. A letter after a space or "=" (" A", "=A") would be pre-tokenized
    together with that character and become a different token from the answer.
    """
    if len(letters) != len(choices):
        raise ValueError(f"{len(letters)} letters for {len(choices)} choices")
    lines = [f"Multiple Choice question: {question}\n"]
    for letter, choice in zip(letters, choices):
        lines.append(f"{letter}: {choice}\n")
    lines.append("\nRespond only with the letter of the correct answer.")
    return "".join(lines)


class MultipleChoiceTask(Task):
    """Shared evaluation of categorical tasks: the last message holds the gold letter."""

    @property
    def eval_type(self) -> str:
        return "categorical"

    def evaluate(self, conversation: dict, response: str) -> bool:
        gold = conversation["messages"][-1]["content"]
        letters = conversation.get("letters")
        if letters is not None:
            assert gold in letters, f"gold answer {gold!r} is not one of the letters {letters}"
        return response.strip() == gold


def mc_conversation(question: str, choices: Sequence[str], answer: int) -> dict:
    """A multiple-choice conversation: letters A, B, ... and the gold letter as the reply."""
    letters = list(LETTERS[: len(choices)])
    return {
        "messages": [
            {"role": "user", "content": render_mc(question, letters, list(choices))},
            {"role": "assistant", "content": letters[answer]},
        ],
        "letters": letters,
    }


# -----------------------------------------------------------------------------
# Offline switch and data loading


def is_offline(offline: bool | None = None) -> bool:
    """
    Whether to use the offline twins: `offline` when given, otherwise whether
    $NANOCHAT_DATASET is "synthetic" (the one switch for the whole offline pipeline).
    """
    if offline is not None:
        return bool(offline)
    from nanochat.dataset import get_dataset_name

    return get_dataset_name() == "synthetic"


_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.bz2", ".jsonl.xz", ".jsonl.zst")
_PARQUET_SUFFIXES = (".parquet",)


def _builder_for(path: str) -> str:
    lower = path.lower()
    if lower.endswith(_JSON_SUFFIXES):
        return "json"
    if lower.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(f"cannot tell the format of {path!r}: expected .jsonl/.json(.gz) or .parquet")


def load_local(data_files: str | os.PathLike | Sequence[str | os.PathLike]):
    """Rows of local JSONL/JSON or parquet files (same columns as the hub) as a datasets.Dataset."""
    import datasets

    files = [os.fspath(data_files)] if isinstance(data_files, (str, os.PathLike)) else [os.fspath(f) for f in data_files]
    if not files:
        raise ValueError("data_files is empty")
    builders = {_builder_for(f) for f in files}
    if len(builders) > 1:
        raise ValueError(f"data_files mixes formats ({', '.join(sorted(builders))}): {files}")
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"data file {f} does not exist")
    return datasets.load_dataset(builders.pop(), data_files=files, split="train")


SHUFFLE_SEED = 42  # nanochat's: the same rows in the same order as its tasks see


def shuffle_rows(rows: Any, seed: int = SHUFFLE_SEED) -> Any:
    """
    Rows in the order datasets.Dataset.shuffle(seed=seed) gives them: a permutation drawn by
    numpy.random.default_rng(seed), so it depends only on the seed and the number of rows, and
    local files holding a hub split's rows come out in the hub's shuffled order. Anything
    else indexable (a list) is reordered the same way.
    """
    if hasattr(rows, "shuffle"):
        return rows.shuffle(seed=seed, keep_in_memory=True)  # in memory: no index file in the datasets cache
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[int(i)] for i in order]


def load_rows(
    hub_path: str,
    config: str | None,
    split: str,
    data_files: Any = None,
    offline: bool | None = None,
    twin: Callable[[], Sequence[dict]] | None = None,
):
    """
    The rows of a data set, from (in order of precedence) local `data_files`, the offline
    `twin()`, or the hub. Whichever source, rows look the same (the hub's columns), so the
    code that turns rows into conversations is shared.

    Rows from the hub or from files are shuffled with SHUFFLE_SEED, as nanochat's tasks do:
    hub splits are often sorted (MMLU by subject), and a task's first N rows (`stop=N`,
    `--max_problems=N`) should be a random sample. A twin's rows are generated in random
    order already.
    """
    if data_files is not None:
        return shuffle_rows(load_local(data_files))
    if is_offline(offline):
        if twin is None:
            raise ValueError(f"{hub_path} has no offline twin: pass data_files=")
        return twin()
    import datasets

    return shuffle_rows(datasets.load_dataset(hub_path, config, split=split))


def download_small_file(url: str, path: str | os.PathLike, what: str, offline_hint: str, timeout: float = 60.0) -> str:
    """Fetch a small file whole and write it atomically; a failure names the URL and the offline way."""
    import requests

    from nanochat.common import atomic_write

    path = os.fspath(path)
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as e:
        raise RuntimeError(f"could not download {what} from {url}: {e} ({offline_hint})") from e
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda f: f.write(response.content))
    return path


# -----------------------------------------------------------------------------
# Conversation validation


def validate_messages(messages: Any, allow_parts: bool = False, last: Literal["assistant", "user"] = "assistant") -> None:
    """
    Raise ValueError, saying what is wrong, unless `messages` is a well-formed chat: an optional
    system message, then user and assistant alternating, starting with user and ending with
    `last` ("assistant" for training data, "user" for a conversation waiting for its reply),
    every content a non-empty string (or, with allow_parts, an assistant list of parts).
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list, not {type(messages).__name__}")
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{j}] is a {type(message).__name__}, not an object")  # noqa: TRY004 (bad data, not a bad call)
        if "role" not in message or "content" not in message:
            raise ValueError(f"messages[{j}] needs 'role' and 'content', has {sorted(message)}")
    offset = 1 if messages[0]["role"] == "system" else 0
    if offset == len(messages):
        raise ValueError("the conversation has only a system message; add a user message after it")
    for j, message in enumerate(messages[offset:], start=offset):
        expected = "user" if (j - offset) % 2 == 0 else "assistant"
        if message["role"] == "system":
            raise ValueError(f"messages[{j}] is a system message; only the first message may be one")
        if message["role"] != expected:
            raise ValueError(f'messages[{j}] has role "{message["role"]}" where "{expected}" was expected: after an '
                             "optional system message, user and assistant messages must alternate, starting with user")
    if messages[-1]["role"] != last:
        raise ValueError(f"the conversation must end with {'an' if last == 'assistant' else 'a'} {last} message")
    for j, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, str):
            if not content.strip():
                raise ValueError(f"messages[{j}] ({message['role']}) has empty content")
        elif allow_parts and message["role"] == "assistant" and isinstance(content, list):
            for part in content:
                if not (isinstance(part, dict) and part.get("type") in ("text", "python", "python_output")
                        and isinstance(part.get("text"), str)):
                    raise ValueError(f"messages[{j}] has a malformed part {part!r}")
        else:
            raise ValueError(f"messages[{j}] ({message['role']}) content must be a string, not {type(content).__name__}")


def assistant_text(message: dict) -> str:
    """The assistant message's content as one string (parts concatenated, tool output included)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)
