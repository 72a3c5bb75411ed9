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


# ---- the tolerance model the kernel tests use ----------------------------------------------------
# A kernel result is computed in fp32 from the same input values the float64 oracle sees; it goes
# through elementwise fp32 operations (ELEMENTWISE_OPS roundings: the longest chain is a fused-loss
# gradient: scale by 1/T, shift by the max, exp, log, logp = z - lse, logp - old, exp (ratio), * A,
# * token weight, * upstream, p = exp(z - lse), onehot - p, * dL/dlogp, * 1/T, plus the KL and
# entropy terms' adds: 16) and
# reductions of known lengths (a dot product over H, a log-sum-exp over V, a sum over N tokens),
# and may be stored in a narrower dtype at the end. The inputs the tests build are O(1) (log-probs in
# [-3, 0], log-ratios ~0.3, advantages ~N(0, 1)), so bounds are taken relative to max(1, |oracle|).
ELEMENTWISE_OPS = 16


def fp32_rtol(*reduction_lengths: int) -> float:
    """Relative rounding bound of an fp32 result through these reductions and ELEMENTWISE_OPS."""
    return sum_rtol(torch.float32, sum(reduction_lengths) + ELEMENTWISE_OPS)


def stored_rtol(dtype: torch.dtype) -> float:
    """One rounding of a result stored in `dtype`: a full eps (Triton's interpreter truncates)."""
    return 0.0 if dtype in (torch.float32, torch.float64) else torch.finfo(dtype).eps


def assert_close_o1(actual: torch.Tensor, expected: torch.Tensor, rel: float, msg: str = "") -> None:
    """|actual - expected| <= rel * max(1, |expected|) elementwise (values of size O(1) or larger)."""
    expected = expected.double()
    bound = rel * expected.abs().clamp(min=1.0)
    err = (actual.double() - expected).abs()
    assert bool((err <= bound).all()), f"{msg} max error {err.max().item():.3g}, bound {bound.min().item():.3g}+"


class LogitsOracle:
    """float64 log-probs and entropies through materialized logits that keep their gradient, so the
    size of the terms each gradient entry sums can be read back after backward():
        grad_hidden[i, k] = sum_v dL/dz[i, v] * W[v, k]     grad_weight[v, k] = sum_i dL/dz[i, v] * h[i, k]
    These sums cancel by construction (sum_v dL/dz[i, v] = 0 for the log-softmax), so bounds are
    taken against the size of their terms (`hidden_terms`, `weight_terms`), not of the result."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
        self.hidden = hidden.detach().double().requires_grad_()
        self.weight = weight.detach().double().requires_grad_()
        self.logits = self.hidden @ self.weight.T
        self.temperature = temperature
        logprobs = torch.log_softmax(self.logits / temperature, dim=-1)
        self.logp = logprobs.gather(-1, targets[:, None]).squeeze(-1)
        self.entropy = -(logprobs.exp() * logprobs).sum(dim=-1)
        for x in (self.logp, self.entropy):
            x.retain_grad()
        self.logprobs, self.targets = logprobs.detach(), targets

    def _abs_dz(self) -> torch.Tensor:
        """sum of |terms| of each dL/dz = (g_logp * (onehot - p) - g_entropy * p * (logp + H)) / T."""
        p = self.logprobs.exp()
        onehot = torch.nn.functional.one_hot(self.targets, p.shape[-1]).to(p)
        g_logp = torch.zeros_like(self.logp) if self.logp.grad is None else self.logp.grad
        g_ent = torch.zeros_like(self.entropy) if self.entropy.grad is None else self.entropy.grad
        return (g_logp.abs()[:, None] * (onehot + p)
                + g_ent.abs()[:, None] * p * (self.logprobs.abs() + self.entropy.detach()[:, None])) / self.temperature

    def grad_rel(self, dtype: torch.dtype) -> float:
        """Relative bound (against sum |terms|) for the kernels' fp32 gradients: each dL/dz carries the
        error of its probability, exp(z - lse): the length-H dot product behind z, scaled by |z|, and
        the length-V log-sum-exp; then the length-N (grad_weight) or -V (grad_hidden) sum; bf16
        gradients: stored in bf16, and on a GPU bf16 dL/dz feed the backward matmuls."""
        n, h = self.hidden.shape
        v = self.weight.shape[0]
        z_max = max(1.0, float(self.logits.detach().abs().max()) / self.temperature) if self.logits.numel() else 1.0
        return fp32_rtol(int(h * z_max) + 1, v, n) + 2 * stored_rtol(dtype)

    def hidden_terms(self) -> torch.Tensor:
        return self._abs_dz() @ self.weight.detach().abs()

    def weight_terms(self) -> torch.Tensor:
        return self._abs_dz().T @ self.hidden.detach().abs()


def assert_within_terms(actual: torch.Tensor, expected: torch.Tensor, abs_terms: torch.Tensor, rel: float) -> None:
    """max |actual - expected| <= rel * the largest sum |terms| (norm-wise Higham bound: entries whose
    sums cancel are held to the size of the terms, not of their small result)."""
    assert actual is not None and actual.shape == expected.shape and torch.isfinite(actual).all()
    if expected.numel() == 0:
        return
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(abs_terms.double().abs().max().item(), expected.double().abs().max().item())
    assert err <= rel * scale + 1e-300, f"max error {err:.3g} > {rel:.3g} * {scale:.3g}"
