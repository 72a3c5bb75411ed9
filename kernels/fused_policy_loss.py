"""PPO/GRPO policy loss straight from hidden states, in one pass over the vocabulary.

    logp[i], entropy[i] = log_softmax(hidden[i] @ weight.T / T)[targets[i]], and that softmax's entropy
    loss = sum_i token_weight[i] * loss_i(logp[i], entropy[i])
where loss_i is kernels/policy_loss.py's per-token clipped loss (+ kl_coef * KL to ref, - entropy_coef
* entropy) and token_weight[i] the token's coefficient in the aggregate (aggregation.token_weights over the
mini-batch, gathered at the response positions), so every aggregation works.

How: because the loss is a weighted sum of per-token terms, dL/dlogp[i] is known as soon as logp[i]
is. Tokens go through logprob._chunk_forward_backward in chunks that fit CHUNK_BUDGET_BYTES: one
matmul writes a chunk's fp32 logits, a row pass gives logp and entropy, a callback here turns them
into dL/dlogp = w * dloss/dlogp and dL/dentropy = -entropy_coef * w (one small Triton kernel per
chunk, or token_loss_terms in PyTorch), the same buffer becomes dL/dlogits, and two matmuls give
grad_hidden[chunk] and add into an fp32 grad_weight. All of it runs in the forward; the backward
only scales the saved gradients by the upstream scalar (Liger's chunked losses make the same trade).

Cost against the two-pass path (fused_logprobs, then policy_loss, then backward):
    FLOPs   fused 6NHV (logits, grad_hidden, grad_weight matmuls) vs two-pass 8NHV (its backward
            recomputes the logits: 2NHV forward + 2NHV recompute + 2 x 2NHV).
    memory  the same chunk buffers; fused holds grad_hidden [N, H] (hidden's dtype) and grad_weight
            [V, H] (weight's dtype, fp32 while accumulating) from its forward to its backward, where
            the two-pass path allocates them only in its backward: N*H (+ V*H) extra between the two.
Measured (bench/RESULTS.md, 2-core CPU dev box, PyTorch backend, H=256, V=8192, N=512-2048): the
one pass takes 0.77-0.91x the two-pass time (back-to-back pairs), less than 6/8 because the
elementwise passes over each chunk are the same in both; peak memory equals the two-pass path's.
GPU timings: not measured yet.

Backends (fastzero.kernels._dispatch.backend_for): "triton" and "torch" run the one-pass chunks
above (the per-token loss in Triton or in PyTorch); "reference" is the unfused plain-PyTorch path
(kernels/reference.py's materialized-logits fused_logprobs + token_loss_terms, autograd backward).
Without gradients to compute (no input requires grad, or under torch.no_grad) only the forward runs:
fused_logprobs' chunked 2NHV forward and the per-token loss.

Stats (detached 0-dim fp32, means over tokens with token_weight != 0, 0 if there are none):
clip_frac, approx_kl_old, entropy (always: the pass computes it anyway), dual_clip_frac (with
dual_clip), kl_ref (with ref_logp); the same definitions as policy_loss.
Kept out: a bias, sequence-level ratios, double backward; advantages are per token ([N]: expand a
per-sequence advantage before flattening).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from fastzero.kernels import logprob as LP
from fastzero.kernels import reference
from fastzero.kernels._dispatch import backend_for, triton_importable
from fastzero.kernels.policy_loss import KL_TYPES, token_loss_terms

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Rows of the per-token [6, N] fp32 buffer, summed once at the end (deterministic, no atomics).
_LOSS, _CLIPPED, _DUAL_CLIPPED, _KL_OLD, _KL_REF, _ENTROPY = range(6)
_NUM_TERMS = 6


class LossConfig(NamedTuple):
    clip_low: float
    clip_high: float
    dual_clip: Optional[float]
    kl_coef: float
    kl_type: str
    entropy_coef: float
    temperature: float


# ---- the per-token loss of one chunk: Triton kernel and PyTorch twin ------------------------------

if triton_importable():
    import triton
    import triton.language as tl

    from fastzero.kernels.policy_loss import _clipped_pg, _kl_and_grad

    # The same row indices as Triton compile-time constants: a kernel may only read globals that
    # are tl.constexpr objects (the interpreter does not enforce it; the GPU compiler does).
    _LOSS_ROW, _CLIPPED_ROW, _DUAL_ROW, _KL_OLD_ROW, _KL_REF_ROW, _ENTROPY_ROW = (
        tl.constexpr(row) for row in (_LOSS, _CLIPPED, _DUAL_CLIPPED, _KL_OLD, _KL_REF, _ENTROPY)
    )

    @triton.jit
    def _token_loss_kernel(
        # pointers: [C] fp32 inputs (old/adv/ref already zeroed where weight == 0)
        logp_ptr, entropy_ptr, old_ptr, adv_ptr, ref_ptr, weight_ptr,
        # outputs: dL/dlogp [C] fp32, per-token terms [6, C] fp32 (row stride terms_stride)
        dlogp_ptr, terms_ptr,
        # shapes, strides and scalars
        n_tokens, terms_stride, clip_low, clip_high, dual_clip, kl_coef, entropy_coef,
        # compile-time switches
        HAS_REF: tl.constexpr, HAS_DUAL_CLIP: tl.constexpr,
        KL_TYPE: tl.constexpr,  # 0: k1, 1: k2, 2: k3
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n_tokens
        w = tl.load(weight_ptr + offs, mask=inside, other=0.0)
        valid = w != 0.0
        lp = tl.load(logp_ptr + offs, mask=inside, other=0.0)
        ent = tl.load(entropy_ptr + offs, mask=inside, other=0.0)
        old = tl.load(old_ptr + offs, mask=inside, other=0.0)
        adv = tl.load(adv_ptr + offs, mask=inside, other=0.0)
        ratio, loss, dlogp, clipped, dual = _clipped_pg(lp, old, adv, clip_low, clip_high, dual_clip,
                                                        HAS_DUAL_CLIP)
        if HAS_DUAL_CLIP:
            tl.store(terms_ptr + _DUAL_ROW * terms_stride + offs, tl.where(valid & dual, 1.0, 0.0), mask=inside)
        if HAS_REF:
            diff = lp - tl.load(ref_ptr + offs, mask=inside, other=0.0)
            kl, dkl = _kl_and_grad(diff, KL_TYPE)
            loss += kl_coef * kl
            dlogp += kl_coef * dkl
            tl.store(terms_ptr + _KL_REF_ROW * terms_stride + offs, tl.where(valid, kl, 0.0), mask=inside)
        loss -= entropy_coef * ent
        kl_old = (ratio - 1.0) - (lp - old)
        # Rows not written here (dual clip, KL to ref when absent) stay at the buffer's zeros.
        tl.store(dlogp_ptr + offs, tl.where(valid, w * dlogp, 0.0), mask=inside)
        tl.store(terms_ptr + _LOSS_ROW * terms_stride + offs, tl.where(valid, w * loss, 0.0), mask=inside)
        tl.store(terms_ptr + _CLIPPED_ROW * terms_stride + offs, tl.where(valid & clipped, 1.0, 0.0), mask=inside)
        tl.store(terms_ptr + _KL_OLD_ROW * terms_stride + offs, tl.where(valid, kl_old, 0.0), mask=inside)
        tl.store(terms_ptr + _ENTROPY_ROW * terms_stride + offs, tl.where(valid, ent, 0.0), mask=inside)


def _token_loss_triton(logp, entropy, old, adv, ref, weight, cfg: LossConfig, terms_out):
    """(dL/dlogp [C], None) of one chunk; writes its per-token terms into terms_out [6, C] (a view
    whose untouched rows must already be 0)."""
    n_tokens = logp.shape[0]
    dlogp = torch.empty_like(logp)
    block = 1024
    _token_loss_kernel[(triton.cdiv(n_tokens, block),)](
        logp, entropy, old, adv, ref if ref is not None else old, weight, dlogp, terms_out,
        n_tokens, terms_out.stride(0), cfg.clip_low, cfg.clip_high, float(cfg.dual_clip or 0.0),
        cfg.kl_coef, cfg.entropy_coef,
        HAS_REF=ref is not None, HAS_DUAL_CLIP=cfg.dual_clip is not None, KL_TYPE=KL_TYPES.index(cfg.kl_type),
        BLOCK=block, num_warps=4,
    )
    return dlogp, None


def _token_loss_torch(logp, entropy, old, adv, ref, weight, cfg: LossConfig, terms_out):
    """The same as _token_loss_triton with policy_loss.token_loss_terms, plus the weighted per-token
    loss [C], differentiable in logp and entropy (the reference path backpropagates through it)."""
    valid = weight != 0
    terms = token_loss_terms(
        logp, old, adv, ref_logp=ref, entropy=entropy, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
        dual_clip=cfg.dual_clip, kl_coef=cfg.kl_coef, kl_type=cfg.kl_type, entropy_coef=cfg.entropy_coef,
    )
    weighted_loss = torch.where(valid, weight * terms.loss, 0.0)
    columns = (terms.clipped, terms.dual_clipped, terms.kl_old, terms.kl_ref, entropy)
    for row, value in zip((_CLIPPED, _DUAL_CLIPPED, _KL_OLD, _KL_REF, _ENTROPY), columns):
        if value is not None:
            terms_out[row] = torch.where(valid, value.detach().float(), 0.0)
    terms_out[_LOSS] = weighted_loss.detach()
    return torch.where(valid, weight * terms.dloss_dlogp, 0.0), weighted_loss


# ---- the one-pass autograd Function ---------------------------------------------------------------


class _FusedLinearPolicyLossFunction(torch.autograd.Function):
    """Forward computes the loss and both input gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, old, adv, ref, token_weight, cfg: LossConfig, backend: str):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n_tokens = hidden.shape[0]
        terms = torch.zeros(_NUM_TERMS, n_tokens, dtype=torch.float32, device=hidden.device)
        grad_entropy = token_weight * -cfg.entropy_coef if cfg.entropy_coef != 0 else None
        grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_hidden else None
        # fp32 across chunks: bf16 accumulation over ~100 chunks would lose ~1%.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        token_loss = _token_loss_triton if backend == "triton" else _token_loss_torch
        step = LP._one_pass_rows(weight, backend)
        for start in range(0, n_tokens, step):
            rows = slice(start, min(start + step, n_tokens))

            def token_grads(logp, entropy, rows=rows):
                dlogp, _ = token_loss(logp, entropy, old[rows], adv[rows], _rows_of(ref, rows),
                                      token_weight[rows], cfg, terms[:, rows])
                return dlogp, _rows_of(grad_entropy, rows)

            _, _, chunk_grad_hidden = LP._chunk_forward_backward(
                hidden[rows], weight, targets[rows], token_grads, temperature=cfg.temperature,
                grad_weight=grad_weight, backend=backend,
            )
            if need_hidden:  # else discarded: _chunk_forward_backward has no switch to skip it (2NHV)
                grad_hidden[rows] = chunk_grad_hidden
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)  # frees the fp32 accumulator for bf16/fp16 heads
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(terms)
        return terms[_LOSS].sum(), terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_terms):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Out of place: a retained graph may run this backward again. A 0-dim fp32 factor keeps the
        # gradients' dtype (0-dim tensors do not promote).
        return (
            None if grad_hidden is None else grad_hidden * grad_loss,
            None if grad_weight is None else grad_weight * grad_loss,
        ) + (None,) * 7


def _rows_of(tensor: Optional[torch.Tensor], rows: slice) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor[rows]


# ---- the public function --------------------------------------------------------------------------


def _check_vector(name: str, x, n_tokens: int, device: torch.device) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] != n_tokens:
        raise ValueError(f"{name} must be [N] with N={n_tokens} (one value per token), got shape {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {[str(d) for d in FLOAT_DTYPES]}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but hidden is on {device}")


def _check_number(name: str, value, *, minimum: Optional[float] = None, above: Optional[float] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above}, got {value!r}")


def _validate(hidden, weight, targets, old_logp, advantages, token_weight, ref_logp, cfg: LossConfig) -> None:
    for name, value in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    LP._check_inputs(hidden, weight, targets, cfg.temperature)
    n_tokens = hidden.shape[0]
    for name, value in (("old_logp", old_logp), ("advantages", advantages), ("token_weight", token_weight)):
        _check_vector(name, value, n_tokens, hidden.device)
    if ref_logp is not None:
        _check_vector("ref_logp", ref_logp, n_tokens, hidden.device)
    _check_number("clip_low", cfg.clip_low, minimum=0.0)
    _check_number("clip_high", cfg.clip_high, minimum=0.0)
    if cfg.dual_clip is not None:
        _check_number("dual_clip", cfg.dual_clip, above=1.0)
    _check_number("kl_coef", cfg.kl_coef, minimum=0.0)
    _check_number("entropy_coef", cfg.entropy_coef)
    if cfg.kl_type not in KL_TYPES:
        raise ValueError(f"kl_type={cfg.kl_type!r} is not one of {', '.join(KL_TYPES)}")
    if cfg.kl_coef != 0 and ref_logp is None:
        raise ValueError(f"kl_coef={cfg.kl_coef} needs ref_logp (the reference model's log-probs)")
    if n_tokens and not bool(((token_weight >= 0) & torch.isfinite(token_weight)).all()):
        raise ValueError("token_weight must be finite and >= 0 (0 = the token takes no part in the loss)")


def _stats(terms: torch.Tensor, token_weight: torch.Tensor, cfg: LossConfig, has_ref: bool) -> dict[str, torch.Tensor]:
    n_valid = (token_weight != 0).sum(dtype=torch.float32).clamp(min=1.0)
    means = terms.detach().sum(dim=1) / n_valid
    stats = {"clip_frac": means[_CLIPPED], "approx_kl_old": means[_KL_OLD], "entropy": means[_ENTROPY]}
    if cfg.dual_clip is not None:
        stats["dual_clip_frac"] = means[_DUAL_CLIPPED]
    if has_ref:
        stats["kl_ref"] = means[_KL_REF]
    return stats


def fused_linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    token_weight: torch.Tensor,
    *,
    ref_logp: Optional[torch.Tensor] = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy_coef: float = 0.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum(token_weight * per-token policy loss) from hidden states (fp32 scalar), and its stats.

    hidden [N, H] and weight [V, H] (fp32/bf16/fp16, one dtype), targets [N] int64 in [0, V);
    old_logp, advantages, token_weight, ref_logp: [N] floats (token_weight >= 0; a token with weight
    0 contributes nothing, and garbage in its other inputs cannot leak in). Differentiable in hidden
    and weight (a tied embedding weight accumulates as usual); the other inputs are treated as data.
    """
    cfg = LossConfig(clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef, temperature)
    _validate(hidden, weight, targets, old_logp, advantages, token_weight, ref_logp, cfg)
    cfg = cfg._replace(**{k: float(v) for k, v in cfg._asdict().items() if isinstance(v, (int, float))})
    backend = backend_for(hidden.device)
    token_weight_fp32 = token_weight.detach().float().contiguous()
    valid = token_weight_fp32 != 0

    def clean(x):  # padding garbage (inf, NaN) -> 0 before any math, so 0 * inf never happens
        return None if x is None else torch.where(valid, x.detach().float(), 0.0).contiguous()

    old, adv, ref = clean(old_logp), clean(advantages), clean(ref_logp)
    targets = targets.contiguous()
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if backend == "reference" or not wants_grad:
        # Unfused: materialized logits (reference) or the chunked forward only (no gradients wanted).
        logprobs = reference.fused_logprobs if backend == "reference" else LP.fused_logprobs
        logp, entropy = logprobs(hidden, weight, targets, temperature=cfg.temperature, return_entropy=True)
        terms = torch.zeros(_NUM_TERMS, hidden.shape[0], dtype=torch.float32, device=hidden.device)
        _, weighted_loss = _token_loss_torch(logp.float(), entropy.float(), old, adv, ref, token_weight_fp32, cfg,
                                             terms)
        loss = weighted_loss.sum()
    else:
        loss, terms = _FusedLinearPolicyLossFunction.apply(
            hidden, weight, targets, old, adv, ref, token_weight_fp32, cfg, backend
        )
    return loss, _stats(terms, token_weight_fp32, cfg, ref_logp is not None)
