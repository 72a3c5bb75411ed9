"""Pure-Python Countdown scorer and solver: the test oracle for the C++ extension.

Written independently of csrc/countdown.cpp and as plainly as possible: Python's own `re` finds the
answer, a token list and a recursive-descent parser build the value with `fractions.Fraction`, and
the solver is a depth-first search over pairs. It never calls eval. The rules are listed in
`fastzero.tasks.countdown.verifier`; this module is also that module's fallback when the extension
is not built (correct, but ~50x slower than the C++ batch path, and `reference_solve` can take
minutes on six numbers).
"""
from __future__ import annotations

import operator
import re
from fractions import Fraction
from typing import Any, Sequence

ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
STRIP_CHARS = " \t\n\r"
MAX_ANSWER_CHARS = 1024
MAX_PAREN_DEPTH = 100
VALUE_LIMIT = 2**62
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DIGITS = frozenset("0123456789")
_OPERATORS = frozenset("+-*/()")


class _Invalid(Exception):
    """The answer is malformed or breaks a rule: it earns the format score."""


# ----------------------------------------------------------------------------- argument checks

def as_int(value: Any, name: str) -> int:
    """`value` as a Python int (ints and numpy integers; never bool, never float), int64 range."""
    if isinstance(value, bool):  # numpy.bool has no __index__: operator.index rejects it below
        raise TypeError(f"{name} must be an int, got bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ValueError(f"{name} does not fit in a signed 64-bit integer")
    return result


def as_numbers(numbers: Any, name: str) -> list[int]:
    if isinstance(numbers, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(numbers).__name__}")
    try:
        items = list(numbers)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(numbers).__name__}") from None
    return [as_int(x, f"{name}[{k}]") for k, x in enumerate(items)]


def check_response(response: Any, name: str) -> str:
    if not isinstance(response, str):
        raise TypeError(f"{name} must be a str, got {type(response).__name__}")
    return response


# ----------------------------------------------------------------------------- scoring

def extract_answer(response: str) -> str | None:
    """The last `<answer>(.*?)</answer>` match, exactly as re.findall defines it, or None.

    No match can end after the last "</answer>", nor start after it, so the text is cut there
    first: without the cut, many unclosed "<answer>" tags would make `re` quadratic.
    """
    last_close = response.rfind("</answer>")
    if last_close < 0:
        return None
    matches = ANSWER_PATTERN.findall(response[: last_close + len("</answer>")])
    return matches[-1] if matches else None


def _tokenize(text: str) -> list[str]:
    tokens, i = [], 0
    while i < len(text):
        char = text[i]
        if char in STRIP_CHARS:
            i += 1
        elif char in _DIGITS:
            start = i
            while i < len(text) and text[i] in _DIGITS:
                i += 1
            literal = text[start:i]
            if len(literal) > 1 and literal[0] == "0":
                raise _Invalid("leading zero")
            tokens.append(literal)
        elif char in _OPERATORS:
            tokens.append(char)
            i += 1
        else:
            raise _Invalid(f"character {char!r} is not allowed")
    return tokens


def _checked(value: Fraction) -> Fraction:
    if abs(value.numerator) >= VALUE_LIMIT or value.denominator >= VALUE_LIMIT:
        raise _Invalid("value out of range")
    return value


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*; factor := INT | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth, self.literals = tokens, 0, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Invalid("unexpected end")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = _checked(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor()
            if op == "*":
                value = _checked(value * rhs)
            elif rhs == 0:
                raise _Invalid("division by zero")
            else:
                value = _checked(value / rhs)
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "(":
            self.depth += 1
            if self.depth > MAX_PAREN_DEPTH:
                raise _Invalid("parentheses nested too deep")
            value = self.expr()
            if self.take() != ")":
                raise _Invalid("missing )")
            self.depth -= 1
            return value
        if token[0] in _DIGITS:
            self.literals.append(int(token))
            return _checked(Fraction(int(token)))
        raise _Invalid(f"unexpected {token!r}")


def evaluate_answer(content: str, numbers: Sequence[int]) -> Fraction:
    """Value of already-extracted answer content; raises _Invalid for every rule violation."""
    content = content.strip(STRIP_CHARS)
    if len(content) > MAX_ANSWER_CHARS:
        raise _Invalid("answer too long")
    parser = _Parser(_tokenize(content))
    value = parser.expr()
    if parser.peek() is not None:
        raise _Invalid("trailing tokens")
    if sorted(parser.literals) != sorted(numbers):
        raise _Invalid("numbers not used exactly once")
    return value


def reference_score(response: str, numbers: Sequence[int], target: int, *,
                    format_score: float = 0.1, correct_score: float = 1.0) -> float:
    """0.0 without an answer tag; correct_score when the last answer equals target; else format_score."""
    response = check_response(response, "response")
    numbers = as_numbers(numbers, "numbers")
    target = as_int(target, "target")
    content = extract_answer(response)
    if content is None:
        return 0.0
    try:
        value = evaluate_answer(content, numbers)
    except _Invalid:
        return float(format_score)
    return float(correct_score) if value == target else float(format_score)


# ----------------------------------------------------------------------------- solving

def reference_solve(numbers: Sequence[int], target: int) -> str | None:
    """Depth-first search over "combine two of the remaining values" (each number used once).

    Every expression is a binary tree, and every tree can be built by repeatedly merging two
    subtrees, so this finds a solution whenever one exists. Multisets of values already shown
    to fail are remembered. Fine for up to 4-5 numbers; six can take minutes.
    """
    numbers = as_numbers(numbers, "numbers")
    target = as_int(target, "target")
    if not 1 <= len(numbers) <= 6:
        raise ValueError(f"solve needs 1 to 6 numbers, got {len(numbers)}")
    if any(x < 0 or x >= VALUE_LIMIT for x in numbers) or abs(target) >= VALUE_LIMIT:
        return None  # a negative or huge number cannot be written as a literal
    goal = Fraction(target)
    failed: set[tuple[Fraction, ...]] = set()

    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == goal else None
        key = tuple(sorted(value for value, _ in items))
        if key in failed:
            return None
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (a, text_a), (b, text_b) = items[i], items[j]
                rest = [item for k, item in enumerate(items) if k not in (i, j)]
                for value, text in _merges(a, text_a, b, text_b):
                    found = search(rest + [(value, text)])
                    if found is not None:
                        return found
        failed.add(key)
        return None

    found = search([(Fraction(x), str(x)) for x in numbers])
    if found is not None and found.startswith("(") and len(numbers) > 1:
        found = found[1:-1]  # the outermost pair always wraps the whole expression
    return found


def _merges(a: Fraction, text_a: str, b: Fraction, text_b: str):
    """Every in-range value of `a op b` and `b op a`, fully parenthesized."""
    results = [(a + b, f"({text_a}+{text_b})"), (a * b, f"({text_a}*{text_b})"),
               (a - b, f"({text_a}-{text_b})"), (b - a, f"({text_b}-{text_a})")]
    if b != 0:
        results.append((a / b, f"({text_a}/{text_b})"))
    if a != 0:
        results.append((b / a, f"({text_b}/{text_a})"))
    for value, text in results:
        if abs(value.numerator) < VALUE_LIMIT and value.denominator < VALUE_LIMIT:
            yield value, text
