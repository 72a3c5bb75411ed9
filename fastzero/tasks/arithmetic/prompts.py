"""Prompt templates for arithmetic word problems.

- `base`: the R1-Zero conversation text (as Countdown's), asking for the whole-number answer in
  `<answer>` tags, ending in the pre-filled "<think>";
- `instruct`: the same request through the tokenizer's chat template;
- `compact`: the steps as one expression, "12+3*5-7:", for small models with a small vocabulary (the
  embedded tiny model's tokenizer has digits, operators and the tags, no letters); the model answers
  "<answer>20</answer>". Only problems that carry an expression have one (generated problems do;
  GSM8K rows do not).
"""
from __future__ import annotations

from typing import Any

from ..templates import base_prompt, chat_prompt
from .problems import WordProblem

TEMPLATES = ("base", "instruct", "compact")

_REQUEST = (
    "{question} Show your work in <think> </think> tags. And return the final answer, a whole "
    "number, in <answer> </answer> tags, for example <answer> 42 </answer>."
)


def render_prompt(template: str, problem: WordProblem, tokenizer: Any = None) -> str:
    if template == "base":
        return base_prompt(_REQUEST.format(question=problem.question))
    if template == "instruct":
        return chat_prompt(_REQUEST.format(question=problem.question), tokenizer)
    if template == "compact":
        if not problem.expression:
            raise ValueError("--template compact needs problems with an expression (generated ones); "
                             f"this one has none: {problem.question[:60]!r}")
        return f"{problem.expression}:"
    raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
