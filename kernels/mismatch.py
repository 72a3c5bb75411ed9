"""Sequence-level quantities of the policy losses, from per-token values and each token's sequence.

Rollout/training mismatch. The rollout engine's sampler (SGLang in bf16, our hf engine) does not
give exactly the trainer's log-probs, so the tokens were drawn from pi_rollout, not pi_old. With
rollout_logp (the sampler's per-token log-probs) the losses correct for it by importance weights
on the policy-gradient term, from the log-ratio l = old_logp - rollout_logp:
    level "token"      l_t per token
    level "sequence"   L = sum of l_t over the sequence's valid tokens, i.e. the product of the
                       token ratios pi_old(y)/pi_rollout(y): the importance ratio of the whole
                       sampled sequence (the mean would be a geometric-mean ratio: smaller, biased)
    "tis"   truncated IS: weight min(exp(l), C) (Yao et al. 2025); tokens (or sequences) above C
            count as truncated
    "mis"   masked IS: weight exp(l) where 1/C <= exp(l) <= C, else 0: the token (or the whole
            sequence) is dropped from the policy gradient; the loss normalizers are unchanged
C = is_cap. Weights are data (no gradient), computed in log space (exp never overflows). Stats:
mismatch_kl = mean over valid tokens of k3 = exp(l) - 1 - l, an estimate of KL(pi_rollout ||
pi_old) from tokens the sampler drew (>= 0); is_truncated_frac / is_masked_frac = share of valid
tokens truncated / masked (at sequence level: tokens of sequences that were).

GSPO's sequence ratio needs the mean of logp - old_logp over each sequence's valid tokens:
`segment_sum` adds per-token values into per-sequence sums (index_add_, one pass, any order).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

IS_CORRECTIONS = ("none", "tis", "mis")
IS_LEVELS = ("token", "sequence")


def segment_sum(values: torch.Tensor, seq_index: torch.Tensor, n_seq: int) -> torch.Tensor:
    """[n_seq] sums of the [N] values of each sequence (seq_index[i] = the sequence of token i)."""
    return torch.zeros(n_seq, dtype=values.dtype, device=values.device).index_add_(0, seq_index, values)


class Mismatch(NamedTuple):
    weight: Optional[torch.Tensor]  # [N] fp32 weight c on the policy-gradient term (None: no correction)
    flagged: Optional[torch.Tensor]  # [N] bool: truncated (tis) or masked (mis)
    kl: torch.Tensor  # [N] fp32 k3 of KL(pi_rollout || pi_old), 0 on invalid tokens


def mismatch_terms(old_logp: torch.Tensor, rollout_logp: torch.Tensor, valid: torch.Tensor, correction: str,
                   level: str, cap: float, seq_index: Optional[torch.Tensor] = None,
                   n_seq: int = 0) -> Mismatch:
    """Per-token correction weights and stats on flat [N] tensors (see the module docstring).

    seq_index [N] int64 (needed for level "sequence") maps each token to its sequence."""
    log_ratio = torch.where(valid, old_logp.float() - rollout_logp.float(), 0.0)
    kl = torch.where(valid, torch.exp(log_ratio) - 1.0 - log_ratio, 0.0)
    if correction == "none":
        return Mismatch(None, None, kl)
    if level == "sequence":
        log_ratio = segment_sum(log_ratio, seq_index, n_seq)[seq_index]
    log_cap = math.log(cap)
    if correction == "tis":
        flagged = log_ratio > log_cap
        weight = torch.exp(log_ratio.clamp(max=log_cap))
    else:  # "mis"
        flagged = log_ratio.abs() > log_cap
        weight = torch.where(flagged, 0.0, torch.exp(log_ratio.clamp(-log_cap, log_cap)))
    return Mismatch(torch.where(valid, weight, 0.0), flagged & valid, kl)


def mismatch_stats(mismatch: Optional[Mismatch], correction: str, n_valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """mismatch_kl and the share truncated / masked, means over n_valid tokens (0-dim fp32)."""
    if mismatch is None:
        return {}
    stats = {"mismatch_kl": mismatch.kl.sum() / n_valid}
    if correction != "none":
        name = "is_truncated_frac" if correction == "tis" else "is_masked_frac"
        stats[name] = mismatch.flagged.sum(dtype=torch.float32) / n_valid
    return stats
