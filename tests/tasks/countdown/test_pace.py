"""Tests for fastzero.tasks.countdown.pace: progress lines, the early stop, and that neither changes
which problems are generated."""
from __future__ import annotations

import math
import time

import pytest

from fastzero.tasks.countdown import problems as P
from fastzero.tasks.countdown.pace import GenerationTooSlow, Pace, optimistic_rate
from fastzero.tasks.countdown.problems import generate_problems, generate_splits

HOPELESS = dict(min_numbers=6, max_numbers=6, max_value=10**9, max_target=10**9)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _binomial_cdf(found: int, draws: int, p: float) -> float:
    """P(X <= found) for X ~ Binomial(draws, p), summed in log space (an independent oracle)."""
    total = 0.0
    for i in range(found + 1):
        log_term = (math.lgamma(draws + 1) - math.lgamma(i + 1) - math.lgamma(draws - i + 1)
                    + i * math.log(p) + (draws - i) * math.log1p(-p))
        total += math.exp(log_term)
    return total


@pytest.mark.parametrize("draws", [30, 100, 1000, 20000])
@pytest.mark.parametrize("found", [0, 1, 3, 10, 29])
def test_optimistic_rate_is_a_95_percent_upper_bound(found, draws):
    p = optimistic_rate(found, draws)
    assert p >= found / draws
    if p < 1.0:  # a true rate this high would show `found` or fewer hits at most 5% of the time
        assert _binomial_cdf(found, draws, p) <= 0.05


def test_gives_up_when_even_the_optimistic_rate_is_too_slow():
    clock = FakeClock()
    pace = Pace(600, clock=clock)
    pace.begin(6, 1000)
    clock.now += 1.0  # before the settle time nothing is judged
    pace.update(0, 40)
    clock.now += 2.0  # 3 s for 100 draws, none solvable: >= 100/3 * 0.03 s per problem * 1000 problems
    with pytest.raises(GenerationTooSlow, match=r"0 of 100 draws with 6 numbers.*1000 such problems.*17 min"):
        pace.update(0, 100)


def test_keeps_going_when_the_count_is_within_reach():
    clock = FakeClock()
    pace = Pace(60, clock=clock)
    pace.begin(4, 1000)
    for draws in range(1000, 20001, 1000):  # 10% solvable, 1 ms a draw: 10 s for all 1000
        clock.now += 1.0
        pace.update(draws // 10, draws)
    no_limit = Pace(None, clock=clock)
    no_limit.begin(6, 10**6)
    clock.now += 10**6
    no_limit.update(0, 10)  # without a limit it never gives up


def test_reports_at_most_every_few_seconds():
    clock, lines = FakeClock(), []
    pace = Pace(None, report=lines.append, report_every=2.0, clock=clock)
    pace.begin(3, 50)
    for _ in range(10):
        clock.now += 0.5
        pace.update(5, 100)
    assert len(lines) == 2
    assert lines[0] == "3 numbers: 5/50 problems from 100 draws (5% solvable) in 2 s; about 18 s left"
    pace.begin(6, 10)
    clock.now += 3
    pace.update(0, 64)
    assert lines[-1].endswith("0/10 problems from 64 draws (0% solvable) in 3 s; none solvable yet")


def test_rejects_a_limit_that_is_not_a_positive_finite_number():
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_seconds"):
            Pace(bad)


def test_a_hopeless_space_stops_within_seconds_not_hours():
    started = time.monotonic()
    with pytest.raises(GenerationTooSlow, match="6 numbers"):
        generate_problems(1000, seed=0, pace=Pace(600), **HOPELESS)
    assert time.monotonic() - started < 60  # hours without the pace


def test_pace_and_batch_size_do_not_change_the_problems(monkeypatch):
    expected = generate_splits(200, 30, seed=4, max_value=40, max_target=40)
    assert generate_splits(200, 30, seed=4, max_value=40, max_target=40, pace=Pace(600)) == expected
    monkeypatch.setattr(P, "_BATCH_SECONDS", 1e-9)  # every batch as small as allowed (32 draws)
    assert generate_splits(200, 30, seed=4, max_value=40, max_target=40) == expected
