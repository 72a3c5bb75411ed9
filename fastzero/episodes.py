"""Rollout and score in one call: prompts -> engine -> response text -> rewards.

The training step, the held-out evaluation and the tiny model's build-time evaluator all go
through `sample_episodes`, so they decode and score responses the same way. What an engine
reports beyond the tokens travels on with them: the sampler's per-token log-probs (for
rollout/trainer mismatch corrections) and each response's finish reason ("stop" or "length").

Scoring is a parameter, `Scorer = (texts, problems) -> rewards`: a task plugs in here
(`fastzero.tasks.scoring.TaskScorer`: the task's own scorer or a sandboxed user reward, which also
reports how many samples timed out or failed). `countdown_scorer` is Countdown's (the C++ verifier).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

from .rollout.base import RolloutEngine, SamplingParams
from .tasks.scoring import Scores

Scorer = Callable[[list[str], list[Any]], "list[float] | Scores"]
Decoder = Callable[[list[list[int]]], list[str]]


@dataclass
class Episodes:
    """One entry per sampled response, groups of `params.n` contiguous (the samples of one prompt)."""

    problems: list[Any]  # the problem each response answers
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # with the stop token when one was hit
    sampler_logprobs: list[list[float]] | None  # engine log-prob per response token; None if any lacks them
    finish_reasons: list[str]  # "stop" | "length"
    texts: list[str]  # what the scorer saw (the stop token dropped)
    scores: list[float]
    reward_failures: dict[str, int] = field(default_factory=dict)  # reward/timeouts, reward/errors (sandbox only)

    def __len__(self) -> int:
        return len(self.response_ids)


def sample_episodes(engine: RolloutEngine, prompts: Sequence[list[int]], problems: Sequence[Any],
                    params: SamplingParams, *, decode: Decoder, scorer: Scorer,
                    phase: Callable[[str], ContextManager] | None = None) -> Episodes:
    """Generate params.n responses per prompt, decode and score them; `phase(name)` times each part."""
    phase = phase or (lambda name: nullcontext())
    with phase("rollout"):
        groups = engine.generate(prompts, params)
    completions = [c for group in groups for c in group]
    owners = [i for i, group in enumerate(groups) for _ in group]
    with phase("reward"):
        responses = [c.response_ids for c in completions]
        texts = decode(responses)
        flat_problems = [problems[i] for i in owners]
        scored = scorer(texts, flat_problems)
    failures = {}
    if isinstance(scored, Scores):
        if scored.counted:
            failures = {"reward/timeouts": scored.timeouts, "reward/errors": scored.errors}
        scored = scored.rewards
    scores = list(scored)
    logprobs = [c.logprobs for c in completions]
    return Episodes(problems=flat_problems, prompt_ids=[prompts[i] for i in owners], response_ids=responses,
                    sampler_logprobs=None if any(lp is None for lp in logprobs) else logprobs,
                    finish_reasons=[c.finish_reason for c in completions], texts=texts, scores=scores,
                    reward_failures=failures)


def trim_stop(responses: list[list[int]], stop_ids: Sequence[int]) -> list[list[int]]:
    """Responses without their final stop token: the scorer sees what the model wrote, not EOS."""
    stop = set(stop_ids)
    return [r[:-1] if r and r[-1] in stop else r for r in responses]


def countdown_scorer(*, format_score: float, correct_score: float) -> Scorer:
    """Countdown's reward (the C++ verifier, through fastzero.tasks.countdown.task) as a Scorer."""
    from .tasks.countdown.task import CountdownTask

    return CountdownTask(format_score=format_score, correct_score=correct_score).score_batch
