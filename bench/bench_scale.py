"""Data-parallel scaling: the same run (tiny-direct preset, same global batch) on 1 process and on N
torchrun ranks (FSDP2, gloo on CPU / NCCL on GPUs), in the same invocation.

    python bench/bench_scale.py                     # 1 and 2 ranks, 1 thread each, 6 steps
    python bench/bench_scale.py --ranks 1 2 4 --steps 10
    python bench/bench_scale.py --device cuda --ranks 1 2 8 --preset qwen2.5-0.5b-grpo --model-path DIR

For each world size it runs `python -m fastzero.train` (1) or `torchrun --nproc-per-node N -m
fastzero.train` and reads the run's metrics.jsonl: steps/s and tokens/s over the RL steps only
(start-up, the start/end evaluations and the final save excluded), from time/step. Scaling
efficiency = (tokens/s on N) / (N x tokens/s on 1). Prints a table and one JSON line.
On CPU every rank gets one thread: N ranks need N free cores for the ratio to mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_once(ranks: int, args, output_dir: str) -> dict:
    flags = ["--preset", args.preset, "--max-steps", str(args.steps), "--eval-every", "0", "--save-every", "0",
             "--num-test", "8", "--time-limit-minutes", "0", "--progress", "false", "--threads", str(args.threads),
             "--device", args.device, "--output-dir", output_dir] + (["--model-path", args.model_path] if args.model_path else [])
    if ranks == 1:
        command = [sys.executable, "-m", "fastzero.train"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", str(free_port()), "-m", "fastzero.train"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(command + flags, env=env, check=True, capture_output=True, text=True)
    with open(os.path.join(output_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    steps = [r for r in rows if "time/step" in r]
    seconds = sum(r["time/step"] for r in steps)
    with open(os.path.join(output_dir, "summary.json")) as fh:
        summary = json.load(fh)
    # Tokens of the RL steps: the run's total (prompt + response tokens trained on).
    tokens = summary["cost"]["tokens"]
    return {"ranks": ranks, "steps": len(steps), "seconds": round(seconds, 3),
            "steps_per_s": round(len(steps) / seconds, 4), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="tiny-direct")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        for ranks in args.ranks:
            results.append(run_once(ranks, args, os.path.join(folder, f"ranks-{ranks}")))
    base = next((r for r in results if r["ranks"] == 1), None)
    print(f"{'ranks':>5} {'steps':>5} {'seconds':>8} {'steps/s':>8} {'tokens/s':>9} {'speed-up':>8} {'efficiency':>10}")
    for r in results:
        speedup = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        r["speedup"] = round(speedup, 3) if speedup else None
        r["efficiency"] = round(speedup / r["ranks"], 3) if speedup else None
        print(f"{r['ranks']:>5} {r['steps']:>5} {r['seconds']:>8.2f} {r['steps_per_s']:>8.3f} {r['tokens_per_s']:>9.1f} "
              f"{r['speedup'] or float('nan'):>8.2f} {r['efficiency'] or float('nan'):>10.2f}")
    print(json.dumps({"bench": "scale", "preset": args.preset, "device": args.device, "threads_per_rank": args.threads,
                      "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "results": results}))


if __name__ == "__main__":
    main()
