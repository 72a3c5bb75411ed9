"""The Countdown task: reach a target from given numbers with + - * /, each number used exactly once.

- verifier: `score`, `score_batch` (one C++ call per batch, GIL released, threads) and `solve`;
- reference: `reference_score`, `reference_solve` (pure Python, exact fractions, never eval): the
  test oracle and the fallback when the C++ extension is missing;
- problems: seeded generation of solvable problems, disjoint splits, parquet/jsonl loading
  (TinyZero's format too);
- prompts: the `base`, `instruct` and `compact` templates.
`python -m fastzero.tasks.countdown --help` generates, solves, scores and shows problems.
"""
from .problems import (LoadReport, Problem, generate_problems, generate_splits, load_problems, read_problems,
                       save_problems, train_test_split)
from .prompts import TEMPLATES, render_prompt
from .reference import reference_score, reference_solve
from .verifier import score, score_batch, solve

__all__ = ["LoadReport", "read_problems", "Problem", "generate_problems", "generate_splits", "load_problems", "save_problems",
           "train_test_split", "TEMPLATES", "render_prompt", "reference_score", "reference_solve",
           "score", "score_batch", "solve"]
