"""GSM8K-format files: rows `{"question": ..., "answer": "...worked steps...\\n#### N"}`, .jsonl or .parquet.

This is the layout of GSM8K itself (openai/grade-school-math `train.jsonl`/`test.jsonl`, and the
parquet files of its Hugging Face copy), so a user who has the file trains on it with
`--task arithmetic --train-path train.jsonl --test-path test.jsonl`. Nothing is downloaded.

The final answer is the text after the last `####`, read with the checker's integer rule (commas as
thousands separators allowed, see `checker.py`). A row is bad, and reported by file and row, when
it is not an object, lacks a non-empty `question` or a text `answer`, has no `####`, or its final
answer is not an integer (`#### 3.5`, `#### 12 apples`). An optional `expression` field (what
`save_gsm8k` writes for generated problems) is kept for the compact template.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

from fastzero.atomic import atomic_write_text

from ..base import LoadReport
from ..rows import read_file
from .checker import parse_integer
from .problems import WordProblem

COLUMNS = ("question", "answer", "expression")
MARK = "####"


def final_answer(answer_text: str) -> int:
    """The integer after the last `####` of a GSM8K answer, or a ValueError saying why not."""
    if MARK not in answer_text:
        raise ValueError(f"the answer has no {MARK!r} line with the final number")
    final = answer_text.rsplit(MARK, 1)[1]
    value = parse_integer(final)
    if value is None:
        raise ValueError(f"the final answer {final.strip()[:40]!r} is not an integer")
    return value


def problem_from_row(row: Any) -> WordProblem:
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    question, answer, expression = row.get("question"), row.get("answer"), row.get("expression")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing or empty 'question'")
    if not isinstance(answer, str):
        raise ValueError(f"'answer' must be text ending in '{MARK} N', got {answer!r}")
    if expression is not None and not isinstance(expression, str):
        raise ValueError(f"'expression' must be text, got {expression!r}")
    return WordProblem(question, final_answer(answer), answer, expression or "")


def read_gsm8k(path: str | os.PathLike, *, skip_bad: bool = False) -> LoadReport:
    """Problems from a GSM8K-format .jsonl or .parquet file (bad rows raise, or are skipped and listed)."""
    return read_file(path, COLUMNS, problem_from_row, skip_bad=skip_bad)


def gsm8k_row(problem: WordProblem) -> dict[str, Any]:
    """The problem as a GSM8K row (a problem without a worked solution gets just `#### N`)."""
    row = {"question": problem.question, "answer": problem.solution or f"{MARK} {problem.answer}"}
    if problem.expression:
        row["expression"] = problem.expression
    return row


def save_gsm8k(problems: Iterable[WordProblem], path: str | os.PathLike) -> None:
    """Write a GSM8K-format .jsonl file atomically (readers see the old file or the new one)."""
    path = os.fspath(path)
    if not path.endswith(".jsonl"):
        raise ValueError(f"{path}: GSM8K files are written as .jsonl")
    atomic_write_text(path, "".join(json.dumps(gsm8k_row(p)) + "\n" for p in problems))
