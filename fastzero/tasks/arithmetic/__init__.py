"""Arithmetic word problems with an integer answer in `<answer>` tags (GSM8K's answer format).

- problems: the `WordProblem` record and the seeded offline generator;
- checker: the exact integer checker (rules in its docstring; never eval);
- gsm8k: loading and saving GSM8K-format .jsonl/.parquet files;
- prompts: the `base`, `instruct` and `compact` templates;
- task: `ArithmeticTask`, the task protocol's implementation.
"""
