"""The learning-rate schedule (fastzero.optim.lr_scale): a linear warm-up, then constant or a
cosine / linear decay to --min-lr-ratio at the run's last optimizer step, checked against an
oracle written another way (cos^2 of the half angle; linear interpolation between the endpoints),
and applied by Optimizers.step to every parameter group."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.config import OptimizerConfig, validate
from fastzero.optim import Optimizers, lr_scale, planned_optimizer_steps
from fastzero.train import config_from_args


def oracle(schedule: str, warmup: int, floor: float, step: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    last = total - 1  # the decay runs from the warm-up's end (scale 1) to the last step (the floor)
    t = 1.0 if step >= last else (step - warmup) / max(1, last - warmup)
    if schedule == "cosine":
        return floor + (1.0 - floor) * math.cos(math.pi * t / 2) ** 2
    return (1.0 - t) * 1.0 + t * floor


@settings(max_examples=300, deadline=None)
@given(schedule=st.sampled_from(["constant", "cosine", "linear"]), warmup=st.integers(0, 20),
       floor=st.floats(0.0, 1.0), total=st.integers(1, 400), step=st.integers(0, 500))
def test_the_scale_matches_the_oracle(schedule, warmup, floor, total, step):
    cfg = OptimizerConfig(lr_schedule=schedule, warmup_steps=warmup, min_lr_ratio=floor)
    assert lr_scale(cfg, step, total) == pytest.approx(oracle(schedule, warmup, floor, step, total), abs=1e-12)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_decay_starts_at_lr_ends_at_the_floor_and_never_rises(schedule):
    cfg = OptimizerConfig(lr_schedule=schedule, warmup_steps=5, min_lr_ratio=0.1)
    scales = [lr_scale(cfg, step, 240) for step in range(260)]
    assert scales[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # the warm-up
    assert scales[5] == 1.0 and scales[239] == pytest.approx(0.1) and set(scales[239:]) == {scales[239]}
    assert all(later <= earlier + 1e-15 for earlier, later in zip(scales[5:], scales[6:]))
    assert scales[(5 + 239) // 2] == pytest.approx(0.55)  # both shapes cross the middle halfway


def test_constant_and_an_unknown_length_keep_the_rate():
    assert lr_scale(OptimizerConfig(), 10_000, 240) == 1.0
    assert lr_scale(OptimizerConfig(lr_schedule="cosine"), 100, None) == 1.0  # no planned length: no decay


def test_the_optimizers_step_every_group_at_the_scheduled_rate():
    torch.manual_seed(0)
    policy, critic = torch.nn.Linear(4, 3), torch.nn.Linear(4, 1)
    cfg = OptimizerConfig(lr=1e-3, critic_lr=1e-4, lr_schedule="linear", min_lr_ratio=0.0, warmup_steps=0)
    optimizers = Optimizers(cfg, policy, critic, total_steps=5)
    seen = []
    for step in range(5):
        optimizers.zero_grad()
        (policy(torch.ones(2, 4)).sum() + critic(torch.ones(2, 4)).sum()).backward()
        optimizers.step(step)
        seen.append((optimizers.policy.param_groups[0]["lr"], optimizers.critic.param_groups[0]["lr"]))
    expected = [(1e-3 * s, 1e-4 * s) for s in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert [lr for pair in seen for lr in pair] == pytest.approx([lr for pair in expected for lr in pair])


def test_a_run_plans_its_optimizer_steps_from_the_batch_split():
    # The default preset: 200 steps of 32 x 8 sequences in mini-batches of 128.
    assert planned_optimizer_steps(config_from_args([])) == 200 * 2
    assert planned_optimizer_steps(config_from_args(["--max-steps", "10", "--ppo-epochs", "3",
                                                     "--mini-batch-size", "64"])) == 10 * 3 * 4


def test_a_floor_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="--min-lr-ratio: must be in"):
        validate(config_from_args(["--min-lr-ratio", "1.5"]))


def test_a_decaying_run_logs_its_rate_and_resumes_bit_identically_after_ctrl_c(tmp_path):
    """SIGINT right after the first checkpoint, then --resume: the schedule continues from the
    saved optimizer-step count, so weights and every metrics row (lr included) match a straight run."""
    import signal

    from tests._interrupt import TINY, Shot, assert_same_run, interrupted_run, reference_run

    # A KL term gives every row a gradient, so no mini-batch is skipped and the run takes all 8
    # planned optimizer steps (a skipped one would not advance the schedule).
    args = TINY + ["--lr-schedule", "cosine", "--min-lr-ratio", "0.1", "--lr", "1e-3", "--kl-coef", "0.05"]
    reference_run(tmp_path / "straight", args)
    attempts = interrupted_run(tmp_path / "resumed", args, [[Shot(signal.SIGINT, "checkpoint", 0.0)]])
    assert attempts[0].fired and len(attempts) == 2
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", "\n".join(a.describe() for a in attempts))
    from tests._runs import rows

    rates = [row["lr"] for row in rows(tmp_path / "straight") if "lr" in row]
    # 4 steps x 2 mini-batches = 8 optimizer steps; each row shows its second one's rate.
    cfg = OptimizerConfig(lr=1e-3, lr_schedule="cosine", min_lr_ratio=0.1)
    assert rates == pytest.approx([1e-3 * lr_scale(cfg, 2 * step + 1, 8) for step in range(4)])
    assert rates[-1] == pytest.approx(1e-4)
