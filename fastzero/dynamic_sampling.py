"""DAPO's sampling side: dynamic sampling and the soft overlong penalty (Yu et al. 2025, DAPO).

Dynamic sampling (--dynamic-sampling): a group whose rewards all agree has a group-relative
advantage of exactly 0, so it adds nothing to the gradient but dilutes the token mean. Such groups
are dropped and another round of --prompts-per-step prompts is generated, until the step holds
--prompts-per-step informative groups or --max-sampling-rounds rounds were generated; the step then
trains on the informative groups it has (informative groups beyond the batch are dropped too, as in
DAPO's oversampled generation batch). If no round gave one, the last round is trained on as it is
(every row has zero advantage: the update does nothing but the step still counts).

Every round draws its prompts from the data stream and its samples from the engine's RNG, both of
which a checkpoint saves between steps, so a resumed run draws the same rounds.

Overlong penalty (--overlong-buffer L, --overlong-penalty P): with the length cap C (--max-new-tokens),
a response of n tokens gets P * (C - L - n) / L added to its reward when n > C - L (from 0 down to
-P at the cap), and nothing otherwise. Groups are judged informative on these shaped rewards (what
the advantages see); accuracy is counted on the task's own scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .config import RolloutConfig
from .episodes import Episodes


def overlong_penalties(lengths: list[int], *, max_new_tokens: int, buffer: int, penalty: float) -> list[float]:
    """DAPO's soft overlong punishment per response (0 outside the last `buffer` tokens)."""
    if buffer <= 0:
        return [0.0] * len(lengths)
    start = max_new_tokens - buffer
    return [penalty * (start - n) / buffer if n > start else 0.0 for n in lengths]


def informative_groups(rewards: list[float], group_size: int) -> list[int]:
    """Indices of the groups whose rewards do not all agree (the ones with a nonzero advantage)."""
    return [g for g in range(len(rewards) // group_size)
            if len(set(rewards[g * group_size:(g + 1) * group_size])) > 1]


def select_groups(episodes: Episodes, groups: list[int], group_size: int) -> Episodes:
    rows = [g * group_size + k for g in groups for k in range(group_size)]
    pick = lambda values: [values[i] for i in rows]  # noqa: E731
    return Episodes(problems=pick(episodes.problems), prompt_ids=pick(episodes.prompt_ids),
                    response_ids=pick(episodes.response_ids),
                    sampler_logprobs=pick(episodes.sampler_logprobs) if episodes.sampler_logprobs is not None else None,
                    finish_reasons=pick(episodes.finish_reasons), texts=pick(episodes.texts), scores=pick(episodes.scores),
                    reward_failures=dict(episodes.reward_failures))  # counts over the whole round


def concat_episodes(parts: list[Episodes]) -> Episodes:
    if len(parts) == 1:
        return parts[0]
    logprobs = None
    if all(p.sampler_logprobs is not None for p in parts):
        logprobs = [lp for p in parts for lp in p.sampler_logprobs]
    join = lambda name: [x for p in parts for x in getattr(p, name)]  # noqa: E731
    return Episodes(problems=join("problems"), prompt_ids=join("prompt_ids"), response_ids=join("response_ids"),
                    sampler_logprobs=logprobs, finish_reasons=join("finish_reasons"), texts=join("texts"),
                    scores=join("scores"), reward_failures=_summed([p.reward_failures for p in parts]))


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


@dataclass
class StepSample:
    episodes: Episodes  # what the step trains on: whole groups, contiguous
    rewards: list[float]  # per trained response: its score plus the overlong penalty
    generated_scores: list[float]  # the task's scores of every response generated this step (all rounds)
    stats: dict[str, float] = field(default_factory=dict)


def sample_step(sample_round: Callable[[int], Episodes], cfg: RolloutConfig) -> StepSample:
    """One step's episodes: one round, or (dynamic sampling) rounds until the batch is full."""
    prompts, group = cfg.prompts_per_step, cfg.samples_per_prompt

    def shaped(episodes: Episodes) -> list[float]:
        if cfg.overlong_buffer <= 0:
            return episodes.scores
        penalty = overlong_penalties([len(r) for r in episodes.response_ids], max_new_tokens=cfg.max_new_tokens,
                                     buffer=cfg.overlong_buffer, penalty=cfg.overlong_penalty)
        return [s + p for s, p in zip(episodes.scores, penalty)]

    if not cfg.dynamic_sampling:
        episodes = sample_round(prompts)
        sample = StepSample(episodes, shaped(episodes), episodes.scores)
    else:
        kept: list[Episodes] = []
        kept_rewards: list[float] = []
        generated: list[float] = []
        rounds = n_kept = 0
        while n_kept < prompts and rounds < cfg.max_sampling_rounds:
            episodes = sample_round(prompts)
            rounds += 1
            rewards = shaped(episodes)
            generated += episodes.scores
            take = informative_groups(rewards, group)[: prompts - n_kept]
            kept.append(select_groups(episodes, take, group))
            kept_rewards += [rewards[g * group + k] for g in take for k in range(group)]
            n_kept += len(take)
        if n_kept == 0:  # nothing informative: train on the last round as it is (no row has a gradient)
            kept, kept_rewards = [episodes], rewards
        sample = StepSample(concat_episodes(kept), kept_rewards, generated, {
            "sampling/rounds": float(rounds), "sampling/kept_groups": float(n_kept),
            "sampling/dropped_groups": float(rounds * prompts - n_kept)})
    if cfg.overlong_buffer > 0:
        penalties = [r - s for r, s in zip(sample.rewards, sample.episodes.scores)]
        sample.stats["overlong/penalty_mean"] = sum(penalties) / max(1, len(penalties))
    return sample
