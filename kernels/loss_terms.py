"""The per-token policy-loss math, once: Triton helpers for the loss kernels and their PyTorch twin.

Per valid token (r = exp(logp - old_logp), A the advantage):
    pg   = max(-A*r, -A*clip(r, 1 - clip_low, 1 + clip_high));  with dual_clip=c and A < 0: min(pg, -A*c)
    kl   = k1: logp - ref | k2: (logp - ref)^2 / 2 | k3: exp(ref - logp) - (ref - logp) - 1
    loss = pg + kl_coef * kl - entropy_coef * entropy
The Triton helpers (`clipped_pg`, `kl_and_grad`) are called by both loss kernels
(kernels/policy_loss.py, kernels/fused_policy_loss.py); `token_loss_terms` is the same math in
PyTorch for their torch paths. The plain reference (kernels/reference.py) is written separately.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fastzero.kernels._utils import HAS_TRITON, tl, triton

KL_TYPES = ("k1", "k2", "k3")


class TokenLossTerms(NamedTuple):
    loss: torch.Tensor  # [B, T] per-token loss (unweighted)
    dloss_dlogp: torch.Tensor  # [B, T] d loss / d logp of the same token
    dloss_dentropy: float  # d loss / d entropy, the same for every token: -entropy_coef
    clipped: torch.Tensor  # [B, T] bool, gradient zeroed by the ordinary clip
    dual_clipped: torch.Tensor  # [B, T] bool, gradient zeroed by the dual clip
    kl_old: torch.Tensor  # [B, T] (r - 1) - log r
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
) -> TokenLossTerms:
    """Elementwise loss and gradient of every token, in fp32, no masking (clean padding first).

    advantages broadcasts ([B, 1] or [B, T]). The gradient is written out analytically (the same
    formulas the Triton kernel uses): d pg/d logp = -A*r where no clip is active, else 0;
    d kl/d logp = 1 (k1), logp - ref (k2), 1 - exp(ref - logp) (k3).
    """
    lp, old, adv = logp.float(), old_logp.float(), advantages.float()
    ratio = torch.exp(lp - old)
    clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    if dual_clip is not None:
        dual_clipped = (adv < 0) & (ratio > dual_clip)
        pg = torch.where(dual_clipped, -adv * dual_clip, pg)
    else:
        dual_clipped = torch.zeros_like(clipped)
    loss = pg
    dlogp = torch.where(clipped | dual_clipped, 0.0, -adv * ratio)
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
    kl_old = (ratio - 1.0) - (lp - old)
    return TokenLossTerms(loss, dlogp, -entropy_coef, clipped, dual_clipped, kl_old, kl_ref)


if HAS_TRITON:
    @triton.jit
    def clipped_pg(lp, old, adv, clip_low, clip_high, dual_clip, HAS_DUAL_CLIP: tl.constexpr):
        """PPO's clipped policy-gradient term per token, and its derivative in logp.

        Returns (ratio, loss, dloss/dlogp, clipped, dual): `clipped`/`dual` mark tokens whose gradient
        the ordinary / dual clip zeroes (dual is all False without a dual clip). Shared by this
        kernel and the fused hidden-states loss (kernels/fused_policy_loss.py).
        """
        ratio = tl.exp(lp - old)
        clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
        clipped_ratio = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        loss = tl.maximum(-adv * ratio, -adv * clipped_ratio)
        dual = clipped & (ratio != ratio)  # all False (ratio is never NaN here)
        if HAS_DUAL_CLIP:
            dual = (adv < 0) & (ratio > dual_clip)
            loss = tl.where(dual, -adv * dual_clip, loss)
        dlogp = tl.where(clipped | dual, 0.0, -adv * ratio)
        return ratio, loss, dlogp, clipped, dual

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
