"""The rewards of a batch, as the trainer asks for them (`fastzero.episodes.Scorer`): the task's
own `score_batch`, or with `--reward module.path:function` the user's function in the sandbox, on
the task's JSON problems.

`TaskScorer(texts, problems)` returns `Scores`: the rewards and, from the sandbox, how many samples
timed out or failed (they got the fallback reward). `counted` says whether such failures can happen
at all, so that a built-in task's metrics carry no always-zero columns. The first failure the sandbox
reports goes to `log` once per run, so a user sees why their reward fails without a flood.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from .sandbox import RewardSandbox, SandboxOptions


@dataclasses.dataclass
class Scores:
    rewards: list[float]
    timeouts: int = 0
    errors: int = 0
    counted: bool = False  # True when timeouts and errors are possible (a sandboxed reward)


class TaskScorer:
    def __init__(self, task: Any, *, reward: str | None = None, sandbox: SandboxOptions | None = None,
                 correct_reward: float | None = None, log: Callable[[str], None] = print):
        self.task, self.log = task, log
        self.correct_reward = task.correct_reward if correct_reward is None else float(correct_reward)
        self.sandbox = RewardSandbox(reward, sandbox or SandboxOptions()) if reward else None
        self._reported = False

    def __call__(self, responses: Sequence[str], problems: Sequence[Any]) -> Scores:
        if self.sandbox is None:
            return Scores(list(self.task.score_batch(responses, problems)))
        result = self.sandbox.score(responses, [self.task.to_json(p) for p in problems])
        if (result.errors or result.timeouts) and not self._reported:
            self._reported = True
            self.log(f"reward {self.sandbox.spec}: {result.timeouts} timeouts and {result.errors} errors in "
                     f"{len(responses)} samples (they get --reward-fallback {self.sandbox.options.fallback:g}); "
                     f"first error: {result.first_error or 'none'} (reported once per run)")
        return Scores(result.rewards, result.timeouts, result.errors, counted=True)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
