"""
Tiny Python functions in HumanEval's format (a signature, a docstring with an example, a check):
the HumanEval twin, and code in the pretraining and SmolTalk twins.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from nanochat.synthetic.heldout import draw
from nanochat.synthetic.words import WORDS

class CodeKind(NamedTuple):
    names: list[str]  # the function's name is one of these, then '_' and a noun
    params: list[tuple[str, str]]  # (name, type hint); the names are chosen per problem
    returns: str
    doc: str  # '{a}', '{b}': the parameters' names
    body: str  # the returned expression
    inputs: Callable[[random.Random], tuple]  # one random call's arguments


def _ints(lo: int, hi: int, n: int) -> Callable[[random.Random], tuple]:
    return lambda rng: tuple(rng.randint(lo, hi) for _ in range(n))


def _a_word(rng: random.Random) -> tuple:
    return (rng.choice(WORDS),)


def _a_list(rng: random.Random) -> tuple:
    return ([rng.randint(0, 20) for _ in range(rng.randint(1, 5))],)


_NUM, _STR, _LIST = [("a", "int"), ("b", "int")], [("s", "str")], [("items", "list")]
CODE_KINDS = [
    CodeKind(["add", "sum", "total"], _NUM, "int", "Return the sum of {a} and {b}.", "{a} + {b}", _ints(0, 99, 2)),
    CodeKind(["subtract", "minus", "difference"], _NUM, "int", "Return {a} minus {b}.", "{a} - {b}", _ints(0, 99, 2)),
    CodeKind(["multiply", "times", "product"], _NUM, "int", "Return the product of {a} and {b}.", "{a} * {b}",
             _ints(0, 20, 2)),
    CodeKind(["larger", "biggest", "maximum"], _NUM, "int", "Return the larger of {a} and {b}.", "max({a}, {b})",
             _ints(0, 99, 2)),
    CodeKind(["smaller", "smallest", "minimum"], _NUM, "int", "Return the smaller of {a} and {b}.", "min({a}, {b})",
             _ints(0, 99, 2)),
    CodeKind(["double", "twice"], _NUM[:1], "int", "Return {a} doubled.", "{a} * 2", _ints(0, 99, 1)),
    CodeKind(["square", "squared"], _NUM[:1], "int", "Return {a} squared.", "{a} * {a}", _ints(0, 30, 1)),
    CodeKind(["is_even", "even"], _NUM[:1], "bool", "Return True if {a} is even and False otherwise.",
             "{a} % 2 == 0", _ints(0, 99, 1)),
    CodeKind(["length", "size", "count"], _STR, "int", "Return the number of characters in {a}.", "len({a})", _a_word),
    CodeKind(["shout", "upper", "loud"], _STR, "str", "Return {a} in upper case.", "{a}.upper()", _a_word),
    CodeKind(["reverse", "backwards", "flip"], _STR, "str", "Return {a} reversed.", "{a}[::-1]", _a_word),
    CodeKind(["first", "head", "front"], _LIST, "int", "Return the first item of {a}.", "{a}[0]", _a_list),
    CodeKind(["total", "sum", "add_up"], _LIST, "int", "Return the sum of the numbers in {a}.", "sum({a})", _a_list),
]
_CODE_NOUNS = ["apples", "coins", "points", "cookies", "stars", "steps", "books", "cards", "birds", "boxes",
               "marbles", "shells", "words", "items", "values", "scores"]
_PARAM_NAMES = {"int": [("a", "b"), ("x", "y"), ("m", "n"), ("first", "second")],
                "str": [("s",), ("word",), ("text",), ("name",)],
                "list": [("items",), ("numbers",), ("values",), ("nums",)]}


class CodeProblem(NamedTuple):
    name: str
    prompt: str  # HumanEval's prompt: imports (none here), signature, docstring
    solution: str  # the body that completes the prompt
    test: str  # defines check(candidate)


def _code_problem(rng: random.Random) -> CodeProblem:
    kind = rng.choice(CODE_KINDS)
    name = f"{rng.choice(kind.names)}_{rng.choice(_CODE_NOUNS)}"
    names = rng.choice(_PARAM_NAMES[kind.params[0][1]])[: len(kind.params)]
    slots = dict(zip("ab", names))
    signature = ", ".join(f"{n}: {hint}" for n, (_, hint) in zip(names, kind.params))
    expr = kind.body.format(**slots)
    compute = eval(f"lambda {', '.join(names)}: {expr}")  # noqa: S307 (our own template, the reference answer)
    example = kind.inputs(rng)
    calls = [kind.inputs(rng) for _ in range(4)]
    prompt = (f"\n\ndef {name}({signature}) -> {kind.returns}:\n"
              f'    """ {kind.doc.format(**slots)}\n'
              f"    >>> {name}({', '.join(map(repr, example))})\n"
              f"    {compute(*example)!r}\n"
              f'    """\n')
    checks = "".join(f"    assert candidate({', '.join(map(repr, args))}) == {compute(*args)!r}\n" for args in calls)
    return CodeProblem(name, prompt, f"    return {expr}\n", f"\n\ndef check(candidate):\n{checks}")


def make_code_problem(rng: random.Random, held_out: bool = False) -> CodeProblem:
    """A tiny function to write, in HumanEval's format; training-side unless held_out (the prompt decides)."""
    return draw(rng, _code_problem, held_out, lambda problem: problem.prompt)


def make_code_snippet(rng: random.Random) -> str:
    """A training-side function written out in full, as code on the web is."""
    problem = make_code_problem(rng)
    return (problem.prompt + problem.solution).strip("\n")
