"""GSM8K, HumanEval, ARC and MMLU on the real files in ../shared/data, loaded through data_files= (skipped when absent)."""

from __future__ import annotations

import collections
import itertools
import json
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from conftest import shared_data_path

from tasks.arc import ARC
from tasks.common import assistant_text, render_mc
from tasks.gsm8k import GSM8K, answer_to_parts, extract_answer
from tasks.humaneval import HumanEval, build_program, extract_code
from tasks.mmlu import MMLU

shared_data = pytest.mark.shared_data


@pytest.fixture(scope="module")
def gsm8k_files():
    return {split: str(shared_data_path("gsm8k", f"{split}.jsonl")) for split in ("train", "test")}


@pytest.fixture(scope="module")
def humaneval_file():
    return str(shared_data_path("humaneval", "HumanEval.jsonl.gz"))


@pytest.fixture(scope="module")
def arc_files():
    return {subset: str(shared_data_path("arc", subset, "validation.jsonl")) for subset in ("ARC-Easy", "ARC-Challenge")}


@pytest.fixture(scope="module")
def mmlu_files():
    return {split: str(shared_data_path("mmlu", f"{split}.jsonl")) for split in ("test", "dev", "validation")}


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hub_order(n: int) -> list[int]:
    """Where row i of a task comes from in the file: datasets' shuffle(seed=42), as nanochat's tasks load the hub."""
    return [int(i) for i in np.random.default_rng(42).permutation(n)]


def mc_shape(prompt: str) -> list[str] | None:
    """The letters of a multiple-choice prompt shaped like every such task's, real or twin, else None."""
    head, instruction = "Multiple Choice question: ", "\n\nRespond only with the letter of the correct answer."
    if not (prompt.startswith(head) and prompt.endswith(instruction)):
        return None
    return re.findall(r"\n([A-E]): ", prompt)


@shared_data
@pytest.mark.parametrize("split,expected", [("train", 7473), ("test", 1319)])
def test_gsm8k_real_files_parse_and_reward(gsm8k_files, tiny_tokenizer, split, expected):
    task = GSM8K(split=split, data_files=gsm8k_files[split])
    assert len(task) == expected
    for i, ex in enumerate(task):
        row = task.ds[i]
        parts = ex["messages"][1]["content"]
        kinds = [p["type"] for p in parts]
        n = row["answer"].count("<<")
        assert kinds.count("python") == kinds.count("python_output") == n
        assert all(kinds[j + 1] == "python_output" for j, k in enumerate(kinds) if k == "python")
        gold_text = assistant_text(ex["messages"][1])
        assert "####" in parts[-1]["text"]
        gold = extract_answer(row["answer"])
        assert gold is not None and Decimal(gold) == Decimal(row["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
        assert task.reward(ex, gold_text) == 1.0
        assert task.reward(ex, f"#### {gold}") == 1.0
        assert task.reward(ex, f"#### {Decimal(gold) + 1}") == 0.0
        if i < 50:
            tiny_tokenizer.render_conversation(ex)


def _same_value(calculated: str, annotated: str) -> bool:
    try:
        return Fraction(calculated) == Fraction(annotated.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return False


@shared_data
def test_gsm8k_annotations_match_the_calculator(gsm8k_files):
    """
    Every <<expr=result>> annotation, evaluated by the engine's calculator, gives the annotated
    result. Where the strings differ the values must still be equal; the differences are only
    the annotators' ways of writing numbers, counted by category:
      trailing zeros ("4.00" for 4, "4.50" for 4.5), a bare leading dot (".75"),
      thousands commas ("1,000"), and fractions written as such ("3/4" for 0.75).
    """
    calculator = pytest.importorskip("nanochat.calculator")
    categories: collections.Counter = collections.Counter()
    unexplained = []
    for split, path in gsm8k_files.items():
        with open(path) as f:
            for i, line in enumerate(f):
                parts = answer_to_parts(json.loads(line)["answer"])
                for call, output in itertools.pairwise(parts):
                    if call["type"] != "python":
                        continue
                    annotated, calculated = output["text"], calculator.use_calculator(call["text"])
                    if calculated == annotated:
                        categories["identical"] += 1
                    elif calculated is not None and _same_value(calculated, annotated):
                        if "/" in annotated:
                            categories["fraction"] += 1
                        elif "," in annotated:
                            categories["commas"] += 1
                        elif annotated.startswith((".", "-.")):
                            categories["leading dot"] += 1
                        else:
                            categories["trailing zeros"] += 1
                    else:
                        unexplained.append((split, i, call["text"], annotated, calculated))
    assert not unexplained, f"{len(unexplained)} annotations disagree with the calculator, e.g. {unexplained[:10]}"
    assert categories["identical"] > 0.95 * sum(categories.values()), categories

# -----------------------------------------------------------------------------
# HumanEval


@shared_data
def test_humaneval_real_file_loads(humaneval_file):
    task = HumanEval(data_files=humaneval_file)
    assert len(task) == 164
    assert set(task.ds.column_names) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    # shuffled as nanochat loads the hub's split (the file holds HumanEval/0 ... HumanEval/163 in order)
    assert [ex["task_id"] for ex in task] == [f"HumanEval/{i}" for i in hub_order(164)]
    ex = task[hub_order(164).index(0)]
    assert ex["task_id"] == "HumanEval/0" and ex["entry_point"] == "has_close_elements"
    assert ex["messages"][1]["content"].startswith(ex["messages"][0]["content"])


@shared_data
def test_humaneval_canonical_solutions_pass(humaneval_file):
    pytest.importorskip("nanochat.execution")
    task = HumanEval(data_files=humaneval_file)
    position = {task_number: i for i, task_number in enumerate(hub_order(164))}  # HumanEval/k is task[position[k]]
    for k in (0, 2, 32, 53, 163):  # 32 (find_zero) needs `import math` and the prompt's helper poly()
        ex = task[position[k]]
        assert ex["task_id"] == f"HumanEval/{k}"
        assert task.evaluate(ex, ex["messages"][1]["content"]) is True, ex["task_id"]
    # the reply as a chat model writes it: only the function, in a fenced block, no imports
    ex = task[position[0]]
    body = task.ds[position[0]]["canonical_solution"]
    reply = f"Here you go:\n```python\ndef has_close_elements(numbers, threshold):\n{body}```\nHope it helps."
    assert task.evaluate(ex, reply) is True
    # a wrong solution fails, and so does code that does not run
    # only the function, relying on the prompt's import and helper (HumanEval/32 needs math and poly())
    row = task.ds[position[32]]
    reply = f"```python\ndef {row['entry_point']}(xs: list):\n{row['canonical_solution']}```"
    assert task.evaluate(task[position[32]], reply) is True
    broken = ex["messages"][0]["content"] + "    return not any(numbers)\n"
    assert task.evaluate(ex, broken) is False
    assert task.evaluate(ex, "```python\ndef has_close_elements(:\n```") is False


def test_extract_code_and_build_program():
    assert extract_code("plain code") == "plain code"
    two = "```python\ndef helper():\n    pass\n```\ntext\n```py\ndef f(x):\n    return x\n```"
    assert extract_code(two, "f") == "def f(x):\n    return x\n"
    assert extract_code(two) == "def helper():\n    pass\n"
    program = build_program("import math\n\n\ndef f(x):\n    \"\"\"doc\"\"\"\n", "    return math.floor(x)\n",
                            "def check(c):\n    assert c(1.5) == 1\n", "f")
    assert program.startswith("import math\n") and program.count("import math") == 1
    assert program.endswith("check(f)")
    program = build_program("import math\n\n\ndef f(x):\n", "def f(x):\n    return math.floor(x)\n", "", "f")
    assert program.startswith("import math\n\n\ndef f(x):")
    # the prompt's helper functions come along when the reply has only the requested one
    prompt = "def helper(x):\n    return x + 1\n\n\ndef f(x):\n    \"\"\"doc\"\"\"\n"
    program = build_program(prompt, "def f(x):\n    return helper(x)\n", "", "f")
    assert program.startswith("def helper(x):\n    return x + 1\n\n\ndef f(x):")
    program = build_program(prompt, "def helper(x):\n    return 0\ndef f(x):\n    return helper(x)\n", "", "f")
    assert program.count("def helper") == 1  # the reply's own helper wins

# -----------------------------------------------------------------------------
# ARC and MMLU


@shared_data
@pytest.mark.parametrize("subset,expected", [("ARC-Easy", 570), ("ARC-Challenge", 299)])
def test_arc_real_rows_load_shuffled_and_render_like_the_twin(arc_files, tiny_tokenizer, subset, expected):
    raw = read_jsonl(arc_files[subset])
    task = ARC(subset, "validation", data_files=arc_files[subset])
    assert len(task) == expected
    twin = ARC(subset, "validation", offline=True)[0]["messages"][0]["content"]
    assert mc_shape(twin) == list("ABCD")
    shapes: collections.Counter = collections.Counter()
    for i, (ex, source) in enumerate(zip(task, hub_order(expected))):
        row = raw[source]
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        letters = list("ABCDE"[: len(texts)])  # whatever the file's labels (A-D, 1-4), the prompt says A, B, C, ...
        gold = letters[labels.index(row["answerKey"])]
        assert ex["letters"] == letters and ex["messages"][1]["content"] == gold
        assert ex["messages"][0]["content"] == render_mc(row["question"], letters, texts)
        assert mc_shape(ex["messages"][0]["content"]) == letters, row["id"]  # the twin's shape
        assert task.evaluate(ex, gold) and not any(task.evaluate(ex, x) for x in letters if x != gold)
        shapes[len(texts), "digits" if labels[0] == "1" else "letters"] += 1
        if i < 30 or labels[0] == "1" or len(texts) != 4:
            ids, mask = tiny_tokenizer.render_conversation(ex)
            answer = [t for t, m in zip(ids, mask) if m][0]
            assert answer == tiny_tokenizer.encode(gold)[0]  # the letter is what the model learns to say
    odd = {k: v for k, v in shapes.items() if k != (4, "letters")}
    assert odd and sum(odd.values()) == {"ARC-Easy": 24, "ARC-Challenge": 8}[subset]  # labels 1-4, 3 or 5 choices
    assert {n for n, _ in odd} >= {3, 5} and any(kind == "digits" for _, kind in odd)


@shared_data
def test_mmlu_real_rows_load_shuffled_and_render_like_the_twin(mmlu_files):
    for split, expected in (("test", 14042), ("dev", 285), ("validation", 1531)):
        raw = read_jsonl(mmlu_files[split])
        task = MMLU("all", split, data_files=mmlu_files[split])
        assert len(task) == expected and len({row["subject"] for row in raw}) == 57
        order = hub_order(expected)
        for i in range(0, expected, max(1, expected // 300)):
            ex, row = task[i], raw[order[i]]
            assert ex["messages"][0]["content"] == render_mc(row["question"], list("ABCD"), row["choices"])
            assert mc_shape(ex["messages"][0]["content"])[-4:] == list("ABCD")
            assert ex["messages"][1]["content"] == "ABCD"[row["answer"]] and ex["subject"] == row["subject"]
        # the file is sorted by subject; the task's first rows are spread over them, as nanochat's are
        in_file = [row["subject"] for row in raw]
        assert in_file == sorted(in_file)
        spread = len({task[i]["subject"] for i in range(100)})
        assert spread >= 25 and spread > len(set(in_file[:100]))
    assert mc_shape(MMLU("all", "test", offline=True)[0]["messages"][0]["content"]) == list("ABCD")


@shared_data
def test_chat_eval_mmlu_on_real_rows_covers_many_subjects(mmlu_files, base_dir, tiny_tokenizer, monkeypatch):
    import torch

    from nanochat.checkpoint_manager import checkpoint_dir_for, save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import get_tokenizer_dir
    from scripts import chat_eval

    tiny_tokenizer.save(get_tokenizer_dir())
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=2048, vocab_size=tiny_tokenizer.get_vocab_size(), n_layer=1, n_head=1,
                          n_kv_head=1, n_embd=32))
    model.init_weights()
    save_checkpoint(checkpoint_dir_for("sft", "d1"), 1, model.state_dict(), None,
                    {"model_config": vars(model.config), "step": 1})
    subjects = []

    class RecordingMMLU(MMLU):
        def get_example(self, index: int) -> dict:
            example = super().get_example(index)
            subjects.append(example["subject"])
            return example

    monkeypatch.setattr(chat_eval, "build_eval_task", lambda name: RecordingMMLU("all", "test", data_files=mmlu_files["test"]))
    result = chat_eval.main(["-i", "sft", "-a", "MMLU", "--max_problems=64", "--batch_size=16", "--device_type=cpu"])
    assert len(subjects) == 64 and len(set(subjects)) >= 25  # the first 64 rows of the file are all abstract_algebra
    assert 0.0 <= result["accuracy"]["MMLU"] <= 1.0
