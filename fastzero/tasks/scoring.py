"""The rewards of a batch, as the trainer asks for them: the task's own `score_batch`, or with
`--reward module.path:function` the user's function in the sandbox, on the task's JSON problems.

`Scorer.score` returns a `Scores`: the rewards, which of them count as correct (reward >=
`correct_reward`), and the sandbox's timeout and error counts (always 0 for a task's own scorer).
The first failure the sandbox reports is passed to `log` once per run, so a user sees why their reward
fails without a flood of messages.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from .sandbox import RewardSandbox, SandboxOptions


@dataclasses.dataclass
class Scores:
    rewards: list[float]
    correct: list[bool]
    timeouts: int = 0
    errors: int = 0


class Scorer:
    def __init__(self, task: Any, *, reward: str | None = None, sandbox: SandboxOptions | None = None,
                 correct_reward: float | None = None, log: Callable[[str], None] = print):
        self.task, self.log = task, log
        self.correct_reward = task.correct_reward if correct_reward is None else float(correct_reward)
        self.sandbox = RewardSandbox(reward, sandbox or SandboxOptions()) if reward else None
        self._reported = False

    @property
    def counts_failures(self) -> bool:
        """Whether timeouts and errors can happen (and belong in the metrics): only in the sandbox."""
        return self.sandbox is not None

    def score(self, responses: Sequence[str], problems: Sequence[Any]) -> Scores:
        if self.sandbox is None:
            rewards = [float(r) for r in self.task.score_batch(responses, problems)]
            return Scores(rewards, [r >= self.correct_reward for r in rewards])
        result = self.sandbox.score(responses, [self.task.to_json(p) for p in problems])
        if (result.errors or result.timeouts) and not self._reported:
            self._reported = True
            self.log(f"reward {self.sandbox.spec}: {result.timeouts} timeouts and {result.errors} errors in "
                     f"{len(responses)} samples (they get --reward-fallback {self.sandbox.options.fallback:g}); "
                     f"first error: {result.first_error or 'none'} (reported once per run)")
        return Scores(result.rewards, [r >= self.correct_reward for r in result.rewards],
                      result.timeouts, result.errors)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
