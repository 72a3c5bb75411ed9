"""Tests for fastzero.tasks.countdown.problems and its CLI (__main__): generation, splits, files.

Solvability is checked with the real C++ solver (through the verifier) and, on samples, with an
independent brute force below (exact fractions over every split of every subset of the numbers).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.tasks.countdown import problems as P
from fastzero.tasks.countdown.__main__ import main as cli_main
from fastzero.tasks.countdown.problems import (
    Problem,
    generate_problems,
    generate_splits,
    load_problems,
    read_problems,
    save_problems,
    train_test_split,
)
from fastzero.tasks.countdown.verifier import score, solve

REPO = Path(__file__).resolve().parents[3]


def brute_force_reachable(numbers) -> set[Fraction]:
    """Every value reachable using each number exactly once with + - * / (exact rationals)."""
    n = len(numbers)
    reach = {1 << i: {Fraction(v)} for i, v in enumerate(numbers)}
    for mask in range(1, 1 << n):
        if mask in reach:
            continue  # a single number (or a repeated single bit): already seeded
        values = set()
        sub = (mask - 1) & mask
        while sub:
            other = mask ^ sub
            if sub < other:  # each unordered split once; both operand orders are added below
                for a in reach[sub]:
                    for b in reach[other]:
                        values.update((a + b, a - b, b - a, a * b))
                        if b:
                            values.add(a / b)
                        if a:
                            values.add(b / a)
            sub = (sub - 1) & mask
        reach[mask] = values
    return reach[(1 << n) - 1]


def brute_force_solvable(numbers, target) -> bool:
    return Fraction(target) in brute_force_reachable(numbers)


def keys(problems):
    return {p.key for p in problems}


@pytest.fixture(scope="module")
def default_problems():
    return generate_problems(600, seed=7)


# --- the oracle itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "numbers, target, expected",
    [((3, 7, 12), 16, True), ((3, 7, 12), 19, False), ((1, 1), 5, False), ((2, 3, 4), 24, True),
     ((4, 6), 10, True),
     ((5,), 5, True), ((5,), 4, False), ((1, 5, 5, 5), 24, True), ((3, 3, 8, 8), 24, True),
     ((1, 2, 3), 100, False)],
)
def test_brute_force_oracle(numbers, target, expected):
    assert brute_force_solvable(numbers, target) is expected


# --- Problem -------------------------------------------------------------------------------------


def test_problem_normalizes_and_keys_by_multiset():
    a, b = Problem([12, 3, 7], 19), Problem((3, 7, 12), 19)
    assert a.numbers == (12, 3, 7) and isinstance(a.numbers, tuple)
    assert a != b and a.key == b.key == ((3, 7, 12), 19)
    assert len({a, b, Problem((12, 3, 7), 19)}) == 2  # hashable, equal by field values


@pytest.mark.parametrize(
    "numbers, target, match",
    [((), 3, "1 to 6 numbers"), ((1,) * 7, 3, "1 to 6 numbers"), ((1, -2), 3, "each number"),
     ((1, True), 3, "each number"), ((1, 2.5), 3, "each number"), ((1, 2), -1, "target"),
     ((1, 2), 3.0, "target"), ("12", 3, "sequence"), ((1, 2), None, "target")],
)
def test_problem_rejects_bad_fields(numbers, target, match):
    with pytest.raises(ValueError, match=match):
        Problem(numbers, target)


# --- generation ----------------------------------------------------------------------------------


def test_generation_is_deterministic_per_seed(default_problems):
    assert generate_problems(600, seed=7) == default_problems
    assert generate_problems(100, seed=7) == default_problems[:100]  # a prefix: same draw order
    assert generate_problems(600, seed=8) != default_problems


def test_default_generation_respects_ranges_and_is_distinct(default_problems):
    assert len(default_problems) == len(keys(default_problems)) == 600
    for p in default_problems:
        assert 3 <= len(p.numbers) <= 4 and 1 <= p.target <= 99
        assert all(1 <= v <= 99 for v in p.numbers)
    share_of_3 = sum(len(p.numbers) == 3 for p in default_problems) / len(default_problems)
    assert 0.4 < share_of_3 < 0.6  # sizes are drawn evenly, not weighted by how often they solve


def test_every_generated_problem_is_solvable(default_problems):
    for p in default_problems:
        expression = solve(list(p.numbers), p.target)
        assert expression is not None, p
        assert score(f"<answer>{expression}</answer>", list(p.numbers), p.target) == 1.0
    for p in default_problems[:40]:  # the independent oracle is slow: a sample
        assert brute_force_solvable(p.numbers, p.target), p


def test_generation_rejects_unsolvable_draws():
    # With 3 numbers and targets up to 999 most draws are unsolvable: the filter is doing work.
    found = generate_problems(60, seed=1, min_numbers=3, max_numbers=3, max_value=9, max_target=999)
    assert max(p.target for p in found) > 100
    assert all(brute_force_solvable(p.numbers, p.target) for p in found)


def test_exclude_keeps_generation_away_from_given_keys(default_problems):
    excluded = default_problems[:300]
    fresh = generate_problems(300, seed=7, exclude=excluded)
    assert not keys(fresh) & keys(excluded)
    as_keys = generate_problems(300, seed=7, exclude=[p.key for p in excluded])
    assert as_keys == fresh


def test_exclude_with_ranges_too_wide_for_integer_key_ids():
    # 30000**4 * 10 keys do not fit int64: the generator keys its sets by tuples instead.
    wide = dict(min_numbers=4, max_numbers=4, max_value=30_000, max_target=10)
    first = generate_problems(4, seed=0, **wide)
    again = generate_problems(4, seed=0, exclude=first[:2], **wide)
    assert not keys(again) & keys(first[:2]) and again[:2] == first[2:]
    assert all(brute_force_solvable(p.numbers, p.target) for p in again)


def test_key_ids_match_keys_in_both_encodings():
    import numpy as np

    rows = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 4], [2, 2, 3], [1, 2, 3]])
    targets = np.array([5, 6, 5, 5, 5])
    for max_value in (9, 10**9):  # int ids, and the tuple fallback
        ids = P._key_codes(rows, targets, P.Ranges(min_numbers=3, max_numbers=3, max_value=max_value))
        assert [ids.index(i) for i in ids] == [0, 1, 2, 3, 0]


def test_exhausting_a_small_space_fails_clearly():
    one = dict(min_numbers=1, max_numbers=1, min_value=1, max_value=5, min_target=1, max_target=5)
    # Only (k,) -> k is solvable with one number: 5 problems out of 25 keys.
    assert sorted(p.key for p in generate_problems(5, seed=0, **one)) == [((k,), k) for k in range(1, 6)]
    with pytest.raises(ValueError, match="all 25 such problems .* only 5 are solvable"):
        generate_problems(6, seed=0, **one)
    with pytest.raises(ValueError, match=r"of them get \d numbers .* such problems exist"):
        generate_problems(5, seed=0, min_numbers=1, max_numbers=2, max_value=2, max_target=1)  # 2 + 3 keys
    with pytest.raises(ValueError, match="hold only 25"):
        generate_problems(26, seed=0, **one)
    with pytest.raises(ValueError, match="only 2 are solvable and not excluded"):
        generate_problems(3, seed=0, exclude=[Problem((1,), 1), Problem((5,), 5), Problem((4,), 4)], **one)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(n=-1), "n must be in"), (dict(n=2.0), "n must be an integer"), (dict(seed=None), "seed"),
     (dict(seed=True), "seed"), (dict(min_numbers=0), "min_numbers must be >= 1"),
     (dict(max_numbers=7), "max_numbers must be <= 6"), (dict(min_value=50, max_value=10), "min_value"),
     (dict(min_target=5, max_target=4), "min_target"), (dict(min_numbers=4, max_numbers=3), "min_numbers"),
     (dict(max_value=-1), "max_value"), (dict(max_target=10**10), "max_target"),
     (dict(exclude=[5]), r"exclude\[0\] must be a Problem"), (dict(exclude=[((1, -1), 2)]), "each number")],
)
def test_generation_validates_arguments(kwargs, match):
    args = dict(n=10, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        generate_problems(args.pop("n"), **args)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 25), seed=st.integers(0, 2**32), sizes=st.tuples(st.integers(1, 4), st.integers(0, 2)),
    values=st.tuples(st.integers(0, 30), st.integers(0, 30)),
    targets=st.tuples(st.integers(0, 60), st.integers(0, 60)),
)
def test_generation_respects_any_ranges(n, seed, sizes, values, targets):
    ranges = dict(min_numbers=sizes[0], max_numbers=min(sizes[0] + sizes[1], 6), min_value=min(values),
                  max_value=max(values), min_target=min(targets), max_target=max(targets))
    try:
        found = generate_problems(n, seed=seed, **ranges)
    except ValueError as e:  # tiny ranges can hold fewer solvable problems than asked: said so
        assert "cannot make" in str(e)
        return
    assert len(found) == len(keys(found)) == n
    for p in found:
        assert ranges["min_numbers"] <= len(p.numbers) <= ranges["max_numbers"]
        assert all(ranges["min_value"] <= v <= ranges["max_value"] for v in p.numbers)
        assert ranges["min_target"] <= p.target <= ranges["max_target"]
        assert solve(list(p.numbers), p.target) is not None


# --- splits --------------------------------------------------------------------------------------


def test_generate_splits_are_disjoint_and_test_ignores_train_size():
    train, test = generate_splits(400, 100, seed=3)
    assert len(train) == 400 and len(test) == 100 and not keys(train) & keys(test)
    assert generate_splits(50, 100, seed=3)[1] == test


def test_train_test_split_keeps_repeats_on_one_side(default_problems):
    pool = default_problems[:200] + [Problem(tuple(reversed(p.numbers)), p.target) for p in default_problems[:50]]
    train, test = train_test_split(pool, 30, seed=0)
    assert not keys(train) & keys(test)
    assert len(keys(test)) == 30 and len(train) + len(test) == len(pool)
    assert train_test_split(pool, 30, seed=0) == (train, test)
    assert train_test_split(pool, 30, seed=1) != (train, test)
    assert [p for p in pool if p in set(train)] == train  # input order kept
    assert len(keys(train_test_split(pool, 0.25, seed=0)[1])) == 50


@pytest.mark.parametrize(
    "size, match", [(201, "exceeds the 200"), (-1, "test_size"), (1.5, "fractional"), (0.0, "fractional")]
)
def test_train_test_split_rejects_bad_sizes(default_problems, size, match):
    with pytest.raises(ValueError, match=match):
        train_test_split(default_problems[:200], size, seed=0)


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_load_round_trip(tmp_path, default_problems, suffix):
    path = tmp_path / "new" / "dir" / f"problems{suffix}"
    save_problems(default_problems, path)
    assert load_problems(path) == default_problems
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    save_problems([], path)
    assert load_problems(path) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_saved_file_mode_follows_umask(tmp_path, suffix):
    old = os.umask(0o022)
    try:
        save_problems([Problem((1, 2), 3)], tmp_path / f"p{suffix}")
    finally:
        os.umask(old)
    assert (tmp_path / f"p{suffix}").stat().st_mode & 0o777 == 0o644


def test_loads_tinyzero_prepared_and_raw_parquet(tmp_path):
    problems = [Problem((44, 19, 35), 98), Problem((63, 95, 96, 1), 64), Problem((2, 2), 4)]
    prompt_type = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    truth_type = pa.struct([("numbers", pa.list_(pa.int64())), ("target", pa.int64())])
    reward_type = pa.struct([("ground_truth", truth_type), ("style", pa.string())])
    extra_type = pa.struct([("index", pa.int64()), ("split", pa.string())])
    prepared = pa.table({
        "target": pa.array([p.target for p in problems], pa.int64()),  # TinyZero keeps raw columns too
        "nums": pa.array([list(p.numbers) for p in problems], pa.list_(pa.int64())),
        "data_source": pa.array(["countdown"] * 3),
        "prompt": pa.array([[{"content": f"Using the numbers {list(p.numbers)} ...", "role": "user"}]
                            for p in problems], prompt_type),
        "ability": pa.array(["math"] * 3),
        "reward_model": pa.array([{"ground_truth": {"numbers": list(p.numbers), "target": p.target},
                                   "style": "rule"} for p in problems], reward_type),
        "extra_info": pa.array([{"index": i, "split": "train"} for i in range(3)], extra_type),
    })
    pq.write_table(prepared, tmp_path / "train.parquet")
    assert load_problems(tmp_path / "train.parquet") == problems
    pq.write_table(prepared.drop_columns(["target", "nums"]), tmp_path / "prepared_only.parquet")
    assert load_problems(tmp_path / "prepared_only.parquet") == problems
    pq.write_table(prepared.select(["target", "nums"]), tmp_path / "raw.parquet")
    assert load_problems(tmp_path / "raw.parquet") == problems


BAD_ROWS = [
    ({"numbers": [1, 2]}, "missing 'target'"),
    ({"target": 3}, "missing 'numbers'"),
    ({"numbers": [1, "2"], "target": 3}, "each number"),
    ({"numbers": [1, 2.5], "target": 3}, "each number"),
    ({"numbers": [1, True], "target": 3}, "each number"),
    ({"numbers": [1, -2], "target": 3}, "each number"),
    ({"numbers": [], "target": 3}, "1 to 6 numbers"),
    ({"numbers": [1] * 7, "target": 3}, "1 to 6 numbers"),
    ({"numbers": 5, "target": 3}, "list of integers"),
    ({"numbers": [1, 2], "target": -3}, "target"),
    ({"reward_model": {"style": "rule"}}, "ground_truth"),
    ({"prompt": "hi"}, "no numbers/target"),
    ([1, 2, 3], "expected an object"),
]


@pytest.mark.parametrize("row, match", BAD_ROWS)
def test_bad_jsonl_row_names_file_line_and_fault(tmp_path, row, match):
    path = tmp_path / "p.jsonl"
    path.write_text('{"numbers": [3, 7, 12], "target": 19}\n\n' + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"p\.jsonl: line 3: .*{match}"):
        load_problems(path)


def test_skip_bad_counts_and_logs(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps(r) for r, _ in BAD_ROWS] + ['{"numbers": [3, 7, 12], "target": 19}', "{not json"]
    path.write_text("\n".join(lines) + "\n")
    report = read_problems(path, skip_bad=True)
    assert report.problems == [Problem((3, 7, 12), 19)]
    assert len(report.skipped) == len(BAD_ROWS) + 1 and "invalid JSON" in report.skipped[-1]
    with caplog.at_level(logging.WARNING):
        assert load_problems(path, skip_bad=True) == report.problems
    assert f"skipped {len(BAD_ROWS) + 1} bad rows" in caplog.text


def test_bad_parquet_row_names_row_index(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"numbers": [[3, 7, 12], None, [1] * 7, [4]], "target": [19, 5, 5, -1]}), path)
    with pytest.raises(ValueError, match=r"p\.parquet: row 1: missing 'numbers'"):
        load_problems(path)
    report = read_problems(path, skip_bad=True)
    assert report.problems == [Problem((3, 7, 12), 19)]
    assert [m.split(": ")[1] for m in report.skipped] == ["row 1", "row 2", "row 3"]
    pq.write_table(pa.table({"question": ["?"]}), path)
    with pytest.raises(ValueError, match="no numbers/nums/target/reward_model column"):
        load_problems(path)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable parquet file"):
        load_problems(tmp_path / "junk.parquet")
    (tmp_path / "p.jsonl").write_bytes(b'{"numbers": [1, 2], "target": 3}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"p\.jsonl: line 2: not UTF-8"):
        load_problems(tmp_path / "p.jsonl")
    assert read_problems(tmp_path / "p.jsonl", skip_bad=True).problems == [Problem((1, 2), 3)]


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"unknown file type '\.csv'"):
        load_problems(tmp_path / "p.csv")
    with pytest.raises(ValueError, match=r"unknown file type '\.csv'"):
        save_problems([], tmp_path / "p.csv")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_problems(tmp_path / "nowhere.jsonl")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_failed_save_leaves_old_file_and_no_temp(tmp_path, default_problems, suffix):
    path = tmp_path / f"p{suffix}"
    save_problems(default_problems[:3], path)
    before = path.read_bytes()

    def rows_then_garbage():  # fails after some rows are already written to the temp file
        yield from default_problems[:100]
        yield "not a problem"

    with pytest.raises(ValueError, match=r"problems\[100\] is str"):
        save_problems(rows_then_garbage(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_generate_writes_disjoint_splits(tmp_path, capsys):
    out, test_out = tmp_path / "d" / "train.parquet", tmp_path / "d" / "test.jsonl"
    argv = ["generate", "--n", "300", "--out", str(out), "--seed", "5", "--test-n", "40",
            "--test-out", str(test_out), "--max-value", "50", "--max-target", "60"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "train: 300 problems" in printed and "test:  40 problems" in printed and "problems/s" in printed
    train, test = load_problems(out), load_problems(test_out)
    assert (train, test) == generate_splits(300, 40, seed=5, max_value=50, max_target=60)
    assert not keys(train) & keys(test)


@pytest.mark.parametrize(
    "extra, option",
    [(["--n", "-1"], "--n"), (["--n", "x"], "--n"), (["--out", "a.csv"], "--out"),
     (["--min-value", "5", "--max-value", "3"], "--min-value"), (["--max-numbers", "7"], "--max-numbers"),
     (["--min-numbers", "0"], "--min-numbers"), (["--test-n", "5"], "--test-n"),
     (["--test-n", "5", "--test-out", "OUT"], "--test-out"),
     (["--n", "7", "--min-numbers", "1", "--max-numbers", "1", "--max-value", "2", "--max-target", "3"], "--n"),
     (["--out", "DIR/x.parquet"], "--out: cannot write under"), (["--test-n", "3", "--test-out", "FOLDER"], "is a folder")],
)
def test_cli_generate_rejects_bad_arguments_naming_the_option(tmp_path, capsys, extra, option):
    out, blocked = str(tmp_path / "train.jsonl"), tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    (tmp_path / "folder.parquet").mkdir()
    names = {"OUT": out, "FOLDER": str(tmp_path / "folder.parquet")}
    extra = [names.get(a, a.replace("DIR", str(blocked))) for a in extra]
    argv = ["generate", "--n", "5", "--out", out] + extra  # later flags win
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2 and option in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == {"blocked", "folder.parquet"}  # nothing written


def test_cli_solve_score_show(tmp_path, capsys):
    assert cli_main(["solve", "3", "7", "12", "--target", "16"]) == 0
    expression = capsys.readouterr().out.strip()
    assert score(f"<answer>{expression}</answer>", [3, 7, 12], 16) == 1.0
    assert cli_main(["solve", "1", "1", "--target", "5"]) == 0
    assert capsys.readouterr().out.strip() == "no solution"
    for response, expected in [("<answer>12+7-3</answer>", 1.0), ("<answer>12+7+3</answer>", 0.1), ("16", 0.0)]:
        assert cli_main(["score", "--numbers", "3", "7", "12", "--target", "16", response]) == 0
        assert float(capsys.readouterr().out) == expected
    with pytest.raises(SystemExit):
        cli_main(["solve", "1", "2", "3", "4", "5", "6", "7", "--target", "5"])
    assert "1 to 6 numbers" in capsys.readouterr().err
    path = tmp_path / "p.jsonl"
    save_problems([Problem((3, 7, 12), 19), Problem((1, 2, 3, 4), 24)], path)
    assert cli_main(["show", str(path), "--head", "1"]) == 0
    printed = capsys.readouterr().out
    assert "2 problems" in printed and "3 7 12=19:" in printed and "24" not in printed.split("\n", 1)[1]


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastzero.tasks.countdown", "generate", "--n", "20",
                             "--out", str(tmp_path / "p.jsonl"), "--seed", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert load_problems(tmp_path / "p.jsonl") == generate_problems(20, seed=2)
