"""Synthetic pretraining corpus for the embedded tiny Countdown model.

Every document is one `compact` prompt and one answer: "3 7 12=22:" + "<answer>12+7+3</answer>" (the
tokenizer appends EOS). Two kinds are mixed:
- correct: a solvable problem and one of its solutions, drawn uniformly from ALL solutions, so the
  model sees many ways to reach a target instead of one canonical form;
- noise: a solvable problem and a random well-formed expression over its numbers (each number used
  once, random order, operators and bracketing), almost always wrong.
The noise teaches the answer format and "use every number once" without teaching arithmetic; the
mix (`correct_fraction`) sets how strong the base model is, and so how much room RL has to improve.

Problems have exactly three numbers. For three numbers every expression is one of two trees,
(x o y) o z or x o (y o z), so the whole problem space with all solutions is enumerated exactly (with
Fractions) per multiset of numbers in about a second: no solver, no sampling bias. Held-out problems
are excluded by canonical key (sorted numbers, target) so pretraining never sees the eval set.
Expressions are written with the fewest brackets that keep their value, e.g. "(3+4)*5", "9-(2+1)".
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

from fastzero.tasks.countdown.problems import problem_key
from fastzero.tasks.countdown.prompts import render_prompt

OPERATORS = ("+", "-", "*", "/")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
ProblemKey = tuple[tuple[int, ...], int]  # (sorted numbers, target)


@dataclass(frozen=True)
class ProblemRanges:
    """Three numbers in [min_value, max_value], targets in [min_target, max_target]."""

    min_value: int = 1
    max_value: int = 20
    min_target: int = 1
    max_target: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}")
        if not 0 <= self.min_target <= self.max_target:
            raise ValueError(f"need 0 <= min_target <= max_target, got {self.min_target}, {self.max_target}")


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _left_tree(x: str, o1: str, y: str, o2: str, z: str) -> str:
    """(x o1 y) o2 z: brackets only when the inner operator binds looser than the outer one."""
    inner = f"{x}{o1}{y}"
    return (f"({inner})" if _PRECEDENCE[o1] < _PRECEDENCE[o2] else inner) + f"{o2}{z}"


def _right_tree(x: str, o1: str, y: str, o2: str, z: str) -> str:
    """x o1 (y o2 z): brackets when looser, or equal after a non-associative - or /."""
    inner = f"{y}{o2}{z}"
    needs = _PRECEDENCE[o2] < _PRECEDENCE[o1] or (_PRECEDENCE[o2] == _PRECEDENCE[o1] and o1 in "-/")
    return f"{x}{o1}" + (f"({inner})" if needs else inner)


def all_expressions(numbers: Sequence[int]) -> dict[Fraction, list[str]]:
    """Every distinct expression text over three numbers (each used once), grouped by exact value."""
    if len(numbers) != 3:
        raise ValueError(f"the tiny corpus uses exactly 3 numbers, got {list(numbers)}")
    by_value: dict[Fraction, list[str]] = {}
    seen: set[str] = set()
    for x, y, z in itertools.permutations(int(n) for n in numbers):
        fx, fy, fz = Fraction(x), Fraction(y), Fraction(z)
        for o1, o2 in itertools.product(OPERATORS, repeat=2):
            left = _apply(o1, fx, fy)
            right = _apply(o2, fy, fz)
            candidates = (
                (None if left is None else _apply(o2, left, fz), _left_tree(str(x), o1, str(y), o2, str(z))),
                (None if right is None else _apply(o1, fx, right), _right_tree(str(x), o1, str(y), o2, str(z))),
            )
            for value, text in candidates:
                if value is not None and text not in seen:
                    seen.add(text)
                    by_value.setdefault(value, []).append(text)
    return by_value


def solution_table(ranges: ProblemRanges) -> dict[ProblemKey, list[str]]:
    """Every solvable problem in `ranges` (by canonical key) with all of its solutions."""
    table: dict[ProblemKey, list[str]] = {}
    values = range(ranges.min_value, ranges.max_value + 1)
    for numbers in itertools.combinations_with_replacement(values, 3):
        for value, texts in all_expressions(numbers).items():
            if value.denominator == 1 and ranges.min_target <= value <= ranges.max_target:
                table[(numbers, int(value))] = texts
    return table


def random_expression(numbers: Sequence[int], rng: random.Random) -> str:
    """A random well-formed expression using each of the three numbers once."""
    x, y, z = rng.sample([str(int(n)) for n in numbers], 3)
    o1, o2 = rng.choice(OPERATORS), rng.choice(OPERATORS)
    return (_left_tree if rng.random() < 0.5 else _right_tree)(x, o1, y, o2, z)


def answer_text(expression: str) -> str:
    return f"<answer>{expression}</answer>"


def build_documents(
    n_docs: int,
    *,
    seed: int,
    ranges: ProblemRanges,
    correct_fraction: float,
    excluded: Iterable[ProblemKey] = (),
) -> list[tuple[str, str]]:
    """`n_docs` (prompt, response) pairs; the same arguments always give the same list."""
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    if not 0.0 <= correct_fraction <= 1.0:
        raise ValueError(f"correct_fraction must be in [0, 1], got {correct_fraction}")
    excluded_keys = {problem_key(numbers, target) for numbers, target in excluded}
    table = solution_table(ranges)
    if not set(table) - excluded_keys:
        raise ValueError(f"no solvable problems left in {ranges} after excluding {len(excluded_keys)}")
    rng = random.Random(seed)
    values = range(ranges.min_value, ranges.max_value + 1)
    documents = []
    while len(documents) < n_docs:
        # Sampled like problems.generate_problems (uniform numbers with repeats, uniform target,
        # unsolvable rejected), so pretraining sees the eval distribution, minus the eval problems.
        shown = rng.choices(values, k=3)
        target = rng.randint(ranges.min_target, ranges.max_target)
        key = problem_key(shown, target)
        if key not in table or key in excluded_keys:
            continue
        if rng.random() < correct_fraction:
            expression = rng.choice(table[key])
        else:
            expression = random_expression(shown, rng)
        documents.append((render_prompt("compact", shown, target), answer_text(expression)))
    return documents
