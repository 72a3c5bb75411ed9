"""Training attention of a bf16/fp16 model on the CPU, run in float32.

PyTorch's CPU flash-attention kernel is fast in float32 but its backward in bf16 is about 8x
slower (the thinking preset's update, 2 threads: 416 ms of SDPA backward in bf16 against 49 ms in
float32; bench/RESULTS.md, "bf16 on the AMX box"). That one kernel made a bf16 model's update
slower than the float32 model's even though its matmuls ran 4-5x faster on AMX. So while a
gradient flows, a half-precision model's query, key and value on the CPU go through SDPA in
float32 and the output is cast back: the same attention, computed more precisely, and faster.
A float32 model's training-side forwards under autocast (--autocast bfloat16: the update, and the
reference and old-policy scoring, which must compute what the update computes) run their
attention in float32 too, gradient or not. Everything else (a half-precision model without a
gradient: its rollouts and scoring; GPUs; float32 models without autocast) calls transformers'
SDPA attention unchanged. Decoding keeps bf16: its forward-only kernel is not slow.

`install()` overrides the "sdpa" entry of transformers' attention registry, the hook transformers
provides for replacing an attention function; finish_model calls it for CPU models in bf16/fp16,
fastzero.model.body_autocast for autocast forwards on the CPU.
"""
from __future__ import annotations

from typing import Any

import torch

_HALF = (torch.bfloat16, torch.float16)


def needs_float32(query: torch.Tensor) -> bool:
    """A half-precision model's CPU attention whose backward will run, or any CPU attention under
    autocast (--autocast: q and k reach attention as float32, the rotary tables being float32, but
    autocast would run SDPA in bf16). Under autocast also without a gradient: the reference and
    old-policy scoring must compute what the update's forward computes, or a policy equal to the
    reference would show a KL (and get its gradient) from the two attention precisions alone."""
    if query.device.type != "cpu":
        return False
    if torch.is_autocast_enabled("cpu"):
        return True
    return query.dtype in _HALF and torch.is_grad_enabled() and query.requires_grad


def _float32_training_sdpa(sdpa):
    def attention(module, query, key, value, attention_mask, *args: Any, **kwargs: Any):
        if not needs_float32(query):
            return sdpa(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():  # additive: same dtype as q
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):  # under autocast SDPA would be cast back to bf16
            out, weights = sdpa(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return out.to(query.dtype), weights

    attention.fastzero_wraps = sdpa  # marks the wrapper (install is idempotent) and keeps the original
    return attention


def install() -> None:
    """Route transformers' "sdpa" attention through the float32 training path (idempotent)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if not hasattr(current, "fastzero_wraps"):
        ALL_ATTENTION_FUNCTIONS["sdpa"] = _float32_training_sdpa(current)
