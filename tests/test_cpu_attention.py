"""fastzero/cpu_attention.py: a bf16 model's training attention on the CPU runs in float32.

Checked against float64 SDPA on the same (bf16) inputs: the wrapper's output and its q/k/v
gradients are float32 results rounded once to bf16, so each is within bf16's unit roundoff of its
own size plus float32's reduction bound (scores over head_dim, the weighted sum over the keys)
relative to the tensor's scale. Bitwise checks pin which path runs: with a gradient, exactly
float32 SDPA cast back; without one (decoding, scoring) and for float32 models, transformers'
SDPA untouched.
"""
from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from fastzero import cpu_attention
from fastzero.model import load_causal_lm
from fastzero.config import THINKING_MODEL, resolve_model_path
from tests._helpers import sum_rtol, unit_roundoff

BATCH, HEADS, QUERIES, KEYS, DIM = 3, 2, 7, 7, 16


class _Module:  # what transformers' attention function reads off the attention module
    is_causal = True
    num_key_value_groups = 1


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(BATCH, HEADS, n, DIM, generator=g).to(dtype).requires_grad_()
               for n in (QUERIES, KEYS, KEYS))
    grad_out = torch.randn(BATCH, QUERIES, HEADS, DIM, generator=g).to(dtype)
    return q, k, v, grad_out


def _padding_mask(kind: str):
    """Left padding of 0, 2 and 4 keys on a causal pattern: bool (True = attend) or additive."""
    causal = torch.ones(QUERIES, KEYS, dtype=torch.bool).tril()
    pad = torch.arange(KEYS)[None, :] >= torch.tensor([0, 2, 4])[:, None]
    allowed = (causal[None] & pad[:, None, :])[:, None]  # [B, 1, Q, K]
    allowed |= torch.eye(QUERIES, KEYS, dtype=torch.bool)  # every query keeps one key (no empty row)
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.bfloat16).masked_fill(~allowed, torch.finfo(torch.bfloat16).min)


def _float64_reference(q, k, v, grad_out, mask):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    m64 = mask if mask is None or mask.dtype == torch.bool else mask.double()
    out = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, attn_mask=m64,
                                                           is_causal=mask is None).transpose(1, 2)
    out.backward(grad_out.double())
    return out.detach(), q64.grad, k64.grad, v64.grad


def _assert_bf16_rounding_of(actual, expected, reduction):
    """One bf16 rounding of a float32 result of a `reduction`-term sum (relative to its scale)."""
    scale = expected.abs().max().item()
    bound = unit_roundoff(torch.bfloat16) * expected.abs() + 2 * sum_rtol(torch.float32, reduction) * scale
    err = (actual.double() - expected).abs()
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g}"


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_training_attention_matches_float64(mask_kind):
    attention = cpu_attention._float32_training_sdpa(sdpa_attention_forward)
    q, k, v, grad_out = _inputs(torch.bfloat16)
    mask = None if mask_kind == "none" else _padding_mask(mask_kind)
    out, _ = attention(_Module(), q, k, v, mask, scaling=DIM ** -0.5)
    assert out.dtype == torch.bfloat16
    out.backward(grad_out)
    ref_out, ref_q, ref_k, ref_v = _float64_reference(q, k, v, grad_out, mask)
    reduction = DIM + KEYS + QUERIES  # scores over head_dim, softmax and sums over keys / queries
    _assert_bf16_rounding_of(out, ref_out, reduction)
    for actual, expected in ((q.grad, ref_q), (k.grad, ref_k), (v.grad, ref_v)):
        assert actual.dtype == torch.bfloat16
        _assert_bf16_rounding_of(actual, expected, reduction)


def test_training_path_is_float32_sdpa_cast_back():
    attention = cpu_attention._float32_training_sdpa(sdpa_attention_forward)
    q, k, v, _ = _inputs(torch.bfloat16, seed=1)
    mask = _padding_mask("additive")
    out, _ = attention(_Module(), q, k, v, mask)
    expected, _ = sdpa_attention_forward(_Module(), q.float(), k.float(), v.float(), mask.float())
    assert torch.equal(out, expected.to(torch.bfloat16))


@pytest.mark.parametrize("case", ["no_grad", "float32", "no_requires_grad"])
def test_other_calls_run_transformers_sdpa_unchanged(case):
    attention = cpu_attention._float32_training_sdpa(sdpa_attention_forward)
    q, k, v, _ = _inputs(torch.float32 if case == "float32" else torch.bfloat16, seed=2)
    if case == "no_requires_grad":
        q, k, v = q.detach(), k.detach(), v.detach()
    mask = _padding_mask("bool")
    with torch.set_grad_enabled(case != "no_grad"):
        out, _ = attention(_Module(), q, k, v, mask)
        expected, _ = sdpa_attention_forward(_Module(), q, k, v, mask)
    assert out.dtype == q.dtype and torch.equal(out, expected)


def test_install_is_idempotent_and_done_for_bf16_cpu_models():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, _ = load_causal_lm(resolve_model_path(THINKING_MODEL), dtype="bfloat16", device="cpu",
                              attn_implementation="sdpa")
    installed = ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert installed.fastzero_wraps is sdpa_attention_forward
    cpu_attention.install()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is installed  # not wrapped twice
    # A whole bf16 model's training forward goes through it: its loss gradient reaches every layer.
    ids = torch.randint(3, 60, (2, 9))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
