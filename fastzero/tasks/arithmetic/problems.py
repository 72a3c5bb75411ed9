"""Arithmetic word problems: the `WordProblem` record and a seeded, offline generator.

A generated problem is a short story about one person's count of one kind of item: a start count,
then `min_ops..max_ops` steps, each one sentence (finds more, gives some away, buys containers of
several, ends up with k times as many, splits into k equal piles and keeps one), then "How many ...
does NAME have now?". Every intermediate count stays a whole number in 0..max_answer (a split only
when it divides evenly), so the answer is an exact integer, as in GSM8K.

Each problem carries, besides the question and its answer:
- `solution`: the worked steps in GSM8K's format (`<<a+b=c>>` calculator notes, a last line
  `#### N`), so generated problems save to and load from GSM8K-format files;
- `expression`: the same steps as one arithmetic expression with the usual precedence
  (`(12+3*5-7)*2`), which is the `compact` template's prompt for small models.

Problems are distinct by `key`, the question with runs of whitespace collapsed; `exclude` removes
keys, which is how train avoids test. The whole stream comes from `random.Random(f"arithmetic/{seed}")`,
so the same seed and options give the same problems, and a smaller n is a prefix of a larger one.
Bounded: after `100 * n + 10_000` draws it fails saying how far it got.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Collection, Hashable

NAMES = (("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Noah", "He"), ("Zoe", "She"), ("Omar", "He"),
         ("Lena", "She"), ("Ravi", "He"), ("Iris", "She"), ("Tom", "He"))
ITEMS = (("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("coin", "coins"),
         ("book", "books"), ("pencil", "pencils"), ("shell", "shells"), ("card", "cards"))
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars"))
FRIENDS = ("a friend", "a neighbour", "a classmate", "the teacher")
OPS = ("add", "sub", "groups", "times", "split")
MAX_MULTIPLIER = 5  # k in "k times as many" and "k equal piles"


@dataclasses.dataclass(frozen=True)
class WordProblem:
    question: str
    answer: int
    solution: str = ""  # GSM8K-format worked answer, ending in "#### N"; may be empty for loaded rows
    expression: str = ""  # the steps as one expression; empty for problems loaded without one

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"question must be non-empty text, got {self.question!r}")
        if type(self.answer) is not int:
            raise ValueError(f"answer must be an integer, got {self.answer!r}")
        for name in ("solution", "expression"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be text, got {getattr(self, name)!r}")

    @property
    def key(self) -> str:
        return " ".join(self.question.split())


@dataclasses.dataclass(frozen=True)
class Options:
    """Generation options, all inclusive; validated on construction."""

    min_ops: int = 2
    max_ops: int = 4
    min_value: int = 1
    max_value: int = 20
    max_answer: int = 999

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{f.name} must be an integer >= 0, got {value!r}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops} and {self.max_ops}")
        if not 1 <= self.min_value <= self.max_value:
            raise ValueError(f"need 1 <= min_value <= max_value, got {self.min_value} and {self.max_value}")
        if self.max_answer < self.max_value:
            raise ValueError(f"max_answer ({self.max_answer}) must be >= max_value ({self.max_value})")


def _plural(count: int, forms: tuple[str, str]) -> str:
    return f"{count} {forms[0] if count == 1 else forms[1]}"


class _Story:
    """One problem being written: the sentences, the solution lines and the expression, step by step."""

    def __init__(self, rng: random.Random, start: int):
        (self.name, self.subject), self.item = rng.choice(NAMES), rng.choice(ITEMS)
        self.value, self.expression, self.additive = start, str(start), False
        self.sentences = [f"{self.name} has {_plural(start, self.item)}."]
        self.lines = [f"{self.name} starts with {_plural(start, self.item)}."]

    def apply(self, op: str, rng: random.Random, o: Options) -> bool:
        """Add one step of kind `op`; False (nothing changed) when no operand keeps the count legal."""
        v, s, items = self.value, self.subject, self.item[1]
        if op == "add":
            b = rng.randint(o.min_value, o.max_value)
            new, text = v + b, f"{s} finds {b} more {self.item[b != 1]}."
            calc, expression, additive = f"{v}+{b}", f"{self.expression}+{b}", True
        elif op == "sub":
            if v < o.min_value:
                return False
            b = rng.randint(o.min_value, min(o.max_value, v))
            new, text = v - b, f"{s} gives {_plural(b, self.item)} to {rng.choice(FRIENDS)}."
            calc, expression, additive = f"{v}-{b}", f"{self.expression}-{b}", True
        elif op == "groups":
            b, c, container = rng.randint(2, 9), rng.randint(o.min_value, o.max_value), rng.choice(CONTAINERS)
            new = v + b * c
            text = f"{s} buys {b} {container[1]} with {_plural(c, self.item)} in each."
            calc, expression, additive = f"{v}+{b}*{c}", f"{self.expression}+{b}*{c}", True
        elif op in ("times", "split"):
            choices = [k for k in range(2, MAX_MULTIPLIER + 1) if op == "times" or (v and v % k == 0)]
            if not choices:
                return False
            k = rng.choice(choices)
            base = f"({self.expression})" if self.additive else self.expression
            if op == "times":
                new, text, sign = v * k, f"{s} then ends up with {k} times as many {items} as before.", "*"
            else:
                new, text, sign = v // k, f"{s} splits the {items} into {k} equal piles and keeps one pile.", "/"
            calc, expression, additive = f"{v}{sign}{k}", f"{base}{sign}{k}", False
        else:
            raise ValueError(f"unknown step {op!r}")
        if not 0 <= new <= o.max_answer:
            return False
        self.sentences.append(text)
        self.lines.append(f"{text[:-1]}: {calc} = <<{calc}={new}>>{new} {items}.")
        self.value, self.expression, self.additive = new, expression, additive
        return True

    def problem(self) -> WordProblem:
        question = " ".join(self.sentences) + f" How many {self.item[1]} does {self.name} have now?"
        solution = "\n".join(self.lines) + f"\n#### {self.value}"
        return WordProblem(question, self.value, solution, self.expression)


def _draw(rng: random.Random, o: Options) -> WordProblem | None:
    """One random problem, or None when a step could not be applied (the caller redraws)."""
    story = _Story(rng, rng.randint(o.min_value, o.max_value))
    for _ in range(rng.randint(o.min_ops, o.max_ops)):
        if not story.apply(rng.choice(OPS), rng, o):
            return None
    return story.problem()


def generate_word_problems(n: int, *, seed: int, exclude: Collection[Hashable] = (), **options: int) -> list[WordProblem]:
    """`n` distinct problems from `seed`; `options` are the fields of `Options`."""
    if type(n) is not int or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    o = Options(**options)
    rng = random.Random(f"arithmetic/{seed}")
    excluded, seen, out = set(exclude), set(), []
    max_draws, draws = 100 * n + 10_000, 0
    while len(out) < n:
        if draws >= max_draws:
            raise RuntimeError(f"gave up after {draws} draws with {len(out)} of {n} distinct problems: "
                               f"these options ({o}) hold too few; widen the value range or the step counts")
        draws += 1
        problem = _draw(rng, o)
        if problem is not None and problem.key not in seen and problem.key not in excluded:
            seen.add(problem.key)
            out.append(problem)
    return out
