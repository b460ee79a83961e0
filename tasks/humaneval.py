'''
HumanEval: 164 Python functions to complete from their signature and docstring.
Hub: openai/openai_humaneval (split test); columns `task_id`, `prompt`,
`canonical_solution`, `test` (defines `check(candidate)`), `entry_point`.

The user message is the prompt; the reference reply is prompt + canonical_solution.
evaluate() takes the code out of a response, appends the test and `check(entry_point)`,
and runs it in the sandbox (nanochat.execution.execute_code).

Offline twin: a dozen small problems in the same format, written for this repository.
'''

from __future__ import annotations

import ast
import re

from tasks.common import Task, load_rows

# -----------------------------------------------------------------------------
# Offline twin


def _problem(n: int, entry_point: str, prompt: str, solution: str, test: str) -> dict:
    return {"task_id": f"SyntheticEval/{n}", "prompt": prompt, "canonical_solution": solution,
            "test": test, "entry_point": entry_point}


TWIN_PROBLEMS = [
    _problem(0, "add_numbers", '''

def add_numbers(a: int, b: int) -> int:
    """ Return the sum of a and b.
    >>> add_numbers(2, 3)
    5
    """
''', '''    return a + b
''', '''

def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0
    assert candidate(0, 0) == 0
    assert candidate(100, 250) == 350
'''),
    _problem(1, "count_letter", '''

def count_letter(word: str, letter: str) -> int:
    """ Count how many times letter occurs in word.
    >>> count_letter('strawberry', 'r')
    3
    >>> count_letter('apple', 'z')
    0
    """
''', '''    return sum(1 for ch in word if ch == letter)
''', '''

def check(candidate):
    assert candidate('strawberry', 'r') == 3
    assert candidate('apple', 'p') == 2
    assert candidate('apple', 'z') == 0
    assert candidate('', 'a') == 0
    assert candidate('banana', 'a') == 3
'''),
    _problem(2, "reverse_words", '''

def reverse_words(sentence: str) -> str:
    """ Return the words of sentence in reverse order, separated by single spaces.
    >>> reverse_words('the cat sat')
    'sat cat the'
    """
''', '''    return ' '.join(reversed(sentence.split()))
''', '''

def check(candidate):
    assert candidate('the cat sat') == 'sat cat the'
    assert candidate('hello') == 'hello'
    assert candidate('') == ''
    assert candidate('  a   b ') == 'b a'
'''),
    _problem(3, "is_palindrome", '''

def is_palindrome(text: str) -> bool:
    """ Whether text reads the same forwards and backwards, ignoring case.
    >>> is_palindrome('Level')
    True
    >>> is_palindrome('river')
    False
    """
''', '''    lowered = text.lower()
    return lowered == lowered[::-1]
''', '''

def check(candidate):
    assert candidate('Level') is True
    assert candidate('river') is False
    assert candidate('') is True
    assert candidate('abba') is True
    assert candidate('abca') is False
'''),
    _problem(4, "running_sum", '''from typing import List


def running_sum(numbers: List[int]) -> List[int]:
    """ Return the list of running totals of numbers.
    >>> running_sum([1, 2, 3])
    [1, 3, 6]
    """
''', '''    totals = []
    total = 0
    for n in numbers:
        total += n
        totals.append(total)
    return totals
''', '''

def check(candidate):
    assert candidate([1, 2, 3]) == [1, 3, 6]
    assert candidate([]) == []
    assert candidate([5]) == [5]
    assert candidate([2, -2, 2]) == [2, 0, 2]
'''),
    _problem(5, "second_largest", '''from typing import List, Optional


def second_largest(numbers: List[int]) -> Optional[int]:
    """ Return the second largest distinct value in numbers, or None if there is none.
    >>> second_largest([4, 1, 7, 7])
    4
    >>> second_largest([3, 3])
    """
''', '''    distinct = sorted(set(numbers))
    if len(distinct) < 2:
        return None
    return distinct[-2]
''', '''

def check(candidate):
    assert candidate([4, 1, 7, 7]) == 4
    assert candidate([3, 3]) is None
    assert candidate([]) is None
    assert candidate([-5, -2, -9]) == -5
'''),
    _problem(6, "fizzbuzz", '''

def fizzbuzz(n: int) -> str:
    """ Return 'Fizz' if n is divisible by 3, 'Buzz' if by 5, 'FizzBuzz' if by both,
    and otherwise n as a string.
    >>> fizzbuzz(9)
    'Fizz'
    >>> fizzbuzz(7)
    '7'
    """
''', '''    if n % 15 == 0:
        return 'FizzBuzz'
    if n % 3 == 0:
        return 'Fizz'
    if n % 5 == 0:
        return 'Buzz'
    return str(n)
''', '''

def check(candidate):
    assert candidate(9) == 'Fizz'
    assert candidate(10) == 'Buzz'
    assert candidate(30) == 'FizzBuzz'
    assert candidate(7) == '7'
    assert candidate(1) == '1'
'''),
    _problem(7, "vowel_count", '''

def vowel_count(text: str) -> int:
    """ Count the vowels (a, e, i, o, u, either case) in text.
    >>> vowel_count('Banana')
    3
    """
''', '''    return sum(1 for ch in text.lower() if ch in 'aeiou')
''', '''

def check(candidate):
    assert candidate('Banana') == 3
    assert candidate('rhythm') == 0
    assert candidate('AEIOU') == 5
    assert candidate('') == 0
'''),
    _problem(8, "digit_sum", '''

def digit_sum(n: int) -> int:
    """ Return the sum of the decimal digits of n (its sign is ignored).
    >>> digit_sum(1234)
    10
    >>> digit_sum(-45)
    9
    """
''', '''    return sum(int(d) for d in str(abs(n)))
''', '''

def check(candidate):
    assert candidate(1234) == 10
    assert candidate(-45) == 9
    assert candidate(0) == 0
    assert candidate(99999) == 45
'''),
    _problem(9, "hypotenuse", '''import math


def hypotenuse(a: float, b: float) -> float:
    """ The length of the hypotenuse of a right triangle with legs a and b.
    >>> hypotenuse(3, 4)
    5.0
    """
''', '''    return math.sqrt(a * a + b * b)
''', '''

def check(candidate):
    assert abs(candidate(3, 4) - 5.0) < 1e-9
    assert abs(candidate(5, 12) - 13.0) < 1e-9
    assert abs(candidate(1, 1) - 2 ** 0.5) < 1e-9
'''),
    _problem(10, "group_by_length", '''from typing import Dict, List


def group_by_length(words: List[str]) -> Dict[int, List[str]]:
    """ Map each word length to the words of that length, in their original order.
    >>> group_by_length(['cat', 'dog', 'bird'])
    {3: ['cat', 'dog'], 4: ['bird']}
    """
''', '''    groups = {}
    for word in words:
        groups.setdefault(len(word), []).append(word)
    return groups
''', '''

def check(candidate):
    assert candidate(['cat', 'dog', 'bird']) == {3: ['cat', 'dog'], 4: ['bird']}
    assert candidate([]) == {}
    assert candidate(['a', 'bb', 'c']) == {1: ['a', 'c'], 2: ['bb']}
'''),
    _problem(11, "day_after", '''

def day_after(day: str, n: int) -> str:
    """ The day of the week n days after day (days are 'Monday' ... 'Sunday').
    >>> day_after('Monday', 2)
    'Wednesday'
    >>> day_after('Sunday', 1)
    'Monday'
    """
''', '''    days = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday']
    return days[(days.index(day) + n) % 7]
''', '''

def check(candidate):
    assert candidate('Monday', 2) == 'Wednesday'
    assert candidate('Sunday', 1) == 'Monday'
    assert candidate('Friday', 7) == 'Friday'
    assert candidate('Tuesday', 13) == 'Monday'
'''),
]


def humaneval_twin() -> list[dict]:
    return [dict(p) for p in TWIN_PROBLEMS]

# -----------------------------------------------------------------------------
# Code extraction and evaluation

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_IMPORT = re.compile(r"^(?:import|from)\s+\S.*$", re.MULTILINE)


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The code in a response: its fenced block (the one defining entry_point if several), else the raw text."""
    blocks = _FENCE.findall(response)
    if not blocks:
        return response
    if entry_point is not None:
        for block in blocks:
            if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", block):
                return block
    return blocks[0]


def _prompt_helpers(prompt: str, entry_point: str, code: str) -> list[str]:
    """Source of the prompt's other top-level functions (e.g. poly() beside find_zero()) that code does not define."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return []
    helpers = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name != entry_point \
                and not re.search(rf"\bdef\s+{re.escape(node.name)}\s*\(", code):
            segment = ast.get_source_segment(prompt, node)
            if segment:
                helpers.append(segment)
    return helpers


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """
    The program that passes iff the completion implements the function: code, test, check call.
    A bare function body continues the prompt; a reply with only the function gets the prompt's
    imports and helper functions it lacks, as a chat model answering with just that function would need.
    """
    code = completion
    if not re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", code):
        code = prompt + code
    header = [line for line in _IMPORT.findall(prompt) if line not in code]
    header += _prompt_helpers(prompt, entry_point, code)
    if header:
        code = "\n\n".join(header) + "\n\n\n" + code
    return code + "\n\n" + test + "\n" + f"check({entry_point})"


class HumanEval(Task):
    def __init__(self, data_files=None, offline: bool | None = None, timeout: float = 5.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self.ds = load_rows("openai/openai_humaneval", None, "test", data_files, offline, humaneval_twin)

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]},
            ],
            "entry_point": row["entry_point"],
            "test": row["test"],
            "task_id": row["task_id"],
        }

    def evaluate(self, conversation: dict, response: str) -> bool:
        from nanochat.execution import execute_code

        prompt = conversation["messages"][0]["content"]
        entry_point = conversation["entry_point"]
        program = build_program(prompt, extract_code(response, entry_point), conversation["test"], entry_point)
        return bool(execute_code(program, timeout=self.timeout).success)
