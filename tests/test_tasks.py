"""Tests for tasks/common.py and the offline twins of every task (CPU, no network)."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanochat import synthetic as syn
from nanochat.synthetic import GeneratedRows
from tasks.arc import ARC
from tasks.common import (
    LETTERS,
    Task,
    TaskMixture,
    TaskSequence,
    assistant_text,
    is_offline,
    load_local,
    render_mc,
    validate_messages,
)
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee

ROOT = Path(__file__).resolve().parents[1]


class Numbers(Task):
    """A toy task whose example i says i, so orders and slices are easy to read."""

    def __init__(self, n: int, tag: str = "n", **kwargs):
        super().__init__(**kwargs)
        self.n, self.tag = n, tag

    def num_examples(self):
        return self.n

    def get_example(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return {"messages": [{"role": "user", "content": f"{self.tag}{index}"},
                             {"role": "assistant", "content": "ok"}]}


def ids(task) -> list[str]:
    return [ex["messages"][0]["content"] for ex in task]


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach the hub (or the network through requests) fails the test."""
    import datasets
    import requests

    real = datasets.load_dataset

    def guarded(path, *args, **kwargs):
        if path not in ("json", "parquet"):
            raise AssertionError(f"tried to load {path!r} from the hub")
        return real(path, *args, **kwargs)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(datasets, "load_dataset", guarded)
    monkeypatch.setattr(requests, "get", no_network)


@pytest.fixture
def offline_env(monkeypatch, no_hub):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")

# -----------------------------------------------------------------------------
# Task slicing


def test_slicing_len_getitem_iter():
    task = Numbers(10)
    assert len(task) == 10 and ids(task) == [f"n{i}" for i in range(10)]
    sliced = Numbers(10, start=2, stop=9, step=3)
    assert len(sliced) == 3
    assert ids(sliced) == ["n2", "n5", "n8"]
    assert sliced[0]["messages"][0]["content"] == "n2"
    assert sliced[-1]["messages"][0]["content"] == "n8"
    assert sliced[-3]["messages"][0]["content"] == "n2"
    for bad in (3, 100, -4):
        with pytest.raises(IndexError):
            sliced[bad]
    assert ids(Numbers(10, start=7)) == ["n7", "n8", "n9"]
    assert ids(Numbers(10, stop=100)) == ids(Numbers(10))  # stop past the end is clipped
    assert len(Numbers(10, start=10)) == 0 and list(Numbers(10, start=12)) == []
    assert ids(Numbers(10, step=4)) == ["n0", "n4", "n8"]
    with pytest.raises(ValueError):
        Numbers(10, step=0)
    with pytest.raises(ValueError):
        Numbers(10, start=5, stop=2)
    with pytest.raises(TypeError):
        Numbers(10)["1"]


def test_slices_of_a_real_task_match_the_whole(offline_env):
    whole = ARC(split="validation")
    part = ARC(split="validation", start=5, stop=50, step=7)
    assert [ex for ex in part] == [whole[i] for i in range(5, 50, 7)]


def test_default_reward_is_float_of_evaluate():
    class Echo(Numbers):
        eval_type = "generative"

        def evaluate(self, conversation, response):
            return response == "yes"

    task = Echo(3)
    assert task.reward(task[0], "yes") == 1.0 and task.reward(task[0], "no") == 0.0
    with pytest.raises(NotImplementedError):
        Numbers(3).evaluate(Numbers(3)[0], "x")

# -----------------------------------------------------------------------------
# TaskMixture and TaskSequence


def test_mixture_deterministic_and_seed_dependent():
    tasks = [Numbers(30, "a"), Numbers(20, "b")]
    first, again = ids(TaskMixture(tasks)), ids(TaskMixture(tasks))
    assert first == again
    assert ids(TaskMixture(tasks, seed=7)) != first
    assert first != ids(TaskSequence(tasks))  # it is shuffled at all
    # the tasks are interleaved, not one block after another
    assert {x[0] for x in first[:20]} == {"a", "b"}


def test_mixture_same_order_in_another_process():
    code = ("import json\n"
            "from tasks.common import Task, TaskMixture\n"
            "class Numbers(Task):\n"
            "    def __init__(self, n, tag):\n"
            "        super().__init__(); self.n, self.tag = n, tag\n"
            "    def num_examples(self): return self.n\n"
            "    def get_example(self, i): return {'messages': [{'role': 'user', 'content': f'{self.tag}{i}'}]}\n"
            "mix = TaskMixture([Numbers(30, 'a'), Numbers(20, 'b')], seed=3)\n"
            "print(json.dumps([ex['messages'][0]['content'] for ex in mix]))\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ids(TaskMixture([Numbers(30, "a"), Numbers(20, "b")], seed=3))


def test_mixture_covers_every_example_once_and_oversamples():
    a, b = Numbers(30, "a"), Numbers(20, "b", start=5)  # a sliced task contributes its slice
    mixed = ids(TaskMixture([a, b]))
    assert len(mixed) == 30 + 15
    assert sorted(mixed) == sorted(ids(a) + ids(b))
    twice = ids(TaskMixture([a, b, a]))
    assert len(twice) == 75
    assert sorted(twice) == sorted(ids(a) * 2 + ids(b))
    # and a mixture is itself a task: it slices
    assert ids(TaskMixture([a, b], start=10, stop=20)) == mixed[10:20]


def test_sequence_order():
    a, b, c = Numbers(3, "a"), Numbers(0, "b"), Numbers(2, "c")
    seq = TaskSequence([a, b, c])
    assert ids(seq) == ["a0", "a1", "a2", "c0", "c1"]
    assert seq[-1]["messages"][0]["content"] == "c1"
    with pytest.raises(IndexError):
        seq[5]
    assert ids(TaskSequence([a, c], step=2)) == ["a0", "a2", "c1"]

# -----------------------------------------------------------------------------
# render_mc: the answer letter is the same single token as its label in the prompt


def _token_offsets(tok, ids_):
    starts, pos = [], 0
    for i in ids_:
        starts.append(pos)
        pos += len(tok.decode([i]))
    return starts


def _check_letter_binding(tok, question, choices):
    letters = list(LETTERS[: len(choices)])
    prompt = render_mc(question, letters, choices)
    prompt_ids = tok.encode(prompt)
    assert tok.decode(prompt_ids) == prompt
    starts = _token_offsets(tok, prompt_ids)
    for letter, choice in zip(letters, choices):
        answer_ids = tok.encode(letter)  # what the assistant writes: the letter alone
        assert len(answer_ids) == 1, (letter, answer_ids)
        line_start = prompt.index(f"\n{letter}: {choice}\n") + 1
        assert line_start in starts, f"no token starts at {letter}'s line in {prompt!r}"
        k = starts.index(line_start)
        assert prompt_ids[k] == answer_ids[0], f"{letter}'s label is token {prompt_ids[k]}, the answer is {answer_ids[0]}"
        assert tok.decode(prompt_ids[k + 1:]).startswith(f": {choice}\n")
    return prompt


def test_render_mc_format():
    prompt = render_mc("What is 2+2?", ["A", "B"], ["3", "4"])
    assert prompt == ("Multiple Choice question: What is 2+2?\nA: 3\nB: 4\n\n"
                      "Respond only with the letter of the correct answer.")
    with pytest.raises(ValueError):
        render_mc("q", ["A"], ["x", "y"])


@pytest.mark.parametrize("question,choices", [
    ("What is 2+2?", ["3", "4", "5", "22"]),
    ("Pick the animal:", ["Apple pie", "Bear", "Cat food", "Dog"]),
    ("Which value satisfies x = A?", [" leading space", "trailing space ", "12,000", "$5"]),
    ("A question that ends with a number 42", ["x", "y", "z"]),
    ("Question with\ttab and (parentheses)", ["\u00e9t\u00e9", "na\u00efve", "caf\u00e9", "über", "last"]),
])
def test_render_mc_letter_is_the_same_token(tiny_tokenizer, question, choices):
    _check_letter_binding(tiny_tokenizer, question, choices)


def test_mc_twins_bind_letters_in_rendered_conversations(tiny_tokenizer, offline_env):
    tok = tiny_tokenizer
    start = tok.encode_special("<|assistant_start|>")
    for task in (ARC(split="test"), ARC("ARC-Challenge", "test"), MMLU(split="test")):
        for ex in list(task)[:40]:
            row_prompt = ex["messages"][0]["content"]
            question = row_prompt.split("\n")[0].removeprefix("Multiple Choice question: ")
            choices = [line[3:] for line in row_prompt.split("\n")[1:] if re.match(r"^[A-Z]: ", line)]
            _check_letter_binding(tok, question, choices)
            conv_ids, mask = tok.render_conversation(ex)
            k = conv_ids.index(start)
            gold = ex["messages"][1]["content"]
            assert conv_ids[k + 1] == tok.encode(gold)[0] and mask[k + 1] == 1
            # the user turn is the prompt's tokens unchanged, so the labels checked above are those the model sees
            user = conv_ids.index(tok.encode_special("<|user_start|>")) + 1
            assert conv_ids[user:k - 1] == tok.encode(row_prompt)

# -----------------------------------------------------------------------------
# The offline switch and loading


def test_is_offline(monkeypatch):
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    assert not is_offline() and is_offline(True)
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    assert is_offline() and not is_offline(False)
    monkeypatch.setenv("NANOCHAT_DATASET", "fineweb")
    assert not is_offline()


def test_offline_tasks_never_touch_the_hub(no_hub, monkeypatch):
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    for make in (lambda **k: ARC(**k), lambda **k: MMLU(**k), lambda **k: GSM8K(**k), lambda **k: SmolTalk(**k),
                 lambda **k: HumanEval(**k)):
        assert len(make(offline=True)) > 0
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    assert len(GSM8K(split="test")) == 500


def test_online_path_calls_the_hub_with_the_right_names(monkeypatch):
    import datasets

    calls = []
    rows = {
        "allenai/ai2_arc": [{"id": "x", "question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
                             "answerKey": "3"}],
        "cais/mmlu": [{"train": {"question": "Q?", "subject": "s", "choices": ["w", "x", "y", "z"], "answer": 2}}],
        "openai/gsm8k": [{"question": "Q?", "answer": "2+2 = <<2+2=4>>4\n#### 4"}],
        "HuggingFaceTB/smol-smoltalk": [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
        "openai/openai_humaneval": [{"task_id": "t", "prompt": "p", "canonical_solution": "s", "test": "t", "entry_point": "f"}],
    }

    def fake(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return rows[path]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    arc = ARC("ARC-Challenge", "validation")
    assert arc[0]["letters"] == ["A", "B", "C"] and arc[0]["messages"][1]["content"] == "C"  # 1-3 relabelled A-C
    mmlu = MMLU("auxiliary_train", "train")
    assert mmlu[0]["messages"][1]["content"] == "C" and "\nD: z\n" in mmlu[0]["messages"][0]["content"]
    assert GSM8K("socratic", "test")[0]["messages"][1]["content"][1] == {"type": "python", "text": "2+2"}
    assert SmolTalk("test")[0]["messages"][1]["content"] == "hello"
    assert HumanEval()[0]["messages"][1]["content"] == "ps"
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "validation"), ("cais/mmlu", "auxiliary_train", "train"),
                     ("openai/gsm8k", "socratic", "test"), ("HuggingFaceTB/smol-smoltalk", None, "test"),
                     ("openai/openai_humaneval", None, "test")]


def test_bad_subset_or_split():
    with pytest.raises(ValueError):
        ARC("ARC-Medium", offline=True)
    with pytest.raises(ValueError):
        MMLU("auxiliary_train", "test", offline=True)
    with pytest.raises(ValueError):
        GSM8K(split="validation", offline=True)
    with pytest.raises(ValueError):
        SmolTalk(split="dev", offline=True)


def test_data_files_json_and_parquet(tmp_path, offline_env):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arc_rows = [{"id": "a", "question": "Which is red?", "choices": {"text": ["sky", "cherry"], "label": ["A", "B"]},
                 "answerKey": "B"},
                {"id": "b", "question": "Pick 3", "choices": {"text": ["1", "2", "3", "4", "5"], "label": list("ABCDE")},
                 "answerKey": "C"}]
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in arc_rows) + "\n")
    arc = ARC(data_files=str(path))  # data_files win over the offline twin
    order = np.random.default_rng(42).permutation(2)  # rows come shuffled, as datasets' shuffle(seed=42) orders them
    assert len(arc) == 2 and arc[int(np.argmax(order == 1))]["letters"] == list("ABCDE")
    red = arc[int(np.argmax(order == 0))]
    assert arc.evaluate(red, "B") and not arc.evaluate(red, "A")

    mmlu_rows = [{"question": f"q{i}", "subject": "math", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(mmlu_rows), tmp_path / "mmlu.parquet")
    mmlu = MMLU(split="validation", data_files=[tmp_path / "mmlu.parquet"])
    order = np.random.default_rng(42).permutation(6)
    assert [ex["messages"][1]["content"] for ex in mmlu] == ["ABCD"[i % 4] for i in order]
    assert [ex["messages"][0]["content"].split("\n")[0] for ex in mmlu] == \
        [f"Multiple Choice question: q{i}" for i in order]

    with pytest.raises(ValueError, match="format"):
        load_local(str(tmp_path / "rows.csv"))
    with pytest.raises(ValueError, match="mixes"):
        load_local([str(path), str(tmp_path / "mmlu.parquet")])
    with pytest.raises(FileNotFoundError):
        load_local(str(tmp_path / "missing.jsonl"))


def test_generated_rows_are_random_access():
    rows = GeneratedRows("demo", 5, lambda rng, i: {"i": i, "x": rng.random()})
    assert [rows[i] for i in range(5)] == rows[:] == list(rows)
    assert rows[-1] == rows[4] and GeneratedRows("demo", 50, rows.make_row)[3] == rows[3]
    assert GeneratedRows("other", 5, rows.make_row)[3] != rows[3]
    with pytest.raises(IndexError):
        rows[5]


def test_validate_messages():
    ok = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    validate_messages(ok)
    validate_messages([{"role": "system", "content": "be nice"}] + ok)
    bad = [
        [],
        [{"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}],
        [{"role": "system", "content": "s"}],
        [{"role": "user"}, {"role": "assistant", "content": "x"}],
        "not a list",
    ]
    for messages in bad:
        with pytest.raises(ValueError):
            validate_messages(messages)
    parts = ok[:1] + [{"role": "assistant", "content": [{"type": "python", "text": "1+1"}]}]
    with pytest.raises(ValueError):
        validate_messages(parts)
    validate_messages(parts, allow_parts=True)

# -----------------------------------------------------------------------------
# Offline twins: sizes, rendering, evaluation


def test_twin_sizes(offline_env):
    assert [len(ARC(s, split)) for s in ("ARC-Easy", "ARC-Challenge") for split in ("train", "validation", "test")] == \
        [1000, 200, 200] * 2
    assert len(MMLU("auxiliary_train", "train")) == 5000
    assert len(MMLU("all", "test")) == 300 and len(MMLU("all", "validation")) == 300
    assert len(GSM8K(split="train")) == 8000 and len(GSM8K(split="test")) == 500
    assert len(SmolTalk("train")) == 5000 and len(SmolTalk("test")) == 500
    assert len(HumanEval()) == 40


def _sample(task, k=150):
    n = len(task)
    picks = sorted(set(range(min(n, k // 2))) | set(random.Random(0).sample(range(n), min(n, k // 2))))
    return [task[i] for i in picks]


def test_categorical_twins(tiny_tokenizer, offline_env):
    for task in (ARC("ARC-Easy", "train"), ARC("ARC-Challenge", "validation"), MMLU("auxiliary_train", "train"),
                 MMLU("all", "test")):
        assert task.eval_type == "categorical"
        for ex in _sample(task):
            tiny_tokenizer.render_conversation(ex)
            letters = ex["letters"]
            gold = ex["messages"][-1]["content"]
            assert letters == list("ABCD") and gold in letters
            assert task.evaluate(ex, gold) is True
            assert all(task.evaluate(ex, other) is False for other in letters if other != gold)
            assert task.reward(ex, gold) == 1.0
            choices = re.findall(r"^[A-D]: (.*)$", ex["messages"][0]["content"], re.MULTILINE)
            assert len(choices) == 4 and len(set(choices)) == 4, ex


def test_mc_twin_answers_are_correct(offline_env, fact_holds):
    checked = 0
    for task in (ARC("ARC-Easy", "train"), ARC("ARC-Challenge", "test"), MMLU("auxiliary_train", "train"),
                 MMLU("all", "test")):
        for ex in list(task)[:300]:
            prompt = ex["messages"][0]["content"]
            question = prompt.split("\n")[0].removeprefix("Multiple Choice question: ")
            choices = re.findall(r"^[A-D]: (.*)$", prompt, re.MULTILINE)
            gold = ex["letters"].index(ex["messages"][1]["content"])
            verdicts = [fact_holds(question, c) for c in choices]
            if verdicts[gold] is not None:
                assert verdicts == [i == gold for i in range(4)], (question, choices, gold)
                checked += 1
    assert checked > 300


def test_mc_twin_splits_differ_and_are_deterministic(offline_env):
    train, test = ARC(split="train"), ARC(split="test")
    assert [train[i] for i in range(20)] == [ARC(split="train")[i] for i in range(20)]
    assert [train[i] for i in range(20)] != [test[i] for i in range(20)]
    # letters are balanced enough that always answering one letter cannot do well
    golds = [ex["messages"][1]["content"] for ex in MMLU("auxiliary_train", "train", stop=2000)]
    assert max(golds.count(x) for x in "ABCD") < 0.3 * len(golds)


def test_gsm8k_twin(tiny_tokenizer, offline_env):
    train, test = GSM8K(split="train"), GSM8K(split="test")
    styles = [len(ex["messages"][1]["content"]) == 1 for ex in _sample(train, 400)]
    assert 0.35 < sum(styles) / len(styles) < 0.65  # about half the answers are worked in the head
    assert train.eval_type == "generative"
    assert not {ex["messages"][0]["content"] for ex in train} & {ex["messages"][0]["content"] for ex in test}
    for ex in _sample(train) + _sample(test):
        _, mask = tiny_tokenizer.render_conversation(ex)
        assert sum(mask) > 0
        parts = ex["messages"][1]["content"]
        # worked with the calculator (text, call, output, ...) or in the head (one text part)
        assert [p["type"] for p in parts[:3]] in (["text", "python", "python_output"], ["text"]), parts
        assert parts[-1]["type"] == "text"
        gold = assistant_text(ex["messages"][1])
        assert train.reward(ex, gold) == 1.0
        number = gold.rsplit("#### ", 1)[1]
        assert train.reward(ex, gold.replace(f"#### {number}", f"#### {int(number) + 1}")) == 0.0
        assert train.evaluate(ex, f"The answer is:\n#### {number}")
        assert not train.evaluate(ex, "no final answer line")


def test_gsm8k_twin_annotations_agree_with_calculator(offline_env):
    calculator = pytest.importorskip("nanochat.calculator")
    for ex in list(GSM8K(split="test")) + _sample(GSM8K(split="train"), 400):
        parts = ex["messages"][1]["content"]
        for call, output in itertools.pairwise(parts):
            if call["type"] == "python":
                assert calculator.use_calculator(call["text"]) == output["text"], call


def test_smoltalk_twin(tiny_tokenizer, offline_env):
    train, test = SmolTalk("train"), SmolTalk("test")
    examples = _sample(train, 400) + _sample(test, 100)
    for ex in examples:
        validate_messages(ex["messages"])
        tiny_tokenizer.render_conversation(ex)
        text = " ".join(m["content"] for m in ex["messages"])
        assert "{" not in text and "}" not in text  # no unfilled template
    roles = [[m["role"] for m in ex["messages"]] for ex in examples]
    assert sum(len(r) > 2 for r in roles) > len(examples) // 4  # many chats are multi-turn
    assert 0 < sum(r[0] == "system" for r in roles) < len(examples) // 2  # some start with a system message
    assert train[0] != test[0] and train[0] == SmolTalk("train")[0]


def test_smoltalk_rejects_a_broken_row(tmp_path, no_hub):
    path = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    broken = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hello?"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    task = SmolTalk(data_files=str(path))
    broken_at = int(np.argmax(np.random.default_rng(42).permutation(2) == 1))  # where the shuffle put the broken row
    assert task[1 - broken_at] == good
    with pytest.raises(ValueError, match=f"row {broken_at}"):
        task[broken_at]


def test_humaneval_twin(tiny_tokenizer, offline_env):
    pytest.importorskip("nanochat.execution")
    task = HumanEval()
    assert task.eval_type == "generative"
    entry_points = set()
    for i, ex in enumerate(task):
        tiny_tokenizer.render_conversation(ex)
        entry_points.add(ex["entry_point"])
        assert f"def {ex['entry_point']}(" in ex["messages"][0]["content"]
        if i >= 8:  # the sandbox is slow; test_synthetic runs every generated check in-process
            continue
        assert task.evaluate(ex, assistant_text(ex["messages"][1])) is True
        body = assistant_text(ex["messages"][1]).removeprefix(ex["messages"][0]["content"])
        assert task.evaluate(ex, body) is True  # the reply SmolTalk's twin teaches: just the body
        # a function that returns None fails every check
        assert task.evaluate(ex, "    return None\n") is False
    assert len(entry_points) == len(task)

# -----------------------------------------------------------------------------
# Shuffling as nanochat does, and held-out questions that no training text holds


def test_hub_and_local_rows_are_shuffled_like_nanochat(tmp_path, monkeypatch):
    import datasets

    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(50)]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    nanochat_order = datasets.Dataset.from_list(rows).shuffle(seed=42)["question"]
    assert nanochat_order == [f"q{i}" for i in np.random.default_rng(42).permutation(50)]  # what shuffle(42) does
    questions = lambda task: [ex["messages"][0]["content"] for ex in task]  # noqa: E731
    assert questions(GSM8K(data_files=str(path))) == nanochat_order
    assert questions(GSM8K(data_files=str(path), stop=5)) == nanochat_order[:5] != [f"q{i}" for i in range(5)]

    # SmolTalk's stop= takes a random subset
    chats = [{"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": "a"}]} for i in range(40)]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    subset = questions(SmolTalk(data_files=str(tmp_path / "chats.jsonl"), stop=10))
    assert subset == [f"u{i}" for i in np.random.default_rng(42).permutation(40)[:10]]

    # the hub's rows come in the same order, whether the hub returns a Dataset or (in other tests) a list
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    for hub_rows in (datasets.Dataset.from_list(rows), rows):
        monkeypatch.setattr(datasets, "load_dataset", lambda *args, _rows=hub_rows, **kwargs: _rows)
        assert questions(GSM8K(split="test")) == nanochat_order


def _held_out_questions() -> dict[str, list[str]]:
    arc = [ARC(subset, split).ds[i]["question"] for subset in ("ARC-Easy", "ARC-Challenge")
           for split in ("validation", "test") for i in range(200)]
    mmlu = [MMLU("all", split).ds[i]["question"] for split in ("test", "validation", "dev")
            for i in range(len(MMLU("all", split)))]
    return {
        "ARC": arc, "MMLU": mmlu,
        "GSM8K": [row["question"] for row in GSM8K(split="test").ds],
        "SpellingBee": [ex["messages"][0]["content"] for ex in SpellingBee(size=512, split="test")],
        "HumanEval": [ex["messages"][0]["content"] for ex in HumanEval()],
    }


def _training_texts(tmp_path) -> list[str]:
    import pyarrow.parquet as pq

    from tasks.customjson import CustomJSON, get_identity_conversations

    tasks = [ARC(subset, "train") for subset in ("ARC-Easy", "ARC-Challenge")]
    tasks += [MMLU("auxiliary_train", "train"), MMLU("all", "auxiliary_train"), GSM8K(split="train"),
              SmolTalk("train"), SmolTalk("test"), SpellingBee(size=2000, split="train"),
              SimpleSpelling(size=2000, split="train"), CustomJSON(get_identity_conversations())]
    texts = [assistant_text(m) if m["role"] == "assistant" else m["content"] for task in tasks for ex in task
             for m in ex["messages"]]
    # the pretraining twin, all of it: the 8 shards the CPU speedrun writes
    for path in syn.write_shards(str(tmp_path / "shards"), num_shards=8):
        texts += pq.read_table(path)["text"].to_pylist()
    return texts


def test_no_held_out_question_is_in_any_training_text(offline_env, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))  # the identity twin is written there
    held_out = _held_out_questions()
    for name, questions in held_out.items():
        assert questions and all(syn.is_held_out(q) for q in questions), name
    assert len(set(held_out["ARC"])) > 50 and len(set(held_out["MMLU"])) > 80  # many distinct questions
    # every training text as one stream of words; a held-out question must not occur in it as a run of words
    # (the same words as question_key keeps, so case, quoting and punctuation do not hide one)
    words = " ".join(syn.question_key(text) for text in _training_texts(tmp_path)).split()
    keys = {syn.question_key(q) for questions in held_out.values() for q in questions}
    by_start: dict[tuple, list[list[str]]] = {}
    for key in keys:
        key_words = key.split()
        by_start.setdefault(tuple(key_words[:3]), []).append(key_words)


    def occurrences(words: list[str]) -> list[str]:
        return [" ".join(k) for i in range(len(words)) for k in by_start.get(tuple(words[i:i + 3]), ())
                if words[i:i + len(k)] == k]

    found = occurrences(words)
    assert not found, found[:5]
    assert len(words) > 1_000_000  # the scan really covered the data
    leaked = held_out["GSM8K"][7]  # and it would see a held-out question slipped into a training text
    assert occurrences(words[:1000] + syn.question_key(f"Question: {leaked.upper()}").split() + words[1000:2000]) == [
        syn.question_key(leaked)]


def test_twins_are_the_same_in_another_process(offline_env):
    code = """
import hashlib, json
from tasks.arc import ARC
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SpellingBee
tasks = [ARC("ARC-Easy", "test"), ARC("ARC-Challenge", "train"), MMLU("all", "test"), MMLU("auxiliary_train", "train"),
         GSM8K(split="test"), SmolTalk("train"), SpellingBee(size=50, split="test"), HumanEval()]
print([hashlib.sha256(json.dumps([t[i] for i in range(min(50, len(t)))]).encode()).hexdigest() for t in tasks])
"""
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] and runs[0].count("'") == 16
