"""Rows of a task's data file (.jsonl or .parquet), each with where it came from ("line 7", "row 3").

A row that cannot be read (bad UTF-8, invalid JSON) comes back as a ValueError in place of the row,
so the caller reports it by file and row like any other bad row, or skips and counts it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .base import LoadReport

FILE_SUFFIXES = (".jsonl", ".parquet")


def jsonl_rows(path: Path) -> Iterable[tuple[str, Any]]:
    with open(path, "rb") as f:  # bytes, so one line of bad UTF-8 is one bad row, not a crash
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, a hand-edited file) are not rows
            try:
                yield f"line {lineno}", json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield f"line {lineno}", ValueError(f"not UTF-8 text: {e.reason}")
            except json.JSONDecodeError as e:
                yield f"line {lineno}", ValueError(f"invalid JSON: {e.msg}")


def parquet_rows(path: Path, columns: Sequence[str]) -> Iterable[tuple[str, Any]]:
    """Rows of the columns in `columns` that the file has; an error if it has none of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        wanted = [c for c in columns if c in names]
        if not wanted:
            raise ValueError(f"{path}: no {'/'.join(columns)} column (found {names})")
        rows = pq.read_table(path, columns=wanted).to_pylist()
    except pa.ArrowException as e:
        raise ValueError(f"{path}: not a readable parquet file: {e}") from None
    for i, row in enumerate(rows):
        yield f"row {i}", row


def file_rows(path: Path, columns: Sequence[str]) -> Iterable[tuple[str, Any]]:
    """Rows of a .jsonl or .parquet file; a clear error for any other suffix or a missing file."""
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"no problem file at {path}")
    return jsonl_rows(path) if path.suffix == ".jsonl" else parquet_rows(path, columns)


def read_file(path, columns: Sequence[str], parse_row: Callable[[Any], Any], *, skip_bad: bool = False) -> LoadReport:
    """Every row of a data file through `parse_row`. A row it rejects (ValueError) raises, naming the
    file and row, or with `skip_bad` is skipped and listed in the report."""
    path = Path(path)
    report = LoadReport(problems=[])
    for where, row in file_rows(path, columns):
        try:
            if isinstance(row, Exception):
                raise row
            report.problems.append(parse_row(row))
        except ValueError as e:
            message = f"{path}: {where}: {e}"
            if not skip_bad:
                raise ValueError(message) from None
            report.skipped.append(message)
    return report
