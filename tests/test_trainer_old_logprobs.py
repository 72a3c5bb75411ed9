"""--old-logprobs rollout: with more than one optimizer step per rollout batch the PPO ratio's old
log-probs are the sampler's own, and the policy's no-grad forward before the update is skipped.

The hf engine samples with the trainer's weights in float32, so its log-probs are the old policy's
up to rounding: a whole step must give the update the recomputing path gives, the update must be
handed the sampler's log-probs, and only the reference (the KL term) still scores the batch.
"""
from __future__ import annotations

import pytest
import torch

import fastzero.trainer as trainer_module
from fastzero.config import validate
from fastzero.run import Run
from fastzero.train import config_from_args
from fastzero.trainer import Trainer
from tests._helpers import sum_rtol

# 8 prompts x 8 samples in two mini-batches of 32: the update is off-policy from its second step on.
TWO_STEPS = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "4", "--prompts-per-step", "8",
             "--samples-per-prompt", "8", "--mini-batch-size", "32", "--kl-coef", "0.05", "--progress", "false",
             "--threads", "1", "--seed", "3"]


def _run(path, source: str, extra=()) -> Run:
    args = TWO_STEPS + ["--old-logprobs", source, *extra, "--output-dir", str(path)]
    return Run(config_from_args(args), output_dir=str(path), log=lambda *a: None)


def _step(run: Run, monkeypatch):
    """One step; returns its row, the old log-probs handed to update(), the batch it trained on,
    and how many times score_tokens ran the policy's own forward."""
    trainer = Trainer.from_run(run)
    seen = {"policy_forwards": 0}
    score, update = trainer.score_tokens, trainer.update

    def counting_score(batch, carries_gradient, policy=True):
        seen["policy_forwards"] += int(policy)
        return score(batch, carries_gradient, policy=policy)

    def recording_update(batch, old_logp, *rest):
        seen["batch"], seen["old_logp"] = batch, old_logp
        return update(batch, old_logp, *rest)

    monkeypatch.setattr(trainer, "score_tokens", counting_score)
    monkeypatch.setattr(trainer, "update", recording_update)
    row, _ = trainer.step(1)
    return row, seen


def _weights(run: Run) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in run.policy.parameters()])


def test_the_sampler_log_probs_replace_the_forward_and_give_the_same_step(tmp_path, monkeypatch):
    initial = _weights(_run(tmp_path / "initial", "recompute"))
    rows, seen, weights = {}, {}, {}
    for source in ("recompute", "rollout"):
        run = _run(tmp_path / source, source)
        rows[source], seen[source] = _step(run, monkeypatch)
        weights[source] = _weights(run)
    recompute, rollout = seen["recompute"], seen["rollout"]
    assert recompute["policy_forwards"] == 1 and rollout["policy_forwards"] == 0
    batch = rollout["batch"]
    assert rows["recompute"]["reward/mean"] == rows["rollout"]["reward/mean"]  # the same samples
    assert rows["rollout"]["update/skipped_rows"] < 1.0, "a step with no gradient checks nothing"
    # The update was handed the sampler's log-probs, on the response tokens only.
    assert torch.equal(rollout["old_logp"], batch.rollout_logprobs * batch.response_mask)
    # ... and they are the recomputed ones up to float32 rounding of the forward's sums.
    c = run.policy.config
    rel = sum_rtol(torch.float32, batch.lengths.max().item() + c.num_hidden_layers
                   * (c.intermediate_size + c.hidden_size) + c.vocab_size)
    err = (rollout["old_logp"].double() - recompute["old_logp"].double()).abs().max().item()
    assert err <= rel * recompute["old_logp"].abs().max().item(), err
    # The reference still scored the batch, and the loss logged no mismatch against itself.
    assert "kl/ref" in rows["rollout"] and "mismatch_kl" not in rows["rollout"]
    assert "mismatch_kl" in rows["recompute"]
    assert rows["rollout"]["grad_norm"] == pytest.approx(rows["recompute"]["grad_norm"], rel=1e-4)
    # AdamW's first step moves each weight by ~lr * sign(gradient): compared as vectors (see
    # tests/test_trainer_on_policy.py).
    own, two = weights["rollout"] - initial, weights["recompute"] - initial
    assert float((own - two).norm()) <= 1e-2 * float(two.norm())


def test_on_policy_steps_keep_the_shortcut_and_the_mismatch_stat(tmp_path, monkeypatch):
    run = _run(tmp_path, "rollout", ("--mini-batch-size", "64"))  # one optimizer step: on-policy
    row, seen = _step(run, monkeypatch)
    assert seen["policy_forwards"] == 0 and seen["old_logp"] is None
    assert "mismatch_kl" in row and row["mismatch_kl"] < 1e-6


def test_an_engine_without_log_probs_is_named(tmp_path, monkeypatch):
    run = _run(tmp_path, "rollout")
    real = trainer_module.collate
    monkeypatch.setattr(trainer_module, "collate",
                        lambda *args, **kw: real(*args, **{**kw, "rollout_logprobs": None}))
    with pytest.raises(ValueError, match="--old-logprobs rollout: the rollout engine returned no log-probs"):
        Trainer.from_run(run).step(1)


def test_a_mismatch_correction_against_itself_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--is-correction: .*--old-logprobs rollout"):
        validate(config_from_args(TWO_STEPS + ["--old-logprobs", "rollout", "--is-correction", "tis"]))


def test_the_thinking_preset_takes_the_sampler_log_probs_and_decays_its_rate():
    assert config_from_args([]).algorithm.old_logprobs == "rollout"
    assert config_from_args([]).optimizer.lr_schedule == "cosine"
    assert config_from_args(["--preset", "tiny-direct"]).algorithm.old_logprobs == "recompute"
