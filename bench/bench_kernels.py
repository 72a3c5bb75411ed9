"""Benchmark: token log-probs (+ entropy) from hidden states, ours vs the alternatives, same run.

    python bench/bench_kernels.py            # GPU when present: Qwen2.5 heads, N = 2k..32k tokens
    python bench/bench_kernels.py --cpu      # CPU: small shapes, reference vs chunked PyTorch
    python bench/bench_kernels.py --workload policy-loss [--cpu]   # fused log-prob + policy loss

Each candidate computes logp [N] (and entropy [N] where it can) from hidden [N, H] and the LM head
[V, H], then backpropagates a random per-token upstream gradient. Reported per candidate: forward,
backward (retain_graph, so only the backward) and full (forward + backward) times, peak extra
memory, and against the 8*N*H*V FLOP floor of forward + backward (2NHV forward, 2NHV recompute,
2 x 2NHV gradient matmuls): achieved TFLOP/s and % of a bf16 matmul measured in the same run.
Ratios are against eager PyTorch (GPU) or the materialized reference (CPU). Ends with one JSON line.

GPU candidates: ours (Triton), eager (materialized fp32 logits + log_softmax + gather + entropy),
torch.compile of the eager function, Liger's fused linear cross entropy (reduction="none": logp
only, no entropy — compare it with "ours, logp only"). CPU candidates: the reference and our
chunked PyTorch path (default budget, and a 16 MiB budget that actually chunks at these shapes).

Workload "policy-loss" (fused log-prob + policy loss, forward + backward): the scalar PPO/GRPO
loss (token-mean, clip 0.2/0.28, k3 KL to ref with coefficient 0.04) from hidden states, backpropagated
from a unit upstream gradient. Candidates: ours fused one-pass (fused_linear_policy_loss), ours
two-pass (fused_logprobs + policy_loss: the backward recomputes the logits), eager (materialized
logits + reference.policy_loss), and Liger's LigerFusedLinearGRPOLoss (compiled on GPU, compiled=False
on CPU), mapped as loss_type="bnpo" (token mean over the micro-batch) = our token-mean, beta = kl_coef,
epsilon_low/high = clip_low/high (tests/kernels/test_fused_policy_loss.py checks this map numerically). The
FLOP floor here is 6*N*H*V (logits, grad_hidden, grad_weight: what one pass needs); ratios are
against Liger. Tokens come as sequences of LOSS_SEQ_LEN with random right padding (lengths in
[T/2, T]); padded tokens cost every candidate the same.

Workload "loss-modes": the fused loss in each loss mode and mismatch correction (GSPO with its
paper's clip 3e-4/4e-4, CISPO with no lower clip, TIS token-level, MIS and TIS sequence-level; cap
2, rollout log-probs = old + N(0, 0.1^2)), each timed back to back against the plain PPO clip: the
same pass over the vocabulary, so the ratio should be ~1; plus GSPO whose sequences do not fit one
chunk (the forward-only pre-pass, against PPO with the same chunks).

To add rows, register a Candidate in WORKLOADS under a new workload name; `build(problem)` returns
a closure that runs the forward and returns (outputs, upstream grads) for torch.autograd.backward,
or raises Unavailable.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from fastzero.kernels import logprob as LP
from fastzero.kernels._memory import peak_allocated_bytes
from fastzero.kernels import reference as R
from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
from fastzero.kernels.logprob import fused_logprobs
from fastzero.kernels.policy_loss import policy_loss, token_weights

QWEN_HEADS = {"qwen2.5-0.5b": 896, "qwen2.5-1.5b": 1536, "qwen2.5-3b": 2048}  # hidden size; V=151936
QWEN_VOCAB = 151936
GPU_TOKENS = (2048, 8192, 32768)
CPU_HEAD, CPU_VOCAB, CPU_TOKENS = 256, 8192, (512, 1024, 2048)


class Unavailable(Exception):
    """A candidate that cannot run here (no GPU, package missing); its row says why."""


@dataclasses.dataclass
class Problem:
    hidden: torch.Tensor  # [N, H], requires grad
    weight: torch.Tensor  # [V, H], requires grad
    targets: torch.Tensor  # [N] int64
    grad_logp: torch.Tensor  # [N] fp32 upstream gradients
    grad_entropy: torch.Tensor
    temperature: float = 1.0
    flops_per_nhv: float = 8.0  # the workload's FLOP floor, in units of N*H*V

    @property
    def flops(self) -> float:
        n, h = self.hidden.shape
        return self.flops_per_nhv * n * h * self.weight.shape[0]


@dataclasses.dataclass
class Candidate:
    name: str
    build: Callable[[Problem], Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]]]
    devices: tuple[str, ...]  # "cuda", "cpu"
    note: str = ""


@contextlib.contextmanager
def forced_backend(name: str):
    previous = os.environ.get("FASTZERO_KERNELS")
    os.environ["FASTZERO_KERNELS"] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("FASTZERO_KERNELS", None)
        else:
            os.environ["FASTZERO_KERNELS"] = previous


def ours(backend: str, *, with_entropy: bool = True, budget_bytes: int | None = None):
    def build(p: Problem):
        def run():
            with forced_backend(backend), _budget(budget_bytes):
                logp, entropy = fused_logprobs(
                    p.hidden, p.weight, p.targets, temperature=p.temperature, return_entropy=True
                )
            return ([logp, entropy], [p.grad_logp, p.grad_entropy]) if with_entropy else ([logp], [p.grad_logp])
        return run
    return build


@contextlib.contextmanager
def _budget(budget_bytes: int | None):
    saved = LP.CHUNK_BUDGET_BYTES
    LP.CHUNK_BUDGET_BYTES = budget_bytes or saved
    try:
        yield
    finally:
        LP.CHUNK_BUDGET_BYTES = saved


def eager_logprobs(hidden, weight, targets, temperature: float):
    """What a trainer does without a fused kernel: full logits, log_softmax, gather, entropy."""
    logits = (hidden @ weight.T).float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    logp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


def eager(compiled: bool):
    fn = torch.compile(eager_logprobs, dynamic=False) if compiled else eager_logprobs

    def build(p: Problem):
        def run():
            logp, entropy = fn(p.hidden, p.weight, p.targets, p.temperature)
            return [logp, entropy], [p.grad_logp, p.grad_entropy]
        return run
    return build


def reference(p: Problem):
    def run():
        logp, entropy = R.fused_logprobs(
            p.hidden, p.weight, p.targets, temperature=p.temperature, return_entropy=True
        )
        return [logp, entropy], [p.grad_logp, p.grad_entropy]
    return run


def liger_flce(p: Problem):
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as error:
        raise Unavailable(f"liger_kernel not importable: {error}") from error

    def run():
        loss = liger_fused_linear_cross_entropy(p.hidden, p.weight, p.targets, reduction="none")
        return [loss], [-p.grad_logp]  # loss = -logp
    return run


# ---- workload "policy-loss": fused log-prob + policy loss, forward + backward ---------------------

LOSS_SEQ_LEN = {"cuda": 1024, "cpu": 256}  # tokens per sequence (Liger chunks by sequence)
LOSS_OPTIONS = dict(clip_low=0.2, clip_high=0.28, kl_coef=0.04, kl_type="k3")


@dataclasses.dataclass
class LossBatch:
    mask: torch.Tensor  # [B, T] bool, right padding
    old_logp: torch.Tensor  # [B, T] fp32
    ref_logp: torch.Tensor  # [B, T] fp32
    advantages: torch.Tensor  # [B] fp32, one per sequence
    token_weight: torch.Tensor  # [B*T] fp32: token_weights(mask, "token-mean") flattened
    rollout_logp: torch.Tensor  # [B, T] fp32: the sampler's log-probs (old + a mismatch)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)


def loss_batch(p: Problem) -> LossBatch:
    """The rest of a PPO/GRPO micro-batch, built the same way (seeded) for every candidate."""
    n = p.hidden.shape[0]
    seq_len = min(LOSS_SEQ_LEN[p.hidden.device.type], n)
    if n % seq_len:
        raise Unavailable(f"N={n} is not a multiple of the sequence length {seq_len}")
    batch = n // seq_len
    gen = torch.Generator().manual_seed(n)
    with torch.no_grad():
        logp = fused_logprobs(p.hidden, p.weight, p.targets, temperature=p.temperature).cpu().view(batch, seq_len)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=gen)
    mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    old = logp + 0.3 * torch.randn(batch, seq_len, generator=gen)  # some tokens clip on either side
    ref = logp + 0.3 * torch.randn(batch, seq_len, generator=gen)
    advantages = torch.randn(batch, generator=gen)
    rollout = old + 0.1 * torch.randn(batch, seq_len, generator=gen)  # drawn last: the rest is unchanged
    tensors = (mask, old, ref, advantages, token_weights(mask, "token-mean").reshape(-1), rollout)
    return LossBatch(*(x.to(p.hidden.device) for x in tensors))


def ours_fused_loss(backend: str, budget_bytes: int | None = None):
    def build(p: Problem):
        lb = loss_batch(p)
        adv = lb.advantages[:, None].expand(lb.shape).reshape(-1)
        old, ref = lb.old_logp.reshape(-1), lb.ref_logp.reshape(-1)

        def run():
            with forced_backend(backend), _budget(budget_bytes):
                loss, _ = fused_linear_policy_loss(p.hidden, p.weight, p.targets, old, adv, lb.token_weight,
                                                   ref_logp=ref, temperature=p.temperature, **LOSS_OPTIONS)
            return [loss], [torch.ones_like(loss)]
        return run
    return build


def ours_two_pass_loss(backend: str, budget_bytes: int | None = None):
    def build(p: Problem):
        lb = loss_batch(p)

        def run():
            with forced_backend(backend), _budget(budget_bytes):
                logp = fused_logprobs(p.hidden, p.weight, p.targets, temperature=p.temperature)
                loss, _ = policy_loss(logp.view(lb.shape), lb.old_logp, lb.advantages, lb.mask,
                                      ref_logp=lb.ref_logp, agg="token-mean", **LOSS_OPTIONS)
            return [loss], [torch.ones_like(loss)]
        return run
    return build


def ours_mode_loss(backend: str, budget_bytes: int | None = None, **mode):
    """The fused loss in one loss mode / mismatch correction (loss_mode, is_correction, is_level)."""
    def build(p: Problem):
        lb = loss_batch(p)
        batch, seq_len = lb.shape
        adv = lb.advantages[:, None].expand(lb.shape).reshape(-1)
        old, ref, rollout = lb.old_logp.reshape(-1), lb.ref_logp.reshape(-1), lb.rollout_logp.reshape(-1)
        seq_index = torch.arange(batch, device=old.device).repeat_interleave(seq_len)

        def run():
            with forced_backend(backend), _budget(budget_bytes):
                loss, _ = fused_linear_policy_loss(p.hidden, p.weight, p.targets, old, adv, lb.token_weight,
                                                   ref_logp=ref, temperature=p.temperature, rollout_logp=rollout,
                                                   seq_index=seq_index, **(LOSS_OPTIONS | mode))
            return [loss], [torch.ones_like(loss)]
        return run
    return build


def mode_candidates(device: str, backend: str) -> list[Candidate]:
    """PPO clip (the baseline), GSPO, CISPO and the mismatch corrections, all fused, on one backend.
    "gspo, long seqs": chunks of 64 rows (a 64*V*8-byte budget) cut every 128-token sequence, so
    GSPO takes its forward-only pre-pass; "ppo, 64-row chunks" is its baseline."""
    tag = f" ({backend})"
    rows_64 = 64 * CPU_VOCAB * (4 if backend == "triton" else 8) if device == "cpu" else 64 * QWEN_VOCAB * 6
    return [
        Candidate("ppo" + tag, ours_mode_loss(backend), (device,), "the plain PPO clip"),
        Candidate("gspo" + tag, ours_mode_loss(backend, loss_mode="gspo", clip_low=3e-4, clip_high=4e-4), (device,)),
        Candidate("cispo" + tag, ours_mode_loss(backend, loss_mode="cispo", clip_low=1.0, clip_high=0.28),
                  (device,)),
        Candidate("ppo+tis token" + tag, ours_mode_loss(backend, is_correction="tis"), (device,)),
        Candidate("ppo+mis seq" + tag, ours_mode_loss(backend, is_correction="mis", is_level="sequence"), (device,)),
        Candidate("gspo+tis seq" + tag, ours_mode_loss(backend, loss_mode="gspo", clip_low=3e-4, clip_high=4e-4,
                                                       is_correction="tis", is_level="sequence"), (device,)),
        Candidate("ppo, 64-row chunks" + tag, ours_mode_loss(backend, rows_64), (device,)),
        Candidate("gspo, long seqs" + tag, ours_mode_loss(backend, rows_64, loss_mode="gspo", clip_low=3e-4,
                                                          clip_high=4e-4), (device,), "pre-pass"),
    ]


def eager_loss(p: Problem):
    lb = loss_batch(p)

    def run():
        logits = (p.hidden @ p.weight.T).float() / p.temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, p.targets.unsqueeze(-1)).squeeze(-1)
        loss, _ = R.policy_loss(logp.view(lb.shape), lb.old_logp, lb.advantages, lb.mask,
                                ref_logp=lb.ref_logp, agg="token-mean", **LOSS_OPTIONS)
        return [loss], [torch.ones_like(loss)]
    return run


def liger_grpo_loss(p: Problem):
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except ImportError as error:
        raise Unavailable(f"liger_kernel not importable: {error}") from error
    lb = loss_batch(p)
    batch, seq_len = lb.shape
    module = LigerFusedLinearGRPOLoss(
        beta=LOSS_OPTIONS["kl_coef"], compiled=p.hidden.device.type == "cuda", use_ref_model=True,
        epsilon_low=LOSS_OPTIONS["clip_low"], epsilon_high=LOSS_OPTIONS["clip_high"], loss_type="bnpo",
        temperature=p.temperature,
    )
    mask = lb.mask.to(p.hidden.dtype)

    def run():
        loss, _ = module(p.hidden.view(batch, seq_len, -1), p.weight, p.targets.view(batch, seq_len), mask,
                         lb.advantages, ref_per_token_logps=lb.ref_logp, old_per_token_logps=lb.old_logp)
        return [loss], [torch.ones_like(loss)]
    return run


WORKLOADS: dict[str, list[Candidate]] = {
    "logprobs": [
        Candidate("eager", eager(False), ("cuda",), "materialized logits"),
        Candidate("torch.compile", eager(True), ("cuda",), "compiled eager"),
        Candidate("ours (triton)", ours("triton"), ("cuda",)),
        Candidate("ours, logp only", ours("triton", with_entropy=False), ("cuda",), "vs Liger"),
        Candidate("liger FLCE", liger_flce, ("cuda",), "reduction=none, logp only"),
        Candidate("reference", reference, ("cpu",), "materialized logits"),
        Candidate("ours (torch chunks)", ours("torch"), ("cpu",), "256 MiB budget"),
        Candidate("ours (torch, 16 MiB)", ours("torch", budget_bytes=16 * 2**20), ("cpu",), "16 MiB budget"),
    ],
    "policy-loss": [
        Candidate("liger GRPO", liger_grpo_loss, ("cuda", "cpu"), "LigerFusedLinearGRPOLoss, bnpo"),
        Candidate("eager", eager_loss, ("cuda", "cpu"), "materialized logits + reference loss"),
        Candidate("ours two-pass", ours_two_pass_loss("triton"), ("cuda",), "fused_logprobs + policy_loss"),
        Candidate("ours fused", ours_fused_loss("triton"), ("cuda",), "one pass, 6NHV"),
        Candidate("ours two-pass (torch)", ours_two_pass_loss("torch"), ("cpu",), "fused_logprobs + policy_loss"),
        Candidate("ours fused (torch)", ours_fused_loss("torch"), ("cpu",), "one pass, 6NHV"),
        # 16 MiB = 256 rows x V=8192 x 8 B: chunks as large as Liger's 256-token sequences on CPU.
        Candidate("two-pass (torch, 16M)", ours_two_pass_loss("torch", 16 * 2**20), ("cpu",), "16 MiB budget"),
        Candidate("fused (torch, 16M)", ours_fused_loss("torch", 16 * 2**20), ("cpu",), "16 MiB budget"),
    ],
    "loss-modes": mode_candidates("cuda", "triton") + mode_candidates("cpu", "torch"),
}
BASELINE = {"cuda": "eager", "cpu": "reference"}
# Pairs (first, second) whose time ratio is also measured back to back, per device.
PAIRED_RATIOS = {"policy-loss": {
    "cuda": [("ours fused", "ours two-pass"), ("ours fused", "liger GRPO")],
    "cpu": [("ours fused (torch)", "ours two-pass (torch)"), ("fused (torch, 16M)", "two-pass (torch, 16M)"),
            ("ours fused (torch)", "liger GRPO")],
}, "loss-modes": {
    device: [(c.name, f"ppo ({backend})") for c in mode_candidates(device, backend)[1:6]]
    + [(f"gspo, long seqs ({backend})", f"ppo, 64-row chunks ({backend})")]
    for device, backend in (("cuda", "triton"), ("cpu", "torch"))
}}
# Overrides BASELINE for these workloads.
WORKLOAD_BASELINE = {"policy-loss": "liger GRPO", "loss-modes": {"cuda": "ppo (triton)", "cpu": "ppo (torch)"}}
WORKLOAD_FLOPS_PER_NHV = {"logprobs": 8.0, "policy-loss": 6.0, "loss-modes": 6.0}


def make_problem(n, h, v, dtype, device, seed=0) -> Problem:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 3 / h**0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    grads = torch.randn(2, n, generator=gen).to(device)
    return Problem(hidden, weight, targets, grads[0], grads[1])


def time_ms(fn, device, reps: int) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5, rep=max(reps * 20, 100)))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(candidate: Candidate, problem: Problem, device, reps: int) -> dict:
    run = candidate.build(problem)
    problem.hidden.grad = problem.weight.grad = None

    def full():
        outputs, grads = run()
        torch.autograd.backward(outputs, grads)
        problem.hidden.grad = problem.weight.grad = None

    full()  # warm-up: Triton/compile caches, allocator
    state = {}

    def forward():
        state["out"] = run()

    def backward():
        outputs, grads = state["out"]
        torch.autograd.backward(outputs, grads, retain_graph=True)
        problem.hidden.grad = problem.weight.grad = None

    row = {"fwd_ms": time_ms(forward, device, reps)}
    forward()
    row["bwd_ms"] = time_ms(backward, device, reps)
    state.clear()
    row["full_ms"] = time_ms(full, device, reps)
    row["peak_mb"] = peak_allocated_bytes(full, device) / 2**20
    row["tflops"] = problem.flops / (row["full_ms"] * 1e-3) / 1e12
    return row


def paired_time_ratio(workload: str, first: str, second: str, problem: Problem, device, reps: int) -> float:
    """Median over reps of time(first) / time(second), each forward + backward run back to back
    (order alternating): on a shared box, load that drifts between two table rows cancels here."""
    by_name = {c.name: c for c in WORKLOADS[workload]}
    fulls = []
    for name in (first, second):
        run = by_name[name].build(problem)

        def full(run=run):
            outputs, grads = run()
            torch.autograd.backward(outputs, grads)
            problem.hidden.grad = problem.weight.grad = None
        full()  # warm-up
        fulls.append(full)
    ratios = []
    for rep in range(reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        times = {i: time_ms(fulls[i], device, 1) for i in order}
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def matmul_tflops(h: int, v: int, device, reps: int) -> float:
    """bf16 (GPU) / fp32 (CPU) matmul rate at a head-like shape, measured now: the ceiling we compare to."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = 4096 if device.type == "cuda" else 512
    a = torch.randn(rows, h, device=device, dtype=dtype)
    b = torch.randn(v, h, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ b.T, device, reps)
    return 2.0 * rows * h * v / (ms * 1e-3) / 1e12


def shapes_for(device, tokens) -> list[tuple[str, int, int, int, torch.dtype]]:
    """(label, H, V, N, dtype) rows: Qwen2.5 heads in bf16 on GPU, a small fp32 head on CPU."""
    if device.type == "cuda":
        heads = QWEN_HEADS.items()
        return [(name, h, QWEN_VOCAB, n, torch.bfloat16) for name, h in heads for n in tokens or GPU_TOKENS]
    return [(f"H{CPU_HEAD} V{CPU_VOCAB}", CPU_HEAD, CPU_VOCAB, n, torch.float32) for n in tokens or CPU_TOKENS]


def run_shape(workload: str, problem: Problem, device, reps: int, ceiling_tflops: float) -> dict[str, dict]:
    rows = {}
    for candidate in WORKLOADS[workload]:
        if device.type not in candidate.devices:
            continue
        try:
            rows[candidate.name] = measure(candidate, problem, device, reps)
        except Unavailable as why:
            rows[candidate.name] = {"error": str(why)}
        except torch.OutOfMemoryError:
            rows[candidate.name] = {"error": "out of memory"}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    baseline = WORKLOAD_BASELINE.get(workload, BASELINE[device.type])
    base = rows.get(baseline[device.type] if isinstance(baseline, dict) else baseline, {})
    for row in rows.values():
        if "error" in row:
            continue
        row["pct_matmul"] = 100.0 * row["tflops"] / ceiling_tflops
        if "full_ms" in base:
            row["speedup"] = base["full_ms"] / row["full_ms"]
            row["mem_ratio"] = base["peak_mb"] / max(row["peak_mb"], 1e-9)
    return rows


HEADER = (f"{'shape':<16} {'N':>6} {'candidate':<22} {'fwd ms':>9} {'bwd ms':>9} {'full ms':>9} {'peak MB':>9} "
          f"{'TFLOP/s':>8} {'%mm':>6} {'x time':>7} {'x mem':>7}")


def format_row(shape: str, n, name: str, row: dict) -> str:
    if "error" in row:
        return f"{shape:<16} {n:>6} {name:<22} {row['error']}"
    ratios = " ".join(f"{row[k]:>7.2f}" if k in row else f"{'-':>7}" for k in ("speedup", "mem_ratio"))
    return (f"{shape:<16} {n:>6} {name:<22} {row['fwd_ms']:>9.2f} {row['bwd_ms']:>9.2f} {row['full_ms']:>9.2f} "
            f"{row['peak_mb']:>9.1f} {row['tflops']:>8.3f} {row['pct_matmul']:>6.1f} {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="force the CPU table even when CUDA is present")
    parser.add_argument("--workload", default="logprobs", choices=sorted(WORKLOADS))
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (CPU) / do_bench scale (GPU)")
    parser.add_argument("--tokens", type=int, nargs="*", default=None, help="override the N values")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    reps = args.reps or (3 if device.type == "cpu" else 5)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# bench_kernels: workload={args.workload} device={device.type} ({machine}) torch {torch.__version__}")
    print(HEADER)
    results, ceilings, paired = [], {}, []
    for shape, h, v, n, dtype in shapes_for(device, args.tokens):
        if (h, v) not in ceilings:
            ceilings[(h, v)] = matmul_tflops(h, v, device, reps)
        problem = make_problem(n, h, v, dtype, device)
        problem.flops_per_nhv = WORKLOAD_FLOPS_PER_NHV[args.workload]
        for name, row in run_shape(args.workload, problem, device, reps, ceilings[(h, v)]).items():
            print(format_row(shape, n, name, row))
            rounded = {k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()}
            results.append({"shape": shape, "H": h, "V": v, "N": n, "dtype": str(dtype).removeprefix("torch."),
                            "candidate": name, **rounded})
        for first, second in PAIRED_RATIOS.get(args.workload, {}).get(device.type, []):
            try:
                ratio = paired_time_ratio(args.workload, first, second, problem, device, 2 * reps + 1)
            except (Unavailable, torch.OutOfMemoryError) as why:
                print(f"# {shape} N={n}: {first} / {second}: not measured ({why})")
                continue
            print(f"# {shape} N={n}: time {first} / {second} = {ratio:.2f} (back-to-back pairs, median of "
                  f"{2 * reps + 1})")
            paired.append({"shape": shape, "N": n, "first": first, "second": second, "time_ratio": round(ratio, 4)})
    for candidate in WORKLOADS[args.workload]:
        if device.type not in candidate.devices:
            print(format_row("GPU shapes" if device.type == "cpu" else "CPU shapes", "-", candidate.name,
                             {"error": f"not measured (runs on {'/'.join(candidate.devices)} only)"}))
    kind = "bf16" if device.type == "cuda" else "fp32"
    ceiling_text = ", ".join(f"H{h}xV{v}: {t:.3f} TFLOP/s" for (h, v), t in ceilings.items())
    floor = f"{WORKLOAD_FLOPS_PER_NHV[args.workload]:g}*N*H*V"
    print(f"# %mm: achieved TFLOP/s over the {floor} floor, as % of a {kind} matmul measured now: {ceiling_text}")
    print(json.dumps({"bench": "kernels", "workload": args.workload, "device": device.type, "machine": machine,
                      "matmul_tflops": {f"H{h}xV{v}": round(t, 4) for (h, v), t in ceilings.items()},
                      "rows": results, **({"paired_time_ratios": paired} if paired else {})}))


if __name__ == "__main__":
    main()
