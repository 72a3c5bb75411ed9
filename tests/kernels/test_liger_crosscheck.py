"""Outside cross-check: our policy loss against Liger-Kernel's LigerFusedLinearGRPOLoss (0.8.5).

Both sides get the same hidden states [B, T, H], lm-head weight [V, H], sampled tokens, mask,
per-sequence advantages and old/ref log-probs. Liger computes log-probs itself (chunked, in fp32);
we compute them with plain torch (log_softmax(hidden @ W.T / temperature) gathered at the tokens)
and call fastzero.kernels.policy_loss; the loss and the gradients for the hidden states and the
weight must agree, as must the clip-fraction and KL metrics.

Argument map (from liger_kernel/chunked_loss/grpo_loss.py, ppo_loss_fn):
    epsilon_low / epsilon_high -> clip_low / clip_high (token-level ratio, importance_sampling_level="token")
    beta                       -> kl_coef with kl_type="k3": Liger's k3_loss_fn(ref, logp) is
                                  exp(ref - logp) - (ref - logp) - 1, our k3
    loss_type "bnpo", "dapo"   -> agg="token-mean" (dapo's normalizer is the micro-batch's token
                                  count when num_items_in_batch is None and no process group)
    loss_type "grpo"           -> agg="seq-mean-token-mean"
    loss_type "dr_grpo"        -> agg="seq-mean-token-sum-norm", norm_len=max_completion_length
    temperature                -> applied to the logits before our log_softmax
    metrics                    -> [mean k3 KL to ref (only when beta != 0), clip ratio]; Liger's clip
                                  ratio counts (r < 1-eps_low & A < 0) | (r > 1+eps_high & A > 0),
                                  exactly our clip_frac
Definitional difference: Liger's "grpo" divides the sum of row means by B, counting rows with no
valid token; our seq-mean-token-mean averages over rows that have at least one. The two agree
when every row has a token; the empty-row case below checks the exact ratio B / nonempty rows.
Liger has no dual clip, k1/k2, or entropy term, so those are checked only against our reference.
"""
from __future__ import annotations

import pytest
import torch

from fastzero.kernels._dispatch import backend_for
from fastzero.kernels.policy_loss import policy_loss
from tests._helpers import assert_close_o1, assert_grad_close, fp32_rtol

liger_grpo = pytest.importorskip("liger_kernel.chunked_loss.grpo_loss", reason="liger-kernel is not installed")

LOSS_TYPE_TO_AGG = {
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "grpo": "seq-mean-token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}
B, T, H, V = 4, 9, 16, 37
MAX_COMPLETION_LENGTH = 12
TEMPERATURE = 0.7


@pytest.fixture
def backend(monkeypatch, device):
    """The default dispatch (Triton on CUDA or under the interpreter): the other backends are held
    to the same float64 reference in test_policy_loss.py, so one suffices for the outside check."""
    monkeypatch.setenv("FASTZERO_KERNELS", "auto")
    return backend_for(device)


def make_batch(device, empty_row: bool):
    gen = torch.Generator().manual_seed(17)
    hidden = torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) * 0.3
    targets = torch.randint(0, V, (B, T), generator=gen)
    lengths = torch.tensor([T, 5, 7, 2])
    if empty_row:
        lengths[2] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()  # right padding, Liger's layout
    advantages = torch.randn(B, generator=gen)
    with torch.no_grad():
        logp = our_logp(hidden, weight, targets)
    old = logp + 0.25 * torch.randn(B, T, generator=gen)  # wide enough for both clip sides to trigger
    ref = logp + 0.25 * torch.randn(B, T, generator=gen)
    tensors = dict(hidden=hidden, weight=weight, targets=targets, mask=mask, advantages=advantages,
                   old=old, ref=ref)
    return {name: value.to(device) for name, value in tensors.items()}


def our_logp(hidden, weight, targets):
    logits = (hidden @ weight.T).float() / TEMPERATURE
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def liger_side(batch, loss_type, beta):
    hidden = batch["hidden"].clone().requires_grad_(True)
    weight = batch["weight"].clone().requires_grad_(True)
    module = liger_grpo.LigerFusedLinearGRPOLoss(
        beta=beta, compiled=False, use_ref_model=beta != 0.0, epsilon_low=0.2, epsilon_high=0.28,
        loss_type=loss_type, max_completion_length=MAX_COMPLETION_LENGTH, temperature=TEMPERATURE,
    )
    loss, metrics = module(
        hidden, weight, batch["targets"], batch["mask"], batch["advantages"],
        ref_per_token_logps=batch["ref"] if beta != 0.0 else None, old_per_token_logps=batch["old"],
    )
    loss.backward()
    kl, clip_ratio = metrics if beta != 0.0 else (None, metrics[0])
    return loss.detach(), hidden.grad, weight.grad, clip_ratio, kl


def our_side(batch, loss_type, beta):
    hidden = batch["hidden"].clone().requires_grad_(True)
    weight = batch["weight"].clone().requires_grad_(True)
    logp = our_logp(hidden, weight, batch["targets"])
    loss, stats = policy_loss(
        logp, batch["old"], batch["advantages"], batch["mask"],
        ref_logp=batch["ref"] if beta != 0.0 else None, clip_low=0.2, clip_high=0.28,
        kl_coef=beta, kl_type="k3", agg=LOSS_TYPE_TO_AGG[loss_type], norm_len=MAX_COMPLETION_LENGTH,
    )
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad, stats["clip_frac"], stats.get("kl_ref")


def check(mine, other, name):
    """Two fp32 implementations of the same sums: each value goes through a length-H dot product, a
    length-V log-sum-exp and a length-(B*T) sum over tokens; twice that bound, norm-wise."""
    rel = 2 * fp32_rtol(H, V, B * T)
    if mine.dim() == 0:
        assert_close_o1(mine, other, rel, msg=name)
    else:
        assert_grad_close(mine, other, rel)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", list(LOSS_TYPE_TO_AGG))
def test_matches_liger_grpo_loss(backend, device, loss_type, beta):
    batch = make_batch(device, empty_row=False)
    ours, theirs = our_side(batch, loss_type, beta), liger_side(batch, loss_type, beta)
    for name, mine, other in zip(("loss", "d hidden", "d weight", "clip fraction"), ours, theirs):
        check(mine, other, name)
    assert 0.0 < ours[3].item() < 1.0  # the clip branch was exercised
    if beta != 0.0:
        check(ours[4], theirs[4], "KL to ref")


@pytest.mark.parametrize("loss_type", list(LOSS_TYPE_TO_AGG))
def test_empty_row_differs_from_liger_only_for_grpo(backend, device, loss_type):
    batch = make_batch(device, empty_row=True)
    ours, theirs = our_side(batch, loss_type, 0.04), liger_side(batch, loss_type, 0.04)
    # Liger's grpo averages over all B rows, ours over the B - 1 rows that have tokens.
    scale = B / (B - 1) if loss_type == "grpo" else 1.0
    for name, mine, other in zip(("loss", "d hidden", "d weight"), ours, theirs):
        check(mine, other * scale, name)
