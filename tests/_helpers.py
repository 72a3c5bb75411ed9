"""What several test files share: tolerances derived from a dtype and a reduction size, gradient checks.

Tolerances here are rounding bounds, not numbers one machine happened to meet: a sum of n terms
computed in a dtype with unit roundoff u is off by at most about n * u * sum(|terms|) (Higham's
gamma_n), and an elementwise result by a few u of its own size.
"""
from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the gap between 1 and the next number of `dtype` (torch.finfo's eps / 2)."""
    return torch.finfo(dtype).eps / 2


def sum_rtol(dtype: torch.dtype, n_terms: int) -> float:
    """Worst-case relative error of a length-n reduction in `dtype`, relative to sum(|terms|)."""
    return max(n_terms, 1) * unit_roundoff(dtype)


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Finite, same shape, and max |actual - expected| <= rel * max |expected| (norm-wise, so entries
    that are ~0 in the oracle are held to the tensor's scale, not to their own)."""
    assert actual is not None and actual.shape == expected.shape and torch.isfinite(actual).all()
    if expected.numel() == 0:
        return
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rel * scale + 1e-300, f"max grad error {err:.3g} > {rel:.3g} * {scale:.3g}"


def assert_sum_close(actual: torch.Tensor, expected: torch.Tensor, abs_sum: float, dtype: torch.dtype,
                     n_terms: int) -> None:
    """Two evaluations of the same n-term sum (abs_sum = sum of |terms|), each rounded in `dtype`:
    they differ by at most twice the reduction bound."""
    bound = 2 * sum_rtol(dtype, n_terms) * abs_sum
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= bound + 1e-300, f"error {err:.3g} > bound {bound:.3g} ({n_terms} terms in {dtype})"
