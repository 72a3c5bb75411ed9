"""fastzero.kernels.advantage against pure-Python float64 oracles, on every backend.

The oracles below are written independently of the kernels and of kernels.reference: plain loops
over Python floats, GAE over the list of each row's valid positions.
"""
from __future__ import annotations

import math
import os
import statistics
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastzero.kernels import reference
from fastzero.kernels.advantage import GROUP_METHODS, gae, group_advantages, reinforce_pp_advantages, whiten
from tests._helpers import ELEMENTWISE_OPS, assert_close_o1, fp32_rtol, sum_rtol


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
# The kernels compute in fp32 from the same input values the oracle sees (float64), on O(1) inputs:
# group statistics are two length-G reductions (mean, then the centred sum of squares), GAE a
# length-T recursion, whitening two length-(B*T) reductions; bounds via fp32_rtol (tests/_helpers.py).



# ---- oracles ----------------------------------------------------------------------------------------


def group_oracle(rewards: list[float], group_size: int, method: str, eps: float) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        if group_size == 1:
            out.append(0.0)
            continue
        mean = sum(group) / group_size
        for i, r in enumerate(group):
            if method == "grpo":
                out.append((r - mean) / (statistics.stdev(group) + eps))
            elif method == "dr_grpo":
                out.append(r - mean)
            else:
                out.append(r - (sum(group) - r) / (group_size - 1))
    return out


def gae_oracle(rewards, values, mask, gamma, lam):
    """Textbook GAE over each row's valid positions; the value after the last one is 0."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        positions = [t for t in range(T) if mask[b][t]]
        running = 0.0
        for k in reversed(range(len(positions))):
            t = positions[k]
            next_value = values[b][positions[k + 1]] if k + 1 < len(positions) else 0.0
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            running = delta + gamma * lam * running
            adv[b][t], ret[b][t] = running, running + values[b][t]
    return adv, ret


def whiten_oracle(values, mask, eps, shift_mean=True):
    picked = [v for row, m in zip(values, mask) for v, keep in zip(row, m) if keep]
    mean = sum(picked) / len(picked) if picked else 0.0
    var = sum((v - mean) ** 2 for v in picked) / max(len(picked) - 1, 1)
    scale = 1.0 / math.sqrt(var + eps)
    shift = 0.0 if shift_mean else mean
    return [[((v - mean) * scale + shift) if keep else 0.0 for v, keep in zip(row, m)]
            for row, m in zip(values, mask)]


def as_tensor(rows, device):
    return torch.tensor(rows, dtype=torch.float64, device=device)


def padded_mask(B, T, device, seed):
    """Row kinds in turn: right padding, left padding, both sides, full, empty; then random spans."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        kind = b % 5 if b < 5 else int(torch.randint(0, 5, (1,), generator=gen))
        cut = int(torch.randint(1, max(T, 2), (1,), generator=gen)) if T > 1 else 1
        if kind == 0:
            mask[b, :cut] = True
        elif kind == 1:
            mask[b, T - cut:] = True
        elif kind == 2:
            mask[b, cut // 2: max(cut, cut // 2 + 1)] = True
        elif kind == 3:
            mask[b] = True
    return mask.to(device)


# ---- group advantages -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [1, 2, 5, 8])
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_advantages_match_oracle(backend, device, dtype, group_size, method):
    rewards = torch.randn(6 * group_size, generator=torch.Generator().manual_seed(group_size)).to(device, dtype)
    got = group_advantages(rewards, group_size, method=method, eps=1e-6)
    expected = group_oracle(rewards.double().tolist(), group_size, method, 1e-6)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    assert_close_o1(got, as_tensor(expected, device), fp32_rtol(2 * group_size))


@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_advantages_sum_to_zero_and_grpo_is_unit_std(backend, device, method):
    rewards = (torch.rand(40, generator=torch.Generator().manual_seed(1)) > 0.5).float().to(device)
    rewards[:8] = 1.0  # a constant group: no signal, zero advantages rather than NaN
    adv = group_advantages(rewards, 8, method=method).view(5, 8)
    assert_close_o1(adv.sum(dim=1), torch.zeros(5, device=device), fp32_rtol(3 * 8))
    assert torch.all(adv[0] == 0)
    if method == "grpo":
        varied = rewards.view(5, 8).std(dim=1) > 0
        assert_close_o1(adv[varied].std(dim=1), torch.ones(int(varied.sum()), device=device), fp32_rtol(4 * 8))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_groups=st.integers(1, 9), group_size=st.integers(1, 17), method=st.sampled_from(GROUP_METHODS),
       seed=st.integers(0, 2**16))
def test_group_advantages_random_shapes(device, n_groups, group_size, method, seed):
    rewards = torch.randn(n_groups * group_size, generator=torch.Generator().manual_seed(seed)).to(device)
    with mock.patch.dict(os.environ, {"FASTZERO_KERNELS": "auto"}):
        got = group_advantages(rewards, group_size, method=method)
    expected = group_oracle(rewards.double().tolist(), group_size, method, 1e-6)
    assert_close_o1(got, as_tensor(expected, device), fp32_rtol(2 * group_size))


@pytest.mark.parametrize("method", GROUP_METHODS)
@pytest.mark.parametrize("value", [0.1, 1.0, 0.0, 1 / 3])
def test_group_of_equal_rewards_gets_exactly_zero(backend, device, method, value):
    """Most GRPO groups score alike; they must carry no gradient at all, not rounding noise / eps."""
    rewards = torch.full((24,), value, device=device)
    rewards[8:16] = torch.tensor([0.0, 1.0] * 4, device=device)  # one group that does vary
    adv = group_advantages(rewards, 8, method=method)
    assert torch.count_nonzero(adv[:8]) == 0 and torch.count_nonzero(adv[16:]) == 0
    assert torch.count_nonzero(adv[8:16]) == 8


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.zeros(10), 3), {}, ValueError, "not divisible by group_size=3"),
    ((torch.zeros(10), 0), {}, ValueError, "group_size must be a positive int"),
    ((torch.zeros(10), True), {}, ValueError, "group_size must be a positive int"),
    ((torch.zeros(10), 5), {"method": "ppo"}, ValueError, "method='ppo' is not one of"),
    ((torch.zeros(10), 5), {"eps": -1.0}, ValueError, "eps must be"),
    ((torch.zeros(2, 5), 5), {}, ValueError, "rewards must be a non-empty 1-D"),
    ((torch.zeros(10, dtype=torch.int64), 5), {}, TypeError, "rewards must be a floating"),
])
def test_group_advantages_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        group_advantages(*args, **kwargs)


# ---- GAE --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.0, 0.7)])
def test_gae_matches_python_loop(backend, device, dtype, gamma, lam):
    B, T = 7, 23
    gen = torch.Generator().manual_seed(5)
    rewards = torch.randn(B, T, generator=gen).to(device, dtype)
    values = torch.randn(B, T, generator=gen).to(device, dtype)
    mask = padded_mask(B, T, device, seed=5)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = gae_oracle(rewards.double().tolist(), values.double().tolist(), mask.tolist(), gamma, lam)
    assert adv.dtype == ret.dtype == torch.float32
    # Errors grow with the horizon when gamma = lam = 1 (sums of up to T terms).
    assert_close_o1(adv, as_tensor(exp_adv, device), fp32_rtol(2 * T), msg="advantages")
    assert_close_o1(ret, as_tensor(exp_ret, device), fp32_rtol(2 * T), msg="returns")


def test_gae_with_unit_gamma_lambda_is_return_to_go_minus_value(backend, device):
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0], [5.0, 0.0, 0.0, 2.0]], device=device)
    values = torch.tensor([[0.5, 0.25, 0.75, 9.0], [7.0, 1.0, 1.0, 1.0]], device=device)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], device=device)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    expected_ret = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0]], device=device)
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(adv, torch.where(mask.bool(), expected_ret - values, 0.0))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 9), T=st.integers(1, 30), seed=st.integers(0, 2**16),
       gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0))
def test_gae_random_shapes(device, B, T, seed, gamma, lam):
    gen = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(2, B, T, generator=gen).to(device)
    mask = padded_mask(B, T, device, seed)
    with mock.patch.dict(os.environ, {"FASTZERO_KERNELS": "auto"}):
        adv, ret = gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = gae_oracle(rewards.double().tolist(), values.double().tolist(), mask.tolist(), gamma, lam)
    assert_close_o1(adv, as_tensor(exp_adv, device), fp32_rtol(2 * T), msg="advantages")
    assert_close_o1(ret, as_tensor(exp_ret, device), fp32_rtol(2 * T), msg="returns")


def test_reference_gae_in_float64_matches_oracle(device):
    gen = torch.Generator().manual_seed(9)
    rewards, values = torch.randn(2, 6, 17, generator=gen, dtype=torch.float64).to(device)
    mask = padded_mask(6, 17, device, seed=9)
    adv, ret = reference.gae(rewards, values, mask, 0.97, 0.9)
    exp_adv, exp_ret = gae_oracle(rewards.tolist(), values.tolist(), mask.tolist(), 0.97, 0.9)
    rel = sum_rtol(torch.float64, 2 * 17 + ELEMENTWISE_OPS)
    assert_close_o1(adv, as_tensor(exp_adv, device), rel, msg="advantages")
    assert_close_o1(ret, as_tensor(exp_ret, device), rel, msg="returns")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(values=torch.zeros(3, 4)), ValueError, "values must have shape"),
    (dict(mask=torch.ones(3, 5, dtype=torch.complex64)), TypeError, "mask must be one of"),
    (dict(mask=torch.ones(4, 5)), ValueError, "mask must have shape"),
    (dict(gamma=1.5), ValueError, "gamma must be a number in"),
    (dict(lam=-0.1), ValueError, "lam must be a number in"),
    (dict(rewards=torch.zeros(15)), ValueError, "rewards must be a non-empty 2-D"),
])
def test_gae_bad_arguments(kwargs, error, match):
    args = dict(rewards=torch.zeros(3, 5), values=torch.zeros(3, 5), mask=torch.ones(3, 5), gamma=1.0, lam=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        gae(**args)


# ---- whitening and REINFORCE++ ----------------------------------------------------------------------


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_oracle(device, shift_mean):
    gen = torch.Generator().manual_seed(2)
    values = (torch.randn(5, 13, generator=gen) * 3 + 1).to(device)
    mask = padded_mask(5, 13, device, seed=2)
    got = whiten(values, mask, shift_mean=shift_mean)
    expected = whiten_oracle(values.double().tolist(), mask.tolist(), 1e-8, shift_mean)
    assert_close_o1(got, as_tensor(expected, device), fp32_rtol(2 * values.numel()))
    if shift_mean:
        picked = got[mask]
        rel = fp32_rtol(4 * values.numel())  # whitening's two reductions, then the check's own two
        assert abs(picked.mean().item()) <= rel and abs(picked.std().item() - 1) <= rel


def test_whiten_degenerate_masks_give_zeros(device):
    values = torch.randn(2, 4, device=device)
    assert torch.all(whiten(values, torch.zeros(2, 4, device=device)) == 0)
    single = torch.zeros(2, 4, dtype=torch.bool, device=device)
    single[1, 2] = True
    assert torch.all(whiten(values, single) == 0)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_is_whitened_return_to_go(backend, device, gamma):
    gen = torch.Generator().manual_seed(4)
    token_rewards = torch.randn(6, 11, generator=gen).to(device)
    mask = padded_mask(6, 11, device, seed=4)
    got = reinforce_pp_advantages(token_rewards, mask, gamma)
    zeros = [[0.0] * 11 for _ in range(6)]
    returns, _ = gae_oracle(token_rewards.double().tolist(), zeros, mask.tolist(), gamma, 1.0)
    expected = whiten_oracle(returns, mask.tolist(), 1e-8)
    assert_close_o1(got, as_tensor(expected, device), fp32_rtol(2 * 11 + 2 * token_rewards.numel()))


def test_whiten_bad_arguments():
    with pytest.raises(ValueError, match="eps must be"):
        whiten(torch.zeros(2, 3), torch.ones(2, 3), eps=0.0)
    with pytest.raises(ValueError, match="mask must have shape"):
        whiten(torch.zeros(2, 3), torch.ones(3, 2))
