"""Does thinking buy accuracy per minute? The embedded thinking model against the direct-answer model,
trained in the same budget, in one run.

Arms, each a `python -m fastzero.train` subprocess, one after the other (so they never share cores),
with the same threads, seed and RL time limit:
- think:  preset `tiny-think`  (tiny-countdown-think: `<think>` candidates, then `<answer>`)
- direct: preset `tiny-direct` (tiny-countdown: `<answer>` only)
Both evaluate greedily on the same 500 held-out problems (3 numbers in 1..20, targets 1..50, data seed
1000) every `--eval-every` steps. Per arm it prints the curve (step, RL minutes, accuracy and, for the
thinking model, the signature: equations per response, search success, verification, arithmetic
right, response length), then a table of start/end accuracy, gain per RL minute and the ratio
think/direct, and one JSON line at the end.

    python bench/bench_thinking.py                      # 10 RL minutes per arm
    python bench/bench_thinking.py --minutes 3 --arms think,direct
    python bench/bench_thinking.py --out DIR --report     # re-read the runs of an earlier bench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

ARMS = {"think": ["--preset", "tiny-think"], "direct": ["--preset", "tiny-direct"]}
SIGNATURE = ("response/length", "think/equations", "think/search_success", "think/verified",
             "think/arithmetic_right")


def arm_max_steps(name: str, given: int | None) -> int:
    """The step cap of an arm: the one given, else its preset's when the preset decays its learning
    rate over its steps (the decay's length is part of the recipe), else a cap the time limit beats."""
    if given is not None:
        return given
    from fastzero.presets import PRESETS

    preset = PRESETS[ARMS[name][1]]
    return preset["max_steps"] if preset.get("lr_schedule", "constant") != "constant" else 100000


def run_arm(name: str, args: argparse.Namespace, out_dir: str) -> dict:
    command = [sys.executable, "-m", "fastzero.train", *ARMS[name], "--time-limit-minutes", str(args.minutes),
               "--max-steps", str(arm_max_steps(name, args.max_steps)), "--eval-every", str(args.eval_every),
               "--threads", str(args.threads),
               "--seed", str(args.seed), "--save-every", "0", "--progress", "false", "--output-dir", out_dir]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return read_arm(name, out_dir)


def read_arm(name: str, out_dir: str) -> dict:
    """An arm's curve from its run folder (metrics.jsonl; summary.json for the wall time)."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    with open(os.path.join(out_dir, "summary.json")) as fh:
        wall = json.load(fh)["cost"]["wall_seconds"]
    return {"name": name, "wall_seconds": wall, "curve": curve(rows)}


def curve(rows: list[dict]) -> list[dict]:
    """One point per evaluation: step, RL minutes so far, accuracy, and the rollouts' signature since
    the previous evaluation (means over those steps)."""
    points, rl_seconds, window = [], 0.0, []
    for row in rows:
        rl_seconds += row.get("time/step", 0.0)
        if "reward/mean" in row:
            window.append(row)
        if "eval/accuracy" in row:
            point = {"step": row["step"], "minutes": rl_seconds / 60, "accuracy": row["eval/accuracy"]}
            for key in SIGNATURE:
                if "eval/" + key in row:  # the held-out responses' signature (greedy)
                    point["eval/" + key] = row["eval/" + key]
                values = [r[key] for r in window if key in r]
                if values:  # the rollouts' (sampled) since the previous evaluation
                    point[key] = sum(values) / len(values)
            points.append(point)
            window = []
    return points


def print_curve(result: dict) -> None:
    """The curve; each signature column is `held-out (rollouts)`: greedy at the evaluation, and the
    sampled rollouts' mean since the previous one."""
    print(f"\n{result['name']}: wall {result['wall_seconds']:.0f} s (everything included)")
    keys = [k for k in SIGNATURE if any(k in p or "eval/" + k in p for p in result["curve"])]
    print(f"{'step':>5} {'RL min':>7} {'accuracy':>9} " + " ".join(f"{k.split('/')[-1][:15]:>15}" for k in keys))
    for p in result["curve"]:
        cells = []
        for k in keys:
            held_out = f"{p['eval/' + k]:.3f}" if "eval/" + k in p else "-"
            cells.append(f"{held_out} ({p[k]:.3f})" if k in p else held_out)
        print(f"{p['step']:5d} {p['minutes']:7.2f} {100 * p['accuracy']:8.1f}% " + " ".join(f"{c:>15}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="RL time limit per arm")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="step cap per arm (default: the preset's when its learning rate decays over it, "
                             "else none: the time limit binds)")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="think,direct", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--report", action="store_true", help="only read the runs already in --out and report them")
    args = parser.parse_args()
    if args.report and not args.out:
        parser.error("--report needs --out (the folder of an earlier bench run)")
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        parser.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    root = args.out or tempfile.mkdtemp(prefix="bench-thinking-")
    print(f"bench_thinking: {args.minutes} RL minutes per arm, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f}, runs in {root}")
    results = []
    for name in arms:
        out_dir = os.path.join(root, name)
        results.append(read_arm(name, out_dir) if args.report else run_arm(name, args, out_dir))
        print_curve(results[-1])
    print(f"\n{'arm':<8}{'steps':>7}{'start':>8}{'end':>8}{'gain':>8}{'RL min':>8}{'gain/min':>10}{'wall s':>8}")
    summary = {}
    for r in results:
        first, last = r["curve"][0], r["curve"][-1]
        gain = 100 * (last["accuracy"] - first["accuracy"])
        per_minute = gain / last["minutes"] if last["minutes"] > 0 else 0.0
        summary[r["name"]] = {"steps": last["step"], "start": first["accuracy"], "end": last["accuracy"],
                              "rl_minutes": round(last["minutes"], 2), "gain_points_per_minute": round(per_minute, 2),
                              "wall_seconds": round(r["wall_seconds"], 1), "curve": r["curve"]}
        print(f"{r['name']:<8}{last['step']:7d}{100 * first['accuracy']:7.1f}%{100 * last['accuracy']:7.1f}%"
              f"{gain:+7.1f}{last['minutes']:8.2f}{per_minute:10.2f}{r['wall_seconds']:8.0f}")
    if "think" in summary and "direct" in summary:
        direct_gain = summary["direct"]["end"] - summary["direct"]["start"]
        ratio = (summary["think"]["end"] - summary["think"]["start"]) / direct_gain if direct_gain else float("inf")
        print(f"think/direct accuracy gain in the same budget: {ratio:.2f}x")
        summary["gain_ratio_think_over_direct"] = round(ratio, 3)
    print(json.dumps({"bench": "thinking", "minutes": args.minutes, "threads": args.threads,
                      "load_at_start": round(os.getloadavg()[0], 1), **summary}))


if __name__ == "__main__":
    main()
