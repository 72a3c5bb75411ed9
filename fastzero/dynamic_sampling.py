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

Under torchrun every rank generates its slice of each round's prompts (the round's global batch is
the one-process batch). After each round the ranks exchange which of their groups are informative
(all_gather: a few ints per rank), so every rank knows the global list in prompt order, keeps the
same groups one process keeps (the first ones, up to the batch) and counts the same total: all
ranks run the same number of rounds. At the end the kept groups are gathered in one-process order
(round by round, prompt order within a round) and each rank takes a contiguous, even share of
them (`StepSample.first_row`, `global_rows`), so the global batch is exactly one process's. If
fewer groups were kept than there are ranks (some rank would hold none), every rank trains on the
last round as it is, like the no-informative-group case: such a step differs from one process's.

Overlong penalty (--overlong-buffer L, --overlong-penalty P): with the length cap C (--max-new-tokens),
a response of n tokens gets P * (C - L - n) / L added to its reward when n > C - L (from 0 down to
-P at the cap), and nothing otherwise. Groups are judged informative on these shaped rewards (what
the advantages see); accuracy is counted on the task's own scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from .config import RolloutConfig
from .distributed import SINGLE, DistContext, all_gather_object, prompt_slice
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
    episodes: Episodes  # what the step trains on: whole groups, contiguous (under torchrun: this rank's)
    rewards: list[float]  # per trained response: its score plus the overlong penalty
    generated_scores: list[float]  # the task's scores of every response generated this step (all rounds)
    stats: dict[str, float] = field(default_factory=dict)
    # Under torchrun, where the rows of `episodes` sit in the step's global batch (None: where the
    # last round's slice put them) and how many rows that batch has (None: prompts x samples).
    first_row: int | None = None
    global_rows: int | None = None


def sample_step(sample_round: Callable[[int], Episodes], cfg: RolloutConfig, dist: DistContext = SINGLE) -> StepSample:
    """One step's episodes: one round, or (dynamic sampling) rounds until the batch is full.

    sample_round(n) generates and scores this rank's slice of the next n prompts (all of them in
    one process)."""
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
        kept: list[tuple[Episodes, list[float]]] = []  # per round: this rank's kept groups, their rewards
        generated: list[float] = []
        failures: list[dict[str, int]] = []
        rounds = n_kept = 0
        while n_kept < prompts and rounds < cfg.max_sampling_rounds:
            episodes = sample_round(prompts)
            rounds += 1
            rewards = shaped(episodes)
            generated += episodes.scores
            failures.append(episodes.reward_failures)
            take, taken = _first_informative(informative_groups(rewards, group), prompts - n_kept, dist)
            kept.append((select_groups(episodes, take, group), [rewards[g * group + k] for g in take for k in range(group)]))
            n_kept += taken
        stats = {"sampling/rounds": float(rounds), "sampling/kept_groups": float(n_kept),
                 "sampling/dropped_groups": float(rounds * prompts - n_kept)}
        if n_kept < max(1, dist.world_size):  # nothing informative (or too little to share): the last round
            sample = StepSample(episodes, rewards, generated, stats)
        elif not dist.enabled:
            sample = StepSample(concat_episodes([e for e, _ in kept]), [r for _, rs in kept for r in rs], generated, stats)
        else:
            sample = _even_share(kept, n_kept, group, generated, stats, dist)
            sample.episodes.reward_failures = _summed(failures)  # what this rank's scorer counted
    if cfg.overlong_buffer > 0:
        penalties = [r - s for r, s in zip(sample.rewards, sample.episodes.scores)]
        total, count = map(sum, zip(*all_gather_object((sum(penalties), len(penalties)), dist)))
        sample.stats["overlong/penalty_mean"] = total / max(1, count)
    return sample


def _first_informative(mine: list[int], wanted: int, dist: DistContext) -> tuple[list[int], int]:
    """(this rank's groups among the round's first `wanted` informative groups in global prompt
    order, how many were taken over all ranks). `mine`: this rank's informative groups."""
    if not dist.enabled:
        return mine[:wanted], len(mine[:wanted])
    taken, total = [], 0
    for rank, groups in enumerate(all_gather_object(mine, dist)):  # rank order is prompt order
        for g in groups[: max(0, wanted - total)]:
            if rank == dist.rank:
                taken.append(g)
            total += 1
    return taken, total


def _even_share(kept: list[tuple[Episodes, list[float]]], n_kept: int, group: int, generated: list[float],
                stats: dict[str, float], dist: DistContext) -> StepSample:
    """Every rank's kept groups in one-process order (round, then rank = prompt order), and this
    rank's contiguous share of them."""
    by_rank = all_gather_object(kept, dist)
    ordered = [by_rank[rank][r] for r in range(len(kept)) for rank in range(dist.world_size)]
    everything = concat_episodes([e for e, _ in ordered])
    rewards = [x for _, rs in ordered for x in rs]
    share = prompt_slice(n_kept, dist)
    rows = list(range(share.start * group, share.stop * group))
    episodes = select_groups(everything, list(range(share.start, share.stop)), group)
    return StepSample(replace(episodes, reward_failures={}), [rewards[i] for i in rows], generated, stats,
                      first_row=share.start * group, global_rows=n_kept * group)
