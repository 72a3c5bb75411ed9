"""Benchmark: token log-probs (+ entropy) from hidden states, ours vs the alternatives, same run.

    python bench/bench_kernels.py            # GPU when present: Qwen2.5 heads, N = 2k..32k tokens
    python bench/bench_kernels.py --cpu      # CPU: small shapes, reference vs chunked PyTorch

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

To add rows (e.g. the fused log-prob + policy-loss path vs LigerFusedLinearGRPOLoss), register a
Candidate in WORKLOADS under a new workload name; `build(problem)` returns a closure that runs the
forward and returns (outputs, upstream grads) for torch.autograd.backward, or raises Unavailable.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from fastzero.kernels import logprob as LP
from fastzero.kernels import reference as R
from fastzero.kernels.logprob import fused_logprobs

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

    @property
    def flops(self) -> float:
        n, h = self.hidden.shape
        return 8.0 * n * h * self.weight.shape[0]


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
}
BASELINE = {"cuda": "eager", "cpu": "reference"}


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


def peak_extra_bytes(fn, device) -> int:
    """Peak bytes torch allocates while fn runs, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: the profiler logs each allocator call as a "[memory]" event of +/- nbytes.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))


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
    row["peak_mb"] = peak_extra_bytes(full, device) / 2**20
    row["tflops"] = problem.flops / (row["full_ms"] * 1e-3) / 1e12
    return row


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
    base = rows.get(BASELINE[device.type], {})
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
    results, ceilings = [], {}
    for shape, h, v, n, dtype in shapes_for(device, args.tokens):
        if (h, v) not in ceilings:
            ceilings[(h, v)] = matmul_tflops(h, v, device, reps)
        problem = make_problem(n, h, v, dtype, device)
        for name, row in run_shape(args.workload, problem, device, reps, ceilings[(h, v)]).items():
            print(format_row(shape, n, name, row))
            rounded = {k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()}
            results.append({"shape": shape, "H": h, "V": v, "N": n, "dtype": str(dtype).removeprefix("torch."),
                            "candidate": name, **rounded})
    for candidate in WORKLOADS[args.workload]:
        if device.type not in candidate.devices:
            print(format_row("GPU shapes" if device.type == "cpu" else "CPU shapes", "-", candidate.name,
                             {"error": f"not measured (runs on {'/'.join(candidate.devices)} only)"}))
    kind = "bf16" if device.type == "cuda" else "fp32"
    ceiling_text = ", ".join(f"H{h}xV{v}: {t:.3f} TFLOP/s" for (h, v), t in ceilings.items())
    print(f"# %mm: achieved TFLOP/s over the 8*N*H*V floor, as % of a {kind} matmul measured now: {ceiling_text}")
    print(json.dumps({"bench": "kernels", "workload": args.workload, "device": device.type, "machine": machine,
                      "matmul_tflops": {f"H{h}xV{v}": round(t, 4) for (h, v), t in ceilings.items()},
                      "rows": results}))


if __name__ == "__main__":
    main()
