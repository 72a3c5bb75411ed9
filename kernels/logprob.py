"""Token log-probs and entropy straight from hidden states, without ever holding [N, V] logits.

    logp[i]    = log_softmax(hidden[i] @ weight.T / T)[targets[i]]
    entropy[i] = -sum_v p[i, v] log p[i, v]

How: tokens are processed in chunks of rows. For each chunk, one matmul (cuBLAS, fp32 output)
writes the chunk's fp32 logits; a Triton row kernel streams each row once in BLOCK_V blocks with an
online max / sum-exp / sum-exp*(z - max), giving the log-sum-exp, the target log-prob and the
entropy. Only lse and entropy ([N] each) are saved. The backward recomputes the chunk's logits and a
second row kernel turns them into dL/dlogits in place,
    dL/dz = g_logp * (onehot - p) - g_entropy * p * (log p + H),   divided by T,
then grad_hidden[chunk] = dL/dlogits @ weight and grad_weight += dL/dlogits.T @ hidden[chunk].
FLOPs: 2NHV forward + 6NHV backward (recompute + two matmuls) = the 8NHV floor the benchmark uses.
Why this split: the matmuls are >99% of the FLOPs and cuBLAS runs them near peak; the row kernels
only stream the fp32 chunk (memory-bound, one read in the forward, one read + one write in the
backward). Recomputing the logits costs 2NHV but saves holding N x V (Liger's fused linear cross
entropy makes the same trade). A fully fused Triton matmul + softmax was not attempted: it must beat
cuBLAS on the matmul to win. Measured timings and memory: bench/RESULTS.md.

Memory bound (tested in tests/kernels/test_logprob.py): apart from the inputs, outputs, saved [N] vectors,
grad_hidden [N, H] and one fp32 grad_weight accumulator [V, H], the largest temporaries are the
per-chunk buffers, sized so that rows * V * bytes_per_logit <= CHUNK_BUDGET_BYTES (256 MiB), at
least one row: the bound never grows with N. bytes_per_logit counts every [rows, V] buffer a path
holds at once: 4 (fp32 logits, gradients written in place) for Triton, +2 when bf16/fp16 gradients
need their own buffer for the bf16 backward matmuls; the PyTorch path holds one more fp32 buffer.

Backends (fastzero.kernels._dispatch.backend_for): "triton" (above), "torch" (the same chunks with
PyTorch ops; what CPU training uses), "reference" (kernels/reference.py, materializes the logits).

Kept out on purpose: ignore_index (callers mask the returned logp), a bias, logit soft-capping,
double backward. bf16 logits are never materialized: bf16 rounding of logits of size ~20 would move
log-probs by ~0.05, too much for PPO ratios, so bf16 matmuls write fp32 output (out_dtype, CUDA).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from fastzero.kernels._dispatch import backend_for
from fastzero.kernels._utils import FLOAT_DTYPES, HAS_TRITON, check_number, rows_of, tl, triton

CHUNK_BUDGET_BYTES = 256 * 2**20  # the most the [rows, V] chunk buffers may hold at once
MAX_BLOCK_V = 4096  # vocab columns per kernel iteration: 16 fp32 values per thread at 8 warps

TokenGrads = Callable[[torch.Tensor, torch.Tensor], "tuple[Optional[torch.Tensor], Optional[torch.Tensor]]"]


if HAS_TRITON:
    @triton.jit
    def _logprob_stats_kernel(
        # pointers
        logits_ptr, targets_ptr, logp_ptr, entropy_ptr, lse_ptr,
        # shapes and scalars
        n_vocab, inv_temperature,
        # strides
        logits_row_stride,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        logits_row = logits_ptr + row * logits_row_stride
        # Online state per lane (reduced across lanes once, after the loop: no per-block reductions):
        # m = running max, s = sum exp(z - m), t = sum exp(z - m) * (z - m). t stays relative to m
        # (not sum p*z) so the entropy never cancels two numbers of the size of the logits. m starts
        # at a finite -1e30, not -inf, so lanes that saw nothing yet give 0 * finite, never inf - inf.
        m = tl.full([BLOCK_V], -1e30, tl.float32)
        s = tl.full([BLOCK_V], 0.0, tl.float32)
        t = tl.full([BLOCK_V], 0.0, tl.float32)
        for start in tl.range(0, n_vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < n_vocab
            z = tl.load(logits_row + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_temperature
            m_new = tl.maximum(m, z)
            shift = m - m_new  # <= 0
            alpha = tl.exp(shift)
            d = tl.where(mask, z - m_new, 0.0)
            e = tl.where(mask, tl.exp(d), 0.0)
            t = alpha * (t + shift * s) + e * d
            s = alpha * s + e
            m = m_new
        # Merge the lanes: rescale every lane to the row max m_row the same way.
        m_row = tl.max(m, axis=0)
        shift = m - m_row
        alpha = tl.exp(shift)
        s_row = tl.sum(alpha * s, axis=0)
        t_row = tl.sum(alpha * (t + shift * s), axis=0)
        log_s = tl.log(s_row)
        lse = m_row + log_s
        target = tl.load(targets_ptr + row)
        target_logit = tl.load(logits_row + target).to(tl.float32) * inv_temperature
        tl.store(logp_ptr + row, target_logit - lse)
        tl.store(entropy_ptr + row, log_s - t_row / s_row)
        tl.store(lse_ptr + row, lse)


    @triton.jit
    def _logprob_grad_kernel(
        # pointers (grad may alias logits: each element is read before the same program writes it)
        logits_ptr, grad_ptr, targets_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_entropy_ptr,
        # shapes and scalars
        n_vocab, inv_temperature,
        # strides
        logits_row_stride, grad_row_stride,
        HAS_GRAD_LOGP: tl.constexpr,
        HAS_GRAD_ENTROPY: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        logits_row = logits_ptr + row * logits_row_stride
        grad_row = grad_ptr + row * grad_row_stride
        lse = tl.load(lse_ptr + row)
        target = tl.load(targets_ptr + row)
        if HAS_GRAD_LOGP:
            g_logp = tl.load(grad_logp_ptr + row)
        if HAS_GRAD_ENTROPY:
            g_entropy = tl.load(grad_entropy_ptr + row)
            entropy = tl.load(entropy_ptr + row)
        for start in tl.range(0, n_vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < n_vocab
            z = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_temperature
            logp = z - lse
            p = tl.exp(logp)
            grad = tl.full([BLOCK_V], 0.0, tl.float32)
            if HAS_GRAD_LOGP:
                grad += g_logp * (tl.where(cols == target, 1.0, 0.0) - p)
            if HAS_GRAD_ENTROPY:
                grad -= g_entropy * p * (logp + entropy)
            grad = grad * inv_temperature
            tl.store(grad_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _block_v(n_vocab: int, block_v: Optional[int]) -> tuple[int, int]:
    block = block_v or min(1 << max(n_vocab - 1, 0).bit_length(), MAX_BLOCK_V)  # next power of 2
    return block, (4 if block <= 1024 else 8)


def _stats_triton(logits, targets, inv_temperature, block_v=None):
    """Per-row (logp, entropy, lse) of fp32 `logits` [rows, V] (unchanged)."""
    rows, n_vocab = logits.shape
    logp, entropy, lse = (torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(3))
    if rows:
        block, warps = _block_v(n_vocab, block_v)
        _logprob_stats_kernel[(rows,)](
            logits, targets, logp, entropy, lse, n_vocab, inv_temperature, logits.stride(0),
            BLOCK_V=block, num_warps=warps,
        )
    return logp, entropy, lse


def _grads_triton_(logits, grad_out, targets, lse, entropy, grad_logp, grad_entropy, inv_temperature,
                   block_v=None):
    """Writes dL/dlogits into `grad_out` (may be `logits` itself) from the saved row stats."""
    rows, n_vocab = logits.shape
    if rows:
        block, warps = _block_v(n_vocab, block_v)
        _logprob_grad_kernel[(rows,)](
            logits, grad_out, targets, lse, entropy,
            grad_logp if grad_logp is not None else lse, grad_entropy if grad_entropy is not None else lse,
            n_vocab, inv_temperature, logits.stride(0), grad_out.stride(0),
            HAS_GRAD_LOGP=grad_logp is not None, HAS_GRAD_ENTROPY=grad_entropy is not None,
            BLOCK_V=block, num_warps=warps,
        )
    return grad_out


def _normalize_torch_(logits, targets, inv_temperature):
    """Turns fp32 `logits` into log-probs in place; returns (logp, entropy, lse). One extra buffer."""
    logits.mul_(inv_temperature)
    row_max = logits.amax(dim=-1, keepdim=True)
    logits.sub_(row_max)
    probs = logits.exp()
    log_sum = probs.sum(dim=-1, keepdim=True).log_()
    logits.sub_(log_sum)
    probs.div_(log_sum.exp())
    # Row-wise dot product via bmm: no [rows, V] product temporary.
    entropy = -torch.bmm(probs.unsqueeze(1), logits.unsqueeze(2)).view(-1)
    logp = logits.gather(1, targets.unsqueeze(1)).view(-1)
    return logp, entropy, (row_max + log_sum).view(-1)


def _grads_from_logprobs_torch_(logprobs, targets, entropy, grad_logp, grad_entropy, inv_temperature):
    """Turns log-probs [rows, V] into dL/dlogits in place. One extra buffer (the probabilities)."""
    probs = logprobs.exp()
    if grad_entropy is not None:
        logprobs.add_(entropy.unsqueeze(1)).mul_(probs).mul_(-grad_entropy.unsqueeze(1))
    else:
        logprobs.zero_()
    if grad_logp is not None:
        logprobs.sub_(probs.mul_(grad_logp.unsqueeze(1)))
        logprobs.scatter_add_(1, targets.unsqueeze(1), grad_logp.unsqueeze(1))
    return logprobs.mul_(inv_temperature)


@functools.lru_cache(maxsize=None)
def _mixed_matmul_ok(device_type: str, device_index: Optional[int], dtype: torch.dtype) -> bool:
    """Whether mm/addmm take `dtype` operands with fp32 output (out_dtype; CUDA, torch >= 2.8).

    Probed once on a tiny product and checked against an fp32 matmul, so an unsupported build
    falls back to upcasting (correct, slower) instead of failing or silently losing precision."""
    device = torch.device(device_type, device_index)
    try:
        # Fixed values, not torch.randn: the probe must not move the caller's RNG stream.
        a = (torch.arange(15, device=device, dtype=torch.float32).view(3, 5) / 7 - 1).to(dtype)
        b = (torch.arange(20, device=device, dtype=torch.float32).view(5, 4) / 9 - 1).to(dtype)
        want = a.float() @ b.float()
        got = torch.empty(3, 4, device=device)
        torch.mm(a, b, out_dtype=torch.float32, out=got)
        acc = torch.ones(3, 4, device=device)
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        return bool(torch.allclose(got, want, atol=1e-3) and torch.allclose(acc, want + 1, atol=1e-3))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


class _Plan:
    """How the matmuls run for these inputs: operand dtype, whether fp32 output is native, buffers."""

    def __init__(self, weight: torch.Tensor, backend: str, budget_bytes: Optional[int] = None):
        low_precision = weight.dtype != torch.float32
        d = weight.device
        self.mixed = low_precision and _mixed_matmul_ok(d.type, d.index, weight.dtype)
        # Without native fp32 output, upcast once per call: O(V*H + N*H) memory, never O(N*V).
        self.operand_dtype = weight.dtype if self.mixed else torch.float32
        self.backend = backend
        n_vocab = weight.shape[0]
        extra_grad_bytes = weight.element_size() if self.mixed else 0
        fp32_buffers = 1 if backend == "triton" else 2
        self.forward_rows = chunk_rows(n_vocab, 4 * fp32_buffers, budget_bytes)
        self.backward_rows = chunk_rows(n_vocab, 4 * fp32_buffers + extra_grad_bytes, budget_bytes)

    def operand(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == self.operand_dtype else x.to(self.operand_dtype)

    def logits(self, hidden_chunk, weight_op, out):
        if self.mixed:
            return torch.mm(hidden_chunk, weight_op.t(), out_dtype=torch.float32, out=out)
        return torch.mm(hidden_chunk, weight_op.t(), out=out)

    def accumulate_grad_weight(self, grad_weight, grad_logits, hidden_chunk):
        if self.mixed:
            torch.addmm(grad_weight, grad_logits.t(), hidden_chunk, out_dtype=torch.float32, out=grad_weight)
        else:
            grad_weight.addmm_(grad_logits.t(), hidden_chunk)


def chunk_rows(n_vocab: int, bytes_per_logit: int, budget_bytes: Optional[int] = None) -> int:
    """Rows per chunk so that rows * n_vocab * bytes_per_logit <= budget (at least one row)."""
    budget = CHUNK_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, budget // (n_vocab * bytes_per_logit))


def _chunk_stats(plan: _Plan, logits, targets, inv_temperature):
    """(logp, entropy, lse) of one chunk. The torch path leaves log-probs in `logits`."""
    if plan.backend == "triton":
        return _stats_triton(logits, targets, inv_temperature)
    return _normalize_torch_(logits, targets, inv_temperature)


def _chunk_grads(plan: _Plan, logits, grad_buffer, targets, lse, entropy, grad_logp, grad_entropy,
                 inv_temperature, *, normalized: bool):
    """dL/dlogits of one chunk, written into `grad_buffer` (bf16/fp16 plans) or over `logits`."""
    out = logits if grad_buffer is None else grad_buffer
    if plan.backend == "triton":
        return _grads_triton_(logits, out, targets, lse, entropy, grad_logp, grad_entropy, inv_temperature)
    if not normalized:  # recomputed raw logits -> log-probs, in place, from the saved lse
        logits.mul_(inv_temperature).sub_(lse.unsqueeze(1))
    _grads_from_logprobs_torch_(logits, targets, entropy, grad_logp, grad_entropy, inv_temperature)
    return out.copy_(logits) if grad_buffer is not None else logits


def _chunk_buffers(plan: _Plan, rows: int, n_vocab: int, device):
    logits = torch.empty(rows, n_vocab, dtype=torch.float32, device=device)
    grads = torch.empty(rows, n_vocab, dtype=plan.operand_dtype, device=device) if plan.mixed else None
    return logits, grads


def _as_fp32(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if grad is None else grad.detach().to(torch.float32).contiguous()


def chunk_forward_backward(
    hidden_chunk: torch.Tensor,
    weight: torch.Tensor,
    targets_chunk: torch.Tensor,
    token_grads: TokenGrads,
    *,
    temperature: float = 1.0,
    grad_weight: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over one chunk: logits -> (logp, entropy) -> token grads -> input grads, no recompute.

    For a fused loss that knows dL/dlogp per token once it sees logp (PPO/GRPO: ratio, clipping):
    the chunk's logits are computed once, `token_grads(logp, entropy)` (each [C] fp32, detached)
    returns (dL/dlogp, dL/dentropy) as [C] tensors or None, and the same logits buffer becomes
    dL/dlogits. Returns (logp [C] fp32, entropy [C] fp32, grad_hidden [C, H] in hidden's dtype) and
    adds dL/dweight into `grad_weight` ([V, H] fp32, in place) when given. Chunk size C: the caller's;
    `one_pass_rows(weight, backend)` gives the C whose buffers fit CHUNK_BUDGET_BYTES. Inputs are
    trusted (validate them upstream with check_inputs). Runs under no_grad: nothing here is
    recorded by autograd; push grad_hidden into the model with hidden.backward(grad_hidden).
    `backend`: "triton" or "torch" (default: backend_for(hidden_chunk.device); "reference" -> torch).
    """
    with torch.no_grad():  # gradients are computed here by hand; inputs may require grad
        return _chunk_forward_backward_impl(
            hidden_chunk.detach(), weight.detach(), targets_chunk, token_grads, temperature, grad_weight,
            backend or backend_for(hidden_chunk.device),
        )


def _chunk_forward_backward_impl(hidden_chunk, weight, targets_chunk, token_grads, temperature, grad_weight,
                                 backend):
    plan = _Plan(weight, "triton" if backend == "triton" else "torch")
    inv_temperature = 1.0 / float(temperature)
    hidden_op, weight_op = plan.operand(hidden_chunk), plan.operand(weight)
    targets_chunk = targets_chunk.contiguous()
    logits_buf, grad_buf = _chunk_buffers(plan, hidden_chunk.shape[0], weight.shape[0], weight.device)
    logits = plan.logits(hidden_op, weight_op, out=logits_buf)
    logp, entropy, lse = _chunk_stats(plan, logits, targets_chunk, inv_temperature)
    grad_logp, grad_entropy = token_grads(logp, entropy)
    grad_logits = _chunk_grads(
        plan, logits, grad_buf, targets_chunk, lse, entropy, _as_fp32(grad_logp), _as_fp32(grad_entropy),
        inv_temperature, normalized=True,
    )
    grad_hidden = torch.mm(grad_logits, weight_op).to(hidden_chunk.dtype)
    if grad_weight is not None:
        plan.accumulate_grad_weight(grad_weight, grad_logits, hidden_op)
    return logp, entropy, grad_hidden


def one_pass_rows(weight: torch.Tensor, backend: Optional[str] = None) -> int:
    """Rows per chunk_forward_backward call that keep its [rows, V] buffers within the budget."""
    backend = backend or backend_for(weight.device)
    return _Plan(weight, "triton" if backend == "triton" else "torch").backward_rows


class _FusedLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, backend: str):
        budget = CHUNK_BUDGET_BYTES  # read once: the backward keeps the forward's budget
        plan = _Plan(weight, backend, budget)
        inv_temperature = 1.0 / temperature
        n_tokens, n_vocab = hidden.shape[0], weight.shape[0]
        hidden_op, weight_op = plan.operand(hidden), plan.operand(weight)
        logp, entropy, lse = (torch.empty(n_tokens, dtype=torch.float32, device=hidden.device) for _ in range(3))
        logits_buf, _ = _chunk_buffers(plan, min(plan.forward_rows, n_tokens), n_vocab, hidden.device)
        for start in range(0, n_tokens, plan.forward_rows):
            rows = slice(start, min(start + plan.forward_rows, n_tokens))
            logits = plan.logits(hidden_op[rows], weight_op, out=logits_buf[: rows.stop - start])
            logp[rows], entropy[rows], lse[rows] = _chunk_stats(plan, logits, targets[rows], inv_temperature)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.backend, ctx.budget = temperature, backend, budget
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None
        grad_logp, grad_entropy = _as_fp32(grad_logp), _as_fp32(grad_entropy)
        plan = _Plan(weight, ctx.backend, ctx.budget)
        inv_temperature = 1.0 / ctx.temperature
        n_tokens, n_vocab = hidden.shape[0], weight.shape[0]
        hidden_op, weight_op = plan.operand(hidden), plan.operand(weight)
        grad_hidden = grad_weight = None
        if need_hidden:
            grad_hidden = torch.empty(hidden.shape, dtype=plan.operand_dtype, device=hidden.device)
        if need_weight:  # fp32 across chunks: bf16 accumulation over ~100 chunks would lose ~1%
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        logits_buf, grad_buf = _chunk_buffers(plan, min(plan.backward_rows, n_tokens), n_vocab, hidden.device)
        for start in range(0, n_tokens, plan.backward_rows):
            rows = slice(start, min(start + plan.backward_rows, n_tokens))
            count = rows.stop - start
            logits = plan.logits(hidden_op[rows], weight_op, out=logits_buf[:count])
            grad_logits = _chunk_grads(
                plan, logits, rows_of(grad_buf, slice(0, count)), targets[rows], lse[rows], entropy[rows],
                rows_of(grad_logp, rows), rows_of(grad_entropy, rows), inv_temperature, normalized=False,
            )
            if need_hidden:
                torch.mm(grad_logits, weight_op, out=grad_hidden[rows])
            if need_weight:
                plan.accumulate_grad_weight(grad_weight, grad_logits, hidden_op[rows])
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None, None, None,
        )


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float) -> None:
    """Raises a ValueError/TypeError naming the bad input, before any work starts."""
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden has H={hidden.shape[1]}, weight has H={weight.shape[1]}")
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary (V=0)")
    if hidden.dtype not in FLOAT_DTYPES or weight.dtype != hidden.dtype:
        raise TypeError(
            f"hidden and weight must share one dtype of {FLOAT_DTYPES}; got {hidden.dtype}, {weight.dtype}"
        )
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 (torch.long); got {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets must be [N] with N={hidden.shape[0]}; got shape {tuple(targets.shape)}")
    if not (hidden.device == weight.device == targets.device):
        devices = f"{hidden.device}, {weight.device}, {targets.device}"
        raise ValueError(f"hidden, weight, targets must share one device; got {devices}")
    check_number("temperature", temperature, above=0.0)
    if targets.numel():
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(f"targets must lie in [0, {weight.shape[0]}); got values in [{low}, {high}]")


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> "torch.Tensor | tuple[torch.Tensor, torch.Tensor]":
    """log_softmax(hidden @ weight.T / temperature) at `targets` ([N] fp32), and the entropy ([N] fp32).

    hidden [N, H] and weight [V, H] in fp32, bf16 or fp16 (one dtype; fp32 accumulation), targets
    [N] int64 in [0, V). Differentiable in hidden and weight, through logp and entropy both; a tied
    weight (the embedding Parameter) accumulates its gradient as usual. Extra memory stays below
    CHUNK_BUDGET_BYTES for the chunk buffers at any N (see the module docstring).
    """
    check_inputs(hidden, weight, targets, temperature)
    backend = backend_for(hidden.device)
    if backend == "reference":
        from fastzero.kernels import reference

        return reference.fused_logprobs(
            hidden, weight, targets, temperature=temperature, return_entropy=return_entropy
        )
    logp, entropy = _FusedLogprobsFunction.apply(hidden, weight, targets.contiguous(), float(temperature), backend)
    return (logp, entropy) if return_entropy else logp
