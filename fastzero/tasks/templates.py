"""The R1-Zero prompt framing that every built-in task shares; each task supplies its request text.

- base: TinyZero's conversation text for base models, ending in the pre-filled "<think>" so the
  model starts reasoning at once;
- instruct: the same request through the tokenizer's own chat template (system + user message),
  with the same pre-fill after the generation prompt.
"""
from __future__ import annotations

from typing import Any

BASE_FRAME = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer.\nUser: {request}\nAssistant: Let me solve this step by step.\n<think>"
)
SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind and then "
    "provides the user with the answer."
)
ASSISTANT_PREFILL = "Let me solve this step by step.\n<think>"


def base_prompt(request: str) -> str:
    return BASE_FRAME.format(request=request)


def chat_prompt(request: str, tokenizer: Any) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'instruct' needs a tokenizer that has a chat template")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + ASSISTANT_PREFILL
