"""The R1-Zero signature of a Countdown response: what its think block computed, and whether it searched
and verified. Pure functions of the response text; nothing here is ever part of the reward.

Definitions (tests/tasks/countdown/test_traces.py checks them against an independent oracle):
- think block: if the response has "</think>", the text before the first one (after the last "<think>"
  before it, if any: a prompt may pre-fill "<think>"); else, if it has "<think>", the text after it up
  to the first "<answer>" (or the end: a truncated response). A response with neither has none.
- equation: in the think block, an "=" followed by an integer value (optional "-", digits, spaces
  before; not followed by "." or "/", which would make it a decimal or a fraction), preceded by an
  arithmetic expression: the longest well-formed expression (integers, + - * /, brackets, no unary
  minus; whitespace ignored) that ends at the "=" within the run of such characters before it (cut to
  its last 200 characters), with at least one operator. "12+7=19 19+3=22" holds two equations,
  "19+3" being the second's left side; so does the chained "12+7=19+3=22".
- right: the left side's exact value (fractions; division by zero has none) equals the stated value.
- resolved expressions: an equation continues the previous one when one of its integers equals the
  previous equation's stated value; replacing such an integer by "(" + the previous equation's first
  resolved expression + ")" gives one resolved expression per such integer, in order (an equation
  that continues nothing has none). "12+7=19 19+3=22" resolves its second equation to "(12+7)+3";
  "2+2=4 4*4=16" resolves its second to "(2+2)*4" and "4*(2+2)".
- reaches the target: its left side or a resolved expression is a correct Countdown answer (the
  verifier's rules: every number used once, the exact value equals the target).
- search succeeded: some equation reaches the target.
- answer checked (verification): the answer is correct, and some equation states the target and has
  the answer's expression as its left side or a resolved expression, up to regrouping (a chain of + and -
  is a list of signed terms, a chain of * and / a list of factors and divisors) with the order kept:
  "12+7+3" matches "(12+7)+3" and "12+(7+3)", "12-7-3" matches "12-(7+3)", "3+(12+7)" matches none.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

from .reference import extract_answer, reference_score

MAX_LHS_CHARS = 200
_RUN_CHARS = frozenset("0123456789+-*/() \t\n\r")
_VALUE = re.compile(r"[ \t\n\r]*(-?\d+)")
_TOKEN = re.compile(r"\d+|[+\-*/()]")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}

Tree = Union[int, tuple]  # an integer, or (operator, left tree, right tree)


@dataclass(frozen=True)
class Equation:
    lhs: str  # the left side as written, whitespace removed
    stated: int  # the value written after "="
    resolved: tuple[str, ...]  # the left side with the chain it continues substituted in, per choice
    right: bool

    @property
    def readings(self) -> tuple[str, ...]:
        """The left side and every resolved expression."""
        return (self.lhs, *self.resolved)


@dataclass(frozen=True)
class TraceStats:
    has_think: bool
    equations: int
    right_equations: int
    search_succeeded: bool
    answer_correct: bool
    answer_checked: bool


def think_block(response: str) -> str | None:
    """The think block's text (see the module docstring), or None when the response has none."""
    end = response.find("</think>")
    if end >= 0:
        head = response[:end]
        start = head.rfind("<think>")
        return head[start + len("<think>"):] if start >= 0 else head
    start = response.find("<think>")
    if start < 0:
        return None
    body = response[start + len("<think>"):]
    answer = body.find("<answer>")
    return body if answer < 0 else body[:answer]


def parse_tree(text: str) -> Tree | None:
    """The expression tree of `text` (+ - * / with precedence, left-assoc, brackets), or None."""
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != re.sub(r"[ \t\n\r]", "", text):
        return None  # a character outside the grammar
    pos = 0

    def expr(level: int) -> Tree | None:
        nonlocal pos
        left = factor() if level == 3 else expr(level + 1)
        while left is not None and pos < len(tokens) and _PRECEDENCE.get(tokens[pos]) == level:
            op = tokens[pos]
            pos += 1
            right = expr(level + 1)
            if right is None:
                return None
            left = (op, left, right)
        return left

    def factor() -> Tree | None:
        nonlocal pos
        if pos >= len(tokens):
            return None
        token = tokens[pos]
        pos += 1
        if token.isdigit():
            return int(token)
        if token == "(":
            inner = expr(1)
            if inner is None or pos >= len(tokens) or tokens[pos] != ")":
                return None
            pos += 1
            return inner
        return None

    tree = expr(1) if tokens else None
    return tree if tree is not None and pos == len(tokens) else None


def tree_value(tree: Tree) -> Fraction | None:
    """Exact value of a tree; None on division by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = tree_value(left), tree_value(right)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return _ARITHMETIC[op](a, b)


def regrouped(tree: Tree | None):
    """The tree with every chain of + - (of * /) flattened to its ordered signed terms (factors)."""
    if tree is None or isinstance(tree, int):
        return tree
    level = "+-" if tree[0] in "+-" else "*/"

    def flatten(node: Tree, positive: bool) -> list:
        if isinstance(node, int) or node[0] not in level:
            return [(positive, regrouped(node))]
        op, left, right = node
        return flatten(left, positive) + flatten(right, positive == (op in "+*"))

    return (level, tuple(flatten(tree, True)))


def _left_side(run: str) -> str | None:
    """The longest well-formed suffix of `run` (starting at a token), if it has an operator."""
    run = run[-MAX_LHS_CHARS:]
    starts = [m.start() for m in _TOKEN.finditer(run)]
    for start in starts:
        tree = parse_tree(run[start:])
        if tree is not None:
            return re.sub(r"[ \t\n\r]", "", run[start:]) if not isinstance(tree, int) else None
    return None


def _substitutions(lhs: str, value: int, replacement: str) -> tuple[str, ...]:
    """lhs with one integer equal to `value` replaced, for each such integer in order."""
    return tuple(lhs[: m.start()] + "(" + replacement + ")" + lhs[m.end():]
                 for m in re.finditer(r"\d+", lhs) if int(m.group()) == value)


def equations(think: str) -> list[Equation]:
    """Every equation of a think block, in order (see the module docstring)."""
    found: list[Equation] = []
    for eq in (m.start() for m in re.finditer("=", think)):
        value = _VALUE.match(think, eq + 1)
        if value is None or think[value.end(): value.end() + 1] in (".", "/"):
            continue
        begin = eq
        while begin > 0 and think[begin - 1] in _RUN_CHARS:
            begin -= 1
        lhs = _left_side(think[begin:eq])
        if lhs is None:
            continue
        stated = int(value.group(1))
        resolved: tuple[str, ...] = ()
        if found:
            previous = found[-1]
            resolved = _substitutions(lhs, previous.stated, (previous.resolved or (previous.lhs,))[0])
        exact = tree_value(parse_tree(lhs))
        found.append(Equation(lhs, stated, resolved, exact is not None and exact == stated))
    return found


def response_trace(response: str, numbers: Sequence[int], target: int) -> TraceStats:
    """The signature of one response to the problem (numbers, target)."""
    think = think_block(response)
    found = equations(think) if think is not None else []

    def correct(expression: str) -> bool:
        return reference_score(f"<answer>{expression}</answer>", numbers, target) == 1.0

    answer_correct = reference_score(response, numbers, target) == 1.0
    checked = False
    if answer_correct:
        answer = regrouped(parse_tree(extract_answer(response) or ""))
        checked = any(e.stated == target and any(answer == regrouped(parse_tree(r)) for r in e.readings)
                      for e in found)
    return TraceStats(
        has_think=think is not None,
        equations=len(found),
        right_equations=sum(e.right for e in found),
        search_succeeded=any(correct(r) for e in found for r in e.readings),
        answer_correct=answer_correct,
        answer_checked=checked,
    )


def trace_metrics(responses: Sequence[str], numbers: Sequence[Sequence[int]], targets: Sequence[int],
                  prefix: str = "think/") -> dict[str, float]:
    """Batch means for metrics.jsonl. Ratios with an empty denominator are left out (not 0)."""
    stats = [response_trace(r, n, t) for r, n, t in zip(responses, numbers, targets, strict=True)]
    n = max(1, len(stats))
    total = sum(s.equations for s in stats)
    correct = sum(s.answer_correct for s in stats)
    row = {
        f"{prefix}has_think": sum(s.has_think for s in stats) / n,
        f"{prefix}equations": total / n,
        f"{prefix}search_success": sum(s.search_succeeded for s in stats) / n,
    }
    if total:
        row[f"{prefix}arithmetic_right"] = sum(s.right_equations for s in stats) / total
    if correct:
        row[f"{prefix}verified"] = sum(s.answer_checked for s in stats) / correct
    return row
