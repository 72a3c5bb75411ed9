"""The synthetic think traces (fastzero.tiny.thinking): exact chains, the promised shape, the held-out
problems left out, and the traces' own signature as fastzero.tasks.countdown.traces measures it."""
from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.tasks.countdown.reference import evaluate_answer
from fastzero.tasks.countdown.traces import response_trace, think_block, trace_metrics
from fastzero.tiny.corpus import ProblemRanges, problem_key
from fastzero.tiny.thinking import TraceShape, all_chains, build_thinking_documents, trace_response

RANGES = ProblemRanges()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=3, max_size=3))
def test_chains_are_exact_and_complete(numbers):
    chains = all_chains(numbers, 400)
    assert len(set(chains)) == len(chains)
    for c in chains:
        # The answer text is exact (checked by the project's Python evaluator), values stay in range.
        assert evaluate_answer(c.expression(), numbers) == Fraction(c.v2)
        assert 0 <= c.v1 <= 400 and 0 <= c.v2 <= 400
    # Every (permutation, operators, side) whose values are whole and in range is there: brute force.
    expected = set()
    for x, y, z in itertools.permutations(numbers):
        for o1, o2, first in itertools.product("+-*/", "+-*/", (True, False)):
            v1 = eval_op(o1, x, y)
            if v1 is None or v1.denominator != 1 or not 0 <= v1 <= 400:
                continue
            v2 = eval_op(o2, v1, z) if first else eval_op(o2, z, v1)
            if v2 is None or Fraction(v2).denominator != 1 or not 0 <= v2 <= 400:
                continue
            expected.add((x, o1, y, o2, z, first))
    assert {(c.x, c.o1, c.y, c.o2, c.z, c.first) for c in chains} == expected


def eval_op(op, a, b):
    a, b = Fraction(a), Fraction(b)
    if op == "/":
        return a / b if b else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_traces_are_deterministic_and_leave_out_the_held_out_problems():
    excluded = [((3, 7, 12), 22), ((1, 2, 3), 6)]
    a = build_thinking_documents(300, seed=5, ranges=RANGES, shape=TraceShape(), excluded=excluded)
    assert a == build_thinking_documents(300, seed=5, ranges=RANGES, shape=TraceShape(), excluded=excluded)
    assert a != build_thinking_documents(300, seed=6, ranges=RANGES, shape=TraceShape(), excluded=excluded)
    for prompt, response in a:
        numbers, target = prompt[:-1].split("=")
        key = problem_key([int(n) for n in numbers.split()], int(target))
        assert key not in {problem_key(n, t) for n, t in excluded}
        assert response.startswith("<think>") and response.count("</think><answer>") == 1
        assert response.endswith("</answer>")


def _signature(shape: TraceShape, n: int = 3000) -> tuple[dict, list[int]]:
    docs = build_thinking_documents(n, seed=1, ranges=RANGES, shape=shape)
    numbers = [[int(x) for x in p[:-1].split("=")[0].split()] for p, _ in docs]
    targets = [int(p[:-1].split("=")[1]) for p, _ in docs]
    candidates = [think_block(r).count("\n") + 1 for _, r in docs]
    return trace_metrics([r for _, r in docs], numbers, targets), candidates


def test_default_traces_are_a_poor_teacher():
    row, candidates = _signature(TraceShape())
    shares = {k: candidates.count(k) / len(candidates) for k in range(1, 5)}
    # Mostly one candidate (75% shallow x 80% single, plus deep traces that hit at once); 4 only when a
    # deep trace (25%) never stated the target.
    assert shares[1] > 0.6 and shares[4] < 0.25 and max(candidates) <= 4
    assert row["think/equations"] == pytest.approx(2 * sum(candidates) / len(candidates))
    # Two values per candidate, each wrong 10% of the time (a wrong first value is carried on: the
    # second is then computed right from it).
    assert 0.85 < row["think/arithmetic_right"] < 0.95
    assert row["think/search_success"] < 0.5
    assert row["think/verified"] < 0.9  # some right answers were never computed


def test_a_perfect_thinker_searches_and_verifies():
    shape = TraceShape(deep_rate=1.0, solution_rate=1.0, error_rate=0.0, max_candidates=4)
    row, candidates = _signature(shape, n=500)
    assert set(candidates) == {1} and row["think/arithmetic_right"] == 1.0
    assert row["think/search_success"] == 1.0 and row["think/verified"] == 1.0


def test_deep_traces_stop_at_the_first_stated_target():
    rng = random.Random(3)
    shape = TraceShape(deep_rate=1.0, solution_rate=0.3, error_rate=0.2, max_candidates=4)
    numbers, target = [3, 7, 12], 22
    chains = all_chains(numbers, 400)
    for _ in range(200):
        response = trace_response(numbers, target, chains, shape, rng)
        lines = think_block(response).split("\n")
        stated = [int(line.rsplit("=", 1)[1]) for line in lines]
        assert target not in stated[:-1] and (stated[-1] == target or len(lines) == 4)
        if stated[-1] == target:  # the answer is the candidate that stated the target
            assert response_trace(response, numbers, target).answer_checked or \
                evaluate_answer(response.split("<answer>")[1].split("</answer>")[0], numbers) != target


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="error_rate"):
        TraceShape(error_rate=1.5)
    with pytest.raises(ValueError, match="last_answer_rate"):
        TraceShape(last_answer_rate=0.8, other_answer_rate=0.3)
