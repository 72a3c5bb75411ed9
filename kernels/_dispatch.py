"""Chooses how a kernel call runs: the Triton kernel, a chunked PyTorch path, or the plain reference.

Detected once per call from the tensor's device, never by mocking a missing backend:
- CUDA tensors take the Triton kernels;
- CPU tensors take the Triton kernels when TRITON_INTERPRET=1 (that is how the tests check them on
  a machine without a GPU), and otherwise the chunked PyTorch path, which keeps the same memory
  bound, so the trainer runs anywhere.
The one documented switch, FASTZERO_KERNELS=auto|triton|torch|reference, forces a path; "reference"
is the plain PyTorch twin in fastzero.kernels.reference (it may materialize [N, V] logits).
"""
from __future__ import annotations

import os

import torch

from fastzero.kernels._utils import HAS_TRITON

BACKEND_ENV = "FASTZERO_KERNELS"
BACKENDS = ("auto", "triton", "torch", "reference")


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (must be set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forced_backend() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def backend_for(device: torch.device) -> str:
    """'triton', 'torch' (chunked PyTorch) or 'reference' for tensors on `device`."""
    forced = forced_backend()
    triton_ok = HAS_TRITON and (device.type == "cuda" or (device.type == "cpu" and interpreting()))
    if forced == "triton":
        if not triton_ok:
            raise RuntimeError(
                f"{BACKEND_ENV}=triton but Triton cannot run on {device.type} tensors here "
                "(needs a CUDA device, or TRITON_INTERPRET=1 on CPU, and `pip install triton`)"
            )
        return "triton"
    if forced in ("torch", "reference"):
        return forced
    return "triton" if triton_ok else "torch"
