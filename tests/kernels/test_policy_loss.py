"""fastzero.kernels.policy_loss against the float64 reference, on every backend.

Each backend (the Triton kernel — through the interpreter on CPU —, the analytic torch path, the
reference) is selected through FASTZERO_KERNELS and compared with reference.policy_loss run in
float64 on the same input values: loss, the gradients for logp and entropy under a random upstream
gradient, and the stats. Padding positions hold inf/NaN garbage, so masking bugs show up as
non-finite or nonzero gradients there.
"""
from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastzero.kernels import reference
from fastzero.kernels.policy_loss import (
    AGGREGATIONS,
    KL_TYPES,
    policy_loss,
    token_loss_terms,
    token_weights,
)
from tests._helpers import (ELEMENTWISE_OPS, assert_close_o1, assert_grad_close, assert_sum_close, fp32_rtol,
                            stored_rtol)


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]



def make_inputs(B, T, dtype, device, *, seed=0, adv_per_token=False, empty_row=True):
    """Log-probs around -1.5 with old/ref within ~0.3 (so both clip sides trigger), garbage padding."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen) * 3.0
    old = logp + 0.3 * torch.randn(B, T, generator=gen)
    ref = logp + 0.3 * torch.randn(B, T, generator=gen)
    # Sampler log-probs: the trainer's old ones plus a mismatch wide enough to cross a cap of 1.5.
    rollout = old + 0.3 * torch.randn(B, T, generator=gen)
    entropy = torch.rand(B, T, generator=gen) * 2.0
    adv = torch.randn((B, T) if adv_per_token else (B,), generator=gen)
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[0] = True
    if empty_row and B > 1:
        mask[1] = False
    logp = logp.masked_fill(~mask, float("inf"))
    old = old.masked_fill(~mask, float("nan"))
    ref = ref.masked_fill(~mask, -float("inf"))
    rollout = rollout.masked_fill(~mask, float("nan"))
    cast = {"device": device, "dtype": dtype}
    return dict(logp=logp.to(**cast), old_logp=old.to(**cast), advantages=adv.to(**cast),
                mask=mask.to(device), ref_logp=ref.to(**cast), entropy=entropy.to(**cast),
                rollout_logp=rollout.to(**cast))


def run(fn, inputs, grad_scale, *, with_ref=True, with_entropy=True, with_rollout=False, **options):
    """Loss, stats, d(grad_scale * loss)/d logp and /d entropy; float64 inputs when fn is the oracle."""
    as64 = fn is reference.policy_loss
    prep = (lambda x: x.double()) if as64 else (lambda x: x)
    logp = prep(inputs["logp"]).detach().requires_grad_(True)
    entropy = prep(inputs["entropy"]).detach().requires_grad_(True) if with_entropy else None
    loss, stats = fn(
        logp, prep(inputs["old_logp"]), prep(inputs["advantages"]), inputs["mask"],
        ref_logp=prep(inputs["ref_logp"]) if with_ref else None, entropy=entropy,
        rollout_logp=prep(inputs["rollout_logp"]) if with_rollout else None, **options,
    )
    (loss * grad_scale).backward()
    return loss, stats, logp.grad, None if entropy is None else entropy.grad


def abs_loss_sum(inputs, options, with_ref=True, with_entropy=True, with_rollout=False) -> float:
    """sum |token_weight * per-token loss|: the size of the loss' reduction, for its rounding bound
    (a mismatch weight is at most is_cap: the bound scales by it)."""
    valid = inputs["mask"]
    clean = {k: torch.where(valid, inputs[k].float(), 0.0) for k in ("logp", "old_logp", "ref_logp", "entropy")}
    adv = inputs["advantages"].float()
    seq_log_ratio = ((clean["logp"] - clean["old_logp"]).sum(dim=1, keepdim=True)
                     / valid.sum(dim=1, keepdim=True).clamp(min=1))
    skip = ("agg", "norm_len", "token_weight", "is_correction", "is_level", "is_cap")
    terms = token_loss_terms(clean["logp"], clean["old_logp"], adv[:, None] if adv.dim() == 1 else adv,
                             ref_logp=clean["ref_logp"] if with_ref else None,
                             entropy=clean["entropy"] if with_entropy else None, seq_log_ratio=seq_log_ratio,
                             **{k: v for k, v in options.items() if k not in skip})
    weights = options.get("token_weight")
    if weights is None:
        weights = token_weights(valid, options.get("agg") or "token-mean", options.get("norm_len"))
    return float((weights * terms.loss).abs().sum()) * max(1.0, options.get("is_cap", 2.0) if with_rollout else 1.0)


def assert_matches_oracle(inputs, options, **which):
    """Loss, gradients and stats against the float64 oracle on the same input values: the loss is a
    length-n reduction, gradients and per-token values elementwise fp32 math (stored in logp's dtype),
    stats means over n tokens."""
    grad_scale = 0.5 + torch.rand(()).item() * 2.0
    loss, stats, dlogp, dent = run(policy_loss, inputs, grad_scale, **which, **options)
    loss64, stats64, dlogp64, dent64 = run(reference.policy_loss, inputs, grad_scale, **which, **options)
    n, dtype = inputs["logp"].numel(), inputs["logp"].dtype
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_sum_close(loss, loss64, abs_loss_sum(inputs, options, **which), torch.float32, n + ELEMENTWISE_OPS)
    assert dlogp.dtype == dtype
    grad_rel = fp32_rtol() + stored_rtol(dtype)
    assert_grad_close(dlogp, dlogp64, grad_rel)
    assert torch.all(dlogp[~inputs["mask"]] == 0)  # garbage padding got exactly zero gradient
    if dent is not None:
        assert_grad_close(dent, dent64, grad_rel)
    assert stats.keys() == stats64.keys()
    for name, value in stats.items():
        assert value.dim() == 0 and not value.requires_grad, name
        assert_close_o1(value, stats64[name], fp32_rtol(n), msg=name)


@pytest.mark.parametrize("kl_type", KL_TYPES)
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_every_agg_and_kl_type(backend, device, agg, kl_type):
    inputs = make_inputs(5, 37, torch.float32, device, seed=AGGREGATIONS.index(agg))
    options = dict(kl_coef=0.1, kl_type=kl_type, entropy_coef=0.01, dual_clip=3.0, agg=agg, norm_len=40)
    assert_matches_oracle(inputs, options)


OPTION_SETS = {
    "plain": dict(options=dict(clip_low=0.2, clip_high=0.28), which=dict(with_ref=False, with_entropy=False)),
    "dual-clip": dict(options=dict(dual_clip=1.5), which=dict(with_ref=False, with_entropy=False)),
    "ref-no-coef": dict(options=dict(kl_type="k2"), which=dict(with_ref=True, with_entropy=False)),
    "entropy": dict(options=dict(entropy_coef=-0.05, agg="seq-mean-token-mean"), which=dict(with_ref=False)),
    "per-token-adv": dict(options=dict(kl_coef=0.5, agg="seq-mean-token-sum"), which={}, per_token=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_options_and_dtypes(backend, device, dtype, option_set):
    spec = OPTION_SETS[option_set]
    inputs = make_inputs(5, 37, dtype, device, seed=7, adv_per_token=spec.get("per_token", False))
    assert_matches_oracle(inputs, spec["options"], **spec["which"])


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_all_masked_batch_gives_zero_loss_and_grads(backend, device, agg):
    inputs = make_inputs(3, 11, torch.float32, device)
    inputs["mask"] = torch.zeros_like(inputs["mask"])
    loss, stats, dlogp, dent = run(policy_loss, inputs, 1.0, kl_coef=0.1, entropy_coef=0.1, agg=agg, norm_len=11)
    assert loss.item() == 0.0
    assert torch.all(dlogp == 0) and torch.all(dent == 0)
    assert all(value.item() == 0.0 for value in stats.values())


def test_no_clipping_when_policy_unchanged(backend, device):
    inputs = make_inputs(4, 19, torch.float32, device, empty_row=False)
    inputs["old_logp"] = inputs["logp"].clone()
    loss, stats, _, _ = run(policy_loss, inputs, 1.0, with_ref=False, with_entropy=False, dual_clip=2.0)
    assert stats["clip_frac"].item() == 0.0 and stats["dual_clip_frac"].item() == 0.0
    assert stats["approx_kl_old"].item() == 0.0
    # r = 1 everywhere, so the token-mean loss is minus the token-weighted mean advantage.
    mask = inputs["mask"].float()
    expected = -(inputs["advantages"][:, None] * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_float_mask_equals_bool_mask(backend, device):
    inputs = make_inputs(4, 13, torch.float32, device)
    bool_result = run(policy_loss, inputs, 1.0, kl_coef=0.2)
    inputs["mask"] = inputs["mask"].float()
    float_result = run(policy_loss, inputs, 1.0, kl_coef=0.2)
    torch.testing.assert_close(float_result[0], bool_result[0])
    torch.testing.assert_close(float_result[2], bool_result[2])


def test_triton_is_deterministic(device, monkeypatch):
    monkeypatch.setenv("FASTZERO_KERNELS", "auto")
    inputs = make_inputs(6, 29, torch.float32, device, seed=3)
    first, second = (run(policy_loss, inputs, 1.0, kl_coef=0.1) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[2], second[2])


def test_no_grad_call_returns_loss_and_stats(backend, device):
    inputs = make_inputs(3, 8, torch.float32, device)
    with torch.no_grad():
        loss, stats = policy_loss(inputs["logp"], inputs["old_logp"], inputs["advantages"], inputs["mask"])
    expected, _ = reference.policy_loss(inputs["logp"], inputs["old_logp"], inputs["advantages"], inputs["mask"])
    torch.testing.assert_close(loss, expected)
    assert set(stats) == {"clip_frac", "approx_kl_old"}


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_exported_token_math_reproduces_the_loss_and_gradient(device, agg):
    """The contract the fused hidden-states path relies on: L = sum(w * loss), dL/dlogp = w * dloss."""
    inputs = make_inputs(4, 21, torch.float32, device, seed=11)
    options = dict(clip_low=0.2, clip_high=0.3, dual_clip=2.0, kl_coef=0.1, kl_type="k3", entropy_coef=0.02)
    valid = inputs["mask"]
    clean = {k: torch.where(valid, v, 0.0) for k, v in inputs.items() if k not in ("mask", "advantages")}
    terms = token_loss_terms(clean["logp"], clean["old_logp"], inputs["advantages"][:, None],
                             ref_logp=clean["ref_logp"], entropy=clean["entropy"], **options)
    weights = token_weights(valid, agg, norm_len=30)
    assert torch.all(weights[~valid] == 0)
    loss64, _, dlogp64, dent64 = run(reference.policy_loss, inputs, 1.0, agg=agg, norm_len=30, **options)
    assert_sum_close((weights * terms.loss).sum(), loss64, float((weights * terms.loss).abs().sum()), torch.float32,
                     valid.numel() + ELEMENTWISE_OPS)
    assert_grad_close(weights * terms.dloss_dlogp, dlogp64, fp32_rtol())
    assert_grad_close(weights * terms.dloss_dentropy, dent64, fp32_rtol())


def aggregate_by_definition(x: torch.Tensor, mask: torch.Tensor, agg: str, norm_len: float) -> torch.Tensor:
    """Each aggregation written out from its name (the oracle for token_weights)."""
    valid = mask.double()
    row_sum, row_len = (x * valid).sum(dim=1), valid.sum(dim=1)
    if agg == "token-mean":
        return row_sum.sum() / row_len.sum().clamp(min=1)
    if agg == "seq-mean-token-mean":
        nonempty = row_len > 0
        return (row_sum[nonempty] / row_len[nonempty]).mean() if nonempty.any() else row_sum.sum() * 0
    if agg == "seq-mean-token-sum":
        return row_sum.mean()
    return row_sum.sum() / (x.shape[0] * norm_len)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("lengths", [(5, 0, 3, 7), (0, 0), (1,)], ids=["mixed", "all-empty", "one-token"])
def test_token_weights_define_each_aggregation(agg, lengths):
    gen = torch.Generator().manual_seed(len(lengths))
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    weights = token_weights(mask, agg, norm_len=9.0)
    assert weights.dtype == torch.float32 and torch.all(weights[~mask] == 0)
    # fp32 weights: each of the <= 28 terms carries one fp32 rounding of its weight.
    want = aggregate_by_definition(x, mask, agg, 9.0)
    assert_sum_close((weights.double() * x).sum(), want, float((weights.double() * x).abs().sum()), torch.float32, 2)


def test_token_weight_equals_agg_form(backend, device):
    inputs = make_inputs(5, 37, torch.float32, device, seed=5)
    by_agg = run(policy_loss, inputs, 1.0, kl_coef=0.1, agg="seq-mean-token-mean")
    weights = token_weights(inputs["mask"], "seq-mean-token-mean")
    by_weight = run(policy_loss, inputs, 1.0, kl_coef=0.1, token_weight=weights)
    for got, want in zip(by_weight, by_agg):
        if isinstance(got, dict):
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        else:
            assert torch.equal(got, want)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    B=st.integers(1, 6), T=st.integers(1, 40), seed=st.integers(0, 2**16),
    agg=st.sampled_from(AGGREGATIONS), kl_type=st.sampled_from(KL_TYPES), per_token=st.booleans(),
)
def test_random_shapes_match_oracle(device, B, T, seed, agg, kl_type, per_token):
    with mock.patch.dict(os.environ, {"FASTZERO_KERNELS": "auto"}):
        inputs = make_inputs(B, T, torch.float32, device, seed=seed, adv_per_token=per_token)
        options = dict(kl_coef=0.05, kl_type=kl_type, entropy_coef=0.01, agg=agg, norm_len=T)
        assert_matches_oracle(inputs, options)


def _call(**overrides):
    inputs = make_inputs(2, 5, torch.float32, torch.device("cpu"))
    args = dict(logp=inputs["logp"], old_logp=inputs["old_logp"], advantages=inputs["advantages"],
                mask=inputs["mask"])
    args.update(overrides)
    return policy_loss(args.pop("logp"), args.pop("old_logp"), args.pop("advantages"), args.pop("mask"), **args)


@pytest.mark.parametrize("overrides, error, match", [
    (dict(logp=torch.zeros(2, 5, 3)), ValueError, "logp must be a non-empty"),
    (dict(logp=torch.zeros(2, 5, dtype=torch.float64)), TypeError, "logp must be one of"),
    (dict(old_logp=torch.zeros(2, 4)), ValueError, "old_logp must have shape"),
    (dict(advantages=torch.zeros(3)), ValueError, "advantages must have shape"),
    (dict(mask=torch.ones(2, 5, dtype=torch.complex64)), TypeError, "mask must be one of"),
    (dict(ref_logp=torch.zeros(5, 2)), ValueError, "ref_logp must have shape"),
    (dict(entropy=[0.0]), TypeError, "entropy must be a torch.Tensor"),
    (dict(clip_low=-0.1), ValueError, "clip_low must be >= 0"),
    (dict(clip_high=float("nan")), ValueError, "clip_high must be a finite number"),
    (dict(dual_clip=1.0), ValueError, "dual_clip must be > 1"),
    (dict(kl_type="k4"), ValueError, "kl_type='k4' is not one of"),
    (dict(agg="mean"), ValueError, "agg='mean' is not one of"),
    (dict(agg="seq-mean-token-sum-norm"), ValueError, "norm_len is required"),
    (dict(agg="seq-mean-token-sum-norm", norm_len=0), ValueError, "norm_len must be > 0"),
    (dict(kl_coef=0.1), ValueError, "kl_coef=0.1 needs ref_logp"),
    (dict(kl_coef=-1.0, ref_logp=torch.zeros(2, 5)), ValueError, "kl_coef must be >= 0"),
    (dict(entropy_coef=0.01), ValueError, "entropy_coef=0.01 needs entropy"),
    (dict(token_weight=torch.ones(2, 5), agg="token-mean"), ValueError, "token_weight .* or agg/norm_len, not both"),
    (dict(token_weight=torch.ones(5, 2)), ValueError, "token_weight must have shape"),
    (dict(token_weight=torch.ones(2, 5, dtype=torch.long)), TypeError, "token_weight must be one of"),
    (dict(token_weight=-torch.ones(2, 5)), ValueError, "token_weight must be finite and >= 0"),
])
def test_bad_arguments_are_named(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)
