"""The policy loss (PPO clip, GSPO or CISPO, with KL, entropy and rollout-mismatch correction) on
[B, T] log-probs: one kernel, forward and backward.

The per-token math (kernels/loss_terms.py, shared with the fused hidden-states loss) is
    loss[b, t] = c * pg(logp, old_logp, A) + kl_coef * kl(logp, ref) - entropy_coef * entropy
and the batch loss is sum(token_weight * loss), where token_weight [B, T] encodes the aggregation
(kernels/aggregation.py, the one definition: the caller computes it over the whole mini-batch and
slices it per micro-batch, so gradient accumulation needs no renormalizing). A row is a sequence:
GSPO's sequence ratio and the sequence-level mismatch weights c (kernels/mismatch.py) are per-row
reductions computed with torch before the kernel, which reads them as data.

Because the loss is a weighted sum of per-token terms whose gradients are known in closed form,
the forward kernel also writes d loss/d logp (and d loss/d entropy) per token; backward only
multiplies them by the upstream scalar. One program per row loops over T and also emits per-row
sums (loss, clipped tokens, dual-clipped tokens, KL to old, KL to ref, entropy; kernels/_utils.py
names the columns), reduced in torch without atomics, so results are deterministic.

Stats are detached 0-dim fp32 tensors (no host sync; call .item() when logging), means over valid
tokens (0 when there are none):
    clip_frac       share of tokens the clip acted on: gradient zeroed (ppo: A>0 & r>1+clip_high, or
                    A<0 & r<1-clip_low; gspo: the same on the sequence ratio) or weight clipped (cispo)
    dual_clip_frac  share caught by the dual clip (A<0 & ratio/weight > dual_clip); only with dual_clip
    approx_kl_old   k3 estimate of KL(pi_old || pi) from the token ratio r: (r - 1) - log r. Chosen
                    over verl's mean(old - logp) because it is never negative and has lower variance.
    kl_ref          mean of the KL term used in the loss; only with ref_logp
    entropy         mean entropy; only with entropy
    mismatch_kl, is_truncated_frac / is_masked_frac   only with rollout_logp (kernels/mismatch.py)
Kept out: soft gates (SAPO), per-token clip ranges.
"""
from __future__ import annotations

import torch

from fastzero.kernels import reference
from fastzero.kernels._dispatch import backend_for
from fastzero.kernels._utils import (CLIPPED, DUAL_CLIPPED, ENTROPY, FLOAT_DTYPES, HAS_TRITON, KL_OLD, KL_REF, LOSS,
                                     MASK_DTYPES, NUM_STAT_SUMS, check_tensor, check_token_weight, tl, triton)
from fastzero.kernels.aggregation import AGGREGATIONS, check_aggregation, token_weights
from fastzero.kernels.loss_terms import KL_TYPES, LOSS_MODES, LossConfig, TokenLossTerms, token_loss_terms
from fastzero.kernels.mismatch import IS_CORRECTIONS, IS_LEVELS, mismatch_stats, mismatch_terms

__all__ = ["policy_loss", "token_loss_terms", "token_weights", "TokenLossTerms", "AGGREGATIONS", "KL_TYPES",
           "LOSS_MODES", "IS_CORRECTIONS", "IS_LEVELS"]

# ---- the Triton kernel ----------------------------------------------------------------------------

if HAS_TRITON:
    from fastzero.kernels._utils import (CLIPPED_C, DUAL_CLIPPED_C, ENTROPY_C, KL_OLD_C, KL_REF_C, LOSS_C,
                                         NUM_STAT_SUMS_C)
    from fastzero.kernels.loss_terms import kl_and_grad, policy_term

    @triton.jit
    def _policy_loss_fwd_kernel(
        # inputs, [B, T] contiguous unless noted
        logp_ptr, old_ptr, adv_ptr, mask_ptr, ref_ptr, ent_ptr,
        weight_ptr,  # [B, T] fp32 token weights (the aggregation), 0 on masked tokens
        is_weight_ptr,  # [B, T] fp32 mismatch-correction weights (HAS_IS_WEIGHT)
        seq_log_ratio_ptr,  # [B] fp32 each row's mean of logp - old_logp (gspo)
        # outputs
        dlogp_ptr, dent_ptr,  # [B, T] fp32, already multiplied by the token weight
        partials_ptr,  # [B, NUM_STAT_SUMS] fp32 per-row sums
        # shapes and strides
        T, adv_stride_b, adv_stride_t,  # advantages [B] have strides (1, 0), [B, T] (T, 1)
        # scalars
        clip_low, clip_high, dual_clip, kl_coef, entropy_coef,
        # compile-time switches
        HAS_REF: tl.constexpr, HAS_ENTROPY: tl.constexpr, HAS_DUAL_CLIP: tl.constexpr,
        HAS_IS_WEIGHT: tl.constexpr,
        KL_TYPE: tl.constexpr,  # index in KL_TYPES
        MODE: tl.constexpr,  # index in LOSS_MODES
        WRITE_DLOGP: tl.constexpr, WRITE_DENT: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_start = row * T
        seq_log_ratio = tl.load(seq_log_ratio_ptr + row) if MODE == 1 else 0.0
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
            log_ratio = (lp - old) * 0.0 + seq_log_ratio if MODE == 1 else lp - old
            is_weight = tl.load(is_weight_ptr + offs, mask=valid, other=0.0) if HAS_IS_WEIGHT else 1.0
            loss, dlogp, clipped, dual = policy_term(lp, log_ratio, adv, is_weight, clip_low, clip_high,
                                                     dual_clip, HAS_DUAL_CLIP, MODE)
            if HAS_DUAL_CLIP:
                acc_dual += tl.where(valid & dual, 1.0, 0.0)
            if HAS_REF:
                diff = lp - tl.load(ref_ptr + offs, mask=valid, other=0.0).to(tl.float32)
                kl, dkl = kl_and_grad(diff, KL_TYPE)
                loss += kl_coef * kl
                dlogp += kl_coef * dkl
                acc_kl_ref += tl.where(valid, kl, 0.0)
            if HAS_ENTROPY:
                ent = tl.load(ent_ptr + offs, mask=valid, other=0.0).to(tl.float32)
                loss -= entropy_coef * ent
                acc_ent += ent
            acc_loss += tl.where(valid, loss * weight, 0.0)
            acc_clipped += tl.where(valid & clipped, 1.0, 0.0)
            acc_kl_old += tl.where(valid, (tl.exp(lp - old) - 1.0) - (lp - old), 0.0)
            if WRITE_DLOGP:
                tl.store(dlogp_ptr + offs, tl.where(valid, dlogp * weight, 0.0), mask=cols < T)
            if WRITE_DENT:
                tl.store(dent_ptr + offs, tl.where(valid, -entropy_coef * weight, 0.0), mask=cols < T)
        out = partials_ptr + row * NUM_STAT_SUMS_C
        tl.store(out + LOSS_C, tl.sum(acc_loss, axis=0))
        tl.store(out + CLIPPED_C, tl.sum(acc_clipped, axis=0))
        tl.store(out + DUAL_CLIPPED_C, tl.sum(acc_dual, axis=0))
        tl.store(out + KL_OLD_C, tl.sum(acc_kl_old, axis=0))
        tl.store(out + KL_REF_C, tl.sum(acc_kl_ref, axis=0))
        tl.store(out + ENTROPY_C, tl.sum(acc_ent, axis=0))


def _forward_triton(logp, entropy, data: dict, cfg: LossConfig, write_dlogp, write_dent):
    batch, length = logp.shape
    adv, ref = data["adv"], data["ref"]
    dlogp = torch.empty((batch, length), device=logp.device, dtype=torch.float32) if write_dlogp else None
    dent = torch.empty((batch, length), device=logp.device, dtype=torch.float32) if write_dent else None
    partials = torch.empty((batch, NUM_STAT_SUMS), device=logp.device, dtype=torch.float32)
    block_t = min(triton.next_power_of_2(length), 1024)
    _policy_loss_fwd_kernel[(batch,)](
        logp, data["old"], adv, data["valid_u8"], ref if ref is not None else logp,
        entropy if entropy is not None else logp, data["token_weight"],
        data["is_weight"] if data["is_weight"] is not None else data["token_weight"],
        data["seq_log_ratio"] if data["seq_log_ratio"] is not None else data["token_weight"],
        dlogp if dlogp is not None else partials, dent if dent is not None else partials, partials,
        length, *((length, 1) if adv.dim() == 2 else (1, 0)),
        cfg.clip_low, cfg.clip_high, float(cfg.dual_clip or 0.0), cfg.kl_coef, cfg.entropy_coef,
        HAS_REF=ref is not None, HAS_ENTROPY=entropy is not None, HAS_DUAL_CLIP=cfg.dual_clip is not None,
        HAS_IS_WEIGHT=data["is_weight"] is not None, KL_TYPE=KL_TYPES.index(cfg.kl_type),
        MODE=LOSS_MODES.index(cfg.loss_mode), WRITE_DLOGP=write_dlogp, WRITE_DENT=write_dent,
        BLOCK_T=block_t, num_warps=4 if block_t <= 512 else 8,
    )
    return dlogp, dent, partials


def _forward_torch(logp, entropy, data: dict, cfg: LossConfig, write_dlogp, write_dent):
    valid = data["valid_u8"] != 0

    def clean(x):
        return None if x is None else torch.where(valid, x.float(), 0.0)

    adv = data["adv"][:, None] if data["adv"].dim() == 1 else data["adv"]
    seq_log_ratio = data["seq_log_ratio"]
    terms = token_loss_terms(
        clean(logp), clean(data["old"]), clean(adv.expand_as(logp)), ref_logp=clean(data["ref"]),
        entropy=clean(entropy), clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
        kl_coef=cfg.kl_coef, kl_type=cfg.kl_type, entropy_coef=cfg.entropy_coef, loss_mode=cfg.loss_mode,
        seq_log_ratio=None if seq_log_ratio is None else seq_log_ratio[:, None], is_weight=data["is_weight"],
    )
    weights = torch.where(valid, data["token_weight"], 0.0)

    def row_sum(x):
        return torch.zeros_like(weights[:, 0]) if x is None else torch.where(valid, x.float(), 0.0).sum(dim=1)

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
    def forward(ctx, logp, entropy, data: dict, cfg: LossConfig, engine: str):
        write_dlogp = ctx.needs_input_grad[0]
        write_dent = entropy is not None and ctx.needs_input_grad[1]
        forward = _forward_triton if engine == "triton" else _forward_torch
        dlogp, dent, partials = forward(logp, entropy, data, cfg, write_dlogp, write_dent)
        ctx.save_for_backward(dlogp, dent)
        ctx.dtypes = (logp.dtype, None if entropy is None else entropy.dtype)
        ctx.mark_non_differentiable(partials)
        return partials[:, LOSS].sum(), partials

    @staticmethod
    def backward(ctx, grad_loss, _grad_partials):
        dlogp, dent = ctx.saved_tensors
        grad_logp = None if dlogp is None else (dlogp * grad_loss).to(ctx.dtypes[0])
        grad_ent = None if dent is None else (dent * grad_loss).to(ctx.dtypes[1])
        return grad_logp, grad_ent, None, None, None


# ---- the public function --------------------------------------------------------------------------


def _resolve_token_weight(token_weight, mask, agg, norm_len, shape, device) -> torch.Tensor:
    """The [B, T] token weights: given (checked), or computed from agg/norm_len."""
    if token_weight is None:
        agg = "token-mean" if agg is None else agg
        check_aggregation(agg, norm_len)
        return token_weights(mask, agg, norm_len)
    if agg is not None or norm_len is not None:
        raise ValueError("pass token_weight (precomputed over the mini-batch) or agg/norm_len, not both")
    check_tensor("token_weight", token_weight, shape, device, FLOAT_DTYPES + (torch.float64,))
    check_token_weight(token_weight)
    return token_weight


def _validate(logp, old_logp, advantages, mask, ref_logp, entropy, rollout_logp) -> None:
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
    for name, value in (("ref_logp", ref_logp), ("entropy", entropy), ("rollout_logp", rollout_logp)):
        if value is not None:
            check_tensor(name, value, shape, device)


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
    """sum(token_weight * per-token loss) (fp32 scalar) and its stats; see the module docstring.

    logp, old_logp, ref_logp, entropy, rollout_logp: [B, T] fp32/bf16/fp16, one row per sequence;
    advantages: [B] (one per sequence) or [B, T]; mask: [B, T] bool or numeric, nonzero = valid
    token. token_weight: [B, T] float, finite, >= 0: `token_weights(mask, agg, norm_len)` computed
    over the whole mini-batch and sliced to this micro-batch; without it the weights come from agg
    (default "token-mean") and norm_len over this call's tensors. loss_mode in LOSS_MODES;
    is_correction in IS_CORRECTIONS (needs rollout_logp), is_level in IS_LEVELS, is_cap >= 1
    (kernels/mismatch.py). Gradients flow to logp and entropy only. An all-masked batch gives loss 0
    and zero gradients.
    """
    _validate(logp, old_logp, advantages, mask, ref_logp, entropy, rollout_logp)
    cfg = LossConfig(clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef, loss_mode, is_correction,
                     is_level, is_cap).checked(has_ref=ref_logp is not None, has_rollout=rollout_logp is not None,
                                               has_entropy=entropy is not None)
    token_weight = _resolve_token_weight(token_weight, mask, agg, norm_len, tuple(logp.shape), logp.device)
    backend = backend_for(logp.device)
    if backend == "reference":
        return reference.policy_loss(
            logp, old_logp, advantages, mask, token_weight=token_weight, ref_logp=ref_logp, clip_low=clip_low,
            clip_high=clip_high, dual_clip=dual_clip, kl_coef=kl_coef, kl_type=kl_type, entropy=entropy,
            entropy_coef=entropy_coef, loss_mode=loss_mode, rollout_logp=rollout_logp, is_correction=is_correction,
            is_level=is_level, is_cap=is_cap,
        )
    valid = mask != 0
    batch, length = logp.shape
    mismatch = None
    if rollout_logp is not None:  # rows are the sequences: token (b, t) belongs to sequence b
        rows = torch.arange(batch, device=logp.device).repeat_interleave(length)
        mismatch = mismatch_terms(old_logp.reshape(-1), rollout_logp.reshape(-1), valid.reshape(-1),
                                  is_correction, is_level, is_cap, rows, batch)
    seq_log_ratio = None
    if loss_mode == "gspo":  # each row's mean log-ratio over its valid tokens, as data
        log_ratio = torch.where(valid, logp.detach().float() - old_logp.float(), 0.0)
        seq_log_ratio = (log_ratio.sum(dim=1) / valid.sum(dim=1).clamp(min=1)).contiguous()

    def contiguous(x):
        return None if x is None else x.detach().contiguous()

    data = dict(old=contiguous(old_logp), adv=contiguous(advantages), valid_u8=valid.to(torch.uint8).contiguous(),
                ref=contiguous(ref_logp), token_weight=token_weight.detach().float().contiguous(),
                is_weight=None if mismatch is None or mismatch.weight is None else mismatch.weight.view(batch, length),
                seq_log_ratio=seq_log_ratio)
    loss, partials = _PolicyLossFunction.apply(logp.contiguous(), None if entropy is None else entropy.contiguous(),
                                               data, cfg, backend)
    n_valid = valid.sum(dtype=torch.float32).clamp(min=1.0)
    sums = partials.sum(dim=0) / n_valid
    stats = {"clip_frac": sums[CLIPPED], "approx_kl_old": sums[KL_OLD]}
    if dual_clip is not None:
        stats["dual_clip_frac"] = sums[DUAL_CLIPPED]
    if ref_logp is not None:
        stats["kl_ref"] = sums[KL_REF]
    if entropy is not None:
        stats["entropy"] = sums[ENTROPY]
    return loss, stats | mismatch_stats(mismatch, is_correction, n_valid)
