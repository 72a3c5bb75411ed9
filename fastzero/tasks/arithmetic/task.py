"""Arithmetic word problems as a `fastzero.tasks.base.Task` (`--task arithmetic`)."""
from __future__ import annotations

from typing import Any, Collection, Hashable, Sequence

from ..base import LoadReport, Task
from .checker import score_batch
from .gsm8k import read_gsm8k
from .problems import Options, WordProblem, generate_word_problems
from .prompts import TEMPLATES, render_prompt


class ArithmeticTask(Task):
    name = "arithmetic"
    templates = TEMPLATES

    def __init__(self, *, format_score: float = 0.1, correct_score: float = 1.0, **options: int):
        self.options = Options(**options)  # validated now, before any work
        self.format_score, self.correct_reward = float(format_score), float(correct_score)

    def generate(self, n: int, *, seed: int, exclude: Collection[Hashable] = ()) -> list[WordProblem]:
        return generate_word_problems(n, seed=seed, exclude=exclude, **vars(self.options))

    def load(self, path: str, *, skip_bad: bool = False) -> LoadReport:
        return read_gsm8k(path, skip_bad=skip_bad)

    def key(self, problem: WordProblem) -> Hashable:
        return problem.key

    def to_json(self, problem: WordProblem) -> dict[str, Any]:
        return {"question": problem.question, "answer": problem.answer}

    def render_prompt(self, problem: WordProblem, template: str, tokenizer: Any = None) -> str:
        return render_prompt(template, problem, tokenizer)

    def score_batch(self, responses: Sequence[str], problems: Sequence[WordProblem]) -> list[float]:
        return score_batch(responses, [p.answer for p in problems], format_score=self.format_score,
                           correct_score=self.correct_reward)
