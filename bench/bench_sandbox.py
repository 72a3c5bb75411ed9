"""Benchmark: the reward sandbox's cost per sample against calling the same reward directly.

    python bench/bench_sandbox.py            # 8192 responses, batches of 512 and 8192
    python bench/bench_sandbox.py --quick    # smoke run: 1024 responses

Rewards (both defined in this file, imported by the workers as `bench_sandbox:NAME`):
- `trivial`: `float(len(response) % 2)`, so the time is nearly all sandbox overhead;
- `countdown`: Countdown's C++ `score_batch` (1 thread per worker), or `score` per sample.
Corpus: bench_verify's TinyZero-like Countdown responses (~600 characters each, seeded).

Candidates, one batch per call, the whole batch timed end to end (us per sample):
- `direct`: the function called in this process;
- `sandbox batch, W workers`: `RewardSandbox(...).score` in batch mode (one chunk per worker);
- `sandbox per-sample, W workers`: per-sample mode (each sample one call, results streamed).
`overhead/sample` = (sandbox - direct) / n. Best of --repeats runs (the least disturbed on a shared
box); the load average is printed. Pool start-up is reported separately (it happens once per run).
Ends with one JSON line.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def trivial(responses, problems):
    return [float(len(r) % 2) for r in responses]


def trivial_one(response, problem):
    return float(len(response) % 2)


def countdown(responses, problems):
    from fastzero.tasks.countdown.verifier import score_batch
    return score_batch(responses, [p["numbers"] for p in problems], [p["target"] for p in problems], num_threads=1)


def countdown_one(response, problem):
    from fastzero.tasks.countdown.verifier import score
    return score(response, problem["numbers"], problem["target"])


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    from bench_verify import ASCII_REASONING, make_corpus

    from fastzero.tasks.sandbox import RewardSandbox, SandboxOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="responses in the largest batch")
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 8192], help="batch sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.batches, args.repeats = 1024, [256, 1024], 2
    responses, numbers, targets = make_corpus(args.n, 0, ASCII_REASONING)
    problems = [{"numbers": n, "target": t} for n, t in zip(numbers, targets)]
    print(f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"{'reward':<10}{'batch':>7}  {'candidate':<28}{'us/sample':>11}{'overhead/sample us':>20}{'x direct':>10}")
    rows, startups = [], []
    for reward, one in ((trivial, trivial_one), (countdown, countdown_one)):
        for size in args.batches:
            batch, batch_problems = responses[:size], problems[:size]
            assert len(batch) == size, f"--n {args.n} is smaller than batch {size}"
            direct = best(lambda: reward(batch, batch_problems), args.repeats)
            print(f"{reward.__name__:<10}{size:>7}  {'direct':<28}{1e6 * direct / size:>11.2f}{'':>20}{1.0:>10.2f}")
            for per_sample in (False, True):
                for workers in args.workers:
                    spec = f"bench_sandbox:{(one if per_sample else reward).__name__}"
                    options = SandboxOptions(workers=workers, per_sample=per_sample, timeout=60.0, stall_seconds=120.0)
                    started = time.perf_counter()
                    with RewardSandbox(spec, options) as sandbox:
                        startups.append(time.perf_counter() - started)
                        expected = reward(batch, batch_problems)
                        result = sandbox.score(batch, batch_problems)  # warm-up, and a correctness check
                        assert result.rewards == expected and result.errors == result.timeouts == 0
                        seconds = best(lambda: sandbox.score(batch, batch_problems), args.repeats)
                    label = f"sandbox {'per-sample' if per_sample else 'batch'}, {workers} worker{'s' * (workers > 1)}"
                    overhead = 1e6 * (seconds - direct) / size
                    print(f"{reward.__name__:<10}{size:>7}  {label:<28}{1e6 * seconds / size:>11.2f}"
                          f"{overhead:>20.2f}{seconds / direct:>10.2f}")
                    rows.append({"reward": reward.__name__, "batch": size, "candidate": label,
                                 "us_per_sample": 1e6 * seconds / size, "direct_us_per_sample": 1e6 * direct / size,
                                 "overhead_us_per_sample": overhead})
    print(f"pool start-up (spawn + import + ready), per pool: best {min(startups):.3f} s, worst {max(startups):.3f} s")
    print(json.dumps({"bench": "sandbox", "load": os.getloadavg()[0], "startup_s": [min(startups), max(startups)],
                      "rows": rows}))


if __name__ == "__main__":
    main()
