"""What the kernel files share: the guarded Triton import, argument checks, dtype lists, row helpers,
and the row order of the per-token / per-row stat sums both loss kernels write.

Checks raise before any work, naming the argument (`clip_low must be >= 0, got -0.1`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# The one guarded Triton import: every kernel file takes `triton`/`tl` from here and defines its
# kernels only `if HAS_TRITON`, so the package imports (and runs its torch paths) without Triton.
try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch and reference paths still work
    triton = tl = None
HAS_TRITON = triton is not None

# Rows (fused loss, [6, N]) or columns (two-pass loss, [B, 6]) of the stat sums the loss kernels
# write; summed once at the end, without atomics, so results are deterministic.
LOSS, CLIPPED, DUAL_CLIPPED, KL_OLD, KL_REF, ENTROPY = range(6)
NUM_STAT_SUMS = 6
if HAS_TRITON:
    # The same indices as Triton compile-time constants: a kernel may only read globals that are
    # tl.constexpr objects (the interpreter does not enforce it; the GPU compiler does).
    LOSS_C, CLIPPED_C, DUAL_CLIPPED_C, KL_OLD_C, KL_REF_C, ENTROPY_C = (
        tl.constexpr(i) for i in (LOSS, CLIPPED, DUAL_CLIPPED, KL_OLD, KL_REF, ENTROPY))
    NUM_STAT_SUMS_C = tl.constexpr(NUM_STAT_SUMS)

# Floating dtypes the loss and log-prob kernels take as inputs (they compute in fp32); the advantage
# functions also take float64 (cheap [B] / [B, T] math, and the tests' oracle precision).
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ANY_FLOAT_DTYPES = FLOAT_DTYPES + (torch.float64,)
# Mask dtypes: bool or numeric, nonzero = valid.
MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64) + ANY_FLOAT_DTYPES


def check_number(name: str, value, *, minimum: Optional[float] = None, above: Optional[float] = None) -> None:
    """A finite int/float (not bool), optionally >= minimum or > above."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above}, got {value!r}")


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def check_tensor(name: str, x, shape: tuple[int, ...], device: torch.device, dtypes=FLOAT_DTYPES,
                 like: str = "logp") -> None:
    """A tensor of exactly `shape`, one of `dtypes` (None: any), on `device` (that of `like`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but {like} is on {device}")


def check_token_weight(token_weight: torch.Tensor) -> None:
    """Token weights are coefficients of an aggregate: finite and >= 0 (one host sync)."""
    if token_weight.numel() and not bool(((token_weight >= 0) & torch.isfinite(token_weight)).all()):
        raise ValueError("token_weight must be finite and >= 0 (0 = the token takes no part in the loss)")


def rows_of(tensor: Optional[torch.Tensor], rows: slice) -> Optional[torch.Tensor]:
    """tensor[rows], passing None through (optional per-token inputs)."""
    return None if tensor is None else tensor[rows]
