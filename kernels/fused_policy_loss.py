"""The policy loss (PPO clip, GSPO or CISPO, with KL, entropy and rollout-mismatch correction)
straight from hidden states, in one pass over the vocabulary.

    logp[i], entropy[i] = log_softmax(hidden[i] @ weight.T / T)[targets[i]], and that softmax's entropy
    loss = sum_i token_weight[i] * loss_i(logp[i], entropy[i])
where loss_i is the per-token loss of kernels/loss_terms.py (the same math as policy_loss) and
token_weight[i] the token's coefficient in the aggregate (aggregation.token_weights over the
mini-batch, gathered at the response positions), so every aggregation works.

How: because the loss is a weighted sum of per-token terms, dL/dlogp[i] is known as soon as logp[i]
is. Tokens go through logprob.chunk_forward_backward in chunks that fit CHUNK_BUDGET_BYTES: one
matmul writes a chunk's fp32 logits, a row pass gives logp and entropy, a callback here turns them
into dL/dlogp = w * dloss/dlogp and dL/dentropy = -entropy_coef * w (one small Triton kernel per
chunk, or token_loss_terms in PyTorch), the same buffer becomes dL/dlogits, and two matmuls give
grad_hidden[chunk] and add into an fp32 grad_weight. All of it runs in the forward; the backward
only scales the saved gradients by the upstream scalar (Liger's chunked losses make the same trade).

Sequences: seq_index [N] int64 (non-decreasing: a sequence's tokens are contiguous, as gathered
row by row) names each token's sequence; needed by gspo and by sequence-level mismatch weights.
Mismatch weights depend on old/rollout log-probs only, so they are computed up front with a
segment reduction (mismatch.segment_sum). GSPO's sequence ratio depends on the current logp of
all of a sequence's tokens, so chunks are cut at sequence boundaries: a chunk's own logp give its
sequences' ratios before any gradient is formed, still one pass. A sequence longer than one
chunk (rows = CHUNK_BUDGET_BYTES / (V * bytes per logit)) cannot be seen whole: its tokens get a
forward-only log-prob pass first (2 * n_long * H * V extra FLOPs, bench/RESULTS.md).

Cost against the two-pass path (fused_logprobs, then policy_loss, then backward):
    FLOPs   fused 6NHV (logits, grad_hidden, grad_weight matmuls) vs two-pass 8NHV (its backward
            recomputes the logits: 2NHV forward + 2NHV recompute + 2 x 2NHV).
    memory  the same chunk buffers; fused holds grad_hidden [N, H] (hidden's dtype) and grad_weight
            [V, H] (weight's dtype, fp32 while accumulating) from its forward to its backward, where
            the two-pass path allocates them only in its backward: N*H (+ V*H) extra between the two.
Measured timings: bench/RESULTS.md.

Backends (fastzero.kernels._dispatch.backend_for): "triton" and "torch" run the one-pass chunks
above (the per-token loss in Triton or in PyTorch); "reference" is the unfused plain-PyTorch path
(kernels/reference.py's materialized-logits fused_logprobs + token_loss_terms, autograd backward).
Without gradients to compute (no input requires grad, or under torch.no_grad) only the forward runs:
fused_logprobs' chunked 2NHV forward and the per-token loss.

Stats (detached 0-dim fp32, means over tokens with token_weight != 0, 0 if there are none):
clip_frac, approx_kl_old, entropy (always: the pass computes it anyway), dual_clip_frac (with
dual_clip), kl_ref (with ref_logp), mismatch_kl and is_truncated_frac / is_masked_frac (with
rollout_logp); the same definitions as policy_loss.
Kept out: a bias, double backward; advantages are per token ([N]: expand a per-sequence advantage
before flattening).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastzero.kernels import logprob as LP
from fastzero.kernels import reference
from fastzero.kernels._dispatch import backend_for
from fastzero.kernels._utils import (CLIPPED, DUAL_CLIPPED, ENTROPY, FLOAT_DTYPES, HAS_TRITON, KL_OLD, KL_REF, LOSS,
                                     NUM_STAT_SUMS, check_token_weight, rows_of, tl, triton)
from fastzero.kernels.loss_terms import KL_TYPES, LOSS_MODES, LossConfig, token_loss_terms
from fastzero.kernels.mismatch import mismatch_stats, mismatch_terms, segment_sum

# ---- the per-token loss of one chunk: Triton kernel and PyTorch twin ------------------------------

if HAS_TRITON:
    from fastzero.kernels._utils import CLIPPED_C, DUAL_CLIPPED_C, ENTROPY_C, KL_OLD_C, KL_REF_C, LOSS_C
    from fastzero.kernels.loss_terms import kl_and_grad, policy_term

    @triton.jit
    def _token_loss_kernel(
        # pointers: [C] fp32 inputs (old/adv/ref already zeroed where weight == 0)
        logp_ptr, entropy_ptr, old_ptr, adv_ptr, ref_ptr, weight_ptr,
        is_weight_ptr,  # mismatch-correction weights (HAS_IS_WEIGHT)
        log_ratio_ptr,  # each token's sequence mean of logp - old_logp (gspo)
        # outputs: dL/dlogp [C] fp32, per-token terms [NUM_STAT_SUMS, C] fp32 (row stride terms_stride)
        dlogp_ptr, terms_ptr,
        # shapes, strides and scalars
        n_tokens, terms_stride, clip_low, clip_high, dual_clip, kl_coef, entropy_coef,
        # compile-time switches
        HAS_REF: tl.constexpr, HAS_DUAL_CLIP: tl.constexpr, HAS_IS_WEIGHT: tl.constexpr,
        KL_TYPE: tl.constexpr,  # index in KL_TYPES
        MODE: tl.constexpr,  # index in LOSS_MODES
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
        log_ratio = tl.load(log_ratio_ptr + offs, mask=inside, other=0.0) if MODE == 1 else lp - old
        is_weight = tl.load(is_weight_ptr + offs, mask=inside, other=0.0) if HAS_IS_WEIGHT else 1.0
        loss, dlogp, clipped, dual = policy_term(lp, log_ratio, adv, is_weight, clip_low, clip_high, dual_clip,
                                                 HAS_DUAL_CLIP, MODE)
        if HAS_DUAL_CLIP:
            tl.store(terms_ptr + DUAL_CLIPPED_C * terms_stride + offs, tl.where(valid & dual, 1.0, 0.0), mask=inside)
        if HAS_REF:
            diff = lp - tl.load(ref_ptr + offs, mask=inside, other=0.0)
            kl, dkl = kl_and_grad(diff, KL_TYPE)
            loss += kl_coef * kl
            dlogp += kl_coef * dkl
            tl.store(terms_ptr + KL_REF_C * terms_stride + offs, tl.where(valid, kl, 0.0), mask=inside)
        loss -= entropy_coef * ent
        kl_old = (tl.exp(lp - old) - 1.0) - (lp - old)
        # Rows not written here (dual clip, KL to ref when absent) stay at the buffer's zeros.
        tl.store(dlogp_ptr + offs, tl.where(valid, w * dlogp, 0.0), mask=inside)
        tl.store(terms_ptr + LOSS_C * terms_stride + offs, tl.where(valid, w * loss, 0.0), mask=inside)
        tl.store(terms_ptr + CLIPPED_C * terms_stride + offs, tl.where(valid & clipped, 1.0, 0.0), mask=inside)
        tl.store(terms_ptr + KL_OLD_C * terms_stride + offs, tl.where(valid, kl_old, 0.0), mask=inside)
        tl.store(terms_ptr + ENTROPY_C * terms_stride + offs, tl.where(valid, ent, 0.0), mask=inside)


def _token_loss_triton(logp, entropy, chunk: dict, log_ratio, cfg: LossConfig, terms_out):
    """(dL/dlogp [C], None) of one chunk; writes its per-token terms into terms_out [6, C] (a view
    whose untouched rows must already be 0)."""
    n_tokens = logp.shape[0]
    dlogp = torch.empty_like(logp)
    block = 1024
    old, ref, is_weight = chunk["old"], chunk["ref"], chunk["is_weight"]
    _token_loss_kernel[(triton.cdiv(n_tokens, block),)](
        logp, entropy, old, chunk["adv"], ref if ref is not None else old, chunk["weight"],
        is_weight if is_weight is not None else old, log_ratio if log_ratio is not None else old,
        dlogp, terms_out, n_tokens, terms_out.stride(0), cfg.clip_low, cfg.clip_high, float(cfg.dual_clip or 0.0),
        cfg.kl_coef, cfg.entropy_coef,
        HAS_REF=ref is not None, HAS_DUAL_CLIP=cfg.dual_clip is not None, HAS_IS_WEIGHT=is_weight is not None,
        KL_TYPE=KL_TYPES.index(cfg.kl_type), MODE=LOSS_MODES.index(cfg.loss_mode), BLOCK=block, num_warps=4,
    )
    return dlogp, None


def _token_loss_torch(logp, entropy, chunk: dict, log_ratio, cfg: LossConfig, terms_out):
    """The same as _token_loss_triton with loss_terms.token_loss_terms, plus the weighted per-token
    loss [C], differentiable in logp and entropy (the reference path backpropagates through it)."""
    weight = chunk["weight"]
    valid = weight != 0
    terms = token_loss_terms(
        logp, chunk["old"], chunk["adv"], ref_logp=chunk["ref"], entropy=entropy, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, kl_coef=cfg.kl_coef, kl_type=cfg.kl_type,
        entropy_coef=cfg.entropy_coef, loss_mode=cfg.loss_mode, seq_log_ratio=log_ratio,
        is_weight=chunk["is_weight"],
    )
    weighted_loss = torch.where(valid, weight * terms.loss, 0.0)
    columns = (terms.clipped, terms.dual_clipped, terms.kl_old, terms.kl_ref, entropy)
    for row, value in zip((CLIPPED, DUAL_CLIPPED, KL_OLD, KL_REF, ENTROPY), columns):
        if value is not None:
            terms_out[row] = torch.where(valid, value.detach().float(), 0.0)
    terms_out[LOSS] = weighted_loss.detach()
    return torch.where(valid, weight * terms.dloss_dlogp, 0.0), weighted_loss


# ---- sequences: chunks cut at sequence boundaries, GSPO's per-sequence log-ratio ---------------------


def _chunks(n_tokens: int, step: int, seq_index: Optional[torch.Tensor]) -> tuple[list[slice], list[int]]:
    """Row slices of at most `step` tokens. With seq_index (gspo) they end at sequence boundaries
    wherever a sequence fits in one chunk; the sequences that do not are returned as well."""
    if seq_index is None:
        return [slice(s, min(s + step, n_tokens)) for s in range(0, n_tokens, step)], []
    ids, counts = torch.unique_consecutive(seq_index, return_counts=True)
    chunks, too_long, start, end = [], [], 0, 0
    for sequence, count in zip(ids.tolist(), counts.tolist()):
        if end + count - start > step and end > start:  # close the chunk before this sequence
            chunks.append(slice(start, end))
            start = end
        if count > step:  # spans chunks: its ratio comes from a forward-only pass
            too_long.append(sequence)
            chunks += [slice(s, min(s + step, end + count)) for s in range(end, end + count, step)]
            start = end + count
        end += count
    if end > start:
        chunks.append(slice(start, end))
    return chunks, too_long


class _SequenceLogRatio:
    """Each token's sequence mean of logp - old_logp over valid tokens (gspo), chunk by chunk."""

    def __init__(self, seq_index, valid, old, n_seq: int, known_sums=None, known=None):
        self.seq_index, self.valid, self.old, self.n_seq = seq_index, valid, old, n_seq
        self.counts = segment_sum(valid.float(), seq_index, n_seq).clamp(min=1.0)
        self.known_sums, self.known = known_sums, known  # sums from a forward-only pass (long sequences)

    def of(self, logp: torch.Tensor, rows: slice) -> torch.Tensor:
        """[C] for the tokens `rows`, whose chunk holds every token of each short sequence in it."""
        seq = self.seq_index[rows]
        sums = segment_sum(torch.where(self.valid[rows], logp - self.old[rows], 0.0), seq, self.n_seq)
        if self.known is not None:
            sums = torch.where(self.known, self.known_sums, sums)
        return (sums / self.counts)[seq]


def _long_sequence_sums(hidden, weight, targets, data, seq_index, n_seq, too_long, temperature):
    """Sums of logp - old_logp of the sequences longer than a chunk, by a forward-only pass."""
    known = torch.zeros(n_seq, dtype=torch.bool, device=hidden.device)
    known[torch.tensor(too_long, device=hidden.device)] = True
    tokens = torch.nonzero(known[seq_index]).view(-1)
    with torch.no_grad():
        logp = LP.fused_logprobs(hidden[tokens].detach(), weight.detach(), targets[tokens], temperature=temperature)
    log_ratio = torch.where(data["weight"][tokens] != 0, logp - data["old"][tokens], 0.0)
    return segment_sum(log_ratio, seq_index[tokens], n_seq), known


def _own_old_logp(old_out: torch.Tensor, logp: torch.Tensor, valid: torch.Tensor) -> None:
    """On-policy: the old log-probs are this pass' own (detached; 0 on weightless tokens, as clean()
    leaves a given old_logp), written in place into the data's buffer before the token loss reads it."""
    old_out.copy_(torch.where(valid, logp.detach().float(), 0.0))


# ---- the one-pass autograd Function ---------------------------------------------------------------


class _FusedLinearPolicyLossFunction(torch.autograd.Function):
    """Forward computes the loss and both input gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, data: dict, seq_index, cfg: LossConfig, backend: str):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n_tokens = hidden.shape[0]
        terms = torch.zeros(NUM_STAT_SUMS, n_tokens, dtype=torch.float32, device=hidden.device)
        grad_entropy = data["weight"] * -cfg.entropy_coef if cfg.entropy_coef != 0 else None
        grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_hidden else None
        # fp32 across chunks: bf16 accumulation over ~100 chunks would lose ~1%.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        token_loss = _token_loss_triton if backend == "triton" else _token_loss_torch
        gspo = cfg.loss_mode == "gspo"
        chunks, too_long = _chunks(n_tokens, LP.one_pass_rows(weight, backend), seq_index if gspo else None)
        seq_ratio = None
        if gspo:
            n_seq = int(seq_index.max()) + 1 if n_tokens else 0
            known = (_long_sequence_sums(hidden, weight, targets, data, seq_index, n_seq, too_long, cfg.temperature)
                     if too_long else (None, None))
            seq_ratio = _SequenceLogRatio(seq_index, data["weight"] != 0, data["old"], n_seq, *known)
        for rows in chunks:
            def token_grads(logp, entropy, rows=rows):
                chunk = {k: rows_of(x, rows) for k, x in data.items() if k != "on_policy"}
                if data["on_policy"]:
                    _own_old_logp(chunk["old"], logp, chunk["weight"] != 0)
                log_ratio = seq_ratio.of(logp, rows) if gspo else None
                dlogp, _ = token_loss(logp, entropy, chunk, log_ratio, cfg, terms[:, rows])
                return dlogp, rows_of(grad_entropy, rows)

            _, _, chunk_grad_hidden = LP.chunk_forward_backward(
                hidden[rows], weight, targets[rows], token_grads, temperature=cfg.temperature,
                grad_weight=grad_weight, backend=backend,
            )
            if need_hidden:  # else discarded: chunk_forward_backward has no switch to skip it (2NHV)
                grad_hidden[rows] = chunk_grad_hidden
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)  # frees the fp32 accumulator for bf16/fp16 heads
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(terms)
        return terms[LOSS].sum(), terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_terms):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Out of place: a retained graph may run this backward again. A 0-dim fp32 factor keeps the
        # gradients' dtype (0-dim tensors do not promote).
        return (
            None if grad_hidden is None else grad_hidden * grad_loss,
            None if grad_weight is None else grad_weight * grad_loss,
        ) + (None,) * 5


# ---- the public function --------------------------------------------------------------------------


def _check_vector(name: str, x, n_tokens: int, device: torch.device, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] != n_tokens:
        raise ValueError(f"{name} must be [N] with N={n_tokens} (one value per token), got shape {list(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but hidden is on {device}")


def _validate(hidden, weight, targets, vectors: dict, seq_index, cfg: LossConfig) -> LossConfig:
    for name, value in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    LP.check_inputs(hidden, weight, targets, cfg.temperature)
    n_tokens = hidden.shape[0]
    for name, value in vectors.items():
        if value is not None or name in ("advantages", "token_weight"):  # old_logp None: on-policy
            _check_vector(name, value, n_tokens, hidden.device)
    cfg = cfg.checked(has_ref=vectors["ref_logp"] is not None, has_rollout=vectors["rollout_logp"] is not None)
    check_token_weight(vectors["token_weight"])
    if cfg.loss_mode == "gspo" or (cfg.is_correction != "none" and cfg.is_level == "sequence"):
        what = "loss_mode='gspo'" if cfg.loss_mode == "gspo" else "is_level='sequence'"
        if seq_index is None:
            raise ValueError(f"{what} needs seq_index ([N] int64: the sequence of each token)")
        _check_vector("seq_index", seq_index, n_tokens, hidden.device, (torch.int64,))
        if n_tokens and not bool((seq_index[0] >= 0) & (seq_index[1:] >= seq_index[:-1]).all()):
            raise ValueError("seq_index must be >= 0 and non-decreasing (each sequence's tokens contiguous)")
    return cfg


def fused_linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: Optional[torch.Tensor],
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
    loss_mode: str = "ppo",
    rollout_logp: Optional[torch.Tensor] = None,
    is_correction: str = "none",
    is_level: str = "token",
    is_cap: float = 2.0,
    seq_index: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum(token_weight * per-token policy loss) from hidden states (fp32 scalar), and its stats.

    hidden [N, H] and weight [V, H] (fp32/bf16/fp16, one dtype), targets [N] int64 in [0, V);
    old_logp, advantages, token_weight, ref_logp, rollout_logp: [N] floats (token_weight >= 0; a
    token with weight 0 contributes nothing, and garbage in its other inputs cannot leak in).
    old_logp=None means on-policy: the old policy IS the current one (the first and only update of
    a step's rollouts), so each token's old log-prob is this pass's own, detached: the ratio is
    exactly 1 (no separate forward that could differ from this one by rounding). Not with
    loss_mode="gspo" or an IS correction (they need old_logp before the pass).
    loss_mode, is_correction, is_level, is_cap: as policy_loss. seq_index [N] int64, non-decreasing:
    each token's sequence, needed by loss_mode="gspo" and is_level="sequence". Differentiable in
    hidden and weight (a tied embedding weight accumulates as usual); the rest is data.
    """
    vectors = dict(old_logp=old_logp, advantages=advantages, token_weight=token_weight, ref_logp=ref_logp,
                   rollout_logp=rollout_logp)
    cfg = LossConfig(clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef, loss_mode, is_correction,
                     is_level, is_cap, temperature)
    on_policy = old_logp is None
    if on_policy and (loss_mode == "gspo" or is_correction != "none"):
        raise ValueError("old_logp=None (on-policy) cannot serve loss_mode='gspo' or an IS correction: "
                         "both need the old log-probs before the pass")
    cfg = _validate(hidden, weight, targets, vectors, seq_index, cfg)
    backend = backend_for(hidden.device)
    token_weight_fp32 = token_weight.detach().float().contiguous()
    valid = token_weight_fp32 != 0
    if on_policy:  # filled chunk by chunk with the pass' own log-probs (see _own_old_logp)
        old_logp = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)

    def clean(x):  # padding garbage (inf, NaN) -> 0 before any math, so 0 * inf never happens
        return None if x is None else torch.where(valid, x.detach().float(), 0.0).contiguous()

    n_tokens = hidden.shape[0]

    def mismatch_of(old):
        if rollout_logp is None:
            return None
        n_seq = int(seq_index.max()) + 1 if seq_index is not None and n_tokens else 0
        return mismatch_terms(old, clean(rollout_logp), valid, is_correction, is_level, is_cap, seq_index, n_seq)

    mismatch = None if on_policy else mismatch_of(clean(old_logp))
    data = dict(old=old_logp if on_policy else clean(old_logp), adv=clean(advantages), ref=clean(ref_logp),
                weight=token_weight_fp32, is_weight=None if mismatch is None else mismatch.weight,
                on_policy=on_policy)
    targets = targets.contiguous()
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if backend == "reference":
        return _reference_loss(hidden, weight, targets, vectors, seq_index, cfg)
    if not wants_grad:  # the chunked forward only
        logp, entropy = LP.fused_logprobs(hidden, weight, targets, temperature=cfg.temperature, return_entropy=True)
        if on_policy:
            _own_old_logp(data["old"], logp, valid)
        log_ratio = None
        if cfg.loss_mode == "gspo":
            n_seq = int(seq_index.max()) + 1 if n_tokens else 0
            log_ratio = _SequenceLogRatio(seq_index, valid, data["old"], n_seq).of(logp.detach(), slice(None))
        terms = torch.zeros(NUM_STAT_SUMS, n_tokens, dtype=torch.float32, device=hidden.device)
        _, weighted_loss = _token_loss_torch(logp, entropy, data, log_ratio, cfg, terms)
        loss = weighted_loss.sum()
    else:
        loss, terms = _FusedLinearPolicyLossFunction.apply(hidden, weight, targets, data, seq_index, cfg, backend)
    if on_policy:  # the rollout mismatch against the old (= this pass') log-probs, for its stats
        mismatch = mismatch_of(data["old"])
    return loss, _stats(terms, valid, cfg, ref_logp is not None) | mismatch_stats(mismatch, is_correction,
                                                                                 _n_valid(valid))


def _reference_loss(hidden, weight, targets, vectors: dict, seq_index, cfg: LossConfig):
    """The unfused plain-PyTorch twin: materialized logits (reference.fused_logprobs), the tokens laid
    out one sequence per row (seq_index; one row without it), reference.policy_loss, autograd."""
    n_tokens = hidden.shape[0]
    seq_index = torch.zeros(n_tokens, dtype=torch.long, device=hidden.device) if seq_index is None else seq_index
    _, row, counts = torch.unique_consecutive(seq_index, return_inverse=True, return_counts=True)
    position = torch.arange(n_tokens, device=hidden.device) - (counts.cumsum(0) - counts)[row]
    shape = (len(counts), int(counts.max()) if n_tokens else 1)

    def as_rows(x):
        return None if x is None else torch.zeros(shape, dtype=x.dtype, device=x.device).index_put((row, position), x)

    logp, entropy = reference.fused_logprobs(hidden, weight, targets, temperature=cfg.temperature, return_entropy=True)
    valid = vectors["token_weight"] != 0
    old = logp.detach() if vectors["old_logp"] is None else vectors["old_logp"]  # None: on-policy
    options = {k: v for k, v in cfg._asdict().items() if k != "temperature"}
    return reference.policy_loss(
        as_rows(logp), as_rows(old), as_rows(vectors["advantages"]), as_rows(valid),
        token_weight=as_rows(vectors["token_weight"]), ref_logp=as_rows(vectors["ref_logp"]), entropy=as_rows(entropy),
        rollout_logp=as_rows(vectors["rollout_logp"]), **options)


def _n_valid(valid: torch.Tensor) -> torch.Tensor:
    return valid.sum(dtype=torch.float32).clamp(min=1.0)


def _stats(terms: torch.Tensor, valid: torch.Tensor, cfg: LossConfig, has_ref: bool) -> dict[str, torch.Tensor]:
    means = terms.detach().sum(dim=1) / _n_valid(valid)
    stats = {"clip_frac": means[CLIPPED], "approx_kl_old": means[KL_OLD], "entropy": means[ENTROPY]}
    if cfg.dual_clip is not None:
        stats["dual_clip_frac"] = means[DUAL_CLIPPED]
    if has_ref:
        stats["kl_ref"] = means[KL_REF]
    return stats
