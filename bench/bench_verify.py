"""Benchmark: Countdown reward throughput, C++ verifier vs TinyZero's eval-based scorer, same run.

    python bench/bench_verify.py              # 100k responses (+ 100k with non-ASCII reasoning)
    python bench/bench_verify.py --quick      # smoke run: 5k responses
    python bench/bench_verify.py --n 200000

The corpus is seeded and TinyZero-like: ~600-character responses with <think> reasoning, answer
tags, and a mix of correct, wrong, malformed, missing and repeated answers over 3-4 numbers in
1..99. It never contains `**` or deep nesting, so the eval baseline cannot hang on it. A second
corpus writes the reasoning in Chinese/Russian with emoji (2- and 4-byte CPython strings).

Candidates (samples/s; x eval = throughput over the eval-based scorer's on the same corpus, by
wall clock; x eval cpu = the same by CPU time of the calling thread, single-thread rows only,
which other processes on a shared machine disturb much less):
- `score_batch`: the C++ verifier, one call per batch, 1 thread and all threads;
- `score` in a Python loop; `reference_score`: the pure-Python oracle (no eval);
- `tinyzero_eval_score`: THE UNSAFE BASELINE, our rewrite of TinyZero's published algorithm (last
  <answer> by regex, numbers via re.findall(r"\\d+"), character whitelist, `eval`, |x - t| < 1e-5).
Every timed run gets freshly built str objects (CPython caches a str's UTF-8 form). Best of
--repeats runs (three times as many for the cheap C++ candidates): on a shared box the best run is the
least disturbed one; the load average is printed. Also: solve() on six numbers, solvable and
unsolvable. Ends with one JSON line.
"""
from __future__ import annotations

import os

# numpy (imported by the countdown package) must not park OpenBLAS threads on this shared box.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import random
import re
import time

from fastzero.tasks.countdown.reference import reference_score
from fastzero.tasks.countdown.verifier import default_threads, score, score_batch, solve

ASCII_REASONING = [
    "Let me try {a} + {b} = {s}, that is not it. ", "Maybe multiply: {a} * {b} = {p}, too big. ",
    "What about {b} - {a}? That gives {d}. ", "We need to reach {t} using {nums}. ",
    "Dividing {p} by {a} gives back {b}. ", "Hmm, let me reconsider the order of operations. ",
    "If I subtract first and then add the rest, I get closer to the target. ",
    "So far the closest I have is {s}, which is off by {off}. ", "Let's check again carefully. ",
]
UNICODE_REASONING = [
    "试试 {a} + {b} = {s}，不对。", "也许乘法：{a} × {b} = {p}，太大了。", "Попробуем {b} − {a} = {d}. ",
    "Нужно получить {t} из {nums}. ", "🤔 {p} ÷ {a} = {b}… ", "再检查一下运算顺序。✅ ",
    "Ближе всего пока {s}, разница {off}. 🙂 ", "让我们再仔细算一遍。",
]


def random_expression(rng: random.Random, numbers: list[int]) -> str:
    """Random well-formed expression over all numbers, with some parentheses."""
    terms = [str(x) for x in rng.sample(numbers, len(numbers))]
    text = terms[0]
    for term in terms[1:]:
        op = rng.choice("+-*/")
        text = f"({text}){op}{term}" if rng.random() < 0.4 and op in "*/" else f"{text}{op}{term}"
    return text


def exact_value(expression: str) -> float | None:
    """Value of a corpus expression (made of digits, + - * / and parentheses only)."""
    try:
        return eval(expression, {"__builtins__": None}, {})  # noqa: S307 - our own generated text
    except ZeroDivisionError:
        return None


def make_response(rng: random.Random, numbers: list[int], target: int, correct: str,
                  sentences: list[str]) -> str:
    a, b = numbers[0], numbers[1]
    fields = dict(a=a, b=b, s=a + b, p=a * b, d=b - a, t=target, nums=numbers, off=abs(target - a - b))
    reasoning, length = "", rng.randrange(420, 620)
    while len(reasoning) < length:
        reasoning += rng.choice(sentences).format(**fields)
    kind = rng.random()
    if kind < 0.40:      # correct, with random spacing
        answer = correct.replace("+", rng.choice(["+", " + "]))
    elif kind < 0.65:    # well-formed but wrong
        answer = random_expression(rng, numbers)
    elif kind < 0.80:    # malformed: missing number, '=', leading zero, decimal, letters, parens
        answer = rng.choice([f"{a}+{b}", f"{correct} = {target}", re.sub(r"\d+", lambda m: "0" + m.group(), correct, count=1),
                             f"{a}.5*{b}", f"x = {correct}", f"({correct}", f"{correct} // 1"])
    elif kind < 0.90:    # truncated: no closing tag
        return f"<think>{reasoning}</think>\n<answer>{correct}"
    else:                # a draft answer first, the final one last
        reasoning += f"First guess: <answer>{random_expression(rng, numbers)}</answer>. Not right. "
        answer = correct
    return f"<think>{reasoning}</think>\n<answer>{answer}</answer>"


def make_corpus(n: int, seed: int, sentences: list[str]):
    rng = random.Random(seed)
    responses, numbers, targets = [], [], []
    while len(responses) < n:
        nums = [rng.randrange(1, 100) for _ in range(rng.choice([3, 4]))]
        expression = random_expression(rng, nums)
        value = exact_value(expression)
        if value is None or value != int(value) or not 1 <= value <= 999:
            continue
        responses.append(make_response(rng, nums, int(value), expression, sentences))
        numbers.append(nums)
        targets.append(int(value))
    assert not any("**" in r for r in responses)  # the eval baseline must not hang on the corpus
    return responses, numbers, targets


# -------------------------------------------------------------- THE UNSAFE BASELINE (TinyZero-style)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ALLOWED = re.compile(r"^[\d+\-*/().\s]+$")


def tinyzero_eval_score(response: str, numbers, target, format_score=0.1, correct_score=1.0) -> float:
    """TinyZero's algorithm, rewritten: UNSAFE (`9**9**9` hangs it), for comparison only."""
    matches = list(_ANSWER.finditer(response))
    if not matches:
        return 0.0
    equation = matches[-1].group(1).strip()
    try:
        if sorted(int(x) for x in re.findall(r"\d+", equation)) != sorted(numbers):
            return format_score
    except Exception:
        return format_score
    try:
        if not _ALLOWED.match(equation):
            return format_score
        result = eval(equation, {"__builtins__": None}, {})  # noqa: S307 - the point of the baseline
        return correct_score if abs(result - target) < 1e-5 else format_score
    except Exception:
        return format_score
# ---------------------------------------------------------------------------------------------


def fresh(strings: list[str]) -> list[str]:
    """New str objects with the same text (no cached UTF-8 form carried over between runs)."""
    return [s.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass") for s in strings]


def best_time(fn, strings, repeats: int) -> tuple[float, float, list[float]]:
    """Best wall-clock seconds, best CPU seconds of this thread, and the scores."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        texts = fresh(strings)
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        result = fn(texts)
        best_cpu = min(best_cpu, time.thread_time() - start_cpu)
        best_wall = min(best_wall, time.perf_counter() - start_wall)
    return best_wall, best_cpu, result


def in_batches(size: int, numbers, targets, threads: int):
    def run(texts):
        out = []
        for i in range(0, len(texts), size):
            out += score_batch(texts[i:i + size], numbers[i:i + size], targets[i:i + size],
                               num_threads=threads)
        return out
    return run


def bench_corpus(label, responses, numbers, targets, threads, repeats, rows, slow_subset):
    def loop(fn, k=len(responses)):
        return lambda texts: [fn(r, n, t) for r, n, t in zip(texts[:k], numbers[:k], targets[:k])]

    n, k = len(responses), min(len(responses), slow_subset)
    eval_time, eval_cpu, eval_scores = best_time(loop(tinyzero_eval_score), responses, repeats)
    eval_rate, eval_cpu_rate = n / eval_time, n / eval_cpu
    candidates = [
        ("tinyzero_eval_score (unsafe)", 1, "-", n, loop(tinyzero_eval_score)),
        ("reference_score (python)", 1, "-", k, loop(reference_score, k)),
        ("score (loop)", 1, "-", n, loop(score)),
        ("score_batch", 1, "whole", n, lambda texts: score_batch(texts, numbers, targets, num_threads=1)),
        ("score_batch", threads, "whole", n,
         lambda texts: score_batch(texts, numbers, targets, num_threads=threads)),
    ] + [("score_batch", t, str(size), n, in_batches(size, numbers, targets, t))
         for t in (1, threads) for size in (1024, 4096, 8192)]
    results = {}
    for name, used_threads, batch, count, fn in candidates:
        fast = "score" in name and "reference" not in name  # C++: cheap, so more runs filter noise
        seconds, cpu_seconds, scores = (eval_time, eval_cpu, eval_scores) if "eval" in name else best_time(
            fn, responses, 1 if "reference" in name else 3 * repeats if fast else repeats)
        rate = count / seconds
        if "reference" not in name and "eval" not in name:
            results.setdefault("scores", scores)
            assert scores == results["scores"], f"{name} disagrees with score_batch"
        # CPU time of the calling thread says little once helper threads work too.
        cpu_ratio = (count / cpu_seconds) / eval_cpu_rate if used_threads == 1 else None
        rows.append((label, name, used_threads, batch, rate, 1e6 / rate, rate / eval_rate, cpu_ratio))
        results[f"{name}|{used_threads}|{batch}"] = rate
        if cpu_ratio is not None:
            results[f"{name}|{used_threads}|{batch}|x_eval_cpu"] = round(cpu_ratio, 1)
    ours, theirs = results.pop("scores"), eval_scores
    reference = [reference_score(*args) for args in zip(responses[:k], numbers[:k], targets[:k])]
    assert ours[:k] == reference, "score_batch disagrees with reference_score"
    results["tinyzero_disagreements"] = sum(a != b for a, b in zip(ours, theirs))
    results["mix"] = {str(v): ours.count(v) for v in sorted(set(ours))}
    results["eval_rate"] = eval_rate
    return results


def bench_solver(repeats: int) -> dict:
    cases = {"solvable [25,50,75,100,3,6]->952": ([25, 50, 75, 100, 3, 6], 952),
             "unsolvable primes [97..71]->39": ([97, 89, 83, 79, 73, 71], 39),
             "unsolvable [1..6]->284": ([1, 2, 3, 4, 5, 6], 284)}
    out = {}
    for name, (numbers, target) in cases.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            solve(numbers, target)
            times.append(time.perf_counter() - start)
        out[name] = min(times) * 1e3
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="responses per corpus")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5k responses, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per candidate (best kept)")
    parser.add_argument("--reference-n", type=int, default=20_000,
                        help="responses timed for the slow pure-Python reference_score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.reference_n = 5_000, 1, 2_000
    if args.n < 1 or args.repeats < 1 or args.reference_n < 1:
        parser.error("--n, --repeats and --reference-n must be >= 1")
    threads = default_threads()

    rows, summary = [], {"load_average_before": round(os.getloadavg()[0], 1)}
    for label, sentences, seed in (("ascii", ASCII_REASONING, args.seed),
                                   ("non-ascii", UNICODE_REASONING, args.seed + 1)):
        corpus = make_corpus(args.n, seed, sentences)
        mean_chars = sum(map(len, corpus[0])) / args.n
        summary[label] = bench_corpus(label, *corpus, threads, args.repeats, rows, args.reference_n)
        summary[label]["mean_chars"] = round(mean_chars, 1)
    summary["solve_ms"] = bench_solver(args.repeats)
    summary["load_average_after"] = round(os.getloadavg()[0], 1)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, all-threads = "
          f"{threads}; n = {args.n} per corpus (reference_score on the first {args.reference_n}); "
          f"best of {args.repeats} ({3 * args.repeats} for C++); load average "
          f"{summary['load_average_before']} before, {summary['load_average_after']} after")
    for label in ("ascii", "non-ascii"):
        s = summary[label]
        print(f"# {label}: mean {s['mean_chars']} chars; rewards {s['mix']}; TinyZero's scorer "
              f"disagrees on {s['tinyzero_disagreements']}")
    print(f"{'corpus':10} {'scorer':30} {'thr':>3} {'batch':>6} {'samples/s':>12} {'us/sample':>10} "
          f"{'x eval':>8} {'x eval cpu':>10}")
    for label, name, used_threads, batch, rate, micros, ratio, cpu_ratio in rows:
        cpu_text = "-" if cpu_ratio is None else f"{cpu_ratio:.1f}"
        print(f"{label:10} {name:30} {used_threads:>3} {batch:>6} {rate:>12,.0f} {micros:>10.2f} "
              f"{ratio:>8.1f} {cpu_text:>10}")
    for name, ms in summary["solve_ms"].items():
        print(f"solve {name}: {ms:.1f} ms")
    print(json.dumps({"bench": "verify", "n": args.n, "threads": threads, **summary}))


if __name__ == "__main__":
    main()
