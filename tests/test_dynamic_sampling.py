"""DAPO's dynamic sampling and overlong handling: the penalty against its formula, the round logic
against a scripted sampler, and few-step runs (metrics, masking, bit-identical resume)."""
from __future__ import annotations

import pytest

from fastzero.config import RolloutConfig
from fastzero.dynamic_sampling import informative_groups, overlong_penalties, sample_step
from fastzero.episodes import Episodes
from fastzero.train import main
from tests._runs import TINY, assert_resume_is_bit_identical, rows


def test_overlong_penalty_is_dapos_linear_ramp():
    # cap 10, buffer 4: no penalty up to 6 tokens, then -(n - 6) / 4 * P, reaching -P at the cap.
    got = overlong_penalties([1, 6, 7, 8, 9, 10], max_new_tokens=10, buffer=4, penalty=0.5)
    assert got == [0.0, 0.0, -0.125, -0.25, -0.375, -0.5]
    assert overlong_penalties([10, 3], max_new_tokens=10, buffer=0, penalty=1.0) == [0.0, 0.0]
    assert overlong_penalties([10], max_new_tokens=10, buffer=10, penalty=1.0) == [-1.0]


def test_informative_groups_are_those_whose_rewards_disagree():
    assert informative_groups([1, 1, 0, 1, 0.1, 0.1, 0, 0], 2) == [1]
    assert informative_groups([0.0, 0.0, 0.0], 3) == []


class ScriptedRounds:
    """A sample_round whose groups have the scores scripted per round (group size 2)."""

    def __init__(self, rounds: list[list[tuple[float, float]]], lengths: int = 3):
        self.rounds, self.calls, self.lengths = rounds, [], lengths

    def __call__(self, count: int) -> Episodes:
        groups = self.rounds[len(self.calls)]
        assert len(groups) == count
        self.calls.append(count)
        scores = [s for g in groups for s in g]
        tag = len(self.calls)
        return Episodes(problems=[(tag, i // 2) for i in range(len(scores))], prompt_ids=[[tag]] * len(scores),
                        response_ids=[[7] * self.lengths] * len(scores), sampler_logprobs=[[-0.5] * self.lengths] * len(scores),
                        finish_reasons=["stop"] * len(scores), texts=[""] * len(scores), scores=scores)


def _cfg(**kw) -> RolloutConfig:
    return RolloutConfig(prompts_per_step=3, samples_per_prompt=2, max_new_tokens=4, **kw)


def test_rounds_until_the_batch_is_full_then_surplus_dropped():
    sampler = ScriptedRounds([[(1, 1), (0, 1), (0, 0)], [(1, 0), (0.1, 1), (0, 1)], [(0, 1), (1, 0), (1, 0)]])
    out = sample_step(sampler, _cfg(dynamic_sampling=True, max_sampling_rounds=5))
    # round 1 keeps its group 1; round 2 fills the batch with its groups 0 and 1 and drops group 2
    assert sampler.calls == [3, 3]
    assert out.stats == {"sampling/rounds": 2.0, "sampling/kept_groups": 3.0, "sampling/dropped_groups": 3.0}
    assert [p for p in out.episodes.problems] == [(1, 1), (1, 1), (2, 0), (2, 0), (2, 1), (2, 1)]
    assert out.rewards == [0, 1, 1, 0, 0.1, 1]
    assert out.generated_scores == [1, 1, 0, 1, 0, 0, 1, 0, 0.1, 1, 0, 1]


def test_the_round_cap_trains_on_what_was_kept():
    sampler = ScriptedRounds([[(1, 1), (0, 0), (0, 1)], [(0, 0), (0, 0), (1, 1)]])
    out = sample_step(sampler, _cfg(dynamic_sampling=True, max_sampling_rounds=2))
    assert out.stats == {"sampling/rounds": 2.0, "sampling/kept_groups": 1.0, "sampling/dropped_groups": 5.0}
    assert out.rewards == [0, 1] and len(out.episodes) == 2 and len(out.episodes.sampler_logprobs) == 2


def test_nothing_informative_trains_on_the_last_round_as_it_is():
    sampler = ScriptedRounds([[(1, 1), (0, 0), (0, 0)]])
    out = sample_step(sampler, _cfg(dynamic_sampling=True, max_sampling_rounds=1))
    assert out.stats["sampling/kept_groups"] == 0.0 and len(out.episodes) == 6


def test_groups_are_judged_on_the_shaped_rewards():
    # all correct, but one response runs into the overlong buffer: the group now has an advantage
    class Lengths(ScriptedRounds):
        def __call__(self, count):
            episodes = super().__call__(count)
            episodes.response_ids = [[7] * n for n in (4, 1, 1, 1, 1, 1)]
            return episodes
    out = sample_step(Lengths([[(1, 1), (1, 1), (0, 0)]]),
                      _cfg(dynamic_sampling=True, max_sampling_rounds=1, overlong_buffer=2, overlong_penalty=1.0))
    assert out.stats["sampling/kept_groups"] == 1.0 and out.rewards == [0.0, 1.0]
    assert out.stats["overlong/penalty_mean"] == -0.5


def test_off_is_one_round_untouched():
    sampler = ScriptedRounds([[(1, 1), (0, 0), (0, 1)]])
    out = sample_step(sampler, _cfg())
    assert sampler.calls == [3] and out.stats == {} and out.rewards is out.episodes.scores


class SlicedRounds(ScriptedRounds):
    """The scripted rounds as a rank of a torchrun job sees them: its slice of each round's prompts."""

    def __init__(self, rounds, ctx, lengths=3):
        super().__init__(rounds, lengths)
        self.ctx = ctx

    def __call__(self, count: int) -> Episodes:
        from fastzero.distributed import prompt_slice

        full = super().__call__(count)
        share = prompt_slice(count, self.ctx)
        rows = slice(share.start * 2, share.stop * 2)
        return Episodes(**{name: getattr(full, name)[rows] for name in
                           ("problems", "prompt_ids", "response_ids", "sampler_logprobs", "finish_reasons",
                            "texts", "scores")}, reward_failures={"reward/errors": self.ctx.rank + 1})


def rank_sample_step(rounds, cfg: RolloutConfig):
    from fastzero.distributed import init_distributed

    ctx = init_distributed("cpu")
    sampler = SlicedRounds(rounds, ctx)
    return sample_step(sampler, cfg, ctx), len(sampler.calls)


SCRIPTS = {  # group size 2; 4 prompts per round (ranks 0 and 1 hold prompts 0-1 and 2-3)
    "fills-across-ranks": [[(1, 1), (0, 0), (0, 1), (1, 0)], [(1, 0), (0, 0), (1, 1), (0, 1)],
                           [(0, 1), (1, 0), (1, 0), (0, 1)]],
    "cut-inside-rank-0": [[(0, 1), (1, 0), (0, 1), (1, 1)], [(0, 1), (1, 0), (0, 1), (0, 1)]],
    "round-cap": [[(1, 1), (0, 0), (0, 0), (0, 1)], [(0, 0), (1, 0), (1, 1), (1, 1)]],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_two_ranks_keep_exactly_the_groups_one_process_keeps(script):
    """The ranks' shares, concatenated, are one process's batch, row for row, with its stats."""
    from tests._distributed import run_ranks

    cfg = RolloutConfig(prompts_per_step=4, samples_per_prompt=2, max_new_tokens=4, dynamic_sampling=True,
                        max_sampling_rounds=2, overlong_buffer=2, overlong_penalty=1.0)
    one = sample_step(ScriptedRounds(SCRIPTS[script]), cfg)
    shares = run_ranks(2, rank_sample_step, SCRIPTS[script], cfg)
    assert [calls for _, calls in shares] == [one.stats["sampling/rounds"]] * 2  # the same rounds everywhere
    assert [s.stats for s, _ in shares] == [one.stats] * 2
    assert sum((s.episodes.problems for s, _ in shares), []) == one.episodes.problems
    assert sum((s.rewards for s, _ in shares), []) == one.rewards
    assert [s.first_row for s, _ in shares] == [0, len(shares[0][0].episodes)]
    assert {s.global_rows for s, _ in shares} == {len(one.episodes)}
    assert sum(s.episodes.reward_failures["reward/errors"] for s, _ in shares) == 3 * one.stats["sampling/rounds"]


def test_fewer_kept_groups_than_ranks_train_on_the_last_round():
    from tests._distributed import run_ranks

    cfg = RolloutConfig(prompts_per_step=4, samples_per_prompt=2, max_new_tokens=4, dynamic_sampling=True,
                        max_sampling_rounds=1)
    shares = run_ranks(2, rank_sample_step, [[(1, 1), (0, 0), (0, 1), (1, 1)]], cfg)
    assert [s.stats["sampling/kept_groups"] for s, _ in shares] == [1.0, 1.0]
    assert [len(s.episodes) for s, _ in shares] == [4, 4] and {s.first_row for s, _ in shares} == {None}


def test_few_steps_with_dynamic_sampling_and_overlong_handling(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--max-steps", "2", "--dynamic-sampling", "true", "--max-sampling-rounds", "2",
                   "--overlong-buffer", "6", "--mask-truncated", "true", "--max-new-tokens", "10"]
    assert main(args + ["--output-dir", str(out)]) == 0
    steps = [r for r in rows(out) if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert 1 <= r["sampling/rounds"] <= 2
        assert 0 <= r["sampling/kept_groups"] <= 4
        assert r["sampling/kept_groups"] + r["sampling/dropped_groups"] == 4 * r["sampling/rounds"]
        assert -1.0 <= r["overlong/penalty_mean"] <= 0.0 and 0.0 <= r["overlong/truncated_share"] <= 1.0


@pytest.mark.slow
def test_dynamic_sampling_resumes_bit_identically(tmp_path):
    assert_resume_is_bit_identical(tmp_path, TINY + ["--dynamic-sampling", "true", "--max-sampling-rounds", "3",
                                                     "--overlong-buffer", "4"])


@pytest.mark.parametrize("flags, message", [
    (["--dynamic-sampling", "true", "--samples-per-prompt", "1", "--algorithm", "ppo", "--mini-batch-size", "4"],
     "--dynamic-sampling"),
    (["--max-sampling-rounds", "0"], "--max-sampling-rounds"),
    (["--overlong-buffer", "99"], "--overlong-buffer"),
    (["--overlong-penalty", "-1"], "--overlong-penalty"),
])
def test_bad_values_are_usage_errors(tmp_path, capsys, flags, message):
    assert main(TINY + flags + ["--output-dir", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
