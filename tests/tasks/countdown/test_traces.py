"""The R1-Zero signature metrics (fastzero.tasks.countdown.traces) against an independent oracle.

The oracle below reads the module docstring's definitions a second way: character positions instead
of tokens, Python's own `ast` parser (walked, never evaluated) instead of our recursive descent, and
a Counter of literals instead of the verifier's rules for "reaches the target".
"""
from __future__ import annotations

import ast
import random
import re
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastzero.tasks.countdown.traces import (equations, parse_tree, response_trace, think_block, trace_metrics,
                                             tree_value)

_RUN = set("0123456789+-*/() \t\n\r")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


# ---- the oracle --------------------------------------------------------------------------------

def oracle_think(response: str):
    if "</think>" in response:
        return response.split("</think>", 1)[0].split("<think>")[-1]
    if "<think>" in response:
        return response.split("<think>", 1)[1].split("<answer>", 1)[0]
    return None


def oracle_tree(text: str):
    flat = " ".join(text.split())
    if not flat or set(flat) - _RUN:
        return None
    try:
        node = ast.parse(flat, mode="eval").body
    except SyntaxError:
        return None

    def walk(n):
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            left, right = walk(n.left), walk(n.right)
            return None if left is None or right is None else (_OPS[type(n.op)], left, right)
        return None

    return walk(node)


def oracle_value(tree):
    if isinstance(tree, int):
        return Fraction(tree)
    op, a, b = tree[0], oracle_value(tree[1]), oracle_value(tree[2])
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def oracle_literals(tree):
    return [tree] if isinstance(tree, int) else oracle_literals(tree[1]) + oracle_literals(tree[2])


def oracle_equations(think: str):
    found = []
    for p in [i for i, c in enumerate(think) if c == "="]:
        m = re.match(r"[ \t\n\r]*(-?\d+)", think[p + 1:])
        if not m or think[p + 1 + m.end(): p + 2 + m.end()] in (".", "/"):
            continue
        i = p
        while i > 0 and think[i - 1] in _RUN:
            i -= 1
        run = think[i:p][-200:]
        lhs = tree = None
        for k in range(len(run)):  # the first valid start is the longest suffix
            tree = oracle_tree(run[k:])
            if tree is not None:
                lhs = "".join(run[k:].split())
                break
        if lhs is None or isinstance(tree, int):
            continue
        stated = int(m.group(1))
        resolved = []
        if found:
            prev_lhs, prev_stated, prev_resolved = found[-1][:3]
            parts = re.split(r"(\d+)", lhs)
            for j in range(1, len(parts), 2):
                if int(parts[j]) == prev_stated:
                    resolved.append("".join(parts[:j] + ["(" + (prev_resolved + [prev_lhs])[0] + ")"] + parts[j + 1:]))
        found.append((lhs, stated, resolved, oracle_value(tree) == stated))
    return found


def oracle_correct(expression: str, numbers, target) -> bool:
    tree = oracle_tree(expression)
    return (tree is not None and Counter(oracle_literals(tree)) == Counter(numbers)
            and oracle_value(tree) == target)


def oracle_same_up_to_regrouping(a: str, b: str) -> bool:
    """Same literals in the same order, and the same function of them: both evaluated with every
    literal position replaced by the same random rationals (a read-once formula is determined by that)."""
    ta, tb = oracle_tree(a), oracle_tree(b)
    if ta is None or tb is None or oracle_literals(ta) != oracle_literals(tb):
        return False
    rng = random.Random(0)

    def at_points(tree, values):
        if isinstance(tree, int):
            return values.pop(0)
        left = at_points(tree[1], values)
        right = at_points(tree[2], values)
        if left is None or right is None:
            return None
        return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                "/": lambda: left / right if right else None}[tree[0]]()

    for _ in range(3):
        point = [Fraction(rng.randint(1, 10**6), rng.randint(1, 10**6)) for _ in oracle_literals(ta)]
        if at_points(ta, list(point)) != at_points(tb, list(point)):
            return False
    return True


def oracle_trace(response: str, numbers, target):
    think = oracle_think(response)
    found = oracle_equations(think) if think is not None else []
    answers = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    answer = answers[-1] if answers else None
    answer_correct = answer is not None and oracle_correct(answer, numbers, target)
    checked = answer_correct and any(
        stated == target and any(oracle_same_up_to_regrouping(answer, x) for x in [lhs] + resolved)
        for lhs, stated, resolved, _ in found)
    return dict(has_think=think is not None, equations=len(found), right_equations=sum(f[3] for f in found),
                search_succeeded=any(oracle_correct(x, numbers, target) for lhs, _, res, _ in found for x in [lhs] + res),
                answer_correct=answer_correct, answer_checked=checked)


# ---- examples ----------------------------------------------------------------------------------

def test_a_trace_that_searched_and_verified():
    response = "<think>3*7=21 21-12=9\n12+7=19 19+3=22</think><answer>12+7+3</answer>"
    found = equations(think_block(response))
    assert [(e.lhs, e.stated, e.resolved, e.right) for e in found] == [
        ("3*7", 21, (), True), ("21-12", 9, ("(3*7)-12",), True),
        ("12+7", 19, (), True), ("19+3", 22, ("(12+7)+3",), True)]
    assert equations("2+2=4 4*4=16")[1].resolved == ("(2+2)*4", "4*(2+2)")
    stats = response_trace(response, [3, 7, 12], 22)
    assert stats.equations == 4 and stats.right_equations == 4
    assert stats.search_succeeded and stats.answer_correct and stats.answer_checked


def test_unverified_wrong_arithmetic_and_order():
    # The answer is right but its expression (3 first) was never computed: not checked.
    stats = response_trace("<think>12+7=19+3=22</think><answer>3+(12+7)</answer>", [3, 7, 12], 22)
    assert stats.search_succeeded and stats.answer_correct and not stats.answer_checked
    # Regrouping is the same computation: 12-(7+3) was checked by "7+3=10 12-10=2".
    assert response_trace("<think>7+3=10 12-10=2</think><answer>12-7-3</answer>", [3, 7, 12], 2).answer_checked
    # A stated hit with wrong arithmetic is not a search success.
    stats = response_trace("<think>12+7=20 20+2=22</think><answer>12+7+2</answer>", [2, 7, 12], 22)
    assert (stats.right_equations, stats.search_succeeded, stats.answer_correct) == (1, False, False)


def test_what_is_not_an_equation():
    assert equations("2**3=8 x=5 7/2=3.5 6/4=3/2 9=9 3=4/2 a=b") == []
    assert [(e.lhs, e.stated) for e in equations("5/0=3 4-6=-2 1 2+3=5")] == [("5/0", 3), ("4-6", -2), ("2+3", 5)]
    assert not equations("5/0=3")[0].right


def test_think_block_rules():
    assert think_block("<answer>1+2</answer>") is None
    assert think_block("1+2=3</think><answer>3</answer>") == "1+2=3"  # "<think>" pre-filled by the prompt
    assert think_block("<think>a</think><think>b</think>") == "a"
    assert think_block("<think>1+2=3 <answer>3</answer>") == "1+2=3 "
    assert think_block("<think>1+2=3 4") == "1+2=3 4"  # truncated


def test_parse_tree_is_left_associative_and_ignores_redundant_brackets():
    assert parse_tree("12+7+3") == parse_tree("(12+7)+3") == ("+", ("+", 12, 7), 3)
    assert parse_tree("12-(7+3)") == ("-", 12, ("+", 7, 3))
    assert parse_tree("2*3+4") == ("+", ("*", 2, 3), 4)
    assert parse_tree("-3") is None and parse_tree("1+") is None and parse_tree("(1") is None
    assert tree_value(parse_tree("7/(3-3)")) is None


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.integers(1, 9), lambda sub: st.tuples(st.sampled_from("+-*/"), sub, sub), max_leaves=6),
       st.randoms(use_true_random=False))
def test_regrouping_matches_evaluation_at_random_points(tree, rng):
    from fastzero.tasks.countdown.traces import regrouped

    def text(t, brackets):
        if isinstance(t, int):
            return str(t)
        inner = text(t[1], brackets) + t[0] + text(t[2], brackets)
        return "(" + inner + ")" if brackets or rng.random() < 0.5 else inner

    a, b = text(tree, True), text(tree, False)  # fully bracketed vs randomly dropped brackets
    assert (regrouped(parse_tree(a)) == regrouped(parse_tree(b))) == oracle_same_up_to_regrouping(a, b)


def test_batch_metrics_leave_out_empty_ratios():
    row = trace_metrics(["<answer>1</answer>", "nothing"], [[1, 2, 3]] * 2, [6, 6])
    assert row == {"think/has_think": 0.0, "think/equations": 0.0, "think/search_success": 0.0}
    row = trace_metrics(["<think>1+2=3 3*3=9</think><answer>(1+2)*3</answer>", "<think>1+2=4</think>"],
                        [[1, 2, 3]] * 2, [9, 9])
    assert row["think/equations"] == 1.5 and row["think/arithmetic_right"] == pytest.approx(2 / 3)
    assert row["think/search_success"] == 0.5 and row["think/verified"] == 1.0


def test_the_countdown_task_reports_the_signature_only_for_thinking_responses():
    from fastzero.tasks.countdown.problems import Problem
    from fastzero.tasks.countdown.task import CountdownTask

    task, problems = CountdownTask(), [Problem((3, 7, 12), 22)] * 2
    assert task.response_metrics(["<answer>12+7+3</answer>", "<answer>1</answer>"], problems) == {}
    row = task.response_metrics(["<think>12+7=19 19+3=22</think><answer>12+7+3</answer>", "<answer>1</answer>"],
                                problems)
    assert row == trace_metrics(["<think>12+7=19 19+3=22</think><answer>12+7+3</answer>", "<answer>1</answer>"],
                                [[3, 7, 12]] * 2, [22, 22])
    assert row["think/has_think"] == 0.5 and row["think/verified"] == 1.0


# ---- against the oracle ------------------------------------------------------------------------

_PIECES = st.one_of(
    st.integers(0, 40).map(str), st.sampled_from(["+", "-", "*", "/", "=", "(", ")", " ", "\n", " ", "=", "."]),
    st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "x", "**"]))
_PROBLEM = st.tuples(st.lists(st.integers(1, 20), min_size=3, max_size=3), st.integers(1, 50))


def _check(response: str, numbers, target) -> None:
    assume(not re.search(r"(?<!\d)0\d", response))  # Python's parser rejects leading zeros; ours reads them
    stats = response_trace(response, numbers, target)
    assert vars(stats) == oracle_trace(response, numbers, target), response
    think = think_block(response)
    assert think == oracle_think(response)
    if think is not None:
        assert [(e.lhs, e.stated, list(e.resolved), e.right) for e in equations(think)] == oracle_equations(think)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=40), _PROBLEM)
def test_random_text_matches_the_oracle(pieces, problem):
    _check("".join(pieces), *problem)


@settings(max_examples=300, deadline=None)
@given(_PROBLEM, st.integers(0, 2**32 - 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.5))
def test_synthetic_traces_match_the_oracle(problem, seed, go_on, solution, error):
    from fastzero.tiny.thinking import TraceShape, all_chains, trace_response

    numbers, _ = problem
    chains = all_chains(numbers, 400)
    assume(chains)
    rng = random.Random(seed)
    target = rng.choice(chains).v2  # a reachable target (may lie outside 1..50: the metrics do not care)
    shape = TraceShape(continue_rate=go_on, solution_rate=solution, error_rate=error)
    response = trace_response(numbers, target, chains, shape, rng)
    cut = rng.randint(0, len(response))  # and every truncation of it
    _check(response, numbers, target)
    _check(response[:cut], numbers, target)
