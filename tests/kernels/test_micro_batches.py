"""Gradient accumulation: token weights computed over a mini-batch and sliced per micro-batch make
any split of the mini-batch into micro-batches give the same loss and gradient.

Checked for every aggregation, on both loss paths (the two-pass `policy_loss` on [B, T] log-probs
and the one-pass `fused_linear_policy_loss` on hidden states), in float64 with the reference (where
only rounding of float64 can differ) and on every backend in fp32 (bounds from fp32's unit roundoff
and the reduction sizes). Micro-batches are arbitrary row subsets trimmed to their longest row, the
way the trainer packs them; padding holds inf/NaN garbage.
"""
from __future__ import annotations

import pytest
import torch

from fastzero.kernels import reference as R
from fastzero.kernels.aggregation import AGGREGATIONS, token_weights
from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.policy_loss import policy_loss, token_loss_terms
from tests._helpers import assert_grad_close, assert_sum_close, sum_rtol

LENGTHS = torch.tensor([13, 5, 0, 9, 1, 12, 7])  # B=7 rows, an empty one; N=47 response tokens
T, H, V, NORM_LEN, TEMPERATURE = 13, 24, 101, 16.0, 0.7
OPTIONS = dict(clip_low=0.2, clip_high=0.28, dual_clip=2.0, kl_coef=0.05, kl_type="k3", entropy_coef=0.01)


def mini_batch(seed: int, device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b = len(LENGTHS)
    mask = torch.arange(T)[None, :] < LENGTHS[:, None]
    logp = -torch.rand(b, T, generator=gen) * 3.0
    batch = dict(
        mask=mask, logp=logp.masked_fill(~mask, float("inf")),
        old=(logp + 0.3 * torch.randn(b, T, generator=gen)).masked_fill(~mask, float("nan")),
        ref=(logp + 0.3 * torch.randn(b, T, generator=gen)).masked_fill(~mask, -float("inf")),
        entropy=torch.rand(b, T, generator=gen) * 2.0, adv=torch.randn(b, generator=gen),
        hidden=torch.randn(int(mask.sum()), H, generator=gen), weight=torch.randn(V, H, generator=gen) * 0.4,
        targets=torch.randint(0, V, (int(mask.sum()),), generator=gen),
    )
    return {k: x.to(device) for k, x in batch.items()}


def random_split(seed: int) -> list[torch.Tensor]:
    """The rows in a random order, cut into 1..B non-empty micro-batches at random points."""
    gen = torch.Generator().manual_seed(1000 + seed)
    order = torch.randperm(len(LENGTHS), generator=gen)
    n_cuts = int(torch.randint(0, len(LENGTHS), (1,), generator=gen))
    cuts = torch.randperm(len(LENGTHS) - 1, generator=gen)[:n_cuts].add(1).sort().values.tolist()
    return [part for part in torch.tensor_split(order, cuts)]


def width_of(rows: torch.Tensor) -> int:
    return max(1, int(LENGTHS[rows].max()))


def two_pass(fn, batch, weights, rows, width, logp, entropy):
    """fn (policy_loss or reference.policy_loss) on batch[rows, :width] with the sliced weights."""
    def part(x):
        x = x[rows.to(x.device)]
        return x[:, :width] if x.dim() == 2 else x

    cast = logp.dtype
    return fn(part(logp), part(batch["old"]).to(cast), part(batch["adv"]).to(cast), part(batch["mask"]),
              token_weight=part(weights), ref_logp=part(batch["ref"]).to(cast), entropy=part(entropy), **OPTIONS)[0]


def run_two_pass(fn, batch, agg, splits, dtype):
    """Loss and d loss/d logp, d loss/d entropy for the whole batch and for each split."""
    weights = token_weights(batch["mask"], agg, NORM_LEN)
    results = []
    for parts in [[torch.arange(len(LENGTHS))]] + splits:
        logp = batch["logp"].to(dtype).requires_grad_()
        entropy = batch["entropy"].to(dtype).requires_grad_()
        loss = sum(two_pass(fn, batch, weights, rows, width_of(rows), logp, entropy) for rows in parts)
        loss.backward()
        results.append((loss.detach(), logp.grad, entropy.grad))
    return results


def abs_loss_sum(batch, weights, logp=None, entropy=None) -> float:
    """sum |w * per-token loss|: the size of the loss' reduction, for its rounding bound."""
    valid = batch["mask"]
    clean = {k: torch.where(valid, batch[k], 0.0) for k in ("logp", "old", "ref", "entropy")}
    if logp is not None:  # the fused path's log-probs and entropies, from the hidden states
        clean |= {k: torch.zeros(valid.shape, device=valid.device).masked_scatter(valid, x.float())
                  for k, x in (("logp", logp), ("entropy", entropy))}
    terms = token_loss_terms(clean["logp"], clean["old"], batch["adv"][:, None], ref_logp=clean["ref"],
                             entropy=clean["entropy"], **OPTIONS)
    return float((weights * terms.loss).detach().abs().sum())


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("seed", range(3))
def test_two_pass_split_float64_reference(device, agg, seed):
    batch = mini_batch(seed, device)
    (loss, dlogp, dent), *splits = run_two_pass(R.policy_loss, batch, agg, [random_split(seed)], torch.float64)
    n = int(LENGTHS.sum())
    for got_loss, got_dlogp, got_dent in splits:
        assert_sum_close(got_loss, loss, abs_loss_sum(batch, token_weights(batch["mask"], agg, NORM_LEN)),
                         torch.float64, n)
        assert torch.equal(got_dlogp, dlogp) and torch.equal(got_dent, dent)  # elementwise: the same ops


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_two_pass_split_every_backend(backend, device, agg):
    batch = mini_batch(7, device)
    splits = [random_split(s) for s in range(3)]
    (loss, dlogp, dent), *results = run_two_pass(policy_loss, batch, agg, splits, torch.float32)
    abs_sum = abs_loss_sum(batch, token_weights(batch["mask"], agg, NORM_LEN))
    for got_loss, got_dlogp, got_dent in results:
        assert_sum_close(got_loss, loss, abs_sum, torch.float32, int(LENGTHS.sum()))
        assert torch.equal(got_dlogp, dlogp) and torch.equal(got_dent, dent)


# ---- the one-pass path: response tokens flattened row-major, as the trainer gathers them ----------


def token_rows(batch) -> torch.Tensor:
    return torch.arange(len(LENGTHS), device=batch["mask"].device)[:, None].expand(-1, T)[batch["mask"]]


def run_fused(batch, agg, splits, as64: bool):
    """(loss, grad hidden, grad weight) for the whole batch and for each split of its rows."""
    flat_weights = token_weights(batch["mask"], agg, NORM_LEN)[batch["mask"]]
    rows_of_token = token_rows(batch)
    flat = {k: batch[k][batch["mask"]] for k in ("old", "ref")} | {"adv": batch["adv"][rows_of_token]}
    results = []
    for parts in [[torch.arange(len(LENGTHS))]] + splits:
        hidden = batch["hidden"].clone().to(torch.float64 if as64 else torch.float32).requires_grad_()
        weight = batch["weight"].clone().to(hidden.dtype).requires_grad_()
        total = 0.0
        for rows in parts:
            tokens = torch.cat([torch.nonzero(rows_of_token == r).view(-1) for r in rows.tolist()])
            if as64:  # the float64 oracle: materialized logits + the reference loss, one row per token
                logp, entropy = R.fused_logprobs(hidden[tokens], weight, batch["targets"][tokens],
                                                 temperature=TEMPERATURE, return_entropy=True)
                one = torch.ones(1, len(tokens), device=hidden.device)
                loss, _ = R.policy_loss(logp[None], flat["old"][tokens][None].double(),
                                        flat["adv"][tokens][None].double(), one,
                                        token_weight=flat_weights[tokens][None].double(),
                                        ref_logp=flat["ref"][tokens][None].double(), entropy=entropy[None],
                                        **OPTIONS)
            else:
                loss, _ = fused_linear_policy_loss(
                    hidden[tokens], weight, batch["targets"][tokens], flat["old"][tokens], flat["adv"][tokens],
                    flat_weights[tokens], ref_logp=flat["ref"][tokens], temperature=TEMPERATURE, **OPTIONS)
            total = total + loss
        total.backward()
        results.append((total.detach(), hidden.grad, weight.grad))
    return results


def fused_abs_loss_sum(batch, agg) -> float:
    logp, entropy = R.fused_logprobs(batch["hidden"].double(), batch["weight"].double(), batch["targets"],
                                     temperature=TEMPERATURE, return_entropy=True)
    return abs_loss_sum(batch, token_weights(batch["mask"], agg, NORM_LEN), logp, entropy)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_fused_split_float64_reference(device, agg):
    batch = mini_batch(3, device)
    (loss, grad_hidden, grad_weight), *results = run_fused(batch, agg, [random_split(s) for s in range(2)], True)
    n = int(LENGTHS.sum())
    abs_sum = fused_abs_loss_sum(batch, agg)
    for got_loss, got_hidden, got_weight in results:
        # Each value passes through a length-H dot product, a length-V log-sum-exp and (the loss,
        # grad_weight) a length-N sum over tokens: bounded by those reductions in float64.
        rel = sum_rtol(torch.float64, H + V + n)
        assert_sum_close(got_loss, loss, abs_sum, torch.float64, H + V + n)
        assert_grad_close(got_hidden, grad_hidden, rel)
        assert_grad_close(got_weight, grad_weight, rel)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_fused_split_every_backend(backend, device, agg):
    batch = mini_batch(4, device)
    (loss, grad_hidden, grad_weight), *results = run_fused(batch, agg, [random_split(s) for s in range(2)], False)
    n_terms = H + V + int(LENGTHS.sum())
    rel, abs_sum = sum_rtol(torch.float32, n_terms), fused_abs_loss_sum(batch, agg)
    for got_loss, got_hidden, got_weight in results:
        assert_sum_close(got_loss, loss, abs_sum, torch.float32, n_terms)
        assert_grad_close(got_hidden, grad_hidden, rel)
        assert_grad_close(got_weight, grad_weight, rel)
