"""GSM8K and HumanEval on the real files in ../shared/data, loaded through data_files= (skipped when absent)."""

from __future__ import annotations

import collections
import itertools
import json
from decimal import Decimal
from fractions import Fraction

import pytest
from conftest import shared_data_path

from tasks.common import assistant_text
from tasks.gsm8k import GSM8K, answer_to_parts, extract_answer
from tasks.humaneval import HumanEval, build_program, extract_code

shared_data = pytest.mark.shared_data


@pytest.fixture(scope="module")
def gsm8k_files():
    return {split: str(shared_data_path("gsm8k", f"{split}.jsonl")) for split in ("train", "test")}


@pytest.fixture(scope="module")
def humaneval_file():
    return str(shared_data_path("humaneval", "HumanEval.jsonl.gz"))

# -----------------------------------------------------------------------------
# GSM8K


def test_extract_answer():
    assert extract_answer("steps\n#### 72") == "72"
    assert extract_answer("#### 1,234") == "1234"
    assert extract_answer("#### $5.50.") == "5.50"
    assert extract_answer("#### -3") == "-3"
    assert extract_answer("#### $-3") == "-3"
    assert extract_answer("#### 1 and then #### 2 apples") == "2"
    assert extract_answer("#### 18.") == "18"
    assert extract_answer("no marker 12") is None
    assert extract_answer("#### twelve") is None


def test_answer_to_parts():
    parts = answer_to_parts("He has 3+4 = <<3+4=7>>7 cats.\nSo <<7*2=14>>14.\n#### 14")
    assert parts == [
        {"type": "text", "text": "He has 3+4 = "}, {"type": "python", "text": "3+4"},
        {"type": "python_output", "text": "7"}, {"type": "text", "text": "7 cats.\nSo "},
        {"type": "python", "text": "7*2"}, {"type": "python_output", "text": "14"},
        {"type": "text", "text": "14.\n#### 14"},
    ]
    with pytest.raises(ValueError):
        answer_to_parts("<<no equals sign>>")


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
    ex = task[0]
    assert ex["task_id"] == "HumanEval/0" and ex["entry_point"] == "has_close_elements"
    assert ex["messages"][1]["content"].startswith(ex["messages"][0]["content"])


@shared_data
def test_humaneval_canonical_solutions_pass(humaneval_file):
    pytest.importorskip("nanochat.execution")
    task = HumanEval(data_files=humaneval_file)
    for i in (0, 2, 32, 53, 163):  # 32 (find_zero) needs `import math` and the prompt's helper poly()
        ex = task[i]
        assert task.evaluate(ex, ex["messages"][1]["content"]) is True, ex["task_id"]
    # the reply as a chat model writes it: only the function, in a fenced block, no imports
    ex = task[0]
    body = task.ds[0]["canonical_solution"]
    reply = f"Here you go:\n```python\ndef has_close_elements(numbers, threshold):\n{body}```\nHope it helps."
    assert task.evaluate(ex, reply) is True
    # a wrong solution fails, and so does code that does not run
    # only the function, relying on the prompt's import and helper (HumanEval/32 needs math and poly())
    row = task.ds[32]
    reply = f"```python\ndef {row['entry_point']}(xs: list):\n{row['canonical_solution']}```"
    assert task.evaluate(task[32], reply) is True
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
