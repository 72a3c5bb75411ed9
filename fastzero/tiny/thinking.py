"""Synthetic R1-Zero-shaped traces for the embedded thinking model (tiny-countdown-think).

Every document is one `compact` prompt and one response in R1-Zero's shape:

    "3 7 12=22:" + "<think>3*7=21 21-12=9\n12+7=19 19+3=22 ok</think><answer>12+7+3</answer>"

The think block is a list of candidates, one per line. A candidate is a chain over all three
numbers, "x o y=v w o' z=u" where the second equation combines v with the remaining number (either
side), so it maps one-to-one onto an answer expression: (x o y) o' z or z o' (x o y), written with
the fewest brackets. A candidate whose stated final value is the target is marked " ok" (the thinker
noticing a hit; it judges the value it wrote, which may be wrong). The line break after a candidate
(go on) or `</think>` (stop) is the single token where the model decides whether to keep searching.

The traces are a poor teacher with a better policy inside (version 3):
- the number of candidates is geometric (after each one, go on with probability `continue_rate`, at
  most `max_candidates`) and INDEPENDENT of whether any candidate hit: the thinker often stops on a
  miss and often goes on past an "ok";
- the answer always copies the LAST candidate's expression, so the base's accuracy is about the
  chance that its last candidate hits;
- candidates never repeat within a trace; each is a real solution with probability `solution_rate`,
  else a random chain (uniform over those whose values stay whole in 0..max_value_in_think);
- arithmetic is rarely wrong (each stated value off by 1-3 with probability `error_rate`), so the
  model's sampled arithmetic stays sharp and a stated hit is usually a real one.
The better policy, "go on while no candidate is ok, stop at the first ok and copy it", is a choice
the same model already makes at every line end (only at the wrong moments): RL has to tie `</think>`
to the " ok" it writes, and to prefer real solutions as candidates. Nothing rewards the think block
itself: the reward is the Countdown verifier on the answer alone.

Earlier versions, and why they were replaced (bench/RESULTS.md): v1 answered 30% of shallow traces
with a fresh expression, v2 wrote mostly one candidate (25% deep searches), 10% arithmetic errors and
an answer tied to the search outcome; RL on both learned to answer past a decorative think block.
"""
from __future__ import annotations

import functools
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
    """How the synthetic thinker behaves (probabilities per candidate or per value)."""

    continue_rate: float = 0.5  # after each candidate, write another (geometric; mean 1/(1-rate))
    max_candidates: int = 8  # never more than this (what fits the 128-position context)
    solution_rate: float = 0.15  # candidates drawn from the problem's (untried) solutions instead of at random
    error_rate: float = 0.02  # stated values off by 1-3
    hit_mark: str = " ok"  # written after a candidate whose stated value is the target ("" = none)
    max_value_in_think: int = 400  # candidates keep every intermediate value in 0..this

    def __post_init__(self) -> None:
        for name in ("continue_rate", "solution_rate", "error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_candidates < 1 or self.max_value_in_think < 1:
            raise ValueError("max_candidates and max_value_in_think must be >= 1")
        if any(c.isdigit() or c in "=+-*/()\n<>" for c in self.hit_mark):
            raise ValueError(f"hit_mark must not hold digits, operators, brackets, '=', '<', '>' or newlines: "
                             f"{self.hit_mark!r}")


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

    @functools.cached_property
    def true_text(self) -> str:
        """The think line with the true values (cached: traces compare it against every line written)."""
        return self.text(self.v1, self.v2)

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
    # Two chains read the same when a value repeats a number ("9-6=3 3/3=1"): never write a line twice.
    texts = [c.true_text for c in chains]
    distinct = len(set(texts))
    tried: list[Chain] = []
    seen: set[str] = set()
    lines = []
    while True:
        untried = [c for c, text in zip(chains, texts) if text not in seen]
        good = [c for c in untried if c.v2 == target]
        pool = good if good and rng.random() < shape.solution_rate else untried
        chain = rng.choice(pool)
        tried.append(chain)
        seen.add(chain.true_text)
        stated1 = _stated(chain.v1, shape, rng)
        true2 = (_exact(chain.o2, stated1, chain.z) if chain.first else _exact(chain.o2, chain.z, stated1))
        # The second value follows from the (possibly wrong) first one, as a thinker would carry it.
        carried = true2 is not None and 0 <= true2 <= shape.max_value_in_think
        stated2 = _stated(true2 if carried else chain.v2, shape, rng)
        lines.append(chain.text(stated1, stated2) + (shape.hit_mark if stated2 == target else ""))
        # Go on or stop: a coin, whatever this candidate reached.
        if len(tried) >= shape.max_candidates or len(seen) == distinct \
                or rng.random() >= shape.continue_rate:
            break
    return "<think>" + "\n".join(lines) + "</think>" + answer_text(tried[-1].expression())


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
