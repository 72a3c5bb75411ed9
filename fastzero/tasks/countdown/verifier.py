"""Countdown reward: a safe, exact, linear-time verifier and an exhaustive solver.

The work happens in C++ (`fastzero._countdown`, csrc/countdown.cpp); `score_batch` scores a whole
batch in one call with the GIL released, split over threads. If the extension is not built, all
three functions fall back to the pure-Python oracle in `reference.py` (with a one-time warning).

## Scoring rules

The response is the generated text only (not the prompt).

1. **Extraction.** The answer is the *last* match of `re.findall(r"<answer>(.*?)</answer>", response,
   re.DOTALL)`: non-greedy, scanned left to right, non-overlapping. No match: reward **0.0**.
2. **Strip and length.** Only `' '`, `'\\t'`, `'\\n'`, `'\\r'` are stripped from both ends. More than
   1024 characters (code points) left: invalid.
3. **Tokens.** ASCII digits, `+ - * / ( )`, and those four whitespace characters between tokens.
   Anything else is invalid: `.`, `%`, `=`, `**`, `//`, letters, NUL, NBSP, non-ASCII digits.
   Integer literals with a leading zero (`05`, `00`) are invalid; `0` itself is fine. No unary `+`/`-`.
4. **Grammar.** `expr := term (('+'|'-') term)*`, `term := factor (('*'|'/') factor)*`,
   `factor := INT | '(' expr ')'`, left-associative, consuming the whole content. Empty is invalid;
   parentheses nested deeper than 100 are invalid.
5. **Numbers.** The multiset of literals must equal the problem's numbers: each used exactly once.
6. **Exact arithmetic.** Rationals (reduced int64 numerator/denominator). Division by zero is
   invalid; so is any value (literals included) whose |numerator| or denominator reaches 2^62.
7. **Reward.** Valid and equal to the target: `correct_score` (1.0). Anything else with an answer
   tag — wrong value or any invalid case above: `format_score` (0.1).

Any `str` gets a score (lone surrogates included) in time linear in its length; malformed
*arguments* (lengths that differ, numbers or targets that are not ints — bool included — or do not
fit in int64) raise TypeError/ValueError naming the argument and index before any work starts.

## Differences from TinyZero's `countdown.py`

TinyZero whitelists characters with `^[\\d+\\-*/().\\s]+$` and then calls `eval` with a float
tolerance of 1e-5. Here nothing is evaluated by Python, so:

| answer | TinyZero | here |
|---|---|---|
| `9**9**9` | hangs the trainer | 0.1 (`**` is not in the grammar) |
| `2**3+5` for target 13 with [2, 3, 5] | 1.0 | 0.1 |
| `1.5*10` for target 15 with [1, 5, 10] | 1.0 | 0.1 (`.` is not a token) |
| `05+3`, `-3+8`, `3//2` | eval decides | 0.1 |
| values like `1/3*3` | float, within 1e-5 | exact: `1/3*3` equals 1 |
| whitespace | any `\\s` (Unicode too) | only space, tab, CR, LF |

TinyZero additionally cuts the text at "Assistant:" because it scores prompt + response; here the
caller passes the response only.
"""
from __future__ import annotations

import operator
import os
import warnings
from typing import Sequence

from fastzero.tasks.countdown import reference

try:
    from fastzero import _countdown
except ImportError as error:  # not built: the pure-Python oracle does the same job, slowly
    _countdown = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

__all__ = ["score", "score_batch", "solve", "HAVE_EXTENSION"]

HAVE_EXTENSION = _countdown is not None
MAX_SOLVE_NUMBERS = 6
_warned = False


def _warn_fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"fastzero._countdown is not built ({_IMPORT_ERROR}); using the pure-Python "
                      "Countdown verifier, which is ~50x slower. Build it with "
                      "`pip install -e .` or `python setup.py build_ext --inplace`.",
                      RuntimeWarning, stacklevel=3)


def default_threads() -> int:
    """Cores this process may run on (affinity-aware where the OS tells us)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def score(response: str, numbers: Sequence[int], target: int, *,
          format_score: float = 0.1, correct_score: float = 1.0) -> float:
    """Reward of one response: 0.0 (no answer tag), format_score, or correct_score."""
    if _countdown is None:
        _warn_fallback()
        return reference.reference_score(response, numbers, target, format_score=format_score,
                                         correct_score=correct_score)
    return _countdown.score(response, numbers, target, float(format_score), float(correct_score))


def score_batch(responses: Sequence[str], numbers: Sequence[Sequence[int]], targets: Sequence[int], *,
                format_score: float = 0.1, correct_score: float = 1.0,
                num_threads: int | None = None) -> list[float]:
    """Rewards of many responses in one C++ call (GIL released); num_threads=None uses all cores."""
    num_threads = _thread_count(num_threads)
    if _countdown is None:
        _warn_fallback()
        return _reference_batch(responses, numbers, targets, format_score, correct_score)
    return _countdown.score_batch(responses, numbers, targets, float(format_score),
                                  float(correct_score), num_threads)


def solve(numbers: Sequence[int], target: int) -> str | None:
    """An expression using every number once that scores correct, or None if none exists.

    Exhaustive for 1 to 6 numbers (tens of milliseconds for six, solvable or not).
    """
    if _countdown is None:
        _warn_fallback()
        return reference.reference_solve(numbers, target)
    return _countdown.solve(numbers, target)


def _thread_count(num_threads) -> int:
    if num_threads is None:
        return default_threads()
    if isinstance(num_threads, bool):
        raise TypeError("num_threads must be an int or None, got bool")
    try:
        count = operator.index(num_threads)  # ints and numpy integers
    except TypeError:
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}") from None
    if count < 1:
        raise ValueError(f"num_threads must be >= 1, got {count}")
    return min(count, 1024)  # more threads than this only costs memory


def _reference_batch(responses, numbers, targets, format_score, correct_score) -> list[float]:
    """The fallback batch path: every argument checked first, then scored one by one."""
    items = {}
    for name, value in (("responses", responses), ("numbers", numbers), ("targets", targets)):
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be a sequence, got {type(value).__name__}")
        items[name] = list(value)
    lengths = [len(v) for v in items.values()]
    if len(set(lengths)) != 1:
        raise ValueError("responses, numbers and targets must have the same length, got "
                         f"{lengths[0]}, {lengths[1]} and {lengths[2]}")
    checked = [(reference.check_response(r, f"responses[{i}]"),
                reference.as_numbers(n, f"numbers[{i}]"),
                reference.as_int(t, f"targets[{i}]"))
               for i, (r, n, t) in enumerate(zip(items["responses"], items["numbers"], items["targets"]))]
    return [reference.reference_score(r, n, t, format_score=format_score, correct_score=correct_score)
            for r, n, t in checked]
