"""Progress reports and an early stop for problem generation.

Rejection sampling is quick when solvable draws are common (3-4 numbers up to 99: a few percent of
draws are solvable and the solver answers in microseconds) and hopeless when they are rare: with 6
numbers up to 10**9 the exhaustive solver spends tens of milliseconds on each draw and almost none
is solvable, so a request for a thousand problems would run for hours. `Pace` watches each size's
acceptance rate and solver time, reports progress every few seconds, and gives up as soon as even an
optimistic acceptance rate (an upper confidence bound) says the requested count cannot be reached
within the time allowed.

It never changes which problems are generated: only whether generation finishes.
"""
from __future__ import annotations

import math
import time
from typing import Callable


class GenerationTooSlow(RuntimeError):
    """Raised when the requested problems cannot be generated within `Pace.max_seconds`."""


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def optimistic_rate(found: int, draws: int) -> float:
    """An upper bound (about 95%) on the acceptance rate after `found` hits in `draws` draws: the
    'rule of three' (3 / draws) when nothing was found yet, about rate + 2 sigma (Poisson) after."""
    if draws <= 0:
        return 1.0
    return min(1.0, (found + 2 * math.sqrt(found) + 3) / draws)


class Pace:
    """Shared by every size (and by both splits) of one generation request.

    `max_seconds` None never gives up; `report` (e.g. print to stderr) receives one line at most
    every `report_every` seconds; no verdict is given before `settle_seconds` of a size have passed,
    so the solver's speed is measured, not guessed."""

    def __init__(self, max_seconds: float | None = None, report: Callable[[str], None] | None = None, *,
                 report_every: float = 2.0, settle_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError(f"max_seconds must be a finite number > 0, got {max_seconds!r}")
        self.max_seconds, self.report, self.report_every = max_seconds, report, report_every
        self.settle_seconds = settle_seconds if max_seconds is None else min(settle_seconds, max_seconds / 10)
        self.clock = clock
        self.started = self._last_report = clock()
        self._k = self._count = 0
        self._size_started = self.started

    def begin(self, k: int, count: int) -> None:
        """Size k starts; `count` problems of it are wanted."""
        self._k, self._count, self._size_started = k, count, self.clock()

    def seconds_per_draw(self, draws: int) -> float | None:
        """Measured wall time per candidate of the current size (None before the first batch)."""
        return (self.clock() - self._size_started) / draws if draws else None

    def update(self, found: int, draws: int) -> None:
        """After each batch of size k: report, and raise GenerationTooSlow when out of reach."""
        now = self.clock()
        spent = now - self._size_started
        per_draw = spent / max(draws, 1)
        missing = max(0, self._count - found)
        if self.report is not None and now - self._last_report >= self.report_every:
            self._last_report = now
            if found:
                eta = f"about {_duration(missing / (found / draws) * per_draw)} left"
            else:
                eta = "none solvable yet"
            self.report(f"{self._k} numbers: {found}/{self._count} problems from {draws} draws "
                        f"({100 * found / max(draws, 1):.2g}% solvable) in {_duration(spent)}; {eta}")
        if self.max_seconds is None or spent < self.settle_seconds or not missing:
            return
        best_case = missing / optimistic_rate(found, draws) * per_draw
        if now - self.started + best_case > self.max_seconds:
            raise GenerationTooSlow(
                f"stopped after {_duration(now - self.started)}: {found} of {draws} draws with {self._k} "
                f"numbers were solvable, so {self._count} such problems would take at least "
                f"{_duration(best_case)} more ({_duration(now - self.started + best_case)} in all), past the "
                f"limit of {_duration(self.max_seconds)}. "
                f"These ranges rarely give solvable problems: use fewer numbers (max_numbers), smaller "
                f"values (max_value) or a narrower target range (max_target)")
