"""How per-token losses add up to one batch loss: the one definition, as per-token weights.

    batch loss = sum over tokens of token_weight[b, t] * loss[b, t]

Aggregations (`agg`), for a batch of B rows with valid-token counts n_b and N = sum_b n_b:
    token-mean                 1 / N                      (every valid token counts the same)
    seq-mean-token-mean        1 / (n_b * #non-empty rows) (each sequence's mean, then their mean)
    seq-mean-token-sum         1 / B                      (each sequence's sum, then their mean)
    seq-mean-token-sum-norm    1 / (B * norm_len)         (Dr. GRPO: a constant normalizer)
and 0 on masked tokens.

Gradient accumulation: compute the weights once over the whole mini-batch and slice them per
micro-batch (`weights[rows, :width]`); the micro-batch losses then add up to the mini-batch loss
exactly, whichever way the rows are split. Both policy losses (kernels/policy_loss.py,
kernels/fused_policy_loss.py) and the float64 reference take such weights.
"""
from __future__ import annotations

import torch

from fastzero.kernels._utils import check_number

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_aggregation(agg: str, norm_len: float | None) -> None:
    """Raises a ValueError naming agg or norm_len when they cannot define token weights."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg={agg!r} is not one of {', '.join(AGGREGATIONS)}")
    if agg == "seq-mean-token-sum-norm" and norm_len is None:
        raise ValueError("norm_len is required for agg='seq-mean-token-sum-norm' (e.g. the max response length)")
    if norm_len is not None:
        check_number("norm_len", norm_len, above=0.0)


def row_weights(mask: torch.Tensor, agg: str, norm_len: float | None = None) -> torch.Tensor:
    """[B] fp32 coefficient of each valid token's loss in row b; token_weights = valid * this."""
    valid = (mask != 0).to(torch.float32)
    batch = valid.shape[0]
    row_len = valid.sum(dim=1)
    if agg == "token-mean":
        return (1.0 / row_len.sum().clamp(min=1.0)).expand(batch).contiguous()
    if agg == "seq-mean-token-mean":
        nonempty = row_len > 0
        n_rows = nonempty.sum().to(torch.float32).clamp(min=1.0)
        return torch.where(nonempty, 1.0 / (row_len.clamp(min=1.0) * n_rows), 0.0)
    if agg == "seq-mean-token-sum":
        return torch.full((batch,), 1.0 / batch, device=mask.device)
    if agg == "seq-mean-token-sum-norm":
        return torch.full((batch,), 1.0 / (batch * norm_len), device=mask.device)
    raise ValueError(f"agg={agg!r} is not one of {', '.join(AGGREGATIONS)}")


def token_weights(mask: torch.Tensor, agg: str, norm_len: float | None = None) -> torch.Tensor:
    """[B, T] fp32 coefficient of each token's loss in the aggregate loss (0 on masked tokens).

    mask: [B, T] bool or numeric, nonzero = valid. Pass the whole mini-batch's mask and slice the
    result per micro-batch (see the module docstring).
    """
    return (mask != 0).to(torch.float32) * row_weights(mask, agg, norm_len)[:, None]
