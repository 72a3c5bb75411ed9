"""Advantage estimators and the critic's loss: which kernel each `--algorithm` calls, with what.

- grpo / dr_grpo / rloo: one sequence reward per sample, compared within its group of
  `samples_per_prompt` (fastzero.kernels.group_advantages), broadcast over the response tokens.
- reinforce_pp: per-token rewards (score on the last token, optional KL penalty on every token),
  discounted return-to-go, whitened over the batch's valid tokens (REINFORCE++).
- ppo: per-token rewards as above, critic values, GAE (fastzero.kernels.gae), whitened advantages;
  returns train the critic with a clipped value loss.
"""
from __future__ import annotations

import torch

from fastzero.kernels.advantage import GROUP_METHODS, gae, group_advantages, reinforce_pp_advantages, whiten

from .batch import last_response_index

TOKEN_METHODS = ("reinforce_pp", "ppo")  # per-token rewards: they can take a KL penalty in the reward
ALGORITHMS = GROUP_METHODS + TOKEN_METHODS  # the choices of --algorithm


def token_rewards(scores: torch.Tensor, response_mask: torch.Tensor,
                  kl: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """[B, L] rewards: the sequence score on its last response token, minus kl_coef * KL per token."""
    rewards = torch.zeros_like(response_mask)
    last = last_response_index(response_mask)
    has_response = response_mask.sum(1) > 0
    rows = torch.arange(len(scores), device=scores.device)[has_response]
    rewards[rows, last[has_response]] = scores[has_response].to(rewards.dtype)
    if kl is not None and kl_coef:
        rewards = rewards - kl_coef * kl * response_mask
    return rewards


def compute_advantages(algorithm: str, scores: torch.Tensor, response_mask: torch.Tensor, *,
                       group_size: int, gamma: float = 1.0, lam: float = 1.0,
                       values: torch.Tensor | None = None, kl: torch.Tensor | None = None,
                       kl_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages [B, L] zero outside the response, returns [B, L] for ppo else None).

    The one entry point for every --algorithm. Group methods use only `scores`; ppo needs the
    critic's `values`; `kl` (per token) enters the reward when kl_coef is set (token methods).
    """
    if algorithm in GROUP_METHODS:
        per_sequence = group_advantages(scores.float(), group_size, method=algorithm)
        return per_sequence[:, None] * response_mask, None
    rewards = token_rewards(scores.float(), response_mask, kl, kl_coef)
    if algorithm == "reinforce_pp":
        return reinforce_pp_advantages(rewards, response_mask, gamma) * response_mask, None
    if algorithm == "ppo":
        if values is None:
            raise ValueError("ppo needs critic values")
        advantages, returns = gae(rewards, values, response_mask, gamma, lam)
        return whiten(advantages, response_mask) * response_mask, returns
    raise ValueError(f"unknown algorithm {algorithm!r}")


def rows_without_gradient(algorithm: str, scores: torch.Tensor, response_mask: torch.Tensor, *,
                          group_size: int) -> torch.Tensor | None:
    """[B] bool on the CPU: sequences whose advantage is 0 on every token, known from the scores alone.

    Only group methods can say this before any log-prob is computed (their advantage is a function
    of the group's scores); for token methods it returns None (every row may carry a gradient).
    """
    if algorithm not in GROUP_METHODS:
        return None
    advantages, _ = compute_advantages(algorithm, scores, response_mask, group_size=group_size)
    return ~(advantages != 0).any(dim=1).cpu()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, *, token_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """PPO's clipped value loss 0.5 * max((v-R)^2, (clip(v, v_old +- c) - R)^2), and the share of
    clipped tokens (over `mask`).

    Aggregated as sum(token_weight * loss): pass the mini-batch's token-mean weights sliced to this
    micro-batch (see Trainer.accumulate_gradients); without them, the token mean over `mask`.
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    per_token = 0.5 * torch.maximum(loss_unclipped, loss_clipped)
    count = mask.sum().clamp(min=1)
    clip_frac = float(((loss_clipped > loss_unclipped).float() * mask).sum() / count)
    if token_weight is None:
        return (per_token * mask).sum() / count, clip_frac
    return (per_token * token_weight).sum(), clip_frac
