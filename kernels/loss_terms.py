"""The per-token policy-loss math, once: Triton helpers for both loss kernels and their PyTorch twin.

Per valid token, with d = logp - old_logp, A the advantage and c the mismatch-correction weight
(kernels/mismatch.py; 1 without a correction):
    ppo    r = exp(d);  pg = max(-A*r, -A*clip(r, 1 - clip_low, 1 + clip_high))
           with dual_clip and A < 0: pg = min(pg, -A*dual_clip)           d pg/d logp = -A*r or 0
    gspo   the same clipped surrogate on the sequence ratio s = exp(mean of d over the sequence's
           valid tokens), GSPO-token form: r_t = sg(s) * exp(logp_t - sg(logp_t)), so the value is
           s, the clip decision is per sequence and d pg/d logp_t = -A*s (0 where clipped): every
           token carries the sequence's gradient. With seq-mean-token-mean weights and one advantage
           per sequence this is exactly GSPO's sequence objective (Zheng et al. 2025, eq. 5-7).
    cispo  w = sg(clip(r, 1 - clip_low, 1 + clip_high)) (with dual_clip and A < 0 also capped at
           dual_clip); pg = -w * A * logp, a REINFORCE term whose gradient is never zeroed
           (MiniMax-M1, CISPO). The loss value is -w*A*logp, not a ratio surrogate.
    kl   = k1: logp - ref | k2: (logp - ref)^2 / 2 | k3: exp(ref - logp) - (ref - logp) - 1
    loss = c * pg + kl_coef * kl - entropy_coef * entropy
The correction weight multiplies the policy-gradient term only (as veRL's rollout IS weights do):
the KL and entropy terms are not importance estimates of the policy gradient.

`clipped` marks tokens whose gradient the ordinary clip zeroes (ppo, gspo) or whose weight it
clipped (cispo: r outside [1 - clip_low, 1 + clip_high]); `dual` tokens the dual clip caught.
The Triton helpers (`policy_term`, `kl_and_grad`) are called by both loss kernels
(kernels/policy_loss.py, kernels/fused_policy_loss.py); `token_loss_terms` is the same math in
PyTorch for their torch paths. The plain reference (kernels/reference.py) is written separately.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from fastzero.kernels._utils import HAS_TRITON, check_choice, check_number, tl, triton
from fastzero.kernels.mismatch import IS_CORRECTIONS, IS_LEVELS

LOSS_MODES = ("ppo", "gspo", "cispo")
KL_TYPES = ("k1", "k2", "k3")


class TokenLossTerms(NamedTuple):
    loss: torch.Tensor  # [B, T] per-token loss (unweighted)
    dloss_dlogp: torch.Tensor  # [B, T] d loss / d logp of the same token
    dloss_dentropy: float  # d loss / d entropy, the same for every token: -entropy_coef
    clipped: torch.Tensor  # [B, T] bool, gradient zeroed by the ordinary clip
    dual_clipped: torch.Tensor  # [B, T] bool, gradient zeroed by the dual clip
    kl_old: torch.Tensor  # [B, T] (r - 1) - log r of the token ratio r = exp(logp - old_logp)
    kl_ref: torch.Tensor | None  # [B, T] the KL term, when ref_logp is given


def token_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy_coef: float = 0.0,
    loss_mode: str = "ppo",
    seq_log_ratio: Optional[torch.Tensor] = None,
    is_weight: Optional[torch.Tensor] = None,
) -> TokenLossTerms:
    """Elementwise loss and gradient of every token, in fp32, no masking (clean padding first).

    advantages broadcasts ([B, 1] or [B, T]). gspo needs seq_log_ratio (each token's sequence mean
    of logp - old_logp, broadcastable); is_weight is the correction weight c (None: 1). The
    gradient is written out analytically (the same formulas the Triton kernels use, see the module
    docstring); d kl/d logp = 1 (k1), logp - ref (k2), 1 - exp(ref - logp) (k3).
    """
    lp, old, adv = logp.float(), old_logp.float(), advantages.float()
    log_ratio = seq_log_ratio.float() if loss_mode == "gspo" else lp - old
    ratio = torch.exp(log_ratio).expand_as(lp)
    low, high = 1.0 - clip_low, 1.0 + clip_high
    if loss_mode == "cispo":
        weight = ratio.clamp(low, high)
        clipped = (ratio < low) | (ratio > high)
        dual_clipped = (adv < 0) & (weight > dual_clip) if dual_clip is not None else torch.zeros_like(clipped)
        weight = torch.where(dual_clipped, float(dual_clip or 0.0), weight)
        pg, dlogp = -weight * adv * lp, -weight * adv
    else:
        clipped = ((adv > 0) & (ratio > high)) | ((adv < 0) & (ratio < low))
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(low, high))
        if dual_clip is not None:
            dual_clipped = (adv < 0) & (ratio > dual_clip)
            pg = torch.where(dual_clipped, -adv * dual_clip, pg)
        else:
            dual_clipped = torch.zeros_like(clipped)
        dlogp = torch.where(clipped | dual_clipped, 0.0, -adv * ratio)
    if is_weight is not None:
        pg, dlogp = pg * is_weight, dlogp * is_weight
    loss = pg
    kl_ref = None
    if ref_logp is not None:
        diff = lp - ref_logp.float()
        if kl_type == "k1":
            kl_ref, dkl = diff, torch.ones_like(diff)
        elif kl_type == "k2":
            kl_ref, dkl = 0.5 * diff * diff, diff
        else:
            back = torch.exp(-diff)
            kl_ref, dkl = back + diff - 1.0, 1.0 - back
        loss = loss + kl_coef * kl_ref
        dlogp = dlogp + kl_coef * dkl
    if entropy is not None:
        loss = loss - entropy_coef * entropy.float()
    kl_old = (torch.exp(lp - old) - 1.0) - (lp - old)
    return TokenLossTerms(loss, dlogp, -entropy_coef, clipped, dual_clipped, kl_old, kl_ref)


if HAS_TRITON:
    @triton.jit
    def policy_term(lp, log_ratio, adv, is_weight, clip_low, clip_high, dual_clip, HAS_DUAL_CLIP: tl.constexpr,
                    MODE: tl.constexpr):
        """The policy-gradient term per token and its derivative in logp (module docstring).

        log_ratio: logp - old_logp (ppo, cispo) or the token's sequence mean of it (gspo); is_weight:
        the mismatch-correction weight c (1.0 without one). MODE: the index in LOSS_MODES. Returns
        (c * loss, c * dloss/dlogp, clipped, dual); dual is all False without a dual clip.
        """
        ratio = tl.exp(log_ratio)
        low = 1.0 - clip_low
        high = 1.0 + clip_high
        if MODE == 2:  # cispo: a clipped, stop-gradient weight on -A * logp
            weight = tl.minimum(tl.maximum(ratio, low), high)
            clipped = (ratio < low) | (ratio > high)
            dual = clipped & (ratio != ratio)  # all False (ratio is never NaN here)
            if HAS_DUAL_CLIP:
                dual = (adv < 0) & (weight > dual_clip)
                weight = tl.where(dual, dual_clip, weight)
            loss = -weight * adv * lp
            dlogp = -weight * adv
        else:  # ppo, gspo: the clipped surrogate (gspo's ratio is its sequence's)
            clipped = ((adv > 0) & (ratio > high)) | ((adv < 0) & (ratio < low))
            loss = tl.maximum(-adv * ratio, -adv * tl.minimum(tl.maximum(ratio, low), high))
            dual = clipped & (ratio != ratio)
            if HAS_DUAL_CLIP:
                dual = (adv < 0) & (ratio > dual_clip)
                loss = tl.where(dual, -adv * dual_clip, loss)
            dlogp = tl.where(clipped | dual, 0.0, -adv * ratio)
        return loss * is_weight, dlogp * is_weight, clipped, dual

    @triton.jit
    def kl_and_grad(diff, KL_TYPE: tl.constexpr):
        """KL estimate to the reference and its derivative in logp, from diff = logp - ref_logp.

        k1 = diff; k2 = diff^2 / 2; k3 = exp(-diff) + diff - 1 (Schulman's unbiased, >= 0 estimator).
        Shared by both loss kernels (kernels/policy_loss.py, kernels/fused_policy_loss.py).
        """
        if KL_TYPE == 0:
            kl = diff
            dkl = diff * 0.0 + 1.0
        elif KL_TYPE == 1:
            kl = 0.5 * diff * diff
            dkl = diff
        else:
            back = tl.exp(-diff)
            kl = back + diff - 1.0
            dkl = 1.0 - back
        return kl, dkl


class LossConfig(NamedTuple):
    """The scalar options of both policy losses (one definition, checked once per call)."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_type: str = "k3"
    entropy_coef: float = 0.0
    loss_mode: str = "ppo"
    is_correction: str = "none"
    is_level: str = "token"
    is_cap: float = 2.0
    temperature: float = 1.0

    def checked(self, *, has_ref: bool, has_rollout: bool, has_entropy: bool = True) -> "LossConfig":
        """Raises a ValueError naming the bad option; returns the config with float numbers."""
        check_number("clip_low", self.clip_low, minimum=0.0)
        check_number("clip_high", self.clip_high, minimum=0.0)
        if self.dual_clip is not None:
            check_number("dual_clip", self.dual_clip, above=1.0)
        check_number("kl_coef", self.kl_coef, minimum=0.0)
        check_choice("kl_type", self.kl_type, KL_TYPES)
        check_number("entropy_coef", self.entropy_coef)
        check_choice("loss_mode", self.loss_mode, LOSS_MODES)
        check_choice("is_correction", self.is_correction, IS_CORRECTIONS)
        check_choice("is_level", self.is_level, IS_LEVELS)
        check_number("is_cap", self.is_cap, minimum=1.0)
        check_number("temperature", self.temperature, above=0.0)
        if self.kl_coef != 0 and not has_ref:
            raise ValueError(f"kl_coef={self.kl_coef} needs ref_logp (the reference model's log-probs)")
        if self.entropy_coef != 0 and not has_entropy:
            raise ValueError(f"entropy_coef={self.entropy_coef} needs entropy (per-token entropies)")
        if self.is_correction != "none" and not has_rollout:
            raise ValueError(f"is_correction={self.is_correction!r} needs rollout_logp (the sampler's log-probs)")
        return self._replace(**{k: float(v) for k, v in self._asdict().items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
