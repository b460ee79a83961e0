"""The chat model's python tool: a small, safe calculator.

The model writes ``<|python_start|>EXPR<|python_end|>``; the engine calls
``use_calculator(EXPR)`` and forces the answer back as
``<|output_start|>RESULT<|output_end|>``. EXPR is untrusted model output, so it is
never handed to ``eval``. It is parsed with ``ast.parse(..., mode="eval")`` and the
tree is walked by a small interpreter that knows only:

* number literals (int and float; not bool, not complex),
* unary ``+`` and ``-``,
* binary ``+ - * / // % **`` (parentheses are implicit in the tree),
* ``<str literal>.count(<str literal>)`` (the spelling tasks), whose int result may
  take part in arithmetic.

Everything else (names, attributes other than ``.count``, other calls, subscripts,
comparisons, containers, lambdas, f-strings, string arithmetic, ...) is refused.
Every operation is bounded *before* it is carried out, so that no input, however
hostile, takes noticeable time or memory: input length, literal length, tree size and
depth, the size of every integer intermediate, exponents, and float finiteness.

API:

* ``evaluate(expr)`` returns the value or raises ``CalculatorError`` (a ``ValueError``)
  with a short reason.
* ``format_result(value)`` renders a value the way the training data writes numbers.
* ``use_calculator(expr)`` is ``format_result(evaluate(expr))``, or ``None`` when the
  expression is refused or fails. It never raises.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Decimal

__all__ = [
    "CalculatorError",
    "evaluate",
    "format_result",
    "use_calculator",
    "MAX_EXPR_CHARS",
    "MAX_STR_CHARS",
    "MAX_NODES",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_EXPONENT",
]

MAX_EXPR_CHARS = 1_000  # longest expression accepted (characters)
MAX_STR_CHARS = 10_000  # longest string literal accepted (characters)
MAX_NODES = 2_000  # most syntax-tree nodes (operator nodes count too)
MAX_DEPTH = 200  # deepest syntax tree (the evaluator recurses once per level)
MAX_INT = 10**100  # largest |int| allowed as a literal or after any operation
MAX_INT_BITS = MAX_INT.bit_length()  # 333
MAX_EXPONENT = 1_000  # largest |exponent| for a power whose base is not 0, 1 or -1


class CalculatorError(ValueError):
    """The expression was refused or could not be evaluated; the message says why."""


# ---------------------------------------------------------------------------
# Pre-processing: thousands separators
# ---------------------------------------------------------------------------

_QUOTES = "'\""
# a comma that separates a digit from a group of exactly three digits: 1,000 and 12,345,678
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _strip_thousands_commas(expr: str) -> str:
    """Remove commas used as thousands separators (``1,000`` -> ``1000``).

    Only code outside string literals is touched, so ``"1,000".count(",")`` keeps its
    comma. A comma not followed by exactly three digits (``f(1,2)``) is left alone and
    the tree check refuses what it makes.
    """
    pieces: list[str] = []
    code_start = 0
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch not in _QUOTES:
            i += 1
            continue
        pieces.append(_THOUSANDS_COMMA.sub("", expr[code_start:i]))
        delim = ch * 3 if expr.startswith(ch * 3, i) else ch
        j = i + len(delim)
        while j < n and not expr.startswith(delim, j):
            j += 2 if expr[j] == "\\" else 1  # an escaped character never closes the literal
        end = min(j + len(delim), n)  # an unterminated literal runs to the end (parse fails)
        pieces.append(expr[i:end])
        i = code_start = end
    pieces.append(_THOUSANDS_COMMA.sub("", expr[code_start:]))
    return "".join(pieces)


# ---------------------------------------------------------------------------
# Parsing and structural checks
# ---------------------------------------------------------------------------


def _parse(expr: str) -> ast.expr:
    if not isinstance(expr, str):
        raise CalculatorError("expression must be a string")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalculatorError("expression too long")
    text = _strip_thousands_commas(expr.strip())
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:  # also IndentationError
        raise CalculatorError(f"syntax error: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise CalculatorError("expression too deeply nested") from None
    except (ValueError, TypeError):  # e.g. null bytes in the source
        raise CalculatorError("unparseable expression") from None
    # size and depth, measured without recursion, before the recursive evaluator runs
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError("expression too large")
        if depth > MAX_DEPTH:
            raise CalculatorError("expression too deeply nested")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree.body


# ---------------------------------------------------------------------------
# Bounded arithmetic
# ---------------------------------------------------------------------------

Number = int | float


def _check(value: Number) -> Number:
    """Every intermediate passes through here: small ints, finite real floats."""
    if isinstance(value, bool):  # never produced, but keep the type honest
        value = int(value)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS or abs(value) > MAX_INT:
            raise CalculatorError("number too large")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("result is not finite")
        return value
    if isinstance(value, complex):
        raise CalculatorError("complex result")
    raise CalculatorError(f"unsupported value {type(value).__name__}")


def _mul(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int):
        # |a*b| >= 2**(bits(a)+bits(b)-2) for non-zero a, b: refuse what is surely too big
        if a and b and a.bit_length() + b.bit_length() - 2 >= MAX_INT_BITS:
            raise CalculatorError("number too large")
    return a * b


def _pow(base: Number, exp: Number) -> Number:
    if isinstance(base, int) and isinstance(exp, int):
        if base in (0, 1, -1):
            if base == 0 and exp < 0:
                raise CalculatorError("division by zero")
            # trivially small whatever the exponent; int.__pow__ needs only log2(exp) steps
            return base**exp if exp >= 0 else float(base) ** exp
        if abs(exp) > MAX_EXPONENT:
            raise CalculatorError("exponent too large")
        if exp > 0 and (base.bit_length() - 1) * exp >= MAX_INT_BITS:
            # |base**exp| >= 2**((bits-1)*exp): surely beyond MAX_INT, don't compute it
            raise CalculatorError("exponent too large")
        # exp < 0 gives a float (1 / base**|exp|), computed by float pow in constant time
        return base**exp
    # a float is involved: float pow is constant time; overflow and complex are caught
    if isinstance(exp, float) and not exp.is_integer() and base < 0:
        raise CalculatorError("complex result")
    return float(base) ** float(exp)


def _truediv(a: Number, b: Number) -> Number:
    return a / b


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: _truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
}

_UNARYOPS = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


# ---------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------


def _describe(node: ast.AST) -> str:
    """A short reason for refusing a node."""
    if isinstance(node, ast.Name):
        return "names are not allowed"
    if isinstance(node, ast.Attribute):
        return "attributes other than str.count are not allowed"
    if isinstance(node, ast.Call):
        return 'only calls of the form "literal".count("literal") are allowed'
    if isinstance(node, ast.Subscript):
        return "subscripts are not allowed"
    if isinstance(node, ast.JoinedStr | ast.FormattedValue):
        return "f-strings are not allowed"
    if isinstance(node, ast.Compare):
        return "comparisons are not allowed"
    if isinstance(node, ast.BoolOp):
        return "boolean operators are not allowed"
    if isinstance(node, ast.Lambda):
        return "lambdas are not allowed"
    if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        return "comprehensions are not allowed"
    if isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict):
        return "containers are not allowed"
    if isinstance(node, ast.NamedExpr):
        return "assignment is not allowed"
    return f"{type(node).__name__} is not allowed"


def _str_literal(node: ast.AST) -> str:
    if not (isinstance(node, ast.Constant) and type(node.value) is str):
        raise CalculatorError(".count needs a string literal receiver and argument")
    if len(node.value) > MAX_STR_CHARS:
        raise CalculatorError("string literal too long")
    return node.value


def _eval_count(node: ast.Call) -> int:
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "count"):
        raise CalculatorError(_describe(node))
    if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
        raise CalculatorError(".count takes exactly one string literal")
    haystack = _str_literal(func.value)
    needle = _str_literal(node.args[0])
    return haystack.count(needle)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is int or type(value) is float:  # excludes bool and subclasses
            return _check(value)
        if type(value) is str:
            raise CalculatorError("strings are only allowed in \"literal\".count(\"literal\")")
        raise CalculatorError(f"{type(value).__name__} literals are not allowed")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        left = _eval(node.left)
        right = _eval(node.right)
        try:
            return _check(op(left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("number too large") from None
    if isinstance(node, ast.UnaryOp):
        op = _UNARYOPS.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        return _check(op(_eval(node.operand)))
    if isinstance(node, ast.Call):
        return _eval_count(node)
    raise CalculatorError(_describe(node))


def evaluate(expr: str) -> int | float | str:
    """Evaluate a calculator expression, or raise ``CalculatorError`` saying why not.

    The result is an int or a float (``str.count`` gives an int; string literals are
    accepted only as its receiver and argument, so no string comes out today).
    """
    node = _parse(expr)
    try:
        return _eval(node)
    except CalculatorError:
        raise
    except (RecursionError, MemoryError):
        raise CalculatorError("expression too deeply nested") from None
    except (ArithmeticError, TypeError, ValueError) as e:
        raise CalculatorError(f"cannot evaluate: {type(e).__name__}") from None


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------

SIGNIFICANT_DIGITS = 10
_WHOLE_FLOAT_LIMIT = 1e16  # floats below this that are whole print as ints (exact up to 2**53)
_PLAIN_MIN = 1e-6  # below this magnitude (and at or above 1e16) use exponent notation


def format_result(value: int | float | str) -> str:
    """Render a value the way GSM8K writes numbers.

    ints as they are; whole floats of modest size as ints (``24.0`` -> ``"24"``); other
    floats rounded to 10 significant digits (never fewer than the digits of the
    integer part), trailing zeros dropped, no float noise (``0.1+0.2`` -> ``"0.3"``),
    and plain positional notation for magnitudes from 1e-6 up to 1e16.
    """
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | str):
        return str(value)
    if not isinstance(value, float):
        raise CalculatorError(f"cannot format {type(value).__name__}")
    if not math.isfinite(value):
        raise CalculatorError("result is not finite")
    magnitude = abs(value)
    if value.is_integer() and magnitude < _WHOLE_FLOAT_LIMIT:
        return str(int(value))
    if magnitude < _PLAIN_MIN or magnitude >= _WHOLE_FLOAT_LIMIT:
        return format(value, f".{SIGNIFICANT_DIGITS}g")
    int_digits = len(str(int(magnitude))) if magnitude >= 1 else 0
    rounded = format(value, f".{max(SIGNIFICANT_DIGITS, int_digits)}g")
    text = format(Decimal(rounded), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def use_calculator(expr: str) -> str | None:
    """The engine's tool: the result as text, or None if refused or failed. Never raises."""
    try:
        return format_result(evaluate(expr))
    except Exception:  # noqa: BLE001 - the contract is "never raises" on model output
        return None
