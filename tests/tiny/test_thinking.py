"""The synthetic think traces (fastzero.tiny.thinking): exact chains, the promised shape, the held-out
problems left out, and the traces' own signature as fastzero.tasks.countdown.traces measures it."""
from __future__ import annotations

import itertools
import random
import re
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


def _signature(shape: TraceShape, n: int = 3000) -> tuple[dict, list[int], list]:
    docs = build_thinking_documents(n, seed=1, ranges=RANGES, shape=shape)
    numbers = [[int(x) for x in p[:-1].split("=")[0].split()] for p, _ in docs]
    targets = [int(p[:-1].split("=")[1]) for p, _ in docs]
    candidates = [think_block(r).count("\n") + 1 for _, r in docs]
    return trace_metrics([r for _, r in docs], numbers, targets), candidates, list(zip(docs, numbers, targets))


def _true_last_values(line: str) -> set[Fraction]:
    """The values the last candidate line can really have: its first value recomputed and carried into
    the second equation (into either operand that shows the stated first value: "20*20" is ambiguous)."""
    first, second, _check = line.split(" ")
    left, stated1 = first.split("=")
    v1 = evaluate_answer(left, [int(t) for t in re.findall(r"\d+", left)])
    a, op, b = re.split(r"([+\-*/])", second.split("=")[0])
    values = set()
    if a == stated1:
        values.add(eval_op(op, v1, Fraction(b)))
    if b == stated1:
        values.add(eval_op(op, Fraction(a), v1))
    return values


def _check_of(stated: int, target: int) -> str:
    """The check the traces promise, written here independently: |stated - target|, bigger number first."""
    big, small = max(stated, target), min(stated, target)
    return f"{big}-{small}={abs(stated - target)}"


def test_default_traces_are_a_poor_teacher_with_a_better_policy_inside():
    row, candidates, docs = _signature(TraceShape())
    shares = {k: candidates.count(k) / len(candidates) for k in range(1, 4)}
    # Go on with probability 0.6 after each line, at most one line per prompt number: 40% stop after one.
    assert 0.35 < shares[1] < 0.45 and 0.2 < shares[2] < 0.28 and 0.32 < shares[3] < 0.4 and max(candidates) <= 3
    assert row["think/equations"] == pytest.approx(3 * sum(candidates) / len(candidates))  # chain, chain, check
    assert 0.975 < row["think/arithmetic_right"] < 0.995  # two chain values per line, each wrong 2%; checks exact
    stops_after_hit, stops_after_miss, correct, ceiling = [], [], 0, 0
    for (prompt, response), numbers, target in docs:
        lines = think_block(response).split("\n")
        assert len(set(lines)) == len(lines)  # no candidate twice
        for i, line in enumerate(lines):
            assert line.startswith(str(numbers[i])) and not line[len(str(numbers[i]))].isdigit()  # led in order
            chain_value = int(line.split(" ")[1].rsplit("=", 1)[1])
            assert line.split(" ")[2] == _check_of(chain_value, target)  # the check measures the stated value
            if i < 2:
                (stops_after_hit if chain_value == target else stops_after_miss).append(i == len(lines) - 1)
        answer = response.split("<answer>")[1].removesuffix("</answer>")
        assert evaluate_answer(answer, numbers) in _true_last_values(lines[-1])  # the last candidate, always
        correct += evaluate_answer(answer, numbers) == target
    # Stopping does not depend on a hit: the base model's habit is a coin at every line end.
    assert abs(sum(stops_after_hit) / len(stops_after_hit) - 0.4) < 0.06
    assert abs(sum(stops_after_miss) / len(stops_after_miss) - 0.4) < 0.03
    assert 0.2 < correct / len(docs) < 0.4  # the base: about the chance that the last candidate hits (v4d: ~0.34)
    # A thinker that always writes every line and stops at its first check of 0 does far better.
    _, _, searched = _signature(TraceShape(continue_rate=1.0, error_rate=0.0))
    for (_, response), numbers, target in searched:
        lines = think_block(response).split("\n")
        ceiling += any(line.endswith(f" {target}-{target}=0") for line in lines)
    assert ceiling / len(searched) > correct / len(docs) + 0.2


def test_a_thinker_with_perfect_intuition_finds_a_solution_with_its_first_lead_when_there_is_one():
    shape = TraceShape(continue_rate=0.0, solution_rate=1.0, error_rate=0.0)
    row, candidates, docs = _signature(shape, n=500)
    assert set(candidates) == {1} and row["think/arithmetic_right"] == 1.0 and row["think/verified"] == 1.0
    solvable_by_first = [any(c.x == n[0] and c.v2 == t for c in all_chains(n, 400)) for _, n, t in docs]
    assert row["think/search_success"] == pytest.approx(sum(solvable_by_first) / len(docs))


def test_a_thinker_that_never_stops_writes_one_line_per_prompt_number_in_order():
    rng = random.Random(3)
    for numbers, target in (([3, 7, 12], 22), ([2, 2, 2], 8), ([20, 1, 20], 41)):
        chains = all_chains(numbers, 400)
        lines = think_block(trace_response(numbers, target, chains, TraceShape(continue_rate=1.0), rng)).split("\n")
        assert len(lines) == 3 and len(set(lines)) == 3
        assert [int(re.match(r"\d+", line).group()) for line in lines] == numbers


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="error_rate"):
        TraceShape(error_rate=1.5)
    with pytest.raises(ValueError, match="continue_rate"):
        TraceShape(continue_rate=-0.1)
    with pytest.raises(ValueError, match="max_value_in_think"):
        TraceShape(max_value_in_think=0)
