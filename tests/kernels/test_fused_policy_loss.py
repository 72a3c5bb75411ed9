"""Tests for fastzero.kernels.fused_policy_loss.fused_linear_policy_loss against a float64 oracle.

The oracle materializes the logits in float64 (reference.fused_logprobs), scatters the response
tokens' log-probs and entropies into [B, T] and applies reference.policy_loss with the matching
aggregation; autograd gives d/dhidden and d/dweight under a random upstream scalar. Checked on every
backend ("triton" — the CPU interpreter without a GPU —, "torch", and "reference", which is the
unfused materialized-logits path): each aggregation, k1/k2/k3, dual clip, entropy bonus,
temperature != 1, fp32 and bf16, odd shapes (N=37, V=1001, H=48), several chunks, zero-weight
tokens with garbage inputs, the forward-only path, tied weights, equality with the two-pass path
(fused_logprobs + policy_loss), Liger's LigerFusedLinearGRPOLoss, random shapes, and bad inputs.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.kernels import logprob as LP
from fastzero.kernels import reference as R
from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.logprob import fused_logprobs
from fastzero.kernels.policy_loss import AGGREGATIONS, policy_loss, token_weights
from tests._helpers import (LogitsOracle, assert_close_o1, assert_grad_close, assert_within_terms, fp32_rtol,
                            stored_rtol)

LENGTHS = (11, 9, 0, 10, 7)  # B=5 rows of T=11 with an empty row: N=37 response tokens
H, V = 48, 1001
NORM_LEN = 12.0
CLIP_LOW, CLIP_HIGH, DUAL_CLIP = 0.2, 0.28, 1.5
OPTIONS = dict(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, dual_clip=DUAL_CLIP, kl_coef=0.05, kl_type="k3",
               entropy_coef=0.01, temperature=0.7)
STAT_NAMES = ("clip_frac", "approx_kl_old", "entropy", "dual_clip_frac", "kl_ref")

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def tolerances(dtype, n_tokens=sum(LENGTHS), h=H, v=V):
    """(values, gradients) relative bounds: each value passes through a length-H dot product, a
    length-V log-sum-exp and a length-N sum over tokens in fp32; bf16 gradients are stored in bf16
    (on a GPU also bf16 dL/dlogits feed the backward matmuls: a second bf16 rounding)."""
    rel = fp32_rtol(h, v, n_tokens)
    return rel, rel + 2 * stored_rtol(dtype)



def away_from(ratio_log: torch.Tensor, bounds, margin=0.03) -> torch.Tensor:
    """Moves log-ratios whose ratio lies within `margin` of a clip bound off it: a kernel's logp
    differs from the oracle's by ~1e-5 (bf16 grads: more), and must not flip a clip decision."""
    ratio = ratio_log.exp()
    for bound in bounds:
        near = (ratio - bound).abs() < margin
        ratio = torch.where(near, bound + margin * torch.where(ratio >= bound, 1.0, -1.0).double(), ratio)
    return ratio.log()


def make_batch(lengths=LENGTHS, h=H, v=V, dtype=torch.float32, device="cpu", seed=0, temperature=0.7,
               padded=False):
    """Response tokens of len(lengths) sequences; `padded` keeps the [B, T] padding positions."""
    gen = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(max(lengths), 1)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    n = b * t if padded else int(mask.sum())
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 3 / h**0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    with torch.no_grad():
        logp64 = R.fused_logprobs(hidden.double(), weight.double(), targets, temperature=temperature)
    log_ratio = away_from(0.5 * torch.randn(n, generator=gen).double(), (1 - CLIP_LOW, 1 + CLIP_HIGH, DUAL_CLIP))
    signs = torch.tensor([(-1.0) ** row for row in range(b)])  # both signs, so both clip sides and the dual clip run
    seq_adv = torch.randn(b, generator=gen).abs() * signs
    adv_bt = seq_adv[:, None].expand(b, t)
    batch = dict(hidden=hidden, weight=weight, targets=targets, mask=mask,
                 old=(logp64 - log_ratio).float(), ref=(logp64 + 0.3 * torch.randn(n, generator=gen).double()).float(),
                 adv=adv_bt.reshape(-1) if padded else adv_bt[mask])
    return {k: x.to(device) for k, x in batch.items()}


def weights_for(batch, agg, padded=False):
    weights = token_weights(batch["mask"], agg, NORM_LEN)
    return weights.reshape(-1) if padded else weights[batch["mask"]]


def run_ours(batch, agg, upstream, padded=False, **options):
    hidden = batch["hidden"].clone().requires_grad_()
    weight = batch["weight"].clone().requires_grad_()
    with_ref = options.pop("with_ref", False) or options.get("kl_coef", 0) != 0
    loss, stats = fused_linear_policy_loss(
        hidden, weight, batch["targets"], batch["old"], batch["adv"], weights_for(batch, agg, padded),
        ref_logp=batch["ref"] if with_ref else None, **options,
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0
    (loss * upstream).backward()
    return loss.detach(), stats, hidden.grad, weight.grad


def run_oracle(batch, agg, upstream, with_ref=True, terms=False, **options):
    """float64: materialized logits -> log_softmax -> gather/entropy -> reference.policy_loss; with
    terms, also the sizes of the sums behind grad_hidden and grad_weight (tests/_helpers.py)."""
    oracle = LogitsOracle(batch["hidden"], batch["weight"], batch["targets"], options.pop("temperature", 1.0))
    hidden, weight, logp, entropy = oracle.hidden, oracle.weight, oracle.logp, oracle.entropy
    mask = batch["mask"]

    def to_bt(x):  # response tokens -> [B, T] with zeros on padding
        return torch.zeros(mask.shape, dtype=torch.float64, device=x.device).masked_scatter(mask, x.to(torch.float64))

    loss, stats = R.policy_loss(
        to_bt(logp), to_bt(batch["old"]), to_bt(batch["adv"]), mask,
        ref_logp=to_bt(batch["ref"]) if with_ref else None, entropy=to_bt(entropy), agg=agg, norm_len=NORM_LEN,
        **options,
    )
    (loss * upstream.double()).backward()
    if terms:
        return (loss.detach(), stats, hidden.grad, weight.grad, oracle.hidden_terms(), oracle.weight_terms(),
                oracle.grad_rel(batch["hidden"].dtype))
    return loss.detach(), stats, hidden.grad, weight.grad


def check_against_oracle(batch, agg, **options):
    upstream = torch.tensor(0.5 + torch.rand(1, generator=torch.Generator().manual_seed(3)).item())
    loss, stats, grad_hidden, grad_weight = run_ours(batch, agg, upstream.to(batch["hidden"].device), **options)
    with_ref = options.pop("with_ref", False) or options.get("kl_coef", 0) != 0
    want_loss, want_stats, want_gh, want_gw, gh_terms, gw_terms, terms_rel = run_oracle(
        batch, agg, upstream, with_ref=with_ref, terms=True, **options)
    n, h = batch["hidden"].shape
    rel, grad_rel = tolerances(batch["hidden"].dtype, n, h, batch["weight"].shape[0])
    assert_close_o1(loss, want_loss, rel, msg="loss")
    for name in STAT_NAMES:
        assert (name in stats) == (name in want_stats), name
        if name in stats:
            assert_close_o1(stats[name], want_stats[name], rel, msg=name)
    assert grad_hidden.dtype == grad_weight.dtype == batch["hidden"].dtype
    assert_within_terms(grad_hidden, want_gh, gh_terms, terms_rel)
    assert_within_terms(grad_weight, want_gw, gw_terms, terms_rel)
    return stats


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_matches_float64_reference(backend, device, dtype, agg):
    batch = make_batch(dtype=dtype, device=device, seed=AGGREGATIONS.index(agg))
    stats = check_against_oracle(batch, agg, **OPTIONS)
    assert 0 < stats["clip_frac"] < 1 and stats["dual_clip_frac"] > 0  # both clip branches ran


@pytest.mark.parametrize("kl_type, extra", [
    ("k1", dict()),
    ("k2", dict(entropy_coef=-0.02, temperature=1.3)),
    ("k3", dict(dual_clip=None, entropy_coef=0.0)),
], ids=["k1-all-terms", "k2-entropy-penalty-T1.3", "k3-plain-clip"])
def test_kl_types_and_options(backend, device, kl_type, extra):
    batch = make_batch(device=device, seed=7, temperature=extra.get("temperature", 0.7))
    check_against_oracle(batch, "token-mean", **(OPTIONS | extra | dict(kl_type=kl_type)))


def test_without_ref_and_kl(backend, device):
    batch = make_batch(device=device, seed=8)
    options = OPTIONS | dict(kl_coef=0.0)
    check_against_oracle(batch, "seq-mean-token-mean", **options)
    check_against_oracle(batch, "seq-mean-token-mean", with_ref=True, **options)  # kl_ref logged only


class CountingChunks:
    """Wraps the real LP.chunk_forward_backward and counts its calls."""

    def __init__(self):
        self.calls, self.real = 0, LP.chunk_forward_backward

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_many_chunks(device, monkeypatch, path):
    monkeypatch.setenv("FASTZERO_KERNELS", path)
    monkeypatch.setattr(LP, "CHUNK_BUDGET_BYTES", 5 * V * 8)  # 5 rows (torch), 10 rows (triton)
    counter = CountingChunks()
    monkeypatch.setattr(LP, "chunk_forward_backward", counter)
    check_against_oracle(make_batch(device=device, seed=9), "seq-mean-token-sum", **OPTIONS)
    assert counter.calls == math.ceil(sum(LENGTHS) / LP.one_pass_rows(torch.empty(V, H), path)) >= 4


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_equals_two_pass_path(backend, device, agg):
    """fused_logprobs + policy_loss over [B, T] with padding == the fused loss with 0-weight padding."""
    batch = make_batch(device=device, seed=10, padded=True)
    upstream = torch.tensor(1.3, device=device)
    loss, stats, grad_hidden, grad_weight = run_ours(batch, agg, upstream, padded=True, **OPTIONS)
    hidden = batch["hidden"].clone().requires_grad_()
    weight = batch["weight"].clone().requires_grad_()
    shape = batch["mask"].shape
    logp, entropy = fused_logprobs(hidden, weight, batch["targets"], temperature=0.7, return_entropy=True)
    options = {k: x for k, x in OPTIONS.items() if k != "temperature"}
    want_loss, want_stats = policy_loss(
        logp.view(shape), batch["old"].view(shape), batch["adv"].view(shape), batch["mask"],
        ref_logp=batch["ref"].view(shape), entropy=entropy.view(shape), agg=agg, norm_len=NORM_LEN, **options,
    )
    (want_loss * upstream).backward()
    rel, grad_rel = tolerances(torch.float32, len(batch["targets"]))  # two fp32 results: twice the bound
    assert_close_o1(loss, want_loss.detach(), 2 * rel, msg="loss")
    for name in STAT_NAMES:
        assert_close_o1(stats[name], want_stats[name], 2 * rel, msg=name)
    assert_grad_close(grad_hidden, hidden.grad, 2 * grad_rel)
    assert_grad_close(grad_weight, weight.grad, 2 * grad_rel)


def test_zero_weight_tokens_get_zero_gradient_and_ignore_garbage(backend, device):
    batch = make_batch(device=device, seed=11, padded=True)
    padding = ~batch["mask"].reshape(-1)
    for name, junk in (("old", math.nan), ("adv", math.inf), ("ref", -math.inf)):
        batch[name] = torch.where(padding, junk, batch[name])
    loss, stats, grad_hidden, grad_weight = run_ours(batch, "token-mean", torch.tensor(1.0, device=device),
                                                     padded=True, **OPTIONS)
    assert torch.isfinite(loss) and all(torch.isfinite(s) for s in stats.values())
    assert torch.isfinite(grad_weight).all()
    assert (grad_hidden[padding] == 0).all() and (grad_hidden[~padding] != 0).any()
    # The same as feeding the response tokens only.
    valid = {k: (x[~padding] if k not in ("mask", "weight") else x) for k, x in batch.items()}
    want = run_ours(valid, "token-mean", torch.tensor(1.0, device=device), **OPTIONS)
    rel, grad_rel = tolerances(torch.float32, len(batch["targets"]))
    assert_close_o1(loss, want[0], 2 * rel, msg="loss")
    assert_grad_close(grad_weight, want[3], 2 * grad_rel)


def test_forward_only_skips_gradient_work(backend, device, monkeypatch):
    batch = make_batch(device=device, seed=12)
    weights = weights_for(batch, "token-mean")
    counter = CountingChunks()
    monkeypatch.setattr(LP, "chunk_forward_backward", counter)

    def loss_of(hidden, weight):
        return fused_linear_policy_loss(hidden, weight, batch["targets"], batch["old"], batch["adv"], weights,
                                        ref_logp=batch["ref"], **OPTIONS)

    plain, _ = loss_of(batch["hidden"], batch["weight"])
    with torch.no_grad():
        under_no_grad, stats = loss_of(batch["hidden"].requires_grad_(), batch["weight"])
    assert counter.calls == 0 and not plain.requires_grad and not under_no_grad.requires_grad
    trained, train_stats = loss_of(batch["hidden"], batch["weight"])
    assert trained.requires_grad and counter.calls == (backend != "reference")
    rel, _ = tolerances(torch.float32)
    for got in (plain, under_no_grad):
        assert_close_o1(got, trained.detach(), 2 * rel, msg="loss")
    for name in stats:
        assert_close_o1(stats[name], train_stats[name], 2 * rel, msg=name)


@pytest.mark.parametrize("which", ["hidden", "weight"])
def test_one_input_requires_grad(backend, device, which):
    batch = make_batch(device=device, seed=13)
    hidden, weight = batch["hidden"].clone(), batch["weight"].clone()
    (hidden if which == "hidden" else weight).requires_grad_()
    loss, _ = fused_linear_policy_loss(hidden, weight, batch["targets"], batch["old"], batch["adv"],
                                       weights_for(batch, "token-mean"), ref_logp=batch["ref"], **OPTIONS)
    loss.backward()
    _, _, want_gh, want_gw = run_oracle(batch, "token-mean", torch.tensor(1.0), **OPTIONS)
    assert (hidden.grad is None) == (which == "weight") and (weight.grad is None) == (which == "hidden")
    got, want = (hidden.grad, want_gh) if which == "hidden" else (weight.grad, want_gw)
    assert_grad_close(got, want, tolerances(torch.float32)[1])


def test_tied_embedding_weight_accumulates(backend, device):
    """hidden = f(embedding[ids]) and the LM head is the same Parameter: both paths add up."""
    gen = torch.Generator().manual_seed(14)
    n, h, v = 13, 16, 97
    embedding = (torch.randn(v, h, generator=gen) * 0.5).to(device)
    ids, targets = (torch.randint(0, v, (n,), generator=gen).to(device) for _ in range(2))
    old, adv, ref = (torch.randn(n, generator=gen).to(device) for _ in range(3))
    old = old - 4.0
    weights = torch.full((n,), 1.0 / n, device=device)
    grads = []
    for fp64 in (False, True):
        emb = (embedding.double() if fp64 else embedding.clone()).requires_grad_()
        hidden = torch.tanh(emb[ids]) * 3
        if fp64:
            logp, entropy = R.fused_logprobs(hidden, emb, targets, temperature=1.0, return_entropy=True)
            loss, _ = R.policy_loss(logp[None], old[None], adv[None], torch.ones(1, n, device=device),
                                    ref_logp=ref[None], kl_coef=0.1, entropy=entropy[None], entropy_coef=0.01)
        else:
            loss, _ = fused_linear_policy_loss(hidden, emb, targets, old, adv, weights, ref_logp=ref, kl_coef=0.1,
                                               entropy_coef=0.01)
        loss.backward()
        grads.append(emb.grad)
    assert_grad_close(grads[0], grads[1], tolerances(torch.float32, n, h, v)[1])


def test_empty_batch(backend, device):
    batch = make_batch(lengths=(0, 0), device=device)
    loss, stats, grad_hidden, grad_weight = run_ours(batch, "token-mean", torch.tensor(1.0, device=device), **OPTIONS)
    assert loss.item() == 0.0 and all(s.item() == 0.0 for s in stats.values())
    assert grad_hidden.shape == (0, H) and (grad_weight == 0).all()


def test_matches_liger_grpo_loss(device, monkeypatch):
    """Outside check of the benchmark's argument map: Liger's "bnpo" loss = our token-mean."""
    liger_grpo = pytest.importorskip("liger_kernel.chunked_loss.grpo_loss", reason="liger-kernel not installed")
    monkeypatch.setenv("FASTZERO_KERNELS", "auto")
    batch = make_batch(lengths=(6, 3, 5), h=16, v=37, device=device, seed=15, temperature=0.7, padded=True)
    b, t = batch["mask"].shape
    module = liger_grpo.LigerFusedLinearGRPOLoss(beta=0.04, compiled=False, use_ref_model=True, epsilon_low=CLIP_LOW,
                                                 epsilon_high=CLIP_HIGH, loss_type="bnpo", temperature=0.7)
    hidden, weight = batch["hidden"].clone().requires_grad_(), batch["weight"].clone().requires_grad_()
    theirs, metrics = module(hidden.view(b, t, -1), weight, batch["targets"].view(b, t), batch["mask"].float(),
                             batch["adv"].view(b, t)[:, 0], ref_per_token_logps=batch["ref"].view(b, t),
                             old_per_token_logps=batch["old"].view(b, t))
    theirs.backward()
    options = dict(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, kl_coef=0.04, temperature=0.7)
    loss, stats, grad_hidden, grad_weight = run_ours(batch, "token-mean", torch.tensor(1.0, device=device),
                                                     padded=True, **options)
    rel, grad_rel = tolerances(torch.float32, b * t, 16, 37)  # two fp32 implementations: twice the bound
    assert_close_o1(loss, theirs.detach(), 2 * rel, msg="loss")
    assert_close_o1(stats["kl_ref"], metrics[0], 2 * rel, msg="kl_ref")
    assert_close_o1(stats["clip_frac"], metrics[1], 2 * rel, msg="clip_frac")
    assert_grad_close(grad_hidden, hidden.grad, 2 * grad_rel)
    assert_grad_close(grad_weight, weight.grad, 2 * grad_rel)


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4), h=st.integers(1, 24), v=st.integers(1, 200),
       temperature=st.floats(0.5, 2.0), rows=st.integers(1, 8), path=st.sampled_from(["triton", "torch"]),
       agg=st.sampled_from(AGGREGATIONS))
def test_random_shapes_match_reference(lengths, h, v, temperature, rows, path, agg):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTZERO_KERNELS", path)
        mp.setattr(LP, "CHUNK_BUDGET_BYTES", rows * v * 8)
        batch = make_batch(tuple(lengths), h, v, device=device, seed=len(lengths) * 100 + v, temperature=temperature)
        check_against_oracle(batch, agg, **(OPTIONS | dict(temperature=temperature)))


def _bad(**changes):
    batch = make_batch(lengths=(3, 2), h=8, v=20)
    kwargs = dict(hidden=batch["hidden"], weight=batch["weight"], targets=batch["targets"], old_logp=batch["old"],
                  advantages=batch["adv"], token_weight=torch.full((5,), 0.2), ref_logp=None)
    return kwargs | changes


@pytest.mark.parametrize("kwargs, error, match", [
    (_bad(targets=torch.zeros(5, dtype=torch.int32)), TypeError, "int64"),
    (_bad(targets=torch.tensor([0, 1, 2, 3, 20])), ValueError, r"\[0, 20\)"),
    (_bad(weight=torch.randn(20, 9)), ValueError, "H=8.*H=9"),
    (_bad(hidden=[[0.0] * 8] * 5), TypeError, "hidden must be a torch.Tensor"),
    (_bad(old_logp=torch.zeros(4)), ValueError, r"old_logp must be \[N\] with N=5"),
    (_bad(advantages=torch.zeros(5, 1)), ValueError, r"advantages must be \[N\]"),
    (_bad(token_weight=torch.zeros(5, dtype=torch.long)), TypeError, "token_weight must be one of"),
    (_bad(token_weight=torch.tensor([0.2, -0.1, 0.2, 0.2, 0.2])), ValueError, "token_weight must be finite and >= 0"),
    (_bad(token_weight=torch.tensor([0.2, math.nan, 0.2, 0.2, 0.2])), ValueError, "token_weight must be finite"),
    (_bad(ref_logp=torch.zeros(6)), ValueError, r"ref_logp must be \[N\]"),
    (_bad(clip_low=-0.1), ValueError, "clip_low must be >= 0"),
    (_bad(clip_high=math.nan), ValueError, "clip_high must be a finite number"),
    (_bad(dual_clip=1.0), ValueError, "dual_clip must be > 1"),
    (_bad(kl_coef=0.1), ValueError, "kl_coef=0.1 needs ref_logp"),
    (_bad(kl_type="k4", ref_logp=torch.zeros(5)), ValueError, "kl_type='k4'"),
    (_bad(entropy_coef=True), ValueError, "entropy_coef must be a finite number"),
    (_bad(temperature=0.0), ValueError, "temperature"),
])
def test_bad_inputs_raise_clear_errors(backend, kwargs, error, match):
    with pytest.raises(error, match=match):
        fused_linear_policy_loss(**kwargs)
