"""Fused PPO/GRPO clipped policy loss with KL and entropy terms: one kernel, forward and backward.

Per valid token (r = exp(logp - old_logp), A the advantage):
    pg   = max(-A*r, -A*clip(r, 1 - clip_low, 1 + clip_high));  with dual_clip=c and A < 0: min(pg, -A*c)
    kl   = k1: logp - ref | k2: (logp - ref)^2 / 2 | k3: exp(ref - logp) - (ref - logp) - 1
    loss = pg + kl_coef * kl - entropy_coef * entropy
and the batch loss is sum(token_weight * loss), where token_weight [B, T] encodes the aggregation
(kernels/aggregation.py, the one definition: the caller computes it over the whole mini-batch and
slices it per micro-batch, so gradient accumulation needs no renormalizing).

Because the loss is a weighted sum of per-token terms, the forward kernel also writes d loss/d logp
(and d loss/d entropy) per token; backward only multiplies them by the upstream scalar. One
program per row loops over T and
also emits per-row partial sums (loss, clipped tokens, dual-clipped tokens, KL to old, KL to ref,
entropy), reduced in torch without atomics, so results are deterministic.

Stats are detached 0-dim fp32 tensors (no host sync; call .item() when logging), means over valid
tokens (0 when there are none):
    clip_frac       share of tokens whose gradient the ordinary clip zeroes (A>0 & r>1+clip_high, or
                    A<0 & r<1-clip_low)
    dual_clip_frac  share zeroed by the dual clip (A<0 & r>dual_clip); only with dual_clip
    approx_kl_old   k3 estimate of KL(pi_old || pi): (r - 1) - log r. Chosen over verl's
                    mean(old - logp) because it is never negative and has lower variance.
    kl_ref          mean of the KL term used in the loss; only with ref_logp
    entropy         mean entropy; only with entropy
Kept: token-level ratios, dual clip, k1/k2/k3, four aggregations. Dropped: sequence-level ratios
(GSPO), soft gates (SAPO), importance-sampling corrections; the trainer does not use them.

The per-token math is exported for a fused hidden-states path: `token_loss_terms` gives each
token's loss and d loss/d logp, `token_weights` each token's coefficient in the aggregate, so
dL/dlogp[b, t] = token_weights[b, t] * token_loss_terms(...).dloss_dlogp[b, t].
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fastzero.kernels import reference
from fastzero.kernels._dispatch import backend_for, triton_importable
from fastzero.kernels._utils import FLOAT_DTYPES, MASK_DTYPES, check_number, check_tensor, check_token_weight
from fastzero.kernels.aggregation import AGGREGATIONS, check_aggregation, token_weights

KL_TYPES = ("k1", "k2", "k3")
# Column order of the per-row partial sums the kernel writes.
_LOSS, _CLIPPED, _DUAL_CLIPPED, _KL_OLD, _KL_REF, _ENTROPY = range(6)
_NUM_PARTIALS = 6


# ---- the per-token math, shared by the torch path and a fused hidden-states path -----------------


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


# ---- the Triton kernel ----------------------------------------------------------------------------

if triton_importable():
    import triton
    import triton.language as tl

    @triton.jit
    def _clipped_pg(lp, old, adv, clip_low, clip_high, dual_clip, HAS_DUAL_CLIP: tl.constexpr):
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
    def _kl_and_grad(diff, KL_TYPE: tl.constexpr):
        """KL estimate to the reference and its derivative in logp, from diff = logp - ref_logp.

        k1 = diff; k2 = diff^2 / 2; k3 = exp(-diff) + diff - 1 (Schulman's unbiased, >= 0 estimator).
        Shared by this kernel and the fused hidden-states loss (kernels/fused_policy_loss.py).
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

    @triton.jit
    def _policy_loss_fwd_kernel(
        # inputs, [B, T] contiguous unless noted
        logp_ptr, old_ptr, adv_ptr, mask_ptr, ref_ptr, ent_ptr,
        weight_ptr,  # [B, T] fp32 token weights (the aggregation), 0 on masked tokens
        # outputs
        dlogp_ptr, dent_ptr,  # [B, T] fp32, already multiplied by the token weight
        partials_ptr,  # [B, 6] fp32 per-row sums
        # shapes and strides
        T, adv_stride_b, adv_stride_t,  # advantages [B] have strides (1, 0), [B, T] (T, 1)
        # scalars
        clip_low, clip_high, dual_clip, kl_coef, entropy_coef,
        # compile-time switches
        HAS_REF: tl.constexpr, HAS_ENTROPY: tl.constexpr, HAS_DUAL_CLIP: tl.constexpr,
        KL_TYPE: tl.constexpr,  # 0: k1, 1: k2, 2: k3
        WRITE_DLOGP: tl.constexpr, WRITE_DENT: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_start = row * T
        acc_loss = tl.zeros([BLOCK_T], dtype=tl.float32)
        acc_clipped = tl.zeros([BLOCK_T], dtype=tl.float32)
        acc_dual = tl.zeros([BLOCK_T], dtype=tl.float32)
        acc_kl_old = tl.zeros([BLOCK_T], dtype=tl.float32)
        acc_kl_ref = tl.zeros([BLOCK_T], dtype=tl.float32)
        acc_ent = tl.zeros([BLOCK_T], dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            cols = start + tl.arange(0, BLOCK_T)
            offs = row_start + cols
            valid = tl.load(mask_ptr + offs, mask=cols < T, other=0) != 0
            weight = tl.load(weight_ptr + offs, mask=valid, other=0.0)
            # Loading with mask=valid turns padding garbage (inf, NaN) into 0 before any math.
            lp = tl.load(logp_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            adv = tl.load(adv_ptr + row * adv_stride_b + cols * adv_stride_t, mask=valid, other=0.0)
            adv = adv.to(tl.float32)
            ratio, loss, dlogp, clipped, dual = _clipped_pg(lp, old, adv, clip_low, clip_high, dual_clip,
                                                            HAS_DUAL_CLIP)
            if HAS_DUAL_CLIP:
                acc_dual += tl.where(valid & dual, 1.0, 0.0)
            if HAS_REF:
                diff = lp - tl.load(ref_ptr + offs, mask=valid, other=0.0).to(tl.float32)
                kl, dkl = _kl_and_grad(diff, KL_TYPE)
                loss += kl_coef * kl
                dlogp += kl_coef * dkl
                acc_kl_ref += tl.where(valid, kl, 0.0)
            if HAS_ENTROPY:
                ent = tl.load(ent_ptr + offs, mask=valid, other=0.0).to(tl.float32)
                loss -= entropy_coef * ent
                acc_ent += ent
            acc_loss += tl.where(valid, loss * weight, 0.0)
            acc_clipped += tl.where(valid & clipped, 1.0, 0.0)
            acc_kl_old += tl.where(valid, (ratio - 1.0) - (lp - old), 0.0)
            if WRITE_DLOGP:
                tl.store(dlogp_ptr + offs, tl.where(valid, dlogp * weight, 0.0), mask=cols < T)
            if WRITE_DENT:
                tl.store(dent_ptr + offs, tl.where(valid, -entropy_coef * weight, 0.0), mask=cols < T)
        out = partials_ptr + row * 6
        tl.store(out + 0, tl.sum(acc_loss, axis=0))
        tl.store(out + 1, tl.sum(acc_clipped, axis=0))
        tl.store(out + 2, tl.sum(acc_dual, axis=0))
        tl.store(out + 3, tl.sum(acc_kl_old, axis=0))
        tl.store(out + 4, tl.sum(acc_kl_ref, axis=0))
        tl.store(out + 5, tl.sum(acc_ent, axis=0))


def _forward_triton(logp, old_logp, adv, valid_u8, ref_logp, entropy, token_weight, clip_low, clip_high,
                    dual_clip, kl_coef, kl_type, entropy_coef, write_dlogp, write_dent):
    batch, length = logp.shape
    dlogp = torch.empty((batch, length), device=logp.device, dtype=torch.float32) if write_dlogp else None
    dent = torch.empty((batch, length), device=logp.device, dtype=torch.float32) if write_dent else None
    partials = torch.empty((batch, _NUM_PARTIALS), device=logp.device, dtype=torch.float32)
    block_t = min(triton.next_power_of_2(length), 1024)
    _policy_loss_fwd_kernel[(batch,)](
        logp, old_logp, adv, valid_u8,
        ref_logp if ref_logp is not None else logp, entropy if entropy is not None else logp,
        token_weight,
        dlogp if dlogp is not None else partials, dent if dent is not None else partials, partials,
        length, *((length, 1) if adv.dim() == 2 else (1, 0)),
        float(clip_low), float(clip_high), float(dual_clip or 0.0), float(kl_coef), float(entropy_coef),
        HAS_REF=ref_logp is not None, HAS_ENTROPY=entropy is not None, HAS_DUAL_CLIP=dual_clip is not None,
        KL_TYPE=KL_TYPES.index(kl_type), WRITE_DLOGP=write_dlogp, WRITE_DENT=write_dent,
        BLOCK_T=block_t, num_warps=4 if block_t <= 512 else 8,
    )
    return dlogp, dent, partials


def _forward_torch(logp, old_logp, adv, valid_u8, ref_logp, entropy, token_weight, clip_low, clip_high,
                   dual_clip, kl_coef, kl_type, entropy_coef, write_dlogp, write_dent):
    valid = valid_u8 != 0

    def clean(x):
        return None if x is None else torch.where(valid, x.float(), 0.0)

    adv = adv[:, None] if adv.dim() == 1 else adv
    terms = token_loss_terms(
        clean(logp), clean(old_logp), clean(adv.expand_as(logp)), ref_logp=clean(ref_logp),
        entropy=clean(entropy), clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
        kl_coef=kl_coef, kl_type=kl_type, entropy_coef=entropy_coef,
    )
    weights = torch.where(valid, token_weight, 0.0)
    zeros = torch.zeros_like(weights)

    def row_sum(x):
        return zeros[:, 0] if x is None else torch.where(valid, x.float(), 0.0).sum(dim=1)

    partials = torch.stack([
        (terms.loss * weights).sum(dim=1), row_sum(terms.clipped), row_sum(terms.dual_clipped),
        row_sum(terms.kl_old), row_sum(terms.kl_ref), row_sum(clean(entropy)),
    ], dim=1)
    dlogp = terms.dloss_dlogp * weights if write_dlogp else None
    dent = terms.dloss_dentropy * weights if write_dent else None
    return dlogp, dent, partials


class _PolicyLossFunction(torch.autograd.Function):
    """Forward writes the per-token gradients; backward scales them by the upstream scalar."""

    @staticmethod
    def forward(ctx, logp, entropy, old_logp, adv, valid_u8, ref_logp, token_weight, clip_low, clip_high,
                dual_clip, kl_coef, kl_type, entropy_coef, engine):
        write_dlogp = ctx.needs_input_grad[0]
        write_dent = entropy is not None and ctx.needs_input_grad[1]
        forward = _forward_triton if engine == "triton" else _forward_torch
        dlogp, dent, partials = forward(
            logp, old_logp, adv, valid_u8, ref_logp, entropy, token_weight, clip_low, clip_high,
            dual_clip, kl_coef, kl_type, entropy_coef, write_dlogp, write_dent,
        )
        ctx.save_for_backward(dlogp, dent)
        ctx.dtypes = (logp.dtype, None if entropy is None else entropy.dtype)
        ctx.mark_non_differentiable(partials)
        return partials[:, _LOSS].sum(), partials

    @staticmethod
    def backward(ctx, grad_loss, _grad_partials):
        dlogp, dent = ctx.saved_tensors
        grad_logp = None if dlogp is None else (dlogp * grad_loss).to(ctx.dtypes[0])
        grad_ent = None if dent is None else (dent * grad_loss).to(ctx.dtypes[1])
        return (grad_logp, grad_ent) + (None,) * 12


# ---- the public function --------------------------------------------------------------------------


def _resolve_token_weight(token_weight, mask, agg, norm_len, shape, device) -> torch.Tensor | None:
    """The [B, T] token weights: given (checked), or computed from agg/norm_len (None for reference)."""
    if token_weight is None:
        agg = "token-mean" if agg is None else agg
        check_aggregation(agg, norm_len)
        return token_weights(mask, agg, norm_len)
    if agg is not None or norm_len is not None:
        raise ValueError("pass token_weight (precomputed over the mini-batch) or agg/norm_len, not both")
    check_tensor("token_weight", token_weight, shape, device, FLOAT_DTYPES + (torch.float64,))
    check_token_weight(token_weight)
    return token_weight


def _validate(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, dual_clip, kl_coef,
              kl_type, entropy, entropy_coef) -> None:
    if not isinstance(logp, torch.Tensor):
        raise TypeError(f"logp must be a torch.Tensor, got {type(logp).__name__}")
    if logp.dim() != 2 or logp.numel() == 0:
        raise ValueError(f"logp must be a non-empty [B, T] tensor, got shape {list(logp.shape)}")
    shape, device = tuple(logp.shape), logp.device
    check_tensor("logp", logp, shape, device)
    check_tensor("old_logp", old_logp, shape, device)
    if isinstance(advantages, torch.Tensor) and advantages.dim() == 1:
        check_tensor("advantages", advantages, shape[:1], device)
    else:
        check_tensor("advantages", advantages, shape, device)
    check_tensor("mask", mask, shape, device, MASK_DTYPES)
    if ref_logp is not None:
        check_tensor("ref_logp", ref_logp, shape, device)
    if entropy is not None:
        check_tensor("entropy", entropy, shape, device)
    check_number("clip_low", clip_low, minimum=0.0)
    check_number("clip_high", clip_high, minimum=0.0)
    if dual_clip is not None:
        check_number("dual_clip", dual_clip, above=1.0)
    check_number("kl_coef", kl_coef, minimum=0.0)
    check_number("entropy_coef", entropy_coef)
    if kl_type not in KL_TYPES:
        raise ValueError(f"kl_type={kl_type!r} is not one of {', '.join(KL_TYPES)}")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (the reference model's log-probs)")
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (per-token entropies)")


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
    agg: str | None = None,
    norm_len: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum(token_weight * per-token clipped loss) (fp32 scalar) and its stats; see the module docstring.

    logp, old_logp, ref_logp, entropy: [B, T] fp32/bf16/fp16; advantages: [B] (one per sequence)
    or [B, T]; mask: [B, T] bool or numeric, nonzero = valid token. token_weight: [B, T] float,
    finite, >= 0: `token_weights(mask, agg, norm_len)` computed over the whole mini-batch and
    sliced to this micro-batch; without it the weights come from agg (default "token-mean") and
    norm_len over this call's tensors. Gradients flow to logp and entropy only. An all-masked
    batch gives loss 0 and zero gradients.
    """
    _validate(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, dual_clip, kl_coef,
              kl_type, entropy, entropy_coef)
    token_weight = _resolve_token_weight(token_weight, mask, agg, norm_len, tuple(logp.shape), logp.device)
    backend = backend_for(logp.device)
    if backend == "reference":
        return reference.policy_loss(
            logp, old_logp, advantages, mask, token_weight=token_weight, ref_logp=ref_logp, clip_low=clip_low,
            clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef, kl_type=kl_type, entropy=entropy,
            entropy_coef=entropy_coef,
        )
    valid_u8 = (mask != 0).to(torch.uint8).contiguous()

    def contiguous(x):
        return None if x is None else x.detach().contiguous()

    loss, partials = _PolicyLossFunction.apply(
        logp.contiguous(), None if entropy is None else entropy.contiguous(), contiguous(old_logp),
        contiguous(advantages), valid_u8, contiguous(ref_logp), token_weight.detach().float().contiguous(),
        clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef, backend,
    )
    n_valid = valid_u8.sum(dtype=torch.float32).clamp(min=1.0)
    sums = partials.sum(dim=0) / n_valid
    stats = {"clip_frac": sums[_CLIPPED], "approx_kl_old": sums[_KL_OLD]}
    if dual_clip is not None:
        stats["dual_clip_frac"] = sums[_DUAL_CLIPPED]
    if ref_logp is not None:
        stats["kl_ref"] = sums[_KL_REF]
    if entropy is not None:
        stats["entropy"] = sums[_ENTROPY]
    return loss, stats
