"""Loss modes (ppo, gspo, cispo) x rollout-mismatch corrections (none, tis, mis) x levels (token,
sequence), in both losses, on every backend, against the float64 reference.

Every combination runs at least once in `policy_loss` ([B, T] log-probs, B=5 rows, T=37, an empty
row, garbage padding) and in `fused_linear_policy_loss` (hidden states, N=37 tokens of 5 sequences,
V=1001, H=48, temperature 0.7), with a random upstream gradient: loss, gradients and stats. The
reference writes GSPO-token, CISPO and the IS weights literally with autograd and .detach();
the kernels use closed-form gradients, so agreement checks the gradient formulas too. Plus: GSPO-token
equals GSPO's sequence objective where the paper defines it, a corrections' identity (rollout ==
old changes nothing), GSPO's chunks cut at sequence boundaries and its long-sequence pre-pass,
random shapes, and bad arguments.
"""
from __future__ import annotations

import itertools
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastzero.kernels import IS_CORRECTIONS, IS_LEVELS, LOSS_MODES
from fastzero.kernels import logprob as LP
from fastzero.kernels import reference as R
from fastzero.kernels.aggregation import token_weights
from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.policy_loss import policy_loss
from tests._helpers import LogitsOracle, assert_close_o1, assert_within_terms, fp32_rtol
from tests.kernels.test_policy_loss import assert_matches_oracle, make_inputs, run

COMBINATIONS = list(itertools.product(LOSS_MODES, IS_CORRECTIONS, IS_LEVELS))
IDS = ["-".join(c) for c in COMBINATIONS]
# GSPO's sequence ratios sit near 1 (a mean over the sequence): its paper clips at 3e-4 / 4e-4.
CLIPS = {"ppo": (0.2, 0.28), "gspo": (0.02, 0.03), "cispo": (0.2, 0.28)}


def mode_options(mode, correction, level, **extra):
    clip_low, clip_high = CLIPS[mode]
    return dict(loss_mode=mode, is_correction=correction, is_level=level, is_cap=1.5, clip_low=clip_low,
                clip_high=clip_high, **extra)


def with_sequence_offsets(inputs, scale=0.05, seed=0):
    """Shift old_logp by a per-row offset so GSPO's sequence ratios land on both sides of the clip."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.randn(inputs["old_logp"].shape[0], 1, generator=gen).to(inputs["old_logp"]) * scale
    return inputs | {"old_logp": inputs["old_logp"] + offset, "rollout_logp": inputs["rollout_logp"] + offset}


# ---- the two-pass loss ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode, correction, level", COMBINATIONS, ids=IDS)
def test_two_pass_every_combination(backend, device, mode, correction, level):
    inputs = with_sequence_offsets(make_inputs(5, 37, torch.float32, device, seed=3))
    options = mode_options(mode, correction, level, dual_clip=2.0, kl_coef=0.05, entropy_coef=0.01,
                           agg="seq-mean-token-mean")
    assert_matches_oracle(inputs, options, with_rollout=True)


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_two_pass_bf16_per_token_advantages(backend, device, mode):
    inputs = with_sequence_offsets(make_inputs(5, 37, torch.bfloat16, device, seed=4, adv_per_token=True))
    assert_matches_oracle(inputs, mode_options(mode, "tis", "sequence", agg="token-mean"), with_ref=False,
                          with_rollout=True)


def test_gspo_token_is_gspo_sequence_objective(device):
    """With one advantage per sequence and seq-mean-token-mean weights, GSPO-token's gradient is the
    gradient of GSPO's sequence objective mean_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean log-ratio)."""
    inputs = with_sequence_offsets(make_inputs(6, 23, torch.float64, device, seed=5))
    mask, adv = inputs["mask"], inputs["advantages"]
    options = dict(clip_low=0.02, clip_high=0.03)
    loss, _, grad, _ = run(R.policy_loss, inputs, 1.0, with_ref=False, with_entropy=False, loss_mode="gspo",
                           agg="seq-mean-token-mean", **options)
    logp = torch.where(mask, inputs["logp"], 0.0).requires_grad_()
    old = torch.where(mask, inputs["old_logp"], 0.0)
    lengths = mask.sum(dim=1)
    s = torch.exp(((logp - old) * mask).sum(dim=1) / lengths.clamp(min=1))
    objective = torch.minimum(s * adv, s.clamp(0.98, 1.03) * adv)
    want = -(objective * (lengths > 0)).sum() / (lengths > 0).sum()
    want.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(grad, logp.grad)
    assert 0 < int((logp.grad.abs().sum(dim=1) == 0).sum()) < int((lengths > 0).sum())  # some sequences clipped


def test_cispo_keeps_the_gradient_the_ppo_clip_zeroes(device):
    inputs = make_inputs(4, 19, torch.float64, device, seed=6)
    _, ppo_stats, ppo_grad, _ = run(R.policy_loss, inputs, 1.0, with_ref=False, with_entropy=False)
    _, cispo_stats, cispo_grad, _ = run(R.policy_loss, inputs, 1.0, with_ref=False, with_entropy=False,
                                        loss_mode="cispo")
    valid = inputs["mask"] & (inputs["advantages"][:, None] != 0)
    assert ppo_stats["clip_frac"] > 0 and bool((ppo_grad[valid] == 0).any())
    assert bool((cispo_grad[valid] != 0).all())  # a REINFORCE term: never zeroed, only re-weighted


@pytest.mark.parametrize("correction, level", list(itertools.product(("tis", "mis"), IS_LEVELS)))
def test_no_mismatch_changes_nothing(backend, device, correction, level):
    inputs = make_inputs(4, 21, torch.float32, device, seed=7)
    inputs["rollout_logp"] = inputs["old_logp"].clone()
    plain = run(policy_loss, inputs, 1.0, kl_coef=0.1)
    corrected = run(policy_loss, inputs, 1.0, kl_coef=0.1, with_rollout=True, is_correction=correction,
                    is_level=level)
    assert torch.equal(plain[0], corrected[0]) and torch.equal(plain[2], corrected[2])
    stats = corrected[1]
    assert stats["mismatch_kl"] == 0 and stats["is_truncated_frac" if correction == "tis" else "is_masked_frac"] == 0


def test_sequence_mis_drops_whole_rows(backend, device):
    inputs = make_inputs(5, 37, torch.float32, device, seed=8)
    _, stats, grad, _ = run(policy_loss, inputs, 1.0, with_ref=False, with_entropy=False, with_rollout=True,
                            is_correction="mis", is_level="sequence", is_cap=1.5)
    mask = inputs["mask"]
    dropped = (grad == 0).all(dim=1) & mask.any(dim=1)
    assert bool(dropped.any()) and not bool(dropped.all())
    assert stats["is_masked_frac"].item() == pytest.approx(float(mask[dropped].sum() / mask.sum()))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 6), T=st.integers(1, 40), seed=st.integers(0, 2**16), combination=st.sampled_from(COMBINATIONS),
       cap=st.floats(1.0, 4.0), per_token=st.booleans())
def test_random_shapes_match_oracle(device, B, T, seed, combination, cap, per_token):
    with mock.patch.dict(os.environ, {"FASTZERO_KERNELS": "auto"}):
        inputs = with_sequence_offsets(make_inputs(B, T, torch.float32, device, seed=seed, adv_per_token=per_token))
        options = mode_options(*combination, kl_coef=0.05, entropy_coef=0.01, agg="token-mean") | {"is_cap": cap}
        assert_matches_oracle(inputs, options, with_rollout=True)


# ---- the fused hidden-states loss -----------------------------------------------------------------

LENGTHS = (11, 9, 0, 10, 7)  # N=37 tokens of 5 sequences (one empty)
H, V, TEMPERATURE = 48, 1001, 0.7


def fused_batch(device, seed=0, lengths=LENGTHS, h=H, v=V, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    seq_index = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 3 / h**0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    with torch.no_grad():
        logp = R.fused_logprobs(hidden.double(), weight.double(), targets, temperature=TEMPERATURE).float()
    offset = (torch.randn(len(lengths), generator=gen) * 0.05)[seq_index]  # gspo: both clip sides
    old = logp + offset + 0.3 * torch.randn(n, generator=gen)
    signs = torch.tensor([(-1.0) ** i for i in range(len(lengths))])
    batch = dict(hidden=hidden, weight=weight, targets=targets, seq_index=seq_index, old=old,
                 rollout=old + 0.3 * torch.randn(n, generator=gen), ref=logp + 0.3 * torch.randn(n, generator=gen),
                 adv=(torch.randn(len(lengths), generator=gen).abs() * signs)[seq_index])
    mask = torch.arange(max(max(lengths), 1))[None, :] < torch.tensor(lengths)[:, None]
    batch["weights"] = token_weights(mask, "seq-mean-token-mean")[mask]
    return {k: x.to(device) for k, x in batch.items()}


def fused_oracle(batch, upstream, **options):
    """float64: materialized logits, one row per sequence, reference.policy_loss, autograd."""
    oracle = LogitsOracle(batch["hidden"], batch["weight"], batch["targets"], TEMPERATURE)
    logp, entropy = oracle.logp, oracle.entropy
    lengths = torch.bincount(batch["seq_index"], minlength=1)
    mask = torch.arange(max(int(lengths.max()), 1), device=lengths.device)[None, :] < lengths[:, None]

    def rows(x):
        return torch.zeros(mask.shape, dtype=torch.float64, device=x.device).masked_scatter(mask, x.double())

    loss, stats = R.policy_loss(rows(logp), rows(batch["old"]), rows(batch["adv"]), mask,
                                token_weight=rows(batch["weights"]), ref_logp=rows(batch["ref"]),
                                entropy=rows(entropy), rollout_logp=rows(batch["rollout"]), **options)
    (loss * upstream).backward()
    return loss.detach(), stats, oracle


def run_fused(batch, upstream, **options):
    hidden = batch["hidden"].clone().requires_grad_()
    weight = batch["weight"].clone().requires_grad_()
    loss, stats = fused_linear_policy_loss(
        hidden, weight, batch["targets"], batch["old"], batch["adv"], batch["weights"], ref_logp=batch["ref"],
        rollout_logp=batch["rollout"], seq_index=batch["seq_index"], temperature=TEMPERATURE, **options)
    (loss * upstream).backward()
    return loss.detach(), stats, hidden.grad, weight.grad


def check_fused(batch, options):
    upstream = 0.5 + torch.rand(1, generator=torch.Generator().manual_seed(3)).item() * 2
    loss, stats, grad_hidden, grad_weight = run_fused(batch, upstream, **options)
    want_loss, want_stats, oracle = fused_oracle(batch, upstream, **options)
    n, h = batch["hidden"].shape
    # a length-H dot product, a length-V log-sum-exp, a length-N sum; a mismatch weight <= is_cap
    rel = fp32_rtol(h, batch["weight"].shape[0], n) * options.get("is_cap", 1.0)
    assert_close_o1(loss, want_loss, rel, msg="loss")
    assert stats.keys() == want_stats.keys()
    for name, value in stats.items():
        assert_close_o1(value, want_stats[name], rel, msg=name)
    grad_rel = oracle.grad_rel(batch["hidden"].dtype)
    assert_within_terms(grad_hidden, oracle.hidden.grad, oracle.hidden_terms(), grad_rel)
    assert_within_terms(grad_weight, oracle.weight.grad, oracle.weight_terms(), grad_rel)
    return stats


@pytest.mark.parametrize("mode, correction, level", COMBINATIONS, ids=IDS)
def test_fused_every_combination(backend, device, mode, correction, level):
    batch = fused_batch(device, seed=COMBINATIONS.index((mode, correction, level)))
    options = mode_options(mode, correction, level, dual_clip=2.0, kl_coef=0.05, entropy_coef=0.01)
    stats = check_fused(batch, options)
    if mode != "gspo":  # gspo's clip runs per sequence: asserted in the chunking test below
        assert 0 < stats["clip_frac"] < 1


@pytest.mark.parametrize("path", ["triton", "torch"])
@pytest.mark.parametrize("rows", [12, 5], ids=["sequences-fit", "long-sequences"])
def test_fused_gspo_chunks_at_sequence_boundaries(device, monkeypatch, path, rows):
    """Chunks of `rows` tokens: with 12 every sequence fits one chunk (one pass); with 5 the
    sequences of 11, 9, 10 and 7 tokens span chunks and take the forward-only pre-pass."""
    monkeypatch.setenv("FASTZERO_KERNELS", path)
    bytes_per_logit = 4 if path == "triton" else 8
    monkeypatch.setattr(LP, "CHUNK_BUDGET_BYTES", rows * V * bytes_per_logit)
    calls = {"prepass": 0}
    real = LP.fused_logprobs

    def counting(*args, **kwargs):
        calls["prepass"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(LP, "fused_logprobs", counting)
    batch = fused_batch(device, seed=21)
    options = mode_options("gspo", "mis", "sequence", kl_coef=0.05, entropy_coef=0.01) | dict(clip_low=0.1, clip_high=0.1)
    stats = check_fused(batch, options)
    assert calls["prepass"] == (rows == 5)
    assert 0 < stats["clip_frac"] < 1


def test_fused_bf16(backend, device):
    batch = fused_batch(device, seed=22, dtype=torch.bfloat16)
    options = mode_options("cispo", "tis", "token", dual_clip=1.2)
    upstream = 1.7
    loss, stats, grad_hidden, grad_weight = run_fused(batch, upstream, **options)
    want_loss, _, oracle = fused_oracle(batch, upstream, **options)
    assert_close_o1(loss, want_loss, fp32_rtol(H, V, sum(LENGTHS)) * 1.5)
    grad_rel = oracle.grad_rel(torch.bfloat16)  # bf16 gradients: stored in bf16
    assert_within_terms(grad_hidden, oracle.hidden.grad, oracle.hidden_terms(), grad_rel)
    assert_within_terms(grad_weight, oracle.weight.grad, oracle.weight_terms(), grad_rel)


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4), v=st.integers(2, 120), rows=st.integers(1, 8),
       combination=st.sampled_from(COMBINATIONS), path=st.sampled_from(["triton", "torch"]))
def test_fused_random_shapes(lengths, v, rows, combination, path):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTZERO_KERNELS", path)
        mp.setattr(LP, "CHUNK_BUDGET_BYTES", rows * v * 8)
        check_fused(fused_batch(device, seed=sum(lengths) + v, lengths=tuple(lengths), h=8, v=v),
                    mode_options(*combination, kl_coef=0.05))


# ---- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    (dict(loss_mode="grpo"), "loss_mode='grpo' is not one of ppo, gspo, cispo"),
    (dict(is_correction="tis", rollout_logp=None), "is_correction='tis' needs rollout_logp"),
    (dict(is_correction="is"), "is_correction='is' is not one of none, tis, mis"),
    (dict(is_level="batch"), "is_level='batch' is not one of token, sequence"),
    (dict(is_cap=0.5), "is_cap must be >= 1"),
    (dict(loss_mode="gspo", seq_index=None), "loss_mode='gspo' needs seq_index"),
    (dict(is_correction="mis", is_level="sequence", seq_index=None), "is_level='sequence' needs seq_index"),
    (dict(loss_mode="gspo", seq_index=torch.tensor([0, 1, 1, 0, 2])), "seq_index must be >= 0 and non-decreasing"),
    (dict(loss_mode="gspo", seq_index=torch.zeros(5, dtype=torch.int32)), "seq_index must be one of"),
    (dict(rollout_logp=torch.zeros(4)), r"rollout_logp must be \[N\]"),
])
def test_fused_bad_arguments(overrides, match):
    batch = fused_batch("cpu", lengths=(3, 2), h=8, v=20)
    kwargs = dict(ref_logp=None, rollout_logp=batch["rollout"], seq_index=batch["seq_index"]) | overrides
    with pytest.raises(ValueError if "must be one of" not in match else TypeError, match=match):
        fused_linear_policy_loss(batch["hidden"], batch["weight"], batch["targets"], batch["old"], batch["adv"],
                                 batch["weights"], **kwargs)


def test_two_pass_bad_arguments():
    inputs = make_inputs(2, 5, torch.float32, torch.device("cpu"))
    args = (inputs["logp"], inputs["old_logp"], inputs["advantages"], inputs["mask"])
    with pytest.raises(ValueError, match="is_correction='mis' needs rollout_logp"):
        policy_loss(*args, is_correction="mis")
    with pytest.raises(ValueError, match="rollout_logp must have shape"):
        policy_loss(*args, rollout_logp=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="loss_mode='sapo' is not one of"):
        policy_loss(*args, loss_mode="sapo")
