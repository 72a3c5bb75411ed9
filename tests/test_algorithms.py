"""fastzero.algorithms against float64 Python oracles: every --algorithm's advantages, the rows
that carry no gradient, the per-token rewards and the clipped value loss."""
from __future__ import annotations

import math

import pytest
import torch

from fastzero.algorithms import (ALGORITHMS, GROUP_METHODS, compute_advantages, rows_without_gradient,
                                 token_rewards, value_loss)
from fastzero.kernels.aggregation import token_weights
from tests._helpers import sum_rtol


def _tol(mask: torch.Tensor, scale: float = 1.0) -> float:
    """fp32 against float64: the longest sum is over the batch's valid tokens (whitening)."""
    return sum_rtol(torch.float32, int(mask.sum()) + mask.shape[1]) * max(1.0, scale)


def _mask(lengths, prompt=2, width=9) -> torch.Tensor:
    mask = torch.zeros(len(lengths), width)
    for row, n in enumerate(lengths):
        mask[row, prompt:prompt + n] = 1.0
    return mask


def _group_oracle(scores, size, method):
    out = []
    for g in range(0, len(scores), size):
        group = scores[g:g + size]
        mean = sum(group) / size
        for s in group:
            if method == "grpo":
                std = math.sqrt(sum((x - mean) ** 2 for x in group) / (size - 1))
                out.append((s - mean) / (std + 1e-6))
            elif method == "dr_grpo":
                out.append(s - mean)
            else:  # rloo: the mean of the other members as the baseline
                out.append(s - (sum(group) - s) / (size - 1))
    return out


def _whiten_oracle(values, mask):
    valid = [v for v, m in zip(values.flatten().tolist(), mask.flatten().tolist()) if m]
    mean = sum(valid) / len(valid)
    var = sum((v - mean) ** 2 for v in valid) / (len(valid) - 1)
    return (values - mean) / math.sqrt(var + 1e-8) * mask


@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_methods_broadcast_the_group_advantage(method):
    scores = torch.tensor([1.0, 0.1, 0.1, 0.0, 1.0, 1.0, 1.0, 1.0])
    mask = _mask([3, 1, 4, 2, 5, 2, 3, 1])
    adv, returns = compute_advantages(method, scores, mask, group_size=4)
    expected = torch.tensor(_group_oracle(scores.double().tolist(), 4, method), dtype=torch.float64)
    assert returns is None
    torch.testing.assert_close(adv.double(), expected[:, None] * mask.double(), atol=_tol(mask, expected.abs().max()), rtol=0)
    assert not adv[4:].any()  # a group of equal scores carries exactly nothing


def test_reinforce_pp_is_whitened_return_to_go_with_kl_in_the_reward():
    gen = torch.Generator().manual_seed(0)
    mask = _mask([3, 5, 1, 4])
    scores = torch.tensor([1.0, 0.0, 0.1, 1.0])
    kl = torch.randn(mask.shape, generator=gen) * mask
    adv, _ = compute_advantages("reinforce_pp", scores, mask, group_size=1, gamma=0.9, kl=kl, kl_coef=0.1)
    rewards = token_rewards(scores, mask, kl, 0.1).double()
    returns = torch.zeros_like(rewards)
    for row in range(len(scores)):
        running = 0.0
        for t in reversed(range(mask.shape[1])):
            if mask[row, t]:
                running = float(rewards[row, t]) + 0.9 * running
                returns[row, t] = running
    want = _whiten_oracle(returns, mask.double())
    torch.testing.assert_close(adv.double(), want, atol=_tol(mask, want.abs().max()), rtol=0)


def test_ppo_is_whitened_gae_and_returns_train_the_critic():
    gen = torch.Generator().manual_seed(1)
    mask = _mask([4, 2, 6])
    scores = torch.tensor([1.0, 0.1, 0.0])
    values = torch.randn(mask.shape, generator=gen) * mask
    gamma, lam = 0.95, 0.9
    adv, returns = compute_advantages("ppo", scores, mask, group_size=1, gamma=gamma, lam=lam, values=values)
    rewards = token_rewards(scores, mask).double()
    raw = torch.zeros_like(rewards)
    for row in range(len(scores)):
        next_value, running = 0.0, 0.0
        for t in reversed(range(mask.shape[1])):
            if mask[row, t]:
                delta = float(rewards[row, t]) + gamma * next_value - float(values[row, t])
                running = delta + gamma * lam * running
                raw[row, t], next_value = running, float(values[row, t])
    want_returns, want = (raw + values.double()) * mask, _whiten_oracle(raw, mask.double())
    torch.testing.assert_close(returns.double() * mask, want_returns, atol=_tol(mask, want_returns.abs().max()), rtol=0)
    torch.testing.assert_close(adv.double(), want, atol=_tol(mask, want.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="ppo needs critic values"):
        compute_advantages("ppo", scores, mask, group_size=1)


def test_every_algorithm_is_handled_and_unknown_ones_fail():
    mask = _mask([2, 3, 1, 2])
    scores = torch.tensor([1.0, 0.0, 0.1, 0.1])
    for algorithm in ALGORITHMS:
        values = torch.zeros_like(mask) if algorithm == "ppo" else None
        adv, _ = compute_advantages(algorithm, scores, mask, group_size=2, values=values)
        assert adv.shape == mask.shape and not adv[mask == 0].any()
    with pytest.raises(ValueError, match="unknown algorithm"):
        compute_advantages("a2c", scores, mask, group_size=2)


def test_rows_without_gradient_are_the_all_zero_advantage_rows():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.1, 0.1])
    mask = _mask([2, 3, 1, 2, 4, 1])
    skip = rows_without_gradient("grpo", scores, mask, group_size=2)
    assert skip.tolist() == [True, True, False, False, True, True]
    assert rows_without_gradient("ppo", scores, mask, group_size=1) is None
    assert rows_without_gradient("reinforce_pp", scores, mask, group_size=1) is None


def test_token_rewards_put_the_score_on_the_last_token():
    mask = _mask([2, 0, 3])
    rewards = token_rewards(torch.tensor([1.0, 1.0, 0.1]), mask)
    assert rewards[0, 3] == 1.0 and rewards[2, 4] == pytest.approx(0.1) and not rewards[1].any()
    assert int((rewards != 0).sum()) == 2


def test_value_loss_is_the_clipped_token_mean():
    gen = torch.Generator().manual_seed(2)
    mask = _mask([3, 1, 4]).double()
    values, old, returns = (torch.randn(mask.shape, generator=gen, dtype=torch.float64) for _ in range(3))
    loss, clip_frac = value_loss(values, old, returns, mask, 0.2)
    expected, clipped, count = 0.0, 0, 0
    for v, o, r, m in zip(values.flatten().tolist(), old.flatten().tolist(), returns.flatten().tolist(),
                          mask.flatten().tolist()):
        if m:
            vc = o + max(-0.2, min(0.2, v - o))
            expected += 0.5 * max((v - r) ** 2, (vc - r) ** 2)
            clipped += (vc - r) ** 2 > (v - r) ** 2
            count += 1
    assert float(loss) == pytest.approx(expected / count, rel=1e-12)
    assert clip_frac == pytest.approx(clipped / count)
    # with the mini-batch's token-mean weights, two halves add up to the whole
    weights = token_weights(mask, "token-mean").double()
    halves = [value_loss(values[rows], old[rows], returns[rows], mask[rows], 0.2, token_weight=weights[rows])[0]
              for rows in (slice(0, 1), slice(1, 3))]
    assert float(sum(halves)) == pytest.approx(expected / count, rel=1e-12)
