"""Countdown from the command line: make problem files, solve or score one problem, show prompts.

    python -m fastzero.tasks.countdown generate --n 327680 --out data/train.parquet \\
        --test-n 1024 --test-out data/test.parquet
    python -m fastzero.tasks.countdown solve 3 7 12 --target 19
    python -m fastzero.tasks.countdown score --numbers 3 7 12 --target 22 "<answer>12+7+3</answer>"
    python -m fastzero.tasks.countdown show data/train.parquet --head 5 --template compact

Every argument is checked before any work starts; errors name the option. The `instruct` template
is left out of `show` because it needs a model's tokenizer (its chat template).
"""
from __future__ import annotations

import argparse
import collections
import math
import re
import sys
import time
from pathlib import Path

from fastzero.tasks.countdown.problems import (
    FILE_SUFFIXES,
    Problem,
    Ranges,
    generate_problems,
    generate_splits,
    read_problems,
    save_problems,
)
from fastzero.tasks.countdown.pace import GenerationTooSlow, Pace
from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.writable import why_not_writable

RANGE_OPTIONS = ("min_numbers", "max_numbers", "min_value", "max_value", "min_target", "max_target")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _problem_file(text: str) -> Path:
    path = Path(text)
    if path.suffix not in FILE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} must end in {' or '.join(FILE_SUFFIXES)}")
    return path


def _as_option_names(message: str) -> str:
    """'min_value (5) > max_value (3)' -> '--min-value (5) > --max-value (3)'."""
    return re.sub(r"\b(min|max)_(numbers|value|target)\b", r"--\1-\2", message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastzero.tasks.countdown", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write distinct solvable problems to .parquet/.jsonl")
    gen.add_argument("--n", type=_non_negative, required=True, help="how many (train) problems")
    gen.add_argument("--out", type=_problem_file, required=True, help="output .parquet or .jsonl")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    defaults = Ranges()
    for name in RANGE_OPTIONS:
        what = "count of numbers" if name.endswith("numbers") else name.split("_")[1]
        gen.add_argument("--" + name.replace("_", "-"), type=_non_negative, default=getattr(defaults, name),
                         help=f"{name.split('_')[0]}imum {what}, inclusive (default {getattr(defaults, name)})")
    gen.add_argument("--test-n", type=_non_negative, help="also write a test set this big, disjoint from train")
    gen.add_argument("--test-out", type=_problem_file, help="where the test set goes")
    gen.add_argument("--max-minutes", type=_positive, default=10.0,
                     help="give up early when the acceptance rate says generation would take longer (default 10)")

    solve = commands.add_parser("solve", help="print one expression that reaches the target")
    solve.add_argument("numbers", type=_non_negative, nargs="+")
    solve.add_argument("--target", type=_non_negative, required=True)

    score = commands.add_parser("score", help="print the reward of one response")
    score.add_argument("response", help='the model\'s text, e.g. "<answer>12+7+3</answer>"')
    score.add_argument("--numbers", type=_non_negative, nargs="+", required=True)
    score.add_argument("--target", type=_non_negative, required=True)
    score.add_argument("--format-score", type=_finite, default=0.1, help="reward of a tagged wrong answer (default 0.1)")
    score.add_argument("--correct-score", type=_finite, default=1.0, help="reward of a correct answer (default 1.0)")

    show = commands.add_parser("show", help="summarize a problem file and print its first prompts")
    show.add_argument("path", type=_problem_file)
    show.add_argument("--head", type=_non_negative, default=5)
    show.add_argument("--template", choices=("base", "compact"), default="compact")
    show.add_argument("--skip-bad", action="store_true", help="skip and count bad rows instead of failing")
    for name, sub in commands.choices.items():
        sub.set_defaults(subparser=sub)  # errors then print the subcommand's own usage
    return parser


def _check_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Ranges:
    try:
        ranges = Ranges(**{name: getattr(args, name) for name in RANGE_OPTIONS})
    except ValueError as e:
        parser.error(_as_option_names(str(e)))
    if (args.test_n is None) != (args.test_out is None):
        parser.error("--test-n and --test-out go together")
    if args.test_out is not None and args.test_out.resolve() == args.out.resolve():
        parser.error("--test-out must differ from --out")
    for option, path in (("--out", args.out), ("--test-out", args.test_out)):
        if path is not None and (problem := why_not_writable(path)):
            parser.error(f"{option}: {problem}")  # now, not after minutes of generation
    wanted = args.n + (args.test_n or 0)
    if wanted > ranges.capacity():
        parser.error(
            f"--n{' + --test-n' if args.test_n else ''} = {wanted} exceeds the {ranges.capacity()} "
            f"distinct problems these ranges hold; widen --max-value/--max-target"
        )
    return ranges


def _size_summary(problems: list[Problem]) -> str:
    sizes = collections.Counter(len(p.numbers) for p in problems)
    total = max(len(problems), 1)
    return ", ".join(f"{k} numbers: {c} ({100 * c / total:.1f}%)" for k, c in sorted(sizes.items()))


def _generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    ranges = _check_generate(parser, args)
    options = {name: getattr(args, name) for name in RANGE_OPTIONS}
    pace = Pace(60 * args.max_minutes, report=lambda line: print(line, file=sys.stderr, flush=True))
    start = time.perf_counter()
    try:
        if args.test_n is not None:
            train, test = generate_splits(args.n, args.test_n, seed=args.seed, pace=pace, **options)
        else:
            train, test = generate_problems(args.n, seed=args.seed, pace=pace, **options), None
    except GenerationTooSlow as e:
        print(f"error: {_as_option_names(str(e))}; or allow more time with --max-minutes", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as e:
        print(f"error: {_as_option_names(str(e))}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    written = []
    outputs = (("train:", "--out", train, args.out), ("test: ", "--test-out", test, args.test_out))
    for label, option, problems, path in outputs:
        if problems is None:
            continue
        try:
            save_problems(problems, path)
        except OSError as e:  # e.g. the disk filled up: the write is atomic, so no partial file is left
            kept = f"; {written[0]} was written" if written else ""
            print(f"error: {option}: could not write {path}: {e.strerror or e}{kept}", file=sys.stderr)
            return 2
        written.append(str(path))
        print(f"{label} {len(problems)} problems -> {path}  [{_size_summary(problems)}]")
    made = len(train) + len(test or [])
    print(
        f"values {ranges.min_value}..{ranges.max_value}, targets {ranges.min_target}..{ranges.max_target}, "
        f"seed {args.seed}; generated in {seconds:.2f} s ({made / max(seconds, 1e-9):,.0f} problems/s)"
    )
    return 0


def _one_problem(parser: argparse.ArgumentParser, numbers: list[int], target: int) -> Problem:
    try:
        return Problem(tuple(numbers), target)
    except ValueError as e:
        parser.error(f"numbers/--target: {e}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parser = args.subparser
    if args.command == "generate":
        return _generate(parser, args)
    if args.command == "solve":
        problem = _one_problem(parser, args.numbers, args.target)
        from fastzero.tasks.countdown.verifier import solve

        expression = solve(list(problem.numbers), problem.target)
        print(expression if expression is not None else "no solution")
        return 0
    if args.command == "score":
        problem = _one_problem(parser, args.numbers, args.target)
        if not 0 <= args.format_score < args.correct_score:  # the trainer's rule: a correct answer pays most
            parser.error(f"--format-score ({args.format_score}) must be >= 0 and below --correct-score "
                         f"({args.correct_score})")
        from fastzero.tasks.countdown.verifier import score

        print(score(args.response, list(problem.numbers), problem.target,
                    format_score=args.format_score, correct_score=args.correct_score))
        return 0
    # show
    try:
        report = read_problems(args.path, skip_bad=args.skip_bad)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    problems = report.problems
    print(f"{args.path}: {len(problems)} problems [{_size_summary(problems)}], "
          f"{len(report.skipped)} bad rows skipped")
    for message in report.skipped[:3]:
        print(f"  skipped {message}")
    for p in problems[: args.head]:
        if args.template == "base":
            print("-" * 40)  # base prompts span several lines; compact ones are one line each
        print(render_prompt(args.template, p.numbers, p.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
