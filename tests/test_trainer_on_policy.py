"""The trainer's on-policy shortcut (Trainer.on_policy): with one PPO epoch and one mini-batch the
loss takes the old log-probs from its own forward, and the separate no-grad forward is skipped.

It must give the update the two-forward path gives: the same gradients from accumulate_gradients
(both loss paths), and the same weights after a whole step from the same seed. The two differ only
in rounding: the separate forward runs other micro-batches at another padding width, so its
log-probs differ from the update's by fp32 rounding (the ratio is 1 +- ~1e-7 there, exactly 1 here).
"""
from __future__ import annotations

import pytest
import torch

from fastzero.model import sequence_logprobs
from fastzero.run import Run
from fastzero.train import config_from_args
from fastzero.trainer import Trainer
from tests._helpers import assert_grad_close, sum_rtol

SMALL = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4",
         "--mini-batch-size", "16", "--progress", "false", "--threads", "1", "--seed", "3"]


def _run(tmp_path, extra=()) -> Run:
    return Run(config_from_args(SMALL + list(extra) + ["--output-dir", str(tmp_path)]), output_dir=str(tmp_path),
               log=lambda *a: None)


def _bound(run: Run, tokens: int) -> float:
    c = run.policy.config
    return sum_rtol(torch.float32, tokens + c.num_hidden_layers * (c.intermediate_size + c.hidden_size) + c.vocab_size)


@pytest.mark.parametrize("extra, expected", [
    ((), True),
    (("--kl-coef", "0.01"), True),  # a KL term in the loss reads the pass' own log-probs and the reference's
    (("--kl-coef", "0.01", "--kl-in-reward", "true", "--algorithm", "reinforce_pp"), False),  # a KL reward reads the old ones
    (("--ppo-epochs", "2"), False),
    (("--mini-batch-size", "8"), False),  # two optimizer steps per rollout batch
    (("--is-correction", "tis"), False),
])
def test_on_policy_only_when_the_update_is_one_step_from_the_sampling_weights(tmp_path, extra, expected):
    run = _run(tmp_path, extra)
    assert Trainer.from_run(run).on_policy(16) is expected


@pytest.mark.parametrize("fused", [True, False])
def test_own_old_logprobs_give_the_two_forward_gradient(tmp_path, fused):
    from fastzero.batch import collate

    run = _run(tmp_path)
    run.config.algorithm.fused_loss = fused
    trainer = Trainer.from_run(run)
    gen = torch.Generator().manual_seed(0)
    prompts = [run.data.prompt_ids(p) for p in run.data.train[:6]]
    responses = [torch.randint(3, 40, (n,), generator=gen).tolist() for n in (1, 5, 9, 3, 7, 2)]
    batch = collate(prompts, responses, pad_id=run.pad_id)
    adv = torch.randn(batch.response_mask.shape, generator=gen) * batch.response_mask
    with torch.no_grad():
        separate = sequence_logprobs(run.policy, batch.input_ids, batch.attention_mask, batch.response_mask)
    rows = torch.arange(len(batch))

    def gradients(old):
        run.optimizers.zero_grad()
        stats = trainer.accumulate_gradients(batch, rows, rows, old, adv, None, None, None)
        return {n: p.grad.clone() for n, p in run.policy.named_parameters() if p.grad is not None}, stats

    own, own_stats = gradients(None)
    given, given_stats = gradients(separate)
    assert own.keys() == given.keys() and own
    rel = _bound(run, int(batch.response_mask.sum()))
    for name in own:
        assert_grad_close(own[name], given[name], rel)
    assert own_stats["clip_frac"] == 0.0
    if fused:
        assert own_stats["approx_kl_old"] == 0.0


@pytest.mark.parametrize("kl", [(), ("--kl-coef", "0.05")])
def test_a_whole_step_matches_the_two_forward_step(tmp_path, monkeypatch, kl):
    weights, rows = [], []
    for shortcut in (True, False):
        run = _run(tmp_path / str(shortcut), ("--prompts-per-step", "8", "--samples-per-prompt", "8",
                                              "--mini-batch-size", "64", *kl))
        trainer = Trainer.from_run(run)
        if not shortcut:
            monkeypatch.setattr(trainer, "on_policy", lambda rows: False)
        row, _ = trainer.step(1)
        assert row["update/skipped_rows"] < 1.0, "a step with no gradient checks nothing"
        rows.append(row)
        weights.append(torch.cat([p.detach().flatten() for p in run.policy.parameters()]))
    assert rows[0]["reward/mean"] == rows[1]["reward/mean"]  # the same samples
    assert rows[0]["grad_norm"] == pytest.approx(rows[1]["grad_norm"], rel=1e-4)
    assert rows[0]["clip_frac"] == 0.0
    if kl:  # the reference scored the batch on both paths; the loss's KL term is the same
        assert "kl/ref" in rows[1] and "kl/ref" not in rows[0]
        assert rows[0]["kl_ref"] == pytest.approx(rows[1]["kl_ref"], rel=1e-4, abs=1e-9)
    # AdamW's first step moves each weight by ~lr * sign(gradient): an entry whose gradient is ~0
    # may flip sign on rounding, so the updates are compared as vectors, not entry by entry.
    initial = torch.cat([p.detach().flatten() for p in _run(tmp_path / "initial").policy.parameters()])
    own, two = weights[0] - initial, weights[1] - initial
    assert float((own - two).norm()) <= 1e-2 * float(two.norm())
