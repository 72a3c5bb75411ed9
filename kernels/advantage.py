"""Advantage estimators: group-relative (GRPO, Dr. GRPO, RLOO), GAE, and whitening (REINFORCE++).

- `group_advantages(rewards [B], group_size, method)`: groups are contiguous runs of group_size
  rows (the G samples of one prompt). grpo = (r - mean) / (unbiased std + eps); dr_grpo = r - mean
  (Dr. GRPO drops the std division); rloo = r - mean of the other members, computed as
  G/(G-1) * (r - mean). A group of one has no baseline and gets 0; a group of equal rewards gets
  exactly 0 (rewards are shifted by the group's first before averaging, so no rounding is left). Triton: one program per block
  of groups, each group a row of a [groups, members] tile.
- `gae(rewards, values, mask, gamma, lam)`: the reverse recursion over each row's valid tokens;
  masked positions carry the next value/advantage through unchanged (as verl does), so left or
  right padding is skipped and the value after a row's last valid token is 0. Triton: one
  program per block of rows walking t from T-1 to 0, vectorized over rows.
- `whiten(values, mask)`: batch mean/std over valid tokens (unbiased, like verl's masked_whiten);
  plain torch reductions, a kernel would not beat them.
- `reinforce_pp_advantages(token_rewards, mask, gamma)`: REINFORCE++ = discounted return-to-go
  (GAE with zero values and lam = 1, so it reuses the same kernel) whitened over the batch.

Outputs are fp32. The "torch" backend is the vectorized reference (these ops are tiny next to the
model, so a second PyTorch version would only duplicate it).
"""
from __future__ import annotations

import torch

from fastzero.kernels import reference
from fastzero.kernels._dispatch import backend_for
from fastzero.kernels._utils import (ANY_FLOAT_DTYPES, HAS_TRITON, MASK_DTYPES, check_choice, check_number,
                                     check_tensor, tl, triton)

GROUP_METHODS = ("grpo", "dr_grpo", "rloo")

if HAS_TRITON:
    @triton.jit
    def _group_advantages_kernel(
        rewards_ptr, out_ptr,  # [n_groups * group_size]
        n_groups, group_size, eps,
        METHOD: tl.constexpr,  # 0: grpo, 1: dr_grpo, 2: rloo
        BLOCK_GROUPS: tl.constexpr, BLOCK_MEMBERS: tl.constexpr,
    ):
        groups = tl.program_id(0) * BLOCK_GROUPS + tl.arange(0, BLOCK_GROUPS)
        members = tl.arange(0, BLOCK_MEMBERS)
        offs = groups[:, None].to(tl.int64) * group_size + members[None, :]
        inside = (groups[:, None] < n_groups) & (members[None, :] < group_size)
        r = tl.load(rewards_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        size = group_size * 1.0  # >= 2: the host answers groups of one
        # Shift by the group's first reward before averaging: a group whose rewards are all equal
        # (most GRPO groups) then gets exactly 0, not rounding noise divided by (0 + eps).
        first = tl.sum(tl.where(members[None, :] == 0, r, 0.0), axis=1)
        shifted = tl.where(inside, r - first[:, None], 0.0)
        mean = tl.sum(shifted, axis=1) / size
        centered = tl.where(inside, shifted - mean[:, None], 0.0)  # two passes: no E[x^2]-E[x]^2 cancellation
        if METHOD == 0:
            std = tl.sqrt(tl.sum(centered * centered, axis=1) / tl.maximum(size - 1.0, 1.0))
            adv = centered / (std[:, None] + eps)
        elif METHOD == 1:
            adv = centered
        else:
            adv = centered * (size / tl.maximum(size - 1.0, 1.0))
        tl.store(out_ptr + offs, adv, mask=inside)

    @triton.jit
    def _gae_kernel(
        rewards_ptr, values_ptr, mask_ptr,  # [B, T] contiguous
        adv_ptr, ret_ptr,  # [B, T] fp32 outputs
        B, T, gamma, lam,
        BLOCK_B: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        in_batch = rows < B
        row_start = rows.to(tl.int64) * T
        next_value = tl.zeros([BLOCK_B], dtype=tl.float32)
        next_adv = tl.zeros([BLOCK_B], dtype=tl.float32)
        for step in range(0, T):
            offs = row_start + (T - 1 - step)
            valid = tl.load(mask_ptr + offs, mask=in_batch, other=0) != 0
            reward = tl.load(rewards_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            value = tl.load(values_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            delta = reward + gamma * next_value - value
            adv = tl.where(valid, delta + gamma * lam * next_adv, 0.0)
            tl.store(adv_ptr + offs, adv, mask=in_batch)
            tl.store(ret_ptr + offs, tl.where(valid, adv + value, 0.0), mask=in_batch)
            next_value = tl.where(valid, value, next_value)
            next_adv = tl.where(valid, adv, next_adv)


def _check_float_tensor(name: str, x, dims: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dims or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty {dims}-D tensor, got shape {list(x.shape)}")
    if x.dtype not in ANY_FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")


def _check_mask(mask, like: torch.Tensor) -> None:
    check_tensor("mask", mask, tuple(like.shape), like.device, MASK_DTYPES, like="the data")


def _check_unit_interval(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, method: str = "grpo", eps: float = 1e-6
) -> torch.Tensor:
    """[B] fp32 advantages of B = n_prompts * group_size rewards, groups contiguous."""
    _check_float_tensor("rewards", rewards, 1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} rows, not divisible by group_size={group_size}")
    check_choice("method", method, GROUP_METHODS)
    check_number("eps", eps, minimum=0.0)

    if group_size == 1:  # no baseline to compare with
        return torch.zeros(rewards.shape, device=rewards.device, dtype=torch.float32)
    if backend_for(rewards.device) != "triton":
        return reference.group_advantages(rewards, group_size, method=method, eps=eps).float()
    rewards = rewards.contiguous()
    out = torch.empty(rewards.shape, device=rewards.device, dtype=torch.float32)
    n_groups = rewards.shape[0] // group_size
    block_members = triton.next_power_of_2(group_size)
    block_groups = max(1, min(triton.next_power_of_2(n_groups), 4096 // block_members))
    _group_advantages_kernel[(triton.cdiv(n_groups, block_groups),)](
        rewards, out, n_groups, group_size, float(eps),
        METHOD=GROUP_METHODS.index(method), BLOCK_GROUPS=block_groups, BLOCK_MEMBERS=block_members,
    )
    return out


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [B, T] fp32 and 0 on masked tokens; returns = advantages + values.

    Each row's valid tokens should be contiguous (left or right padding); a hole inside a row is
    skipped over, as if the tokens on both sides were adjacent.
    """
    _check_float_tensor("rewards", rewards, 2)
    _check_float_tensor("values", values, 2)
    if values.shape != rewards.shape:
        raise ValueError(f"values must have shape {list(rewards.shape)}, got {list(values.shape)}")
    if values.device != rewards.device:
        raise ValueError(f"values is on {values.device} but rewards is on {rewards.device}")
    _check_mask(mask, rewards)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)

    if backend_for(rewards.device) != "triton":
        adv, ret = reference.gae(rewards, values, mask, gamma, lam)
        return adv.float(), ret.float()
    batch, length = rewards.shape
    rewards, values = rewards.contiguous(), values.contiguous()
    valid_u8 = (mask != 0).to(torch.uint8).contiguous()
    adv = torch.empty((batch, length), device=rewards.device, dtype=torch.float32)
    ret = torch.empty_like(adv)
    block_b = min(triton.next_power_of_2(batch), 128)
    _gae_kernel[(triton.cdiv(batch, block_b),)](
        rewards, values, valid_u8, adv, ret, batch, length, float(gamma), float(lam), BLOCK_B=block_b,
    )
    return adv, ret


def whiten(
    values: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-8, shift_mean: bool = True
) -> torch.Tensor:
    """[B, T] fp32 (values - mean) / sqrt(var + eps) over valid tokens; 0 on masked tokens.

    var is unbiased (n - 1), taken as 0 with fewer than two valid tokens. shift_mean=False adds the
    mean back (scale only), as verl's masked_whiten does.
    """
    _check_float_tensor("values", values, 2)
    _check_mask(mask, values)
    check_number("eps", eps, above=0.0)
    valid = mask != 0
    x = torch.where(valid, values.float(), 0.0)
    count = valid.sum(dtype=torch.float32)
    mean = x.sum() / count.clamp(min=1.0)
    centered = torch.where(valid, x - mean, 0.0)
    var = (centered * centered).sum() / (count - 1.0).clamp(min=1.0)
    out = centered * torch.rsqrt(var + eps)
    if not shift_mean:
        out = torch.where(valid, out + mean, 0.0)
    return out


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, *, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++: per-token discounted return-to-go, whitened over the batch's valid tokens.

    token_rewards [B, T] holds each token's reward (the outcome reward on the last valid token,
    minus any per-token KL penalty); the return-to-go is GAE with zero values and lam = 1.
    """
    _check_float_tensor("token_rewards", token_rewards, 2)
    returns, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
    return whiten(returns, mask, eps=eps)
