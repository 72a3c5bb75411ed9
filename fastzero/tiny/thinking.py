"""Synthetic R1-Zero-shaped traces for the embedded thinking model (tiny-countdown-think).

Every document is one `compact` prompt and one response in R1-Zero's shape:

    "3 7 12=22:" + "<think>3*7=21 21-12=9\n12+7=19 19+3=22</think><answer>12+7+3</answer>"

The think block is a list of candidates, one per line. A candidate is a chain over all three
numbers, "x o y=v w o' z=u" where the second equation combines v with the remaining number (either
side), so it maps one-to-one onto an answer expression: (x o y) o' z or z o' (x o y), written with
the fewest brackets. Its stated values may be wrong. The line break after a candidate (go on) or
`</think>` (stop) is the single token where the model decides whether to keep searching.

The traces are deliberately a poor teacher, so that the base model is weak and RL has room:
- candidates are mostly unsystematic: a random chain (uniform over the chains whose intermediate
  values stay whole numbers in 0..max_value_in_think), a real solution only `solution_rate` of the time;
- arithmetic is often wrong: each stated value is off by 1-3 with probability `error_rate`;
- search is mostly shallow: a `shallow` trace writes 1-2 candidates whatever they reach (1 most of the
  time), and only a `deep` trace keeps trying until a candidate states the target;
- answers are often unverified: a shallow trace answers with its last candidate whatever it reached
  (or, by default 10% of the time, with an expression it never computed); a deep trace answers with
  the candidate that stated the target (or, failing that, like a shallow one).
An earlier version answered shallow traces with a fresh expression 30% of the time: RL on that model
learned to answer without looking at its think block (fewer equations, worse arithmetic), so the
answer now follows the think block and the think block is what RL can improve.
So the base model's greedy habit is one candidate and its expression, right or not; the better policy
(keep searching while nothing reached the target, compute right, answer with the candidate that did)
is in the data, and therefore in the model, but rare. Nothing rewards the think block itself: the
reward is the Countdown verifier on the answer alone.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.tiny.corpus import ProblemKey, ProblemRanges, _apply, _left_tree, _right_tree, answer_text, problem_key

OPS = ("+", "-", "*", "/")


@dataclass(frozen=True)
class TraceShape:
    """How the synthetic thinker behaves (probabilities per trace, per candidate or per value)."""

    deep_rate: float = 0.25  # traces that search until a candidate states the target
    max_candidates: int = 4  # a deep trace gives up after this many
    two_candidate_rate: float = 0.2  # shallow traces with 2 candidates instead of 1
    solution_rate: float = 0.2  # candidates drawn from the problem's solutions instead of at random
    error_rate: float = 0.1  # stated values off by 1-3
    last_answer_rate: float = 0.9  # shallow: answer = the last candidate, reached the target or not
    other_answer_rate: float = 0.0  # shallow: answer = an earlier candidate (else a fresh random one)
    max_value_in_think: int = 400  # candidates keep every intermediate value in 0..this

    def __post_init__(self) -> None:
        for name in ("deep_rate", "two_candidate_rate", "solution_rate", "error_rate", "last_answer_rate",
                     "other_answer_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.last_answer_rate + self.other_answer_rate > 1.0:
            raise ValueError("last_answer_rate + other_answer_rate must be <= 1")
        if self.max_candidates < 1 or self.max_value_in_think < 1:
            raise ValueError("max_candidates and max_value_in_think must be >= 1")


@dataclass(frozen=True)
class Chain:
    """x o1 y = v1, then v1 o2 z (first=True) or z o2 v1 (first=False) = v2; true values."""

    x: int
    o1: str
    y: int
    o2: str
    z: int
    first: bool
    v1: int
    v2: int

    def expression(self) -> str:
        """The answer text for this chain, with the fewest brackets."""
        x, y, z = str(self.x), str(self.y), str(self.z)
        if self.first:
            return _left_tree(x, self.o1, y, self.o2, z)
        return _right_tree(z, self.o2, x, self.o1, y)

    def text(self, stated1: int, stated2: int) -> str:
        """The think line, with the values the thinker believes (possibly wrong)."""
        second = f"{stated1}{self.o2}{self.z}" if self.first else f"{self.z}{self.o2}{stated1}"
        return f"{self.x}{self.o1}{self.y}={stated1} {second}={stated2}"


def _exact(op: str, a: int, b: int) -> int | None:
    """a op b when it is a whole number, else None."""
    value = _apply(op, Fraction(a), Fraction(b))
    return int(value) if value is not None and value.denominator == 1 else None


def all_chains(numbers: Sequence[int], max_value: int) -> list[Chain]:
    """Every distinct chain over the three numbers whose values are whole and within 0..max_value."""
    if len(numbers) != 3:
        raise ValueError(f"chains use exactly 3 numbers, got {list(numbers)}")
    chains, seen = [], set()
    for x, y, z in itertools.permutations(int(n) for n in numbers):
        for o1, o2, first in itertools.product(OPS, OPS, (True, False)):
            v1 = _exact(o1, x, y)
            if v1 is None or not 0 <= v1 <= max_value:
                continue
            v2 = _exact(o2, v1, z) if first else _exact(o2, z, v1)
            if v2 is None or not 0 <= v2 <= max_value:
                continue
            chain = Chain(x, o1, y, o2, z, first, v1, v2)
            if chain not in seen:
                seen.add(chain)
                chains.append(chain)
    return chains


def _stated(value: int, shape: TraceShape, rng: random.Random) -> int:
    """The value the thinker writes: usually right, sometimes off by 1-3 (kept within 0..max)."""
    if rng.random() >= shape.error_rate:
        return value
    return rng.choice([value + d for d in (-3, -2, -1, 1, 2, 3) if 0 <= value + d <= shape.max_value_in_think])


def trace_response(numbers: Sequence[int], target: int, chains: list[Chain], shape: TraceShape,
                   rng: random.Random) -> str:
    """One response "<think>...</think><answer>...</answer>" for a problem (see the module docstring)."""
    solutions = [c for c in chains if c.v2 == target]
    deep = rng.random() < shape.deep_rate
    if deep:
        budget = shape.max_candidates
    else:
        budget = 2 if rng.random() < shape.two_candidate_rate else 1
    tried: list[Chain] = []
    lines, hit = [], None
    while len(tried) < budget:
        pool = solutions if solutions and rng.random() < shape.solution_rate else chains
        fresh = [c for c in pool if c not in tried] or [c for c in chains if c not in tried]
        if not fresh:
            break
        chain = rng.choice(fresh)
        tried.append(chain)
        stated1 = _stated(chain.v1, shape, rng)
        true2 = (_exact(chain.o2, stated1, chain.z) if chain.first else _exact(chain.o2, chain.z, stated1))
        # The second value follows from the (possibly wrong) first one, as a thinker would carry it.
        carried = true2 is not None and 0 <= true2 <= shape.max_value_in_think
        stated2 = _stated(true2 if carried else chain.v2, shape, rng)
        lines.append(chain.text(stated1, stated2))
        if deep and stated2 == target:
            hit = chain
            break
    draw = rng.random()
    if hit is not None:
        answer = hit
    elif draw < shape.last_answer_rate:
        answer = tried[-1]
    elif draw < shape.last_answer_rate + shape.other_answer_rate:
        answer = rng.choice(tried[:-1] or tried)  # an earlier candidate (the only one, if just one)
    else:
        answer = rng.choice(chains)  # an expression it never computed
    return "<think>" + "\n".join(lines) + "</think>" + answer_text(answer.expression())


def build_thinking_documents(
    n_docs: int,
    *,
    seed: int,
    ranges: ProblemRanges,
    shape: TraceShape,
    excluded: Iterable[ProblemKey] = (),
) -> list[tuple[str, str]]:
    """`n_docs` (prompt, response) pairs; the same arguments always give the same list.

    Problems are sampled like problems.generate_problems (uniform numbers with repeats, uniform
    target), keeping those that some chain solves, minus the excluded (held-out) keys.
    """
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    excluded_keys = {problem_key(numbers, target) for numbers, target in excluded}
    rng = random.Random(seed)
    values = range(ranges.min_value, ranges.max_value + 1)
    chain_cache: dict[tuple[int, ...], list[Chain]] = {}
    documents, attempts = [], 0
    while len(documents) < n_docs:
        attempts += 1
        if attempts > 1000 * (n_docs + 1):
            raise ValueError(f"no solvable problems left in {ranges} after excluding {len(excluded_keys)}")
        shown = rng.choices(values, k=3)
        target = rng.randint(ranges.min_target, ranges.max_target)
        key = problem_key(shown, target)
        if key in excluded_keys:
            continue
        if key[0] not in chain_cache:
            chain_cache[key[0]] = all_chains(key[0], shape.max_value_in_think)
        chains = chain_cache[key[0]]
        if not any(c.v2 == target for c in chains):
            continue
        documents.append((render_prompt("compact", shown, target), trace_response(shown, target, chains, shape, rng)))
    return documents
