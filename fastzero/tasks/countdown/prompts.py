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

TEMPLATES = ("base", "instruct", "compact")

_REQUEST = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
    "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
    "<answer> (1 + 2) / 3 </answer>."
)
_BASE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer.\nUser: " + _REQUEST + "\nAssistant: Let me solve this step by step.\n<think>"
)
_SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind and then "
    "provides the user with the answer."
)
_ASSISTANT_PREFILL = "Let me solve this step by step.\n<think>"


def render_prompt(template: str, numbers: Sequence[int], target: int, tokenizer: Any = None) -> str:
    """The prompt text for one problem. `tokenizer` is needed only for `instruct` (its chat template)."""
    numbers = [int(n) for n in numbers]
    if template == "base":
        return _BASE.format(numbers=numbers, target=int(target))
    if template == "compact":
        return " ".join(str(n) for n in numbers) + f"={int(target)}:"
    if template == "instruct":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'instruct' needs a tokenizer that has a chat template")
        messages = [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _REQUEST.format(numbers=numbers, target=int(target))},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + _ASSISTANT_PREFILL
    raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
