"""Tests for fastzero.kernels.logprob.fused_logprobs against a float64 oracle (kernels/reference.py).

Every backend (Triton — through the CPU interpreter when there is no GPU —, chunked PyTorch, the
reference) is checked on values and on gradients w.r.t. hidden and weight under random upstream
gradients on logp and entropy; plus odd shapes, N=0/1, temperatures, a tied embedding, the
multi-block online softmax, the one-pass chunk function, a measured memory bound and bad inputs.
"""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.kernels import logprob as LP
from fastzero.kernels._memory import peak_allocated_bytes
from fastzero.kernels import reference as R
from fastzero.kernels.logprob import fused_logprobs
from tests._helpers import assert_grad_close, fp32_rtol, stored_rtol


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def tolerances(hidden, weight, temperature=1.0, dtype=torch.float32):
    """(atol on logp/entropy/lse, norm-wise relative gradient bound) from the reductions: a length-H
    dot product per logit, a length-V log-sum-exp per row and (grad_weight) a length-N sum over
    tokens, in fp32, on logits of size max|z| / T. bf16 gradients: stored in bf16, and on a GPU the
    bf16 dL/dlogits feeding the backward matmuls are a second bf16 rounding."""
    n, h = hidden.shape
    rel = fp32_rtol(h, weight.shape[0], n)
    logits = hidden.detach().double() @ weight.detach().double().T
    scale = max(1.0, float(logits.abs().max()) / temperature if logits.numel() else 0.0)
    return rel * scale, rel + 2 * stored_rtol(dtype)



def make_inputs(n, h, v, dtype, device, seed=0, scale=3.0):
    """hidden ~ N(0,1), weight scaled so logits have std ~`scale` (peaked, like a trained head)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * scale / max(h, 1) ** 0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden.to(device), weight.to(device), targets.to(device)


def oracle(hidden, weight, targets, temperature, grad_logp, grad_entropy):
    """float64 values and gradients through the materialized reference."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logp, entropy = R.fused_logprobs(h, w, targets, temperature=temperature, return_entropy=True)
    (logp * grad_logp.double() + entropy * grad_entropy.double()).sum().backward()
    return logp.detach(), entropy.detach(), h.grad, w.grad


def run_and_check(backend, device, dtype, n, h, v, temperature, upstream=("logp", "entropy")):
    hidden, weight, targets = make_inputs(n, h, v, dtype, device, seed=n * 7 + v)
    atol, grad_rel = tolerances(hidden, weight, temperature, dtype)
    hidden.requires_grad_()
    weight.requires_grad_()
    logp, entropy = fused_logprobs(hidden, weight, targets, temperature=temperature, return_entropy=True)
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == entropy.shape == (n,)
    gen = torch.Generator().manual_seed(1)
    g_logp = torch.randn(n, generator=gen).to(device) * ("logp" in upstream)
    g_entropy = torch.randn(n, generator=gen).to(device) * ("entropy" in upstream)
    loss = (logp * g_logp).sum() if "logp" in upstream else 0.0
    loss = loss + ((entropy * g_entropy).sum() if "entropy" in upstream else 0.0)
    loss.backward()
    want_logp, want_entropy, want_gh, want_gw = oracle(hidden, weight, targets, temperature, g_logp, g_entropy)
    torch.testing.assert_close(logp.double(), want_logp, atol=atol, rtol=0)
    torch.testing.assert_close(entropy.double(), want_entropy, atol=atol, rtol=0)
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    assert_grad_close(hidden.grad, want_gh, grad_rel)
    assert_grad_close(weight.grad, want_gw, grad_rel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, h, v, temperature", [(37, 48, 1001, 0.7), (1, 64, 257, 1.3)])
def test_matches_float64_reference(backend, device, dtype, n, h, v, temperature):
    run_and_check(backend, device, dtype, n, h, v, temperature)


@pytest.mark.parametrize("upstream", [("logp",), ("entropy",)])
def test_gradient_from_one_output_only(backend, device, upstream):
    run_and_check(backend, device, torch.float32, 19, 24, 300, 0.9, upstream=upstream)


def test_empty_batch(backend, device):
    hidden, weight, targets = make_inputs(0, 16, 50, torch.float32, device)
    hidden.requires_grad_()
    weight.requires_grad_()
    logp, entropy = fused_logprobs(hidden, weight, targets, return_entropy=True)
    assert logp.shape == entropy.shape == (0,)
    (logp.sum() + entropy.sum()).backward()
    assert hidden.grad.shape == (0, 16)
    assert weight.grad.shape == (50, 16) and not weight.grad.any()


def test_tied_embedding_weight_accumulates(backend, device):
    """The same Parameter is the embedding and the head: both gradient paths add up."""
    n, h, v = 23, 32, 301
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(v, h, generator=gen).to(device)
    ids = torch.randint(0, v, (n,), generator=gen).to(device)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    mix = torch.randn(h, h, generator=gen).to(device) / h**0.5

    def loss_of(weight, fn):
        hidden = torch.tanh(torch.nn.functional.embedding(ids, weight) @ mix.to(weight.dtype))
        logp, entropy = fn(hidden, weight, targets, temperature=1.0, return_entropy=True)
        return -logp.mean() - 0.01 * entropy.mean()

    weight = torch.nn.Parameter(table.clone())
    loss_of(weight, fused_logprobs).backward()
    want = table.double().requires_grad_()
    loss_of(want, R.fused_logprobs).backward()
    assert_grad_close(weight.grad, want.grad, 2 * tolerances(torch.empty(n, h), table)[1])  # two gradient paths


def test_non_contiguous_hidden(backend, device):
    """Rows picked from a larger activation (every other token): a strided view, no copy needed."""
    big, weight, targets = make_inputs(18, 16, 77, torch.float32, device, seed=12)
    big.requires_grad_()
    hidden = big[::2]
    logp, entropy = fused_logprobs(hidden, weight, targets[::2], temperature=0.9, return_entropy=True)
    (logp.sum() + entropy.sum()).backward()
    want_logp, want_entropy, want_gh, _ = oracle(hidden, weight, targets[::2], 0.9, torch.ones(9), torch.ones(9))
    atol, grad_rel = tolerances(hidden, weight, 0.9)
    torch.testing.assert_close(logp.double(), want_logp, atol=atol, rtol=0)
    assert_grad_close(big.grad[::2], want_gh, grad_rel)
    assert not big.grad[1::2].any()


def test_only_weight_requires_grad(backend, device):
    hidden, weight, targets = make_inputs(9, 16, 77, torch.float32, device)
    weight.requires_grad_()
    fused_logprobs(hidden, weight, targets).sum().backward()
    zeros = torch.zeros(9, device=device)
    _, _, _, want_gw = oracle(hidden, weight, targets, 1.0, torch.ones(9, device=device), zeros)
    assert_grad_close(weight.grad, want_gw, tolerances(hidden, weight)[1])


def test_triton_kernels_online_softmax_across_blocks(device, block_v=128):
    """V=1001 over 128-wide blocks: the running max/sum rescaling and targets in every block."""
    n, v, inv_t = 16, 1001, 1 / 0.7
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(n, v, generator=gen) * 4).to(device)
    logits[3, 900] = 60.0  # the max arrives late: earlier blocks must be rescaled
    targets = torch.tensor([0, 127, 128, 900, 1000] + list(range(300, 311)), device=device)
    logp, entropy, lse = LP._stats_triton(logits, targets, inv_t, block_v=block_v)
    z = logits.double() * inv_t
    logprobs = torch.log_softmax(z, dim=-1)
    atol = fp32_rtol(v) * float(z.abs().max())  # one length-V log-sum-exp over logits of this size
    torch.testing.assert_close(logp.double(), logprobs.gather(1, targets[:, None]).squeeze(1), atol=atol, rtol=0)
    torch.testing.assert_close(entropy.double(), -(logprobs.exp() * logprobs).sum(-1), atol=atol, rtol=0)
    torch.testing.assert_close(lse.double(), torch.logsumexp(z, -1), atol=atol, rtol=0)
    g_logp, g_entropy = torch.randn(n, generator=gen).to(device), torch.randn(n, generator=gen).to(device)
    p = logprobs.exp()
    want = (g_logp[:, None].double() * (torch.nn.functional.one_hot(targets, v) - p)
            - g_entropy[:, None].double() * p * (logprobs + entropy.double()[:, None])) * inv_t
    for out_dtype in (torch.float32, torch.bfloat16):
        tol = fp32_rtol(v) * float(z.abs().max()) + stored_rtol(out_dtype)
        out = torch.empty(n, v, dtype=out_dtype, device=device)
        LP._grads_triton_(logits, out, targets, lse, entropy, g_logp, g_entropy, inv_t, block_v=block_v)
        assert_grad_close(out, want, tol)


@pytest.mark.parametrize("chunk_backend", ["triton", "torch"])
def test_chunk_forward_backward_one_pass(device, chunk_backend):
    """A PPO-like loss whose dL/dlogp depends on logp, fed through two chunks, equals autograd."""
    n, h, v = 30, 24, 513
    hidden, weight, targets = make_inputs(n, h, v, torch.float32, device, seed=11)
    hidden.requires_grad_()  # as in a trainer: the activation is part of a graph
    weight.requires_grad_()
    gen = torch.Generator().manual_seed(2)
    old_logp = (torch.randn(n, generator=gen) * 0.1 - 5).to(device)
    advantages = torch.randn(n, generator=gen).to(device)
    ent_coef, temperature = 0.01, 0.8

    def token_grads_for(rows):
        def token_grads(logp, entropy):
            return -advantages[rows] * torch.exp(logp - old_logp[rows]), torch.full_like(entropy, -ent_coef)
        return token_grads

    grad_weight = torch.zeros(v, h, device=device)
    outs = [
        LP.chunk_forward_backward(hidden[rows], weight, targets[rows], token_grads_for(rows),
                                   temperature=temperature, grad_weight=grad_weight, backend=chunk_backend)
        for rows in (slice(0, 13), slice(13, n))
    ]
    logp, entropy, grad_hidden = (torch.cat(parts) for parts in zip(*outs))
    assert not grad_hidden.requires_grad and not logp.requires_grad
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    want_logp, want_entropy = R.fused_logprobs(h64, w64, targets, temperature=temperature, return_entropy=True)
    ratio = torch.exp(want_logp - old_logp.double())
    (-(advantages.double() * ratio).sum() - ent_coef * want_entropy.sum()).backward()
    atol, grad_rel = tolerances(hidden, weight, temperature)
    torch.testing.assert_close(logp.double(), want_logp.detach(), atol=atol, rtol=0)
    torch.testing.assert_close(entropy.double(), want_entropy.detach(), atol=atol, rtol=0)
    assert_grad_close(grad_hidden, h64.grad, grad_rel)
    assert_grad_close(grad_weight, w64.grad, grad_rel)


def test_agrees_with_liger_fused_linear_cross_entropy(device):
    """An outside cross-check: Liger's per-token cross entropy is -logp (values and d/dhidden, d/dW)."""
    liger = pytest.importorskip("liger_kernel.transformers.functional", reason="liger-kernel not installed")
    hidden, weight, targets = make_inputs(4, 16, 100, torch.float32, device, seed=6)
    grad = torch.randn(4, generator=torch.Generator().manual_seed(8)).to(device)
    grads = []
    for fn in (lambda h, w: fused_logprobs(h, w, targets),
               lambda h, w: -liger.liger_fused_linear_cross_entropy(h, w, targets, reduction="none")):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logp = fn(h, w)
        logp.backward(grad)
        grads.append((logp.detach(), h.grad, w.grad))
    atol, grad_rel = tolerances(hidden, weight)  # two fp32 implementations: twice the bound
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=2 * atol, rtol=0)
    for ours, theirs in zip(grads[0][1:], grads[1][1:]):
        assert_grad_close(ours, theirs, 2 * grad_rel)


def test_chunk_rows_respects_budget():
    assert LP.chunk_rows(151936, 4) * 151936 * 4 <= 256 * 2**20
    assert LP.chunk_rows(151936, 6) == 256 * 2**20 // (151936 * 6)
    assert LP.chunk_rows(10**9, 4) == 1  # one row even when a single row exceeds the budget
    assert LP.chunk_rows(1001, 4, budget_bytes=64 * 1024) == 16
    weight = torch.zeros(151936, 8)
    assert LP.one_pass_rows(weight, "triton") == 256 * 2**20 // (151936 * 4)
    assert LP.one_pass_rows(weight, "torch") == 256 * 2**20 // (151936 * 8)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_extra_memory_is_bounded_not_n_by_v(device, monkeypatch, path):
    """With an 8 KiB chunk budget, N x V logits (256 KB) never exist; the reference's do (control)."""
    n, h, v, budget = 64, 2, 1001, 8 * 1024
    monkeypatch.setattr(LP, "CHUNK_BUDGET_BYTES", budget)
    hidden, weight, targets = make_inputs(n, h, v, torch.float32, device, seed=4)
    hidden.requires_grad_()
    weight.requires_grad_()
    gen = torch.Generator().manual_seed(9)
    g_logp, g_entropy = torch.randn(n, generator=gen).to(device), torch.randn(n, generator=gen).to(device)
    results = {}

    def forward_backward(backend):
        monkeypatch.setenv("FASTZERO_KERNELS", backend)
        hidden.grad = weight.grad = None
        logp, entropy = fused_logprobs(hidden, weight, targets, temperature=1.1, return_entropy=True)
        torch.autograd.backward([logp, entropy], [g_logp, g_entropy])
        results[backend] = logp.detach(), entropy.detach(), hidden.grad, weight.grad

    if device.type == "cuda":  # cuBLAS workspaces and Triton caches exist before we measure
        forward_backward(path)
    peak = peak_allocated_bytes(lambda: forward_backward(path), device)
    control = peak_allocated_bytes(lambda: forward_backward("reference"), device)
    n_by_v = n * v * 4
    assert control >= n_by_v, "the measurement must see the reference's [N, V] logits"
    # Allowed: the chunk buffers (budget) + grad_hidden/grad_weight and their casts + [N] vectors.
    allowed = budget + 2 * 4 * (n * h + v * h) + 16 * n * 4 + 16 * 1024
    print(f"{path}: peak {peak} B, allowed {allowed} B, N x V fp32 {n_by_v} B, reference {control} B")
    assert peak <= allowed < n_by_v // 4, f"peak {peak} B > {allowed} B"
    atol, grad_rel = tolerances(hidden, weight, 1.1)
    for got, want in zip(results[path], results["reference"]):  # two fp32 paths: twice the bound
        assert_grad_close(got, want.double(), 2 * max(grad_rel, atol))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(0, 8), h=st.integers(1, 20), v=st.integers(1, 300),
       temperature=st.floats(0.5, 2.0), path=st.sampled_from(["triton", "torch"]))
def test_random_shapes_match_reference(n, h, v, temperature, path):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTZERO_KERNELS", path)
        run_and_check(path, device, torch.float32, n, h, v, temperature)


def _bad(**changes):
    hidden, weight, targets = make_inputs(5, 8, 20, torch.float32, "cpu")
    kwargs = dict(hidden=hidden, weight=weight, targets=targets, temperature=1.0) | changes
    return kwargs


@pytest.mark.parametrize("kwargs, error, match", [
    (_bad(targets=torch.zeros(5, dtype=torch.int32)), TypeError, "int64"),
    (_bad(targets=torch.zeros(5)), TypeError, "int64"),
    (_bad(targets=torch.zeros(4, dtype=torch.long)), ValueError, r"\[N\] with N=5"),
    (_bad(targets=torch.zeros(5, 1, dtype=torch.long)), ValueError, r"\[N\] with N=5"),
    (_bad(targets=torch.tensor([0, 1, 2, 3, 20])), ValueError, r"\[0, 20\)"),
    (_bad(targets=torch.tensor([0, -1, 2, 3, 4])), ValueError, r"\[0, 20\)"),
    (_bad(weight=torch.randn(20, 9)), ValueError, "H=8.*H=9"),
    (_bad(hidden=torch.randn(5, 8, 1)), ValueError, r"\[N, H\]"),
    (_bad(weight=torch.randn(0, 8)), ValueError, "V=0"),
    (_bad(weight=torch.randn(20, 8, dtype=torch.bfloat16)), TypeError, "dtype"),
    (_bad(hidden=torch.randn(5, 8).double(), weight=torch.randn(20, 8).double()), TypeError, "dtype"),
    (_bad(temperature=0.0), ValueError, "temperature"),
    (_bad(temperature=-1.3), ValueError, "temperature"),
    (_bad(temperature=float("nan")), ValueError, "temperature"),
    (_bad(temperature=float("inf")), ValueError, "temperature"),
])
def test_bad_inputs_raise_clear_errors(backend, kwargs, error, match):
    with pytest.raises(error, match=match):
        fused_logprobs(kwargs["hidden"], kwargs["weight"], kwargs["targets"], temperature=kwargs["temperature"])
