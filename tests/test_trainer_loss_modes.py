"""The trainer's loss modes (ppo / gspo / cispo) and rollout-mismatch correction (tis / mis, token /
sequence) with a real mismatch: the hf rollout engine decoding with a bfloat16 copy of the policy
while the trainer scores in float32. The logged mismatch KL is checked against a float64 oracle,
both loss paths against each other, and few-step runs of each mode end to end."""
from __future__ import annotations

import copy

import pytest
import torch

from fastzero.batch import collate
from fastzero.rollout import make_engine
from fastzero.run import Run
from fastzero.train import config_from_args, main
from fastzero.trainer import Trainer
from tests._helpers import assert_grad_close, sum_rtol
from tests._runs import TINY, rows

ALL_ROWS = ["--kl-coef", "0.01"]  # every row carries a gradient, so every row's tokens are scored


def _bf16_engine_run(tmp_path, extra: list[str]) -> Run:
    """A float32 run whose rollouts come from a bfloat16 copy of the policy (synced after each step)."""
    run = Run(config_from_args(TINY + ALL_ROWS + extra + ["--output-dir", str(tmp_path)]), output_dir=str(tmp_path),
              log=lambda *a: None)
    sampler = copy.deepcopy(run.policy).to(torch.bfloat16).eval()
    run.engine = make_engine("hf", model=sampler, eos_token_ids=run.stop_ids, seed=1, pad_token_id=run.pad_id)
    return run


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    run = _bf16_engine_run(tmp_path_factory.mktemp("mismatch"), [])
    trainer = Trainer.from_run(run)
    episodes = trainer.sample_round(run.config.rollout.prompts_per_step)
    batch = collate(episodes.prompt_ids, episodes.response_ids, pad_id=run.pad_id,
                    rollout_logprobs=episodes.sampler_logprobs, finish_reasons=episodes.finish_reasons)
    everything = torch.ones(len(batch), dtype=torch.bool)
    old, ref, _ = trainer.score_tokens(batch, everything)
    adv = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(0)) * batch.response_mask
    return run, trainer, batch, old, ref, adv


def _stats_and_grads(run, trainer, batch, old, ref, adv, **algorithm):
    for key, value in algorithm.items():
        setattr(run.config.algorithm, key, value)
    run.optimizers.zero_grad()
    rows_ = torch.arange(len(batch))
    stats = trainer.accumulate_gradients(batch, rows_, rows_, old, adv, ref, None, None)
    grads = {n: p.grad.clone() for n, p in run.policy.named_parameters() if p.grad is not None}
    return stats, grads


def test_the_logged_mismatch_kl_is_the_k3_of_the_real_bf16_mismatch(mismatched):
    run, trainer, batch, old, ref, adv = mismatched
    stats, _ = _stats_and_grads(run, trainer, batch, old, ref, adv, is_correction="none", fused_loss=True)
    valid = batch.response_mask.bool()
    log_ratio = (old.double() - batch.rollout_logprobs.double())[valid]
    oracle = float((log_ratio.exp() - 1 - log_ratio).mean())
    n = int(valid.sum())
    assert oracle > 1e-6  # bf16 sampling against fp32 scoring: a real mismatch, far above fp32 noise
    assert stats["mismatch_kl"] == pytest.approx(oracle, rel=sum_rtol(torch.float32, n) * 10 + 1e-6, abs=0)


def test_the_shares_of_truncated_and_masked_tokens(mismatched):
    run, trainer, batch, old, ref, adv = mismatched
    valid = batch.response_mask.bool()
    ratio = (old.double() - batch.rollout_logprobs.double())[valid]
    size = ratio.abs().sort().values
    k = int(torch.argmax(size[1:] - size[:-1]))  # the cap sits in the widest gap: no token near it
    cap = float(((size[k] + size[k + 1]) / 2).exp())
    tis, _ = _stats_and_grads(run, trainer, batch, old, ref, adv, is_correction="tis", is_level="token", is_cap=cap)
    mis, _ = _stats_and_grads(run, trainer, batch, old, ref, adv, is_correction="mis", is_level="token", is_cap=cap)
    n = float(valid.sum())
    assert tis["is_truncated_frac"] == pytest.approx(float((ratio > torch.tensor(cap).log()).sum()) / n, abs=1e-6)
    assert mis["is_masked_frac"] == pytest.approx(float((ratio.abs() > torch.tensor(cap).log()).sum()) / n, abs=1e-6)
    assert 0 < mis["is_masked_frac"] < 1 or 0 < tis["is_truncated_frac"] < 1


@pytest.mark.parametrize("mode, correction, level", [
    ("ppo", "tis", "token"), ("gspo", "none", "token"), ("gspo", "mis", "sequence"), ("cispo", "tis", "sequence"),
])
def test_fused_and_two_pass_agree_for_every_mode(mismatched, mode, correction, level):
    run, trainer, batch, old, ref, adv = mismatched
    options = dict(loss_mode=mode, is_correction=correction, is_level=level, is_cap=1.5)
    if mode == "gspo":
        options.update(clip_low=3e-4, clip_high=4e-4)
    fused_stats, fused = _stats_and_grads(run, trainer, batch, old, ref, adv, fused_loss=True, **options)
    two_stats, two = _stats_and_grads(run, trainer, batch, old, ref, adv, fused_loss=False, **options)
    run.config.algorithm.fused_loss, run.config.algorithm.clip_low, run.config.algorithm.clip_high = True, 0.2, 0.2
    c = run.policy.config
    bound = sum_rtol(torch.float32, int(batch.response_mask.sum())
                     + c.num_hidden_layers * (c.intermediate_size + c.hidden_size) + c.vocab_size)
    assert fused.keys() == two.keys()
    for name in fused:
        assert_grad_close(fused[name], two[name], bound)
    for key in ("mismatch_kl", "clip_frac"):
        assert fused_stats[key] == pytest.approx(two_stats[key], rel=bound, abs=bound)


@pytest.mark.parametrize("extra", [
    ["--loss-mode", "gspo", "--clip-low", "3e-4", "--clip-high", "4e-4", "--is-correction", "tis",
     "--is-level", "sequence"],
    ["--loss-mode", "cispo", "--is-correction", "mis", "--fused-loss", "false"],
    ["--loss-mode", "ppo", "--is-correction", "tis", "--is-cap", "1.5", "--kl-coef", "0.01"],
])
def test_few_steps_of_each_loss_mode(tmp_path, extra):
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "2", "--output-dir", str(out)] + extra) == 0
    steps = [r for r in rows(out) if "reward/mean" in r]
    assert len(steps) == 2
    flagged = "is_masked_frac" if "mis" in extra else "is_truncated_frac"
    for r in steps:
        if r["update/skipped_rows"] < 1.0:  # some row was trained: the loss reported its stats
            assert r["mismatch_kl"] >= 0.0 and 0.0 <= r[flagged] <= 1.0


def test_is_cap_below_one_is_a_usage_error(tmp_path, capsys):
    assert main(TINY + ["--is-correction", "tis", "--is-cap", "0.5", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--is-cap" in capsys.readouterr().err
