"""Countdown problems: the `Problem` record, seeded generation of solvable problems, disjoint
train/test splits, and loading/saving (.jsonl and .parquet, including TinyZero's parquet layout).

Generation (`generate_problems`), and why it samples this way:
- Each problem's count of numbers k is drawn uniformly from [min_numbers, max_numbers], so sizes
  come out evenly mixed (3 and 4 numbers by default, like TinyZero's Countdown-Tasks-3to4), not
  weighted toward the size that is solvable more often (4 numbers: ~15% of draws; 3: ~4%).
- Then k numbers uniformly and independently from [min_value, max_value] (repeats allowed) and a
  target uniformly from [min_target, max_target], the way TinyZero's own `gen_dataset` draws them,
  plus the filter it lacks: draws the exact C++ solver cannot solve (every number used exactly
  once) are rejected and redrawn with the same k. Rejection from a uniform product is uniform on
  what it keeps: every solvable (numbers, target) of size k is equally likely. Taking the value of
  a random expression instead would skew targets toward what the operators favour.
- Problems are distinct by `Problem.key` (sorted numbers, target): "3 7 12=16" and "12 3 7=16" are
  the same problem. `exclude` removes keys up front, which is how train avoids test.
- Sizes and each size's candidates come from separate seeded streams, so the solver can check
  candidates in threaded batches without changing the result, and a smaller n is a prefix of a
  larger one.
- Bounded: asking for more than the ranges hold fails before any work; once every key of a size
  has been tried, or after `100 * count + 100_000` draws of a size, it fails saying how far it got;
  with a `Pace` (pace.py) it reports progress and stops as soon as the acceptance rate puts the
  count out of reach of its time limit.
Dropped on purpose: weighted size mixes; unfiltered draws (TinyZero keeps unsolvable ones).

Files: rows are `{"numbers": [...], "target": N}` (our .jsonl/.parquet); TinyZero's prepared rows
(`reward_model.ground_truth.{numbers,target}`) and its raw Countdown-Tasks-3to4 rows (`nums`,
`target`) load too. A bad row is an error naming the file and row, or with `skip_bad` is skipped and
counted in the `LoadReport` that `read_problems` returns.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import numbers as _numbers
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fastzero.atomic import atomic_file

from ..base import LoadReport
from ..rows import FILE_SUFFIXES, read_file
from .pace import Pace

log = logging.getLogger(__name__)

MAX_NUMBERS = 6  # the C++ solver is exhaustive up to this many numbers
MAX_VALUE = 10**9  # numbers and targets; the solver's exact rationals stay below 2**62
Key = tuple[tuple[int, ...], int]
_BATCH_SECONDS = 1.0  # solver time per batch of candidates (wall time, all threads)


def problem_key(numbers: Sequence[int], target: int) -> Key:
    """What makes two problems the same: the numbers as a multiset, and the target."""
    return tuple(sorted(int(n) for n in numbers)), int(target)


def _as_count(value: Any, what: str) -> int:
    """An int >= 0 (bools and floats rejected: `True` or `3.5` as a number is always a mistake)."""
    if type(value) is not int:  # the common case skips the slow ABC check below
        if isinstance(value, bool) or not isinstance(value, _numbers.Integral):
            raise ValueError(f"{what} must be an integer, got {value!r}")
        value = int(value)
    if not 0 <= value <= MAX_VALUE:
        raise ValueError(f"{what} must be in 0..{MAX_VALUE}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Problem:
    """Reach `target` from `numbers` with + - * /, each number used exactly once."""

    numbers: tuple[int, ...]
    target: int

    def __post_init__(self) -> None:
        if type(self.numbers) not in (tuple, list) and (
            isinstance(self.numbers, (str, bytes)) or not isinstance(self.numbers, Iterable)
        ):
            raise ValueError(f"numbers must be a sequence of integers, got {self.numbers!r}")
        nums = tuple(_as_count(n, "each number") for n in self.numbers)
        if not 1 <= len(nums) <= MAX_NUMBERS:
            raise ValueError(f"a problem needs 1 to {MAX_NUMBERS} numbers, got {len(nums)}")
        object.__setattr__(self, "numbers", nums)
        object.__setattr__(self, "target", _as_count(self.target, "target"))

    @property
    def key(self) -> Key:
        """What makes two problems the same (see problem_key)."""
        return problem_key(self.numbers, self.target)


# ---------------------------------------------------------------------------------------------
# Generation


@dataclasses.dataclass(frozen=True)
class Ranges:
    """The sampling ranges, all inclusive; validated on construction."""

    min_numbers: int = 3
    max_numbers: int = 4
    min_value: int = 1
    max_value: int = 99
    min_target: int = 1
    max_target: int = 99

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _as_count(getattr(self, field.name), field.name)
        if self.min_numbers < 1:
            raise ValueError(f"min_numbers must be >= 1, got {self.min_numbers}")
        if self.max_numbers > MAX_NUMBERS:
            raise ValueError(f"max_numbers must be <= {MAX_NUMBERS} (solver limit), got {self.max_numbers}")
        for name in ("numbers", "value", "target"):
            lo, hi = getattr(self, "min_" + name), getattr(self, "max_" + name)
            if lo > hi:
                raise ValueError(f"empty range: min_{name} ({lo}) > max_{name} ({hi})")

    def size_count(self, k: int) -> int:
        """Distinct problem keys with k numbers: multisets of k values times targets."""
        values = self.max_value - self.min_value + 1
        return math.comb(values + k - 1, k) * (self.max_target - self.min_target + 1)

    def capacity(self) -> int:
        """Distinct problem keys in these ranges, solvable or not (an upper bound on n)."""
        return sum(self.size_count(k) for k in range(self.min_numbers, self.max_numbers + 1))


def _exclusion_keys(exclude: Iterable[Problem | Key]) -> set[Key]:
    keys = set()
    for i, item in enumerate(exclude):
        if isinstance(item, Problem):
            keys.add(item.key)
        elif isinstance(item, tuple) and len(item) == 2:
            keys.add(Problem(tuple(item[0]), item[1]).key)
        else:
            raise ValueError(f"exclude[{i}] must be a Problem or a (numbers, target) key, got {item!r}")
    return keys


def _solvable_flags(candidates: list[tuple[list[int], int]], pool: ThreadPoolExecutor, threads: int) -> list[bool]:
    """Which candidates the exact C++ solver can solve. Its calls release the GIL, so threads
    overlap them; a 4-number call costs ~40 us, mostly spent proving there is no solution."""
    from fastzero.tasks.countdown.verifier import solve  # imported only when generating

    def check(part):
        return [solve(nums, target) is not None for nums, target in part]

    step = -(-len(candidates) // threads) or 1
    parts = pool.map(check, [candidates[i : i + step] for i in range(0, len(candidates), step)])
    return [flag for part in parts for flag in part]


def generate_problems(
    n: int,
    *,
    seed: int,
    min_numbers: int = 3,
    max_numbers: int = 4,
    min_value: int = 1,
    max_value: int = 99,
    min_target: int = 1,
    max_target: int = 99,
    exclude: Iterable[Problem | Key] = (),
    pace: Pace | None = None,
) -> list[Problem]:
    """`n` distinct solvable problems drawn from `seed`; see the module docstring for how.
    `pace` (see pace.py) reports progress and gives up early when the count is out of reach.

    The sizes of the n problems come from one stream and each size's candidates from a stream of
    its own, so the result does not depend on how candidates are batched for the solver, and a
    smaller n gives a prefix of a larger one (same seed and ranges)."""
    n = _as_count(n, "n")
    if isinstance(seed, bool) or not isinstance(seed, _numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    ranges = Ranges(min_numbers, max_numbers, min_value, max_value, min_target, max_target)
    excluded = _exclusion_keys(exclude)
    if n > ranges.capacity():
        raise ValueError(
            f"cannot make {n} distinct problems: these ranges hold only {ranges.capacity()} "
            f"(solvable or not); widen the value/target ranges or the number counts"
        )
    sizes = range(ranges.min_numbers, ranges.max_numbers + 1)
    slot_sizes = random.Random(f"countdown/{seed}/sizes").choices(sizes, k=n)
    needed = {k: slot_sizes.count(k) for k in sizes}
    for k in sizes:
        if needed[k] > ranges.size_count(k):
            raise ValueError(
                f"cannot make {n} problems: {needed[k]} of them get {k} numbers (sizes are drawn "
                f"evenly) but only {ranges.size_count(k)} such problems exist in these ranges"
            )
    from fastzero.tasks.countdown.verifier import default_threads  # honours taskset/cgroup pinning

    threads = default_threads()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        check = functools.partial(_solvable_flags, pool=pool, threads=threads)
        streams = {}
        for k in sizes:
            if needed[k]:
                rng = random.Random(f"countdown/{seed}/size-{k}")
                streams[k] = iter(_sample_size(k, needed[k], rng, ranges, excluded, check, pace))
    return [next(streams[k]) for k in slot_sizes]


def _key_codes(ordered: np.ndarray, targets: np.ndarray, ranges: Ranges) -> list:
    """One id per row of (sorted numbers, target), all rows of one size: an int when the ranges
    let it fit in int64 (a set of ints takes a third of the memory of nested tuples), else the key."""
    n_values = ranges.max_value - ranges.min_value + 1
    n_targets = ranges.max_target - ranges.min_target + 1
    if n_values ** ordered.shape[1] * n_targets >= 2**62:
        return list(zip(map(tuple, ordered.tolist()), targets.tolist()))
    codes = np.zeros(len(targets), dtype=np.int64)
    for column in (ordered - ranges.min_value).T:
        codes = codes * n_values + column
    return (codes * n_targets + (targets - ranges.min_target)).tolist()


def _excluded_codes(k: int, excluded: set[Key], ranges: Ranges) -> set:
    """The excluded keys that size k's draws could hit, as `_key_codes` ids."""
    inside = [
        (nums, target)
        for nums, target in excluded
        if len(nums) == k and ranges.min_target <= target <= ranges.max_target
        and ranges.min_value <= nums[0] and nums[-1] <= ranges.max_value
    ]
    if not inside:
        return set()
    ordered = np.array([nums for nums, _ in inside], dtype=np.int64)
    return set(_key_codes(ordered, np.array([t for _, t in inside], dtype=np.int64), ranges))


def _sample_size(
    k: int, count: int, rng: random.Random, ranges: Ranges, excluded: set[Key], check, pace: Pace | None
) -> list[Problem]:
    """The first `count` distinct, solvable, non-excluded problems in size k's candidate stream."""
    n_values = ranges.max_value - ranges.min_value + 1
    n_targets = ranges.max_target - ranges.min_target + 1
    space, max_draws = ranges.size_count(k), 100 * count + 100_000
    excluded_k = _excluded_codes(k, excluded, ranges)
    tried: set = set()  # ids of every key drawn: once all of size k's are tried, more is futile
    out: list[Problem] = []
    draws, started = 0, time.monotonic()
    if pace is not None:
        pace.begin(k, count)
    while len(out) < count:
        # Each candidate takes k + 1 uniform floats, so the stream is the same whatever the batch
        # size; batches grow with what is still missing over the acceptance rate seen so far, and
        # are cut to about a second of solver time (6-number draws can take 50 ms each), so progress
        # is seen and a hopeless request stops early.
        rate = (len(out) + 1) / (draws + 2)
        batch = min(8192, max(32, int(1.2 * (count - len(out)) / rate)))
        per_draw = (time.monotonic() - started) / draws if draws else None
        batch = min(batch, 64 if per_draw is None else max(32, int(_BATCH_SECONDS / max(per_draw, 1e-9))))
        uniforms = np.array([rng.random() for _ in range(batch * (k + 1))]).reshape(batch, k + 1)
        values = ranges.min_value + np.floor(uniforms[:, :k] * n_values).astype(np.int64)  # = int(u * n)
        targets = ranges.min_target + np.floor(uniforms[:, k] * n_targets).astype(np.int64)
        codes = _key_codes(np.sort(values, axis=1), targets, ranges)
        candidates = []
        for nums, code, target in zip(values.tolist(), codes, targets.tolist()):
            if code not in tried:
                tried.add(code)
                if code not in excluded_k:
                    candidates.append((nums, target))
        draws += batch
        flags = check(candidates)
        out.extend(Problem(tuple(nums), target) for (nums, target), ok in zip(candidates, flags) if ok)
        if len(out) >= count:
            break
        if pace is not None:
            pace.update(len(out), draws)
        if len(tried) == space:
            raise ValueError(
                f"cannot make {count} problems with {k} numbers (sizes are drawn evenly from "
                f"{ranges.min_numbers}..{ranges.max_numbers}): all {space} such problems in these "
                f"ranges were tried and only {len(out)} are solvable and not excluded; widen the ranges"
            )
        if draws >= max_draws:
            raise RuntimeError(
                f"gave up after {draws} draws with {len(out)} of {count} problems with {k} numbers: "
                f"solvable ones are too rare in these ranges ({ranges})"
            )
    return out[:count]


def generate_splits(
    n_train: int, n_test: int, *, seed: int, pace: Pace | None = None, **ranges: int
) -> tuple[list[Problem], list[Problem]]:
    """(train, test) with no shared problem key. Test is drawn first, with `seed`, so it does not
    depend on `n_train` (evaluations stay comparable as train grows); train uses `seed + 1` and
    excludes every test key."""
    test = generate_problems(n_test, seed=seed, pace=pace, **ranges)
    train = generate_problems(n_train, seed=int(seed) + 1, exclude=test, pace=pace, **ranges)
    return train, test


def train_test_split(
    problems: Sequence[Problem], test_size: int | float, *, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """Split loaded problems into (train, test), each keeping the input order. `test_size` counts
    distinct keys (an int, or a fraction in (0, 1) of them); repeats of a key stay on one side, so
    the two sides never share a problem."""
    groups: dict[Key, list[int]] = {}
    for i, p in enumerate(problems):
        if not isinstance(p, Problem):
            raise ValueError(f"problems[{i}] is {type(p).__name__}, not a Problem")
        groups.setdefault(p.key, []).append(i)
    if isinstance(test_size, float) and not isinstance(test_size, bool):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"a fractional test_size must be in (0, 1), got {test_size}")
        n_test = round(test_size * len(groups))
    else:
        n_test = _as_count(test_size, "test_size")
    if n_test > len(groups):
        raise ValueError(f"test_size {n_test} exceeds the {len(groups)} distinct problems given")
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    test_rows = sorted(i for key in keys[:n_test] for i in groups[key])
    test_set = set(test_rows)
    train = [p for i, p in enumerate(problems) if i not in test_set]
    return train, [problems[i] for i in test_rows]


# ---------------------------------------------------------------------------------------------
# Loading and saving


def _problem_from_row(row: Any) -> Problem:
    """Accept our layout, TinyZero's prepared layout, or its raw Countdown-Tasks-3to4 layout."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    if "numbers" in row or ("target" in row and "nums" not in row):
        fields = row
    elif "nums" in row:
        fields = {"numbers": row["nums"], "target": row.get("target")}
    elif "reward_model" in row:
        reward_model = row["reward_model"]
        truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
        if not isinstance(truth, dict):
            raise ValueError("reward_model has no ground_truth object")
        fields = truth
    else:
        raise ValueError(f"no numbers/target fields (found {sorted(row)})")
    for name in ("numbers", "target"):
        if fields.get(name) is None:
            raise ValueError(f"missing {name!r}")
    nums = fields["numbers"]
    if type(nums) is not list and (isinstance(nums, (str, bytes, dict)) or not isinstance(nums, Iterable)):
        raise ValueError(f"numbers must be a list of integers, got {nums!r}")
    return Problem(tuple(nums), fields["target"])


def read_problems(path: str | os.PathLike, *, skip_bad: bool = False) -> LoadReport:
    """Problems from a .jsonl or .parquet file, with a report of the rows skipped (if `skip_bad`)."""
    return read_file(path, ("numbers", "nums", "target", "reward_model"), _problem_from_row, skip_bad=skip_bad)


def load_problems(path: str | os.PathLike, *, skip_bad: bool = False) -> list[Problem]:
    """Problems from a .jsonl or .parquet file. Bad rows raise, or with `skip_bad` are skipped with
    one logged warning (use `read_problems` to get the count and reasons)."""
    report = read_problems(path, skip_bad=skip_bad)
    if report.skipped:
        log.warning("skipped %d bad rows; first: %s", len(report.skipped), report.skipped[0])
    return report.problems


def save_problems(problems: Iterable[Problem], path: str | os.PathLike) -> None:
    """Write .jsonl or .parquet atomically (fastzero.atomic): a reader never sees a half-written
    file and a failed write leaves any old file untouched."""
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    with atomic_file(path, "wb") as f:
        if path.suffix == ".jsonl":
            for i, p in enumerate(problems):
                f.write(_jsonl_line(p, i).encode())
        else:
            _write_parquet(list(problems), f)


def _check_problem(p: Any, i: int) -> Problem:
    if not isinstance(p, Problem):
        raise ValueError(f"problems[{i}] is {type(p).__name__}, not a Problem")
    return p


def _jsonl_line(p: Any, i: int) -> str:
    p = _check_problem(p, i)
    return json.dumps({"numbers": list(p.numbers), "target": p.target}) + "\n"


def _write_parquet(problems: list[Problem], f) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, p in enumerate(problems):
        _check_problem(p, i)
    table = pa.table(
        {
            "numbers": pa.array([list(p.numbers) for p in problems], type=pa.list_(pa.int64())),
            "target": pa.array([p.target for p in problems], type=pa.int64()),
        }
    )
    pq.write_table(table, f)
