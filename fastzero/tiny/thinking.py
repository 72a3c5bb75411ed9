"""Synthetic R1-Zero-shaped traces for the embedded thinking model (tiny-countdown-think).

Every document is one `compact` prompt and one response in R1-Zero's shape:

    "3 7 12=22:" + "<think>3*7=21 21-12=9 22-9=13\n7+12=19 19+3=22 22-22=0</think><answer>7+12+3</answer>"

The think block is a list of candidates, one per line. A candidate is a chain over all three numbers,
"x o y=v w o' z=u", where the second equation combines v with the remaining number (either side), so
it maps one-to-one onto an answer expression: (x o y) o' z or z o' (x o y), written with the fewest
brackets. Each line ends with its check: the distance from its stated value to the target, written
as the subtraction "bigger-smaller=d", so "=0" marks a hit. The check is arithmetic of the same kind
as the chain, on two tokens the line has just written or copied from the prompt; an earlier design
(v3) marked hits with a token that needed comparing the value against the far-away target, and a
1M-parameter model never learned it. The line break after a check (go on) or `</think>` (stop) is
the single token where the model decides whether to keep searching.

The search is ordered so that greedy decoding cannot repeat itself: line i starts ("leads") with the
i-th number of the prompt, so the next line's lead is the prompt's number after this line's lead (a
lookup a small transformer learns: an induction step), and there are at most three lines.

The traces are a poor teacher with a better policy inside (version 4):
- after each line the thinker goes on with probability `continue_rate`, whatever the check said:
  it often stops on a miss and often goes on past a hit;
- the answer always copies the LAST candidate's expression, so the base's accuracy is about the
  chance that its last candidate hits;
- a candidate is a real solution with this lead with probability `solution_rate` (when one exists),
  else a random chain with this lead (uniform over those whose values stay whole in
  0..max_value_in_think); a line is never written twice;
- each stated chain value is off by 1-3 with probability `error_rate` (the check then measures the
  stated value: the thinker trusts what it wrote).
The better policy, "go on while the check is not 0, stop at the first 0 and copy that line", is a
choice the same model already makes at every line end (only at random): RL has to tie `</think>` to
the "=0" just written, and to prefer real solutions as candidates. Nothing rewards the think block
itself: the reward is the Countdown verifier on the answer alone.

Earlier versions, and why they were replaced (bench/RESULTS.md): v1 answered 30% of shallow traces
with a fresh expression; v2 wrote mostly one candidate, 10% arithmetic errors and an answer tied to
the search outcome (RL learned to answer past a decorative think block); v3 searched in random order
with a far-away hit mark, and its greedy decoding repeated lines and ignored the mark.
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

    continue_rate: float = 0.6  # after each line, write another (at most one line per prompt number)
    # A line is a real solution with its lead (when one exists, untried). 0.45, not v4c's 0.25: what RL
    # gains by stopping at the first hit is about P(a hit in 3 lines) - P(the last line hits), largest
    # near a 0.42 hit rate per line; v4c's lines hit ~0.13 of the time and capped that gain near 27 points.
    solution_rate: float = 0.45
    error_rate: float = 0.02  # stated chain values off by 1-3
    max_value_in_think: int = 400  # candidates keep every intermediate value in 0..this

    def __post_init__(self) -> None:
        for name in ("continue_rate", "solution_rate", "error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_value_in_think < 1:
            raise ValueError("max_value_in_think must be >= 1")


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


def check_text(stated: int, target: int) -> str:
    """The line's check: the distance from the stated value to the target, bigger number first."""
    return f"{stated}-{target}={stated - target}" if stated >= target else f"{target}-{stated}={target - stated}"


def trace_response(numbers: Sequence[int], target: int, chains: list[Chain], shape: TraceShape,
                   rng: random.Random) -> str:
    """One response "<think>...</think><answer>...</answer>" for a problem (see the module docstring)."""
    seen: set[str] = set()
    tried: list[Chain] = []
    lines = []
    for i, lead in enumerate(numbers):
        # Two chains read the same when a value repeats a number ("9-6=3 3/3=1"): never write a line twice.
        untried = [c for c in chains if c.x == lead and c.true_text not in seen]
        if not untried:
            break
        good = [c for c in untried if c.v2 == target]
        chain = rng.choice(good if good and rng.random() < shape.solution_rate else untried)
        tried.append(chain)
        seen.add(chain.true_text)
        stated1 = _stated(chain.v1, shape, rng)
        true2 = (_exact(chain.o2, stated1, chain.z) if chain.first else _exact(chain.o2, chain.z, stated1))
        # The second value follows from the (possibly wrong) first one, as a thinker would carry it.
        carried = true2 is not None and 0 <= true2 <= shape.max_value_in_think
        stated2 = _stated(true2 if carried else chain.v2, shape, rng)
        lines.append(f"{chain.text(stated1, stated2)} {check_text(stated2, target)}")
        # Go on or stop: a coin, whatever the check said.
        if i == len(numbers) - 1 or rng.random() >= shape.continue_rate:
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
