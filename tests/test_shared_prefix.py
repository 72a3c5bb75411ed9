"""fastzero.shared_prefix against the plain forward: the same hidden states that predict each
response token, and the same parameter gradients, with each distinct prompt run once.

The model is the embedded one in fp32 (Qwen2's RMSNorm computes in fp32 whatever the model's
dtype, so float64 weights would not make the comparison exact), with sdpa and eager attention. The
two paths differ only in rounding (other matmul shapes and summation orders), so the bound is fp32's
reduction bound over the longest chain of sums an entry goes through: every token of the batch plus
the model's widest dot products. The batch mixes groups of one prompt, prompts of different
lengths, a row without a response and a one-token response.
"""
from __future__ import annotations

import pytest
import torch

from fastzero.batch import collate
from fastzero.model import load_causal_lm, response_tokens
from fastzero.shared_prefix import prefix_hidden
from tests._helpers import assert_grad_close, sum_rtol


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    from fastzero.config import EMBEDDED_MODEL
    from fastzero.config import resolve_model_path

    policy, _ = load_causal_lm(resolve_model_path(EMBEDDED_MODEL), dtype=torch.float32, device="cpu",
                               attn_implementation=request.param)
    return policy.train()


def _batch(model, response_lengths=(1, 5, 9, 3, 0, 6, 2, 4)):
    gen = torch.Generator().manual_seed(0)
    a, b, c = ([int(x) for x in torch.randint(3, 60, (n,), generator=gen)] for n in (13, 11, 7))
    prompts = [a, a, a, b, b, c, a, c]
    responses = [torch.randint(3, 60, (n,), generator=gen).tolist() for n in response_lengths]
    return collate(prompts, responses, pad_id=0)


def _forward(model, batch, shared):
    model.zero_grad()
    tokens = response_tokens(model, batch.input_ids, batch.attention_mask, batch.response_mask, shared_prefix=shared)
    upstream = torch.randn(tokens.hidden.shape, generator=torch.Generator().manual_seed(1), dtype=tokens.hidden.dtype)
    (tokens.hidden * upstream).sum().backward()
    return tokens, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_shared_prefix_gives_the_plain_forward_hidden_states_and_gradients(model):
    batch = _batch(model)
    plain, plain_grads = _forward(model, batch, False)
    shared, shared_grads = _forward(model, batch, True)
    assert torch.equal(plain.targets, shared.targets) and torch.equal(plain.flat_positions, shared.flat_positions)
    c = model.config
    rel = sum_rtol(torch.float32, int(batch.attention_mask.sum()) + c.num_hidden_layers * (c.intermediate_size + c.hidden_size))
    assert_grad_close(shared.hidden, plain.hidden, rel)
    assert plain_grads.keys() == shared_grads.keys()
    for name in plain_grads:
        assert_grad_close(shared_grads[name], plain_grads[name], rel)


def test_it_is_used_where_prompts_repeat_and_not_where_they_do_not(model):
    batch = _batch(model)
    flat = batch.response_mask.bool().flatten().nonzero().squeeze(-1)
    assert prefix_hidden(model, batch.input_ids, batch.attention_mask, batch.response_mask, flat) is not None
    distinct = collate([[5, 6, 7], [8, 9]], [[1, 2], [3]], pad_id=0)  # no prompt repeats: nothing to share
    flat = distinct.response_mask.bool().flatten().nonzero().squeeze(-1)
    assert prefix_hidden(model, distinct.input_ids, distinct.attention_mask, distinct.response_mask, flat) is None


def test_other_attention_kernels_fall_back(model, monkeypatch):
    batch = _batch(model)
    flat = batch.response_mask.bool().flatten().nonzero().squeeze(-1)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    assert prefix_hidden(model, batch.input_ids, batch.attention_mask, batch.response_mask, flat) is None
