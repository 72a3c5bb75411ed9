"""Prompt templates for Countdown.

- `base`: TinyZero's R1-Zero text for base models, ending in the pre-filled "<think>" so the model
  starts reasoning at once. Kept word for word (numbers as a Python list) for comparability.
- `instruct`: the same request through the tokenizer's own chat template (Qwen2.5-Instruct style).
- `compact`: "3 7 12=22:" for the embedded tiny model, whose context and compute are small; the
  model answers "<answer>12+7+3</answer>" directly (every number is used exactly once).
The response (what the reward sees) is only what the model generates after the prompt.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..templates import base_prompt, chat_prompt

TEMPLATES = ("base", "instruct", "compact")

_REQUEST = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
    "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
    "<answer> (1 + 2) / 3 </answer>."
)


def render_prompt(template: str, numbers: Sequence[int], target: int, tokenizer: Any = None) -> str:
    """The prompt text for one problem. `tokenizer` is needed only for `instruct` (its chat template)."""
    numbers = [int(n) for n in numbers]
    if template == "base":
        return base_prompt(_REQUEST.format(numbers=numbers, target=int(target)))
    if template == "compact":
        return " ".join(str(n) for n in numbers) + f"={int(target)}:"
    if template == "instruct":
        return chat_prompt(_REQUEST.format(numbers=numbers, target=int(target)), tokenizer)
    raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
