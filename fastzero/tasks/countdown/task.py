"""Countdown as a `fastzero.tasks.base.Task`: a thin wrapper over problems, prompts and verifier.

Nothing here changes how Countdown behaves: generation is `generate_problems`, prompts are
`render_prompt`, and scoring is one `score_batch` call (C++, GIL released) per batch.
`response_metrics` is the think-block signature (traces.py); the reward never sees it.
"""
from __future__ import annotations

from typing import Any, Collection, Hashable, Sequence

from ..base import LoadReport, Task
from .problems import Problem, generate_problems, read_problems
from .prompts import TEMPLATES, render_prompt
from .traces import think_block, trace_metrics
from .verifier import score_batch


class CountdownTask(Task):
    name = "countdown"
    templates = TEMPLATES

    def __init__(self, *, min_numbers: int = 3, max_numbers: int = 4, min_value: int = 1, max_value: int = 99,
                 min_target: int = 1, max_target: int = 99, format_score: float = 0.1,
                 correct_score: float = 1.0, num_threads: int | None = None):
        self.ranges = dict(min_numbers=min_numbers, max_numbers=max_numbers, min_value=min_value,
                           max_value=max_value, min_target=min_target, max_target=max_target)
        self.format_score, self.correct_reward = float(format_score), float(correct_score)
        self.num_threads = num_threads

    def generate(self, n: int, *, seed: int, exclude: Collection[Hashable] = ()) -> list[Problem]:
        return generate_problems(n, seed=seed, exclude=exclude, **self.ranges)

    def load(self, path: str, *, skip_bad: bool = False) -> LoadReport:
        return read_problems(path, skip_bad=skip_bad)

    def key(self, problem: Problem) -> Hashable:
        return problem.key

    def to_json(self, problem: Problem) -> dict[str, Any]:
        return {"numbers": list(problem.numbers), "target": problem.target}

    def render_prompt(self, problem: Problem, template: str, tokenizer: Any = None) -> str:
        return render_prompt(template, problem.numbers, problem.target, tokenizer)

    def score_batch(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float]:
        return score_batch(responses, [p.numbers for p in problems], [p.target for p in problems],
                           format_score=self.format_score, correct_score=self.correct_reward,
                           num_threads=self.num_threads)

    def response_metrics(self, responses: Sequence[str], problems: Sequence[Problem]) -> dict[str, float]:
        """The R1-Zero signature of the think blocks (fastzero.tasks.countdown.traces), when the responses
        think at all: a direct-answer model's metrics carry no think/ columns."""
        if not any(think_block(r) is not None for r in responses):  # cheap: skip the traces' Python scoring
            return {}
        row = trace_metrics(responses, [p.numbers for p in problems], [p.target for p in problems])
        return row if row["think/has_think"] > 0 else {}
