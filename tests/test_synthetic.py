"""Tests for nanochat/synthetic.py: the offline twin of the pretraining shards."""

import inspect
import os
import random
import re
import string
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from nanochat import synthetic as syn
from nanochat.synthetic import (WORDS, is_held_out, make_arithmetic_problem, make_code_problem, make_document,
                                make_fact, make_multiple_choice, make_question, make_quiz, make_spelling_drill,
                                make_story, number_to_words, question_key, write_shards)
from tasks.common import render_mc

SMALL = dict(chars_per_shard=20_000, docs_per_row_group=8)  # a few dozen docs per shard: fast


def read_bytes(paths):
    return [open(p, "rb").read() for p in paths]


# -----------------------------------------------------------------------------
# shards on disk

def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = write_shards(str(tmp_path / "a"), num_shards=3, seed=0, **SMALL)
    b = write_shards(str(tmp_path / "b"), num_shards=3, seed=0, **SMALL)
    c = write_shards(str(tmp_path / "c"), num_shards=3, seed=1, **SMALL)
    assert read_bytes(a) == read_bytes(b)
    for x, y in zip(read_bytes(a), read_bytes(c)):
        assert x != y
    # shards differ from each other too (the last one is the validation split)
    assert len(set(read_bytes(a))) == 3


def test_shard_i_does_not_depend_on_num_shards_or_workers(tmp_path):
    two = write_shards(str(tmp_path / "two"), num_shards=2, **SMALL)
    four = write_shards(str(tmp_path / "four"), num_shards=4, num_workers=2, **SMALL)
    assert read_bytes(two) == read_bytes(four[:2])


def test_layout(tmp_path):
    paths = write_shards(str(tmp_path), num_shards=2, **SMALL)
    assert [os.path.basename(p) for p in paths] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert sorted(os.listdir(tmp_path)) == ["shard_00000.parquet", "shard_00001.parquet"]  # no temp files left
    for path in paths:
        pf = pq.ParquetFile(path)
        assert pf.schema_arrow.names == ["text"]
        assert str(pf.schema_arrow.field("text").type) == "string"
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        assert len(sizes) > 1
        assert all(s == SMALL["docs_per_row_group"] for s in sizes[:-1]) and 0 < sizes[-1] <= SMALL["docs_per_row_group"]
        texts = pf.read_row_group(1, columns=["text"]).column("text").to_pylist()
        assert all(isinstance(t, str) and t for t in texts)
        total = sum(len(t) for t in pf.read().column("text").to_pylist())
        assert SMALL["chars_per_shard"] <= total < SMALL["chars_per_shard"] + 3000  # overshoot by at most one doc


def test_default_size_is_about_4M_chars():
    defaults = inspect.signature(write_shards).parameters
    assert defaults["num_shards"].default * defaults["chars_per_shard"].default == 4_000_000


def test_existing_shards_are_skipped_and_missing_ones_resumed(tmp_path):
    paths = write_shards(str(tmp_path), num_shards=3, **SMALL)
    original = read_bytes(paths)
    os.utime(paths[0], ns=(1_000_000_000, 1_000_000_000))
    os.remove(paths[1])
    write_shards(str(tmp_path), num_shards=3, **SMALL)
    assert os.stat(paths[0]).st_mtime_ns == 1_000_000_000  # untouched
    assert read_bytes(paths) == original  # the missing one came back identical
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_shards_of_an_older_twin_are_written_again(tmp_path, monkeypatch):
    paths = write_shards(str(tmp_path), num_shards=2, **SMALL)
    texts = [pq.read_table(p)["text"].to_pylist() for p in paths]
    os.utime(paths[0], ns=(1_000_000_000, 1_000_000_000))
    monkeypatch.setattr(syn.pretraining, "_fingerprint", lambda *args: "another version")  # as if the generators had changed
    write_shards(str(tmp_path), num_shards=2, **SMALL)
    assert os.stat(paths[0]).st_mtime_ns != 1_000_000_000
    assert pq.read_schema(paths[0]).metadata[b"nanochat_synthetic"] == b"another version"
    assert [pq.read_table(p)["text"].to_pylist() for p in paths] == texts  # same generators here, new stamp


def test_failed_write_leaves_no_partial_shard(tmp_path, monkeypatch):
    def write_half_then_fail(table, where, **kwargs):
        where.write(b"PAR1 half a shard")  # the temp file's handle
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_shards(str(tmp_path), num_shards=2, **SMALL)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("n", [0, 1])
def test_needs_a_validation_shard(tmp_path, n):
    with pytest.raises(ValueError):
        write_shards(str(tmp_path), num_shards=n, **SMALL)

# -----------------------------------------------------------------------------
# GSM8K format

ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
MENTAL_STEP = re.compile(r"(?<![\d*/+-])(\d+(?:[-+*/]\d+)+)=\$?(\d+)")  # '44*8=352': worked without the calculator


def _calculator_results(step: str) -> list[int]:
    """The results of a step's calculator calls, checked: 'expr = <<expr=result>>result'."""
    results = []
    for m in ANNOTATION.finditer(step):
        expr, result = m.group(1), m.group(2)
        assert re.fullmatch(r"\d+([-+*/]\d+)+", expr), step
        assert re.fullmatch(r"\d+", result), step
        assert eval(expr) == int(result), step
        assert re.match(re.escape(result) + r"(\D|$)", step[m.end():]), step  # result repeated after >>
        assert re.search(re.escape(expr) + r" = \$?$", step[:m.start()]), step  # 'expr = <<...'
        results.append(int(result))
    return results


def _mental_results(step: str) -> list[int]:
    """The results of a step worked in the head, checked: 'expr=result', no spaces, no annotation."""
    assert "<<" not in step and " = " not in step, step
    results = []
    for m in MENTAL_STEP.finditer(step):
        assert eval(m.group(1)) == int(m.group(2)), step
        results.append(int(m.group(2)))
    return results


def test_arithmetic_in_gsm8k_format():
    rng = random.Random(0)
    num_steps, distracted, in_words, mental = [], 0, 0, 0
    number_words = re.compile(r"\b(" + "|".join(number_to_words(n) for n in range(100)) + r")\b", re.IGNORECASE)
    for i in range(3000):
        problem = make_arithmetic_problem(rng, held_out=i % 5 == 0)
        assert set(problem) == {"question", "answer"}
        assert problem["question"].endswith("?") and "\n" not in problem["question"]
        *steps, last = problem["answer"].split("\n")
        final = re.fullmatch(r"#### (\d+)", last)
        assert final and steps, problem
        # one style a whole answer: every step calls the calculator, or none does
        in_head = "<<" not in problem["answer"]
        mental += in_head
        results = []
        for step in steps:
            step_results = _mental_results(step) if in_head else _calculator_results(step)
            assert step_results, step
            results += step_results
        assert int(final.group(1)) == results[-1], problem
        num_steps.append(len(steps))
        numbers = [int(n) for n in re.findall(r"\d+", problem["question"])]
        assert max(numbers, default=0) < 1000  # numbers up to three digits
        in_words += bool(number_words.search(problem["question"]))  # a count the steps need as digits
        # a detail the steps never use: all but one kind ("... is N years old") named here
        distracted += bool(re.search(r"degrees outside|The shop opened|The bus ride takes|cousin|meters from the "
                                     r"school|pet fish", problem["question"]))
    assert set(num_steps) <= {2, 3, 4} and {2, 3, 4} <= set(num_steps)  # 2 to 4 calculator steps
    assert 0.3 < distracted / 3000 < 0.55 and in_words > 0.4 * 3000
    assert abs(mental / 3000 - syn.arithmetic.MENTAL_PROBABILITY) < 0.03


def test_generators_are_deterministic():
    for make in (make_arithmetic_problem, make_spelling_drill, make_fact, make_story, make_document, make_quiz,
                 make_code_problem):
        a, b = random.Random(5), random.Random(5)
        assert [make(a) for _ in range(50)] == [make(b) for _ in range(50)]

# -----------------------------------------------------------------------------
# held-out questions


def test_held_out_side_depends_only_on_the_words():
    assert question_key("How many 'R' are in \"strawberry\"?") == "how many r are in strawberry"
    questions = [f"What is {a} plus {b}?" for a in range(40) for b in range(40)]
    sides = [is_held_out(q) for q in questions]
    assert 0.15 < sum(sides) / len(sides) < 0.25  # HELD_OUT_PERCENT of distinct questions
    for q, side in zip(questions[:200], sides):
        assert is_held_out(q.upper()) == is_held_out(f"  {q.lower()} !") == side
    # the same in another process with another hash seed: no salted hash() involved
    code = "from nanochat.synthetic import is_held_out; print([is_held_out(f'What is {a} plus {b}?') for a in range(40) for b in range(40)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == str(sides)


def test_each_side_gets_only_its_questions():
    rng = random.Random(0)
    for held_out in (False, True):
        for _ in range(300):
            assert is_held_out(make_question(rng, syn.ALL_KINDS, held_out).text) == held_out
            assert is_held_out(make_arithmetic_problem(rng, held_out)["question"]) == held_out
            assert is_held_out(make_code_problem(rng, held_out).prompt) == held_out
    for _ in range(300):
        quiz = make_quiz(rng)
        assert not is_held_out(quiz.split("\n")[0].removeprefix("Multiple Choice question: "))

# -----------------------------------------------------------------------------
# facts and the questions about them


def test_multiple_choice_questions_are_right_and_balanced(fact_holds):
    rng = random.Random(0)
    checked, golds = 0, []
    for kinds in (syn.ARC_EASY_KINDS, syn.ARC_CHALLENGE_KINDS, syn.MMLU_KINDS):
        for i in range(1500):
            mc = make_multiple_choice(rng, kinds, held_out=i % 2 == 0)
            assert len(mc.choices) == len(set(mc.choices)) == 4
            golds.append(mc.answer)
            if fact_holds(mc.question, mc.choices[mc.answer]) is None:
                continue
            assert [fact_holds(mc.question, c) for c in mc.choices] == [j == mc.answer for j in range(4)], mc
            checked += 1
    assert checked > 1500  # many questions went through a table lookup
    assert max(golds.count(k) for k in range(4)) < 0.3 * len(golds)


def test_quiz_is_render_mc_with_the_answer_letter_after(fact_holds):
    rng = random.Random(0)
    for _ in range(200):
        quiz = make_quiz(rng)
        head, answer = quiz.rsplit("\nAnswer:\n", 1)
        lines = head.split("\n")
        question = lines[0].removeprefix("Multiple Choice question: ")
        letters = [line[0] for line in lines[1:]]
        choices = [line[3:] for line in lines[1:]]
        assert render_mc(question, letters, choices).startswith(head + "\n")
        assert answer in letters and fact_holds(question, choices[letters.index(answer)]) in (True, None)


def test_code_problems_pass_their_own_check_and_catch_wrong_bodies():
    rng = random.Random(0)
    kinds = set()
    for _ in range(300):
        problem = make_code_problem(rng, held_out=rng.random() < 0.5)
        kinds.add(problem.solution)
        assert problem.name in problem.prompt and f">>> {problem.name}(" in problem.prompt
        scope: dict = {}
        exec(problem.prompt + problem.solution + problem.test, scope)  # our own generated code, not model output
        scope["check"](scope[problem.name])
        with pytest.raises(AssertionError):
            scope["check"](lambda *args: None)
    assert len(kinds) > 20

# -----------------------------------------------------------------------------
# spelling, facts, stories

def test_words():
    assert len(WORDS) >= 200 and len(set(WORDS)) == len(WORDS)
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in WORDS)
    assert "strawberry" in WORDS


def test_spelling_drills_are_correct():
    rng = random.Random(0)
    kinds = set()
    for _ in range(2000):
        drill = make_spelling_drill(rng)
        if m := re.search(r"counting each (\w): ([a-z()\d-]+)\. So there (is|are) (\d+) (\w) in (\w+)\. "
                          r"In Python, '(\w+)'\.count\('(\w)'\) is (\d+)\.$", drill):
            letter, tally, verb, n, letter2, word, word3, letter3, n3 = m.groups()
            assert (word3, letter3, n3) == (word, letter, n)
            assert letter == letter2 and letter in drill.split("?")[0].split(".")[0]
            assert re.sub(r"\(\d+\)", "", tally).replace("-", "") == word
            assert int(n) == word.count(letter)
            assert re.findall(r"\((\d+)\)", tally) == [str(i) for i in range(1, int(n) + 1)]
            assert verb == ("is" if int(n) == 1 else "are")
            kinds.add("count")
        elif m := re.search(r"(\w+)(?: is spelled|\? It is spelled|:) ([a-z-]+)\.", drill):
            assert m.group(2).replace("-", "") == m.group(1) and m.group(2) == "-".join(m.group(1))
            if n := re.search(r"It has (\d+) letters?\.", drill):
                assert int(n.group(1)) == len(m.group(1))
            kinds.add("spell")
        elif m := re.fullmatch(r"The first letter of (\w+) is (\w) and the last letter is (\w)\.", drill):
            assert (m.group(2), m.group(3)) == (m.group(1)[0], m.group(1)[-1])
            kinds.add("first_last")
        else:
            m = re.fullmatch(r"The word (\w+) spelled backwards is ([a-z-]+)\.", drill)
            assert m and m.group(2).replace("-", "") == m.group(1)[::-1], drill
            kinds.add("backwards")
    assert kinds == {"count", "spell", "first_last", "backwards"}


def test_number_words():
    assert [number_to_words(n) for n in (0, 13, 40, 47, 100, 305, 999)] == [
        "zero", "thirteen", "forty", "forty-seven", "one hundred", "three hundred five",
        "nine hundred ninety-nine"]


def test_facts_and_stories_are_consistent():
    rng = random.Random(0)
    for _ in range(1000):
        fact = make_fact(rng)
        assert fact[0].isupper() or fact[0].isdigit(), fact
        if m := re.fullmatch(r"(\d+) plus (\d+) equals (\d+)\.", fact):
            assert int(m.group(1)) + int(m.group(2)) == int(m.group(3))
        if m := re.fullmatch(r"(\d+) is (greater|less) than (\d+)\.", fact):
            assert (int(m.group(1)) > int(m.group(3))) == (m.group(2) == "greater")
        story = make_story(rng)
        if m := re.search(r"took (\d+) .* who had (\d+) .* counted (\d+)\.", story):
            assert int(m.group(1)) + int(m.group(2)) == int(m.group(3)), story
        if m := re.search(r"baked (\d+) .* ate (\d+) .* the other (\d+) ", story):
            assert int(m.group(1)) - int(m.group(2)) == int(m.group(3)), story
        assert re.search(r"\b(a|A) [aeiou]", fact + story) is None  # 'an owl', not 'a owl'

# -----------------------------------------------------------------------------
# learnability: varied but with a small, regular alphabet

def test_documents_are_varied_and_regular():
    rng = random.Random(0)
    docs = [make_document(rng) for _ in range(2000)]
    assert len(set(docs)) > 1900
    chars = set("".join(docs))
    assert chars <= set(string.printable) and len(chars) < 90
    lengths = sorted(len(d) for d in docs)
    assert lengths[0] >= 200 and lengths[len(lengths) // 2] < 1500
    items = [item for d in docs for item in d.split("\n\n")]
    arithmetic_chars = sum(len(i) for i in items if i.startswith("Question: "))
    assert 0.3 < arithmetic_chars / sum(len(i) for i in items) < 0.7
    assert sum(i.startswith("Multiple Choice question: ") for i in items) > 0.08 * len(items)  # quizzes: one item in ten
    assert sum(i.startswith("def ") for i in items) > 0.05 * len(items)  # tiny functions
