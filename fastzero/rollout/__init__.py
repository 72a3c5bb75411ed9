"""Rollout engines: SGLang on GPU, our own transformers loop anywhere. See base.py for the protocol.

make_engine picks one. "auto" means SGLang when it is importable and CUDA is available, else the
HF engine; the check runs once per process. Asking for "sglang" where it cannot run is an error,
never a silent fallback.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any, Literal

import torch
from torch import nn

from fastzero.rollout.base import Completion, RolloutEngine, SamplingParams, validate_prompts

EngineKind = Literal["auto", "hf", "sglang"]
ENGINE_KINDS: tuple[str, ...] = ("auto", "hf", "sglang")  # the choices of --rollout

__all__ = ["ENGINE_KINDS", "Completion", "RolloutEngine", "SamplingParams", "make_engine", "resolve_engine_kind",
           "sglang_available", "validate_prompts"]


@functools.lru_cache(maxsize=1)
def sglang_available() -> bool:
    """SGLang is installed and there is a CUDA device to run it on."""
    return importlib.util.find_spec("sglang") is not None and torch.cuda.is_available()


def resolve_engine_kind(kind: str) -> str:
    if kind not in ENGINE_KINDS:
        raise ValueError(f"rollout engine must be one of {', '.join(ENGINE_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "sglang" if sglang_available() else "hf"
    if kind == "sglang" and not sglang_available():
        missing = "sglang is not installed" if importlib.util.find_spec("sglang") is None else "no CUDA device"
        raise RuntimeError(f"rollout engine 'sglang' requested but {missing}; use 'hf' or 'auto'")
    return kind


def make_engine(kind: EngineKind = "auto", *, model: nn.Module | None = None, model_path: str | None = None,
                **options: Any) -> RolloutEngine:
    """Build an engine. hf needs `model` (the trainer's module, shared); sglang needs `model_path`
    (a local HF directory to start from; weights then come from update_weights). `options` go to
    HFEngine or SGLangEngine."""
    resolved = resolve_engine_kind(kind)
    if resolved == "hf":
        if model is None:
            raise ValueError("the hf rollout engine needs model= (the trainer's causal LM)")
        from fastzero.rollout.hf import HFEngine

        return HFEngine(model, **options)
    if model_path is None:
        raise ValueError("the sglang rollout engine needs model_path= (a local HF model directory)")
    from fastzero.rollout.sglang import SGLangEngine

    return SGLangEngine(model_path, **options)
