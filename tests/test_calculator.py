"""Tests for nanochat/calculator.py: the chat model's python tool, a safe calculator."""

from __future__ import annotations

import json
import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_data_path
from nanochat.calculator import CalculatorError, evaluate, format_result, use_calculator

# -----------------------------------------------------------------------------
# arithmetic, compared with Python's own evaluation of the same trusted expressions

ARITHMETIC = [
    # GSM8K-like annotations
    "48/2", "48+24", "3*4", "0.5*10", "1.5*2", "100-20-15", "(5+3)*2", "2**3", "10%3",
    "12/60", "0.2*50", "100/2", "15*2", "100-50-30-15", "18*.5", "2*20*.01", "1.20*4",
    "9*2/3", "120*2/3", "(120-36)/2", "3/4", "1/3", "2/3*100", "0.1+0.2", "0.1*3", "1.1*1.1",
    # unary minus and plus
    "-5", "-5+3", "3*-2", "-(4-10)", "--3", "+7", "-2**2", "(-2)**2", "-0.5*4",
    # floor division, modulo, powers
    "7//2", "-7//2", "7//-2", "7.5//2", "17%5", "-7%3", "7%-3", "5.5%2", "2**10", "2**-2",
    "10**-3", "2**0.5", "4**0.5", "1.05**10", "0**0",
    # parentheses, precedence, literals
    "((1+2)*(3+4))/7", "2+3*4", "(2+3)*4", "2*3**2", "100/(2*5)", "1e3/4", "1_000+1", "0x10",
    "1234567.891*1", "123456789*1000", "10**15/1", "99999999999*99999999999",
    "1/7", "22/7", "100/3", "0.001/3", "2/3", "1e-5*3",
]


@pytest.mark.parametrize("expr", ARITHMETIC)
def test_arithmetic_matches_python(expr):
    expected = eval(expr)  # trusted: the expressions above are written by this test
    assert evaluate(expr) == expected
    assert use_calculator(expr) == format_result(expected)


@pytest.mark.parametrize("expr, text", [
    ("48/2", "24"), ("0.5*10", "5"), ("1.5*2", "3"), ("100-20-15", "65"), ("(5+3)*2", "16"),
    ("2**3", "8"), ("10%3", "1"), ("3*4", "12"), ("12/60", "0.2"), ("0.1+0.2", "0.3"),
    ("1/3", "0.3333333333"), ("2/3", "0.6666666667"), ("-1/3", "-0.3333333333"), ("0.1*3*10", "3"),
    ("3/4", "0.75"), ("2**-2", "0.25"), ("10**-3", "0.001"), ("2**0.5", "1.414213562"),
    ("-7//2", "-4"), ("7.5//2", "3"), ("1.20*4", "4.8"), ("18*.5", "9"), ("0.001/3", "0.0003333333333"),
    ("1234567.891*1", "1234567.891"), ("99999999999*99999999999", "9999999999800000000001"),
    ("10**15/1", "1000000000000000"), ("123456789012.5*1", "123456789012"), ("-0.0", "0"),
])
def test_formatted_text(expr, text):
    assert use_calculator(expr) == text


@pytest.mark.parametrize("expr, value", [
    ("1,000*3", 3000), ("1,000", 1000), ("1,234,567+1", 1234568), ("2,500.50*2", 5001.0),
    ("(1,000-250)/3", 250.0), ("-1,000", -1000), (" 1,000 * 3 ", 3000),
])
def test_thousands_commas_are_stripped(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr, value", [
    ('"1,000".count(",")', 1),  # not inside string literals
    ("'1,000,000'.count(',')", 2),
    ('"a,b,123".count(",")', 2),
    ('"""x"1,000""".count(",")', 1),  # a quote inside a triple-quoted literal does not end it
    ('"\\"1,000".count(",")', 1),  # nor does an escaped quote
])
def test_commas_in_string_literals_are_kept(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr", ["1,2", "1,2,3", "12,3456", "1, 000", "(1,2)"])
def test_commas_that_are_not_thousands_separators_are_refused(expr):
    assert use_calculator(expr) is None


def test_format_result_rules():
    assert format_result(24) == "24"
    assert format_result(10**30) == str(10**30)
    assert format_result(24.0) == "24"
    assert format_result(-3.0) == "-3"
    assert format_result(0.1 + 0.2) == "0.3"
    assert format_result(1 / 3) == "0.3333333333"
    assert format_result(2.5e-5) == "0.000025"
    assert format_result(123456.75) == "123456.75"
    assert format_result(1e20) == "1e+20"  # beyond ordinary magnitudes exponent notation is fine
    assert format_result("abc") == "abc"
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(CalculatorError):
            format_result(bad)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e15, allow_nan=False, allow_infinity=False), st.booleans())
def test_format_result_is_plain_and_close(x, negative):
    x = -x if negative else x
    text = format_result(x)
    assert re.fullmatch(r"-?\d+(\.\d*[1-9])?", text), text  # plain positional, no trailing zeros
    assert math.isclose(float(text), x, rel_tol=1e-9)
    if x.is_integer():
        assert text == str(int(x))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-10**30, max_value=10**30))
def test_thousands_separated_ints(n):
    assert use_calculator(f"{n:,}") == str(n)
    assert use_calculator(f"{n:,}*2") == str(2 * n)


# -----------------------------------------------------------------------------
# str.count and what is refused

@pytest.mark.parametrize("expr, value", [
    ('"strawberry".count("r")', 3), ("'strawberry'.count('r')", 3), ('"banana".count("an")', 2),
    ('"banana".count("a")', 3), ('"mississippi".count("ss")', 2), ('"abc".count("z")', 0),
    ('"aaaa".count("aa")', 2), ('"abc".count("")', 4), ('"Hello".count("h")', 0),
    ('"naïve café".count("é")', 1), ('"strawberry".count("r") + 1', 4), ('"ab" "ab".count("a")', 2),
])
def test_count(expr, value):
    assert evaluate(expr) == value
    assert use_calculator(expr) == str(value)


REFUSED = [
    # .count only on and with string literals, one argument
    '("a"+"b").count("a")', 'x.count("a")', '"abc".count(x)', '"abc".count("a", 1)',
    '"abc".count(sub="a")', '"abc".count(*"a")', '"abc".count()', '"abc".count(1)', '(1).count(1)',
    'b"abc".count(b"a")', '"a".count("a"*10**9)', '"a".count("a"*3)',
    # other methods and attributes, dunders
    '"abc".upper()', '"abc".upper', '"a".__class__', '"a".__class__.__mro__', "(1).real",
    '"".join("ab")', '"{}".format(1)', "().__class__.__bases__[0].__subclasses__()",
    # names and calls
    "x", "x+1", "__import__('os')", "__import__('os').system('echo hi')", "open('f')",
    "print(1)", "abs(-1)", "int('3')", "eval('1+1')", "exec('1')", "globals()", "len('abc')",
    "pow(2, 3)", "True", "None", "True+1", "...",
    # other syntax
    "lambda: 1", "(lambda x: x)(1)", "[x for x in 'ab']", "{x for x in 'ab'}", "(x for x in 'ab')",
    "{1: 2}", "[1]", "{1}", "(1, 2)", "[1][0]", '"abc"[0]', '"abc"[::-1]', "f'{1+1}'", "f'x'",
    "1 < 2", "1 == 1", "1 and 2", "1 or 2", "not 1", "~1", "1 if 1 else 2", "(x := 1)",
    "1 << 3", "1 >> 1", "1 & 1", "1 | 2", "1 ^ 3", "1j", "2+3j", "import os", "1; 2", "x = 1",
    "a.b", "await x", "*a",
    # string arithmetic and bare strings
    '"a"*3', '"a"+"b"', '"a"*10**10', '"abc"', "'a' % 1", '-"a"', '3*"a"',
    # junk
    "", "   ", "1+", "(1", "$5", "50%", "5 apples", "1 2", "\x00", "1\x002", "12 / ", "=", "2x3",
]


@pytest.mark.parametrize("expr", REFUSED)
def test_refused(expr):
    assert use_calculator(expr) is None
    with pytest.raises(CalculatorError):
        evaluate(expr)


@pytest.mark.parametrize("expr, reason", [
    ("x", "names are not allowed"),
    ("2**10000", "exponent too large"),
    ("1/0", "division by zero"),
    ('"a".__class__', "attribute"),
    ('"a"*3', "strings are only allowed"),
    ("1 < 2", "comparisons"),
    ("1+", "syntax error"),
])
def test_reasons(expr, reason):
    with pytest.raises(CalculatorError, match=re.escape(reason)):
        evaluate(expr)


def test_calculator_error_is_a_value_error():
    assert issubclass(CalculatorError, ValueError)
    with pytest.raises(ValueError):
        evaluate("1/0")
    with pytest.raises(CalculatorError):
        evaluate(123)  # not a string


@pytest.mark.parametrize("expr", ["1/0", "1//0", "1%0", "1.5/0", "0**-1", "0.0**-1", "5/(3-3)"])
def test_division_by_zero(expr):
    assert use_calculator(expr) is None


# -----------------------------------------------------------------------------
# bounds: nothing can take long or use much memory

BOUNDS = [
    "9**9**9", "2**10**10", "10**10**10", "(10**100)**(10**100)", "2**10000", "10**101",
    "2**-10000", "10**100*10", "10**100+1", "-10**100-1", "(10**60)*(10**60)", "1" + "0" * 200,
    "999999999**99999999", "(2**300)**2", "2**333*2**333", "(-1)**(10**101)",
    '"a"*10**10', '"a".count("a"*10**9)', '"ab"*10**8', "1e400", "1e308*10", "1e300**2",
    "2.0**10000", "10**308*10.0", "(-8)**(1/3)", "(-1)**0.5",
    "(" * 10_000 + "1" + ")" * 10_000,  # too long for the input bound
    "(" * 300 + "1" + ")" * 300,  # Python's parser stops at 200 nested parentheses
    "-" * 999 + "1",  # deeply nested unary operators
    "+" * 500 + "1",
    "1+" * 499 + "1",  # a 500-term sum nests 500 BinOps deep
    "2**" * 300 + "2",
    "1" * 2000,  # too long
    '"' + "a" * 2000 + '".count("a")',  # too long
    "9" * 999,  # a literal beyond the int bound
]


@pytest.mark.parametrize("expr", BOUNDS, ids=lambda s: s if len(s) < 40 else s[:30] + f"...({len(s)} chars)")
def test_bounds_refused_quickly(expr):
    start = time.perf_counter()
    result = use_calculator(expr)
    elapsed = time.perf_counter() - start
    assert result is None
    assert elapsed < 0.2, f"{elapsed:.3f}s"


@pytest.mark.parametrize("expr, text", [
    ("1**10**100", "1"), ("(-1)**(10**100)", "1"), ("0**(10**100)", "0"),  # trivial bases, huge exponents
    ("10**100", str(10**100)), ("-10**100", str(-10**100)), ("2**332", str(2**332)),
    ("10**50*10**50", str(10**100)), ("2**-1000", format_result(2**-1000)),
    ("(" * 150 + "1" + ")" * 150, "1"), ("-" * 150 + "1", "1"), ("+".join(["1"] * 150), "150"),
    ('"' + "ab" * 450 + '".count("b")', "450"),
])
def test_near_the_bounds_still_works(expr, text):
    start = time.perf_counter()
    assert use_calculator(expr) == text
    assert time.perf_counter() - start < 0.2


# -----------------------------------------------------------------------------
# property-based

def _int_expressions():
    leaf = st.integers(min_value=0, max_value=99).map(str)

    def extend(children):
        binary = st.tuples(children, st.sampled_from(["+", "-", "*", "//", "%"]), children).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}")
        return st.one_of(binary, children.map(lambda s: f"({s})"), children.map(lambda s: f"-{s}"))

    return st.recursive(leaf, extend, max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(_int_expressions())
def test_random_int_expressions_match_python(expr):
    try:
        expected = eval(expr)  # trusted: built by the strategy above from digits, operators, parentheses
    except ZeroDivisionError:
        assert use_calculator(expr) is None
        return
    assert use_calculator(expr) == str(expected)


def _float_expressions():
    leaf = st.one_of(st.integers(min_value=0, max_value=999).map(str),
                     st.decimals(min_value=0, max_value=100, places=2).map(str))

    def extend(children):
        binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(
            lambda t: f"({t[0]}) {t[1]} ({t[2]})")
        return st.one_of(binary, children.map(lambda s: f"-({s})"))

    return st.recursive(leaf, extend, max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_float_expressions())
def test_random_decimal_expressions_match_python(expr):
    try:
        expected = eval(expr)  # trusted: built by the strategy above
    except ZeroDivisionError:
        assert use_calculator(expr) is None
        return
    assert use_calculator(expr) == format_result(expected)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_arbitrary_text(text):
    result = use_calculator(text)
    assert result is None or isinstance(result, str)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789+-*/%().,'\" _eExjabc[]:", max_size=80))
def test_never_raises_on_calculator_like_text(text):
    start = time.perf_counter()
    result = use_calculator(text)
    assert result is None or isinstance(result, str)
    assert time.perf_counter() - start < 0.2


# -----------------------------------------------------------------------------
# the real GSM8K annotations: <<expr=result>> in the answers

ANNOTATION = re.compile(r"<<(.*?)>>")

# Annotations whose result is not a number the calculator should print. The only kind found in
# train+test (27,998 annotations): the result written as a fraction, i.e. the expression left
# unevaluated. Checked below: the "result" evaluates to the same value as the expression.
FRACTION_RESULTS = {("test.jsonl", "3/4", "3/4")}


def _normalize_number_text(text: str) -> str:
    """GSM8K sometimes writes 144.00, 4.80 or .4 where the calculator prints 144, 4.8, 0.4."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.startswith("."):
        text = "0" + text
    if text.startswith("-."):
        text = "-0" + text[1:]
    return text or "0"


def _classify(expr: str, want: str, got: str | None) -> str:
    if got == want:
        return "exact"
    if got is not None and got == _normalize_number_text(want):
        return "formatting only"  # trailing zeros / missing leading zero in the data
    if got is not None and not re.fullmatch(r"-?[\d.]+", want) and use_calculator(want) == got:
        return "fraction result"  # the annotation wrote the result unevaluated, e.g. 3/4
    if got is not None:
        try:
            if math.isclose(float(got), float(want), rel_tol=1e-4):
                return "close"  # float tolerance (none found in the data, allowed anyway)
        except ValueError:
            pass
    return "mismatch"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["train.jsonl", "test.jsonl"])
def test_gsm8k_annotations(name):
    path = shared_data_path("gsm8k", name)
    counts: dict[str, int] = {}
    fractions, mismatches = set(), []
    markers = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            answer = json.loads(line)["answer"]
            markers += answer.count("<<")
            for m in ANNOTATION.finditer(answer):
                expr, want = m.group(1).rsplit("=", 1)
                got = use_calculator(expr)
                kind = _classify(expr, want, got)
                counts[kind] = counts.get(kind, 0) + 1
                if kind == "fraction result":
                    fractions.add((name, expr, want))
                elif kind == "mismatch":
                    mismatches.append((expr, want, got))
    total = sum(counts.values())
    print(f"{name}: {total} annotations, {counts}")
    assert total == markers > 1000  # every annotation was found and parsed
    assert mismatches == []
    assert fractions == {f for f in FRACTION_RESULTS if f[0] == name}
    assert counts["exact"] / total > 0.95  # the calculator prints numbers the way the data does
