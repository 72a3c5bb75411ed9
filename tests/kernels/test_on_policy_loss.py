"""fused_linear_policy_loss with old_logp=None (on-policy: the old log-probs are the pass' own).

Checked against the float64 oracle whose old log-probs are its own (ratio exactly 1), on every
backend, with the fused and the forward-only paths; the ratio must be exactly 1 (no clipping, an
approximate KL to the old policy of exactly 0) and the rollout-mismatch stat must equal the one
computed from separately given old log-probs; loss modes that need old_logp first are refused.
"""
from __future__ import annotations

import pytest
import torch

from fastzero.kernels import reference as R
from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.logprob import fused_logprobs
from tests._helpers import LogitsOracle, assert_close_o1, assert_within_terms
from tests.kernels.test_fused_policy_loss import NORM_LEN, OPTIONS, make_batch, tolerances, weights_for


def _ours(batch, agg, upstream, old=None, **options):
    hidden = batch["hidden"].clone().requires_grad_()
    weight = batch["weight"].clone().requires_grad_()
    loss, stats = fused_linear_policy_loss(hidden, weight, batch["targets"], old, batch["adv"],
                                           weights_for(batch, agg), ref_logp=batch["ref"], **options)
    (loss * upstream).backward()
    return loss.detach(), stats, hidden.grad, weight.grad


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_on_policy_matches_oracle_with_its_own_old_logprobs(backend, device, agg):
    batch = make_batch(device=device, seed=21)
    upstream = torch.tensor(0.8)
    loss, stats, grad_hidden, grad_weight = _ours(batch, agg, upstream.to(device), **OPTIONS)
    assert float(stats["clip_frac"]) == 0.0 and float(stats["approx_kl_old"]) == 0.0  # ratio exactly 1

    options = {k: v for k, v in OPTIONS.items() if k != "temperature"}
    oracle = LogitsOracle(batch["hidden"], batch["weight"], batch["targets"], OPTIONS["temperature"])
    mask = batch["mask"]

    def to_bt(x):
        return torch.zeros(mask.shape, dtype=torch.float64, device=x.device).masked_scatter(mask, x.to(torch.float64))

    want, _ = R.policy_loss(to_bt(oracle.logp), to_bt(oracle.logp.detach()), to_bt(batch["adv"]), mask,
                            ref_logp=to_bt(batch["ref"]), entropy=to_bt(oracle.entropy), agg=agg, norm_len=NORM_LEN,
                            **options)
    (want * upstream.double()).backward()
    n, h = batch["hidden"].shape
    rel, _ = tolerances(torch.float32, n, h, batch["weight"].shape[0])
    assert_close_o1(loss, want.detach(), rel, msg="loss")
    terms_rel = oracle.grad_rel(batch["hidden"].dtype)
    assert_within_terms(grad_hidden, oracle.hidden.grad, oracle.hidden_terms(), terms_rel)
    assert_within_terms(grad_weight, oracle.weight.grad, oracle.weight_terms(), terms_rel)


def test_on_policy_equals_given_own_logprobs_and_keeps_the_mismatch_stat(backend, device):
    """Passing the log-probs this pass computes as old_logp gives the same loss, gradients and stats."""
    batch = make_batch(device=device, seed=22)
    rollout = batch["old"] + 0.05
    with torch.no_grad():
        own = fused_logprobs(batch["hidden"], batch["weight"], batch["targets"], temperature=OPTIONS["temperature"])
    upstream = torch.tensor(1.0, device=device)
    got = _ours(batch, "token-mean", upstream, rollout_logp=rollout, **OPTIONS)
    given = _ours(batch, "token-mean", upstream, old=own, rollout_logp=rollout, **OPTIONS)
    rel, grad_rel = tolerances(torch.float32, len(batch["targets"]))
    assert_close_o1(got[0], given[0], 2 * rel, msg="loss")
    assert set(got[1]) == set(given[1]) and "mismatch_kl" in got[1]
    for name in got[1]:
        assert_close_o1(got[1][name], given[1][name], 2 * rel, msg=name)
    for mine, theirs in zip(got[2:], given[2:]):
        torch.testing.assert_close(mine, theirs, rtol=2 * grad_rel, atol=2 * grad_rel * float(theirs.abs().max()))


def test_on_policy_forward_only(backend, device):
    batch = make_batch(device=device, seed=23)
    with torch.no_grad():
        loss, stats = fused_linear_policy_loss(batch["hidden"], batch["weight"], batch["targets"], None, batch["adv"],
                                               weights_for(batch, "token-mean"), ref_logp=batch["ref"], **OPTIONS)
    want = _ours(batch, "token-mean", torch.tensor(1.0, device=device), **OPTIONS)
    rel, _ = tolerances(torch.float32, len(batch["targets"]))
    assert_close_o1(loss, want[0], 2 * rel, msg="loss")
    assert float(stats["approx_kl_old"]) == 0.0 and float(stats["clip_frac"]) == 0.0


@pytest.mark.parametrize("options", [dict(loss_mode="gspo"), dict(is_correction="tis")])
def test_on_policy_refuses_what_needs_old_logprobs_first(options):
    batch = make_batch()
    extra = {"seq_index": torch.zeros(len(batch["targets"]), dtype=torch.long)} if "loss_mode" in options else {
        "rollout_logp": batch["old"]}
    with pytest.raises(ValueError, match="on-policy"):
        fused_linear_policy_loss(batch["hidden"], batch["weight"], batch["targets"], None, batch["adv"],
                                 weights_for(batch, "token-mean"), **options, **extra)
