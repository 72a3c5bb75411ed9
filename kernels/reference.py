"""Plain PyTorch twins of every kernel in fastzero.kernels, with the same signatures.

They are the readable definition of what each kernel computes, the oracle the tests compare the
kernels with (run in float64), and the path FASTZERO_KERNELS=reference forces. They favour clarity
over memory: fused_logprobs here materializes the [N, V] logits.
"""
from __future__ import annotations

import torch

from fastzero.kernels.aggregation import token_weights

# ---- log-probs and entropy from hidden states (kernels/logprob.py) --------------------------------


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> "torch.Tensor | tuple[torch.Tensor, torch.Tensor]":
    """log_softmax(hidden @ weight.T / temperature) at `targets`, and the entropy of that softmax.

    Materializes the [N, V] logits in fp32 (float64 when given float64, so tests can use it as the
    oracle). Returns logp [N] (and entropy [N]) in that compute dtype.
    """
    compute_dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden.to(compute_dtype) @ weight.to(compute_dtype).T / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    logp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    entropy = -(logprobs.exp() * logprobs).sum(dim=-1)
    return logp, entropy


# ---- policy loss (kernels/policy_loss.py) ---------------------------------------------------------


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_weight: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    loss_mode: str = "ppo",
    rollout_logp: torch.Tensor | None = None,
    is_correction: str = "none",
    is_level: str = "token",
    is_cap: float = 2.0,
    agg: str | None = None,
    norm_len: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy loss written the obvious way on [B, T] (a row is a sequence); autograd gives the
    gradients, stop-gradients are .detach().

    loss = sum(token_weight * per-token loss); without token_weight it is
    token_weights(mask, agg or "token-mean", norm_len), the one definition of the aggregations.
    Computes in float64 when logp is float64 (the tests' oracle), else in float32. Arguments are
    not validated here: fastzero.kernels.policy_loss.policy_loss does that before dispatching.
    Masked positions are replaced by 0 before any math, so padding garbage (inf, NaN) cannot leak
    into the loss or, through 0 * inf, into the gradients.
    """
    compute = torch.float64 if logp.dtype == torch.float64 else torch.float32
    valid = mask != 0

    def clean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x.to(compute), 0.0)

    lp, old = clean(logp), clean(old_logp)
    adv = advantages[:, None].expand_as(logp) if advantages.dim() == 1 else advantages
    adv = clean(adv)
    token_ratio = torch.exp(lp - old)
    if loss_mode == "gspo":  # GSPO-token: value = the sequence ratio, gradient through each token
        n_tokens = valid.sum(dim=1, keepdim=True).clamp(min=1)
        seq_ratio = torch.exp((lp - old).sum(dim=1, keepdim=True) / n_tokens)
        ratio = seq_ratio.detach() * torch.exp(lp - lp.detach())
    else:
        ratio = token_ratio

    if loss_mode == "cispo":  # REINFORCE with a clipped, stop-gradient importance weight
        weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
        clipped = weight != ratio.detach()
        dual_clipped = torch.zeros_like(clipped)
        if dual_clip is not None:
            dual_clipped = (adv < 0) & (weight > dual_clip)
            weight = torch.where(dual_clipped, dual_clip, weight)
        pg = -weight * adv * lp
    else:
        loss_unclipped = -adv * ratio
        loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
        pg = torch.maximum(loss_unclipped, loss_clipped)
        clipped = loss_clipped > loss_unclipped
        if dual_clip is not None:
            dual_bound = -adv * dual_clip
            dual_clipped = (adv < 0) & (pg > dual_bound)
            pg = torch.where(adv < 0, torch.minimum(pg, dual_bound), pg)

    stats = {}
    if rollout_logp is not None:  # rollout/training mismatch: l = log pi_old - log pi_rollout
        log_rho = old - clean(rollout_logp)
        stats["mismatch_kl"] = _valid_mean(torch.exp(log_rho) - 1.0 - log_rho, valid)
        if is_level == "sequence":
            log_rho = log_rho.sum(dim=1, keepdim=True).expand_as(log_rho)
        rho, cap = torch.exp(log_rho), float(is_cap)
        if is_correction == "tis":
            stats["is_truncated_frac"] = _valid_mean((rho > cap).to(compute), valid)
            pg = pg * rho.clamp(max=cap)
        elif is_correction == "mis":
            kept = (rho >= 1.0 / cap) & (rho <= cap)
            stats["is_masked_frac"] = _valid_mean((~kept).to(compute), valid)
            pg = pg * torch.where(kept, rho, 0.0)
    token_loss = pg

    kl_ref = None
    if ref_logp is not None:
        diff = lp - clean(ref_logp)  # log pi - log pi_ref
        if kl_type == "k1":
            kl_ref = diff
        elif kl_type == "k2":
            kl_ref = 0.5 * diff**2
        else:
            kl_ref = torch.exp(-diff) + diff - 1.0
        token_loss = token_loss + kl_coef * kl_ref
    if entropy is not None:
        token_loss = token_loss - entropy_coef * clean(entropy)

    if token_weight is None:
        token_weight = token_weights(mask, agg or "token-mean", norm_len)
    loss = (clean(token_weight) * token_loss).sum()

    stats = {
        "clip_frac": _valid_mean(clipped.to(compute), valid),
        # k3 estimate of KL(pi_old || pi) from tokens sampled by pi_old: (r - 1) - log r.
        "approx_kl_old": _valid_mean((token_ratio - 1.0) - (lp - old), valid),
    } | stats
    if dual_clip is not None:
        stats["dual_clip_frac"] = _valid_mean(dual_clipped.to(compute), valid)
    if kl_ref is not None:
        stats["kl_ref"] = _valid_mean(kl_ref, valid)
    if entropy is not None:
        stats["entropy"] = _valid_mean(clean(entropy), valid)
    return loss, stats


def _valid_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid positions (0 when there are none), detached."""
    return (torch.where(valid, x, 0.0).sum() / valid.sum().clamp(min=1)).detach()


# ---- advantages (kernels/advantage.py) ------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, method: str = "grpo", eps: float = 1e-6
) -> torch.Tensor:
    """Per-sample advantages from the rewards of the other samples of the same prompt.

    Groups are contiguous runs of `group_size` rows. grpo: (r - mean) / (unbiased std + eps);
    dr_grpo: r - mean; rloo: r - mean of the group's other members. A group of one gets 0.
    """
    compute = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    grouped = rewards.to(compute).reshape(-1, group_size)
    if group_size == 1:
        return torch.zeros_like(grouped).reshape(-1)
    # Shifting by the group's first reward changes nothing mathematically, and makes a group of
    # equal rewards come out exactly 0 instead of rounding noise / (0 + eps).
    shifted = grouped - grouped[:, :1]
    mean = shifted.mean(dim=1, keepdim=True)
    if method == "grpo":
        adv = (shifted - mean) / (shifted.std(dim=1, keepdim=True) + eps)
    elif method == "dr_grpo":
        adv = shifted - mean
    else:  # "rloo"
        others_mean = (shifted.sum(dim=1, keepdim=True) - shifted) / (group_size - 1)
        adv = shifted - others_mean
    return adv.reshape(-1)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each row's valid tokens; returns (advantages, returns).

    Walks t from T-1 down to 0 for all rows at once. A masked position leaves the carried
    next-value and next-advantage untouched, so padding on either side is skipped and the value
    after a row's last valid token is 0. Masked positions get 0 in both outputs.
    """
    compute = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    valid = mask != 0
    r = torch.where(valid, rewards.to(compute), 0.0)
    v = torch.where(valid, values.to(compute), 0.0)
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv_t = torch.where(valid[:, t], delta + gamma * lam * next_adv, 0.0)
        advantages[:, t] = adv_t
        next_value = torch.where(valid[:, t], v[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
    returns = torch.where(valid, advantages + v, 0.0)
    return advantages, returns
