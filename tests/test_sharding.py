"""FSDP2 on 2 and 3 CPU ranks (gloo) against one process: the fused loss's gradient through the
explicitly gathered LM head (tied and untied), the two-pass log-prob path, the critic with its fp32
value head, gradient clipping, an AdamW step, generation inside `gathered`, and the full state dict.

Tolerance: a rank sums the gradient over its own rows and FSDP sums the ranks' partial sums, where
one process sums all rows at once; the terms are the same fp32 numbers, only grouped differently.
Reordering a sum of n fp32 terms moves it by at most ~n * eps * sum|terms|; per tensor we allow
n_tokens * eps_fp32 * max|g| (n_tokens = the response tokens summed, 48 here) - values, which
involve no cross-rank sum, must match exactly up to the same bound on the chunked head matmul.
"""
from __future__ import annotations

import pytest
import torch

from fastzero.batch import collate
from fastzero.distributed import SINGLE, DistContext, global_token_weights, grad_scale, init_distributed, prompt_slice
from tests._distributed import run_ranks

EPS32 = torch.finfo(torch.float32).eps
ROWS = 6  # six "prompts" of one sample each: slices of 3+3 / 2+2+2 rows
LR, ADAM_EPS, MAX_NORM = 1e-2, 1e-8, 1e-3


def tiny_dir(tmp_path_factory, tie: bool) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=41, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie, initializer_range=0.2, eos_token_id=1)
    directory = tmp_path_factory.mktemp("tied" if tie else "untied")
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return str(directory)


def make_batch():
    """Right-padded rows of different prompt and response lengths, with per-token inputs of the loss."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 41, (4 + r % 3,), generator=g).tolist() for r in range(ROWS)]
    responses = [torch.randint(2, 41, (5 + (2 * r) % 7,), generator=g).tolist() for r in range(ROWS)]
    batch = collate(prompts, responses, pad_id=0)
    old = -torch.rand(batch.input_ids.shape, generator=g) * 3
    adv = torch.randn(batch.input_ids.shape, generator=g)
    return batch, old, adv


def loss_and_backward(policy, critic, rows: torch.Tensor, ctx, fused: bool) -> float:
    """The policy loss (token-mean over the global batch) + critic value loss over `rows`; backward."""
    from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
    from fastzero.kernels.policy_loss import policy_loss
    from fastzero.model import lm_head_weight, response_tokens, sequence_logprobs

    batch, old, adv = make_batch()
    mb = batch.select(rows)
    width = mb.input_ids.shape[1]
    old, adv = old[rows, :width], adv[rows, :width]
    weights = global_token_weights(mb.response_mask, "token-mean", None, ctx)
    if fused:
        tokens = response_tokens(policy, mb.input_ids, mb.attention_mask, mb.response_mask)
        loss, _ = fused_linear_policy_loss(tokens.hidden, lm_head_weight(policy), tokens.targets, tokens.gather(old),
                                           tokens.gather(adv), tokens.gather(weights))
    else:
        logp = sequence_logprobs(policy, mb.input_ids, mb.attention_mask, mb.response_mask)
        loss, _ = policy_loss(logp, old, adv, mb.response_mask, agg="seq-mean-token-sum")
        loss = loss * len(rows) / ROWS  # seq-mean over the local rows -> share of the global mean
    values = critic(mb.input_ids, mb.attention_mask)
    loss = loss + ((values - 0.5) ** 2 * weights).sum()
    (loss * grad_scale(ctx)).backward()
    return float(loss.detach())


def full_grads(model) -> dict[str, torch.Tensor]:
    return {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
            for n, p in model.named_parameters() if p.grad is not None}


def one_step(policy_dir: str, ctx, fused: bool, offload: bool = False) -> dict:
    from fastzero.model import CriticModel, load_causal_lm
    from fastzero.sharding import full_state_dict, shard_model

    policy, _ = load_causal_lm(policy_dir)
    critic = CriticModel.from_pretrained(policy_dir)
    with torch.no_grad():  # the same head on every rank (its init draws from the RNG)
        critic.value_head.weight.copy_(torch.linspace(-0.5, 0.5, critic.value_head.weight.numel()).view(1, -1))
    if ctx.enabled:
        shard_model(policy, ctx, offload=offload)
        shard_model(critic, ctx, offload=offload, fp32_modules=(critic.value_head,))
    share = prompt_slice(ROWS, ctx)
    loss = loss_and_backward(policy, critic, torch.arange(share.start, share.stop), ctx, fused)
    out = {"policy_grads": full_grads(policy), "critic_grads": full_grads(critic)}
    norm = torch.nn.utils.clip_grad_norm_(list(policy.parameters()), max_norm=MAX_NORM)
    out["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, eps=ADAM_EPS, weight_decay=0.1)
    optimizer.step()
    out["weights"] = full_state_dict(policy, ctx)
    out["loss"] = loss
    return out


def rank_step(policy_dir: str, fused: bool, offload: bool = False) -> dict | None:
    ctx = init_distributed("cpu")
    out = one_step(policy_dir, ctx, fused, offload)
    return out if ctx.is_main else {"loss": out["loss"]}


def adamw_first_step_bound(weight: torch.Tensor, grad: torch.Tensor, clip: float, terms: int) -> torch.Tensor:
    """Per-element bound on |w_sharded - w_single| after clipping and AdamW's first step.

    The first step moves w by lr * g / (|g| + eps_adam) (bias corrections cancel) after the decay,
    identical on both sides. That map has slope eps_adam / (|g| + eps_adam)^2 <= 1 / eps_adam, so a
    gradient difference dg (the sum-reordering bound, plus the clip factor's own relative error)
    moves w by at most lr * dg * eps_adam / (max(|g| - dg, 0) + eps_adam)^2; add fp32 rounding of w.
    """
    rounding = 4 * EPS32 * (weight.abs() + LR)
    g = clip * grad.abs()
    dg = clip * (terms * EPS32 * float(grad.abs().max()) + terms * EPS32 * grad.abs())
    slope = ADAM_EPS / ((g - dg).clamp(min=0) + ADAM_EPS) ** 2
    return LR * dg * slope + rounding


def assert_close_sum(actual: torch.Tensor, expected: torch.Tensor, terms: int, what: str) -> None:
    bound = terms * EPS32 * float(expected.abs().max()) + 1e-30
    error = float((actual - expected).abs().max())
    assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("tie,world_size,fused,offload", [
    (True, 2, True, False),  # the main suite's case; the others run with the slow tests
    pytest.param(False, 2, True, False, marks=pytest.mark.slow),
    pytest.param(True, 3, True, False, marks=pytest.mark.slow),
    pytest.param(False, 3, True, False, marks=pytest.mark.slow),
    pytest.param(True, 2, False, False, marks=pytest.mark.slow),
    pytest.param(True, 2, True, True, marks=pytest.mark.slow),  # FSDP2 CPUOffloadPolicy
], ids=["tied-2-fused", "untied-2-fused", "tied-3-fused", "untied-3-fused", "tied-2-twopass", "tied-2-offload"])
def test_sharded_step_equals_one_process(tmp_path_factory, tie, world_size, fused, offload):
    policy_dir = tiny_dir(tmp_path_factory, tie)
    expected = one_step(policy_dir, SINGLE, fused)
    results = run_ranks(world_size, rank_step, policy_dir, fused, offload)
    got = results[0]
    tokens = int(make_batch()[0].response_mask.sum())
    assert set(got["policy_grads"]) == set(expected["policy_grads"])
    for name, grad in expected["policy_grads"].items():
        assert_close_sum(got["policy_grads"][name], grad, tokens, f"policy grad {name}")
    for name, grad in expected["critic_grads"].items():
        assert_close_sum(got["critic_grads"][name], grad, tokens, f"critic grad {name}")
    assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=tokens * EPS32)
    clip = min(1.0, MAX_NORM / (expected["grad_norm"] + 1e-6))
    assert set(got["weights"]) == set(expected["weights"])
    for name, grad in expected["policy_grads"].items():  # every parameter (a tied head only once)
        weight = expected["weights"][name]
        bound = adamw_first_step_bound(weight, grad, clip, tokens)
        error = (got["weights"][name] - weight).abs()
        assert bool((error <= bound).all()), f"updated weight {name}: max error/bound {float((error / bound).max()):.3g}"
    # The ranks' losses are their shares of the global loss: they add up to the one-process loss.
    assert sum(r["loss"] for r in results) == pytest.approx(expected["loss"], rel=tokens * EPS32)


def rank_generate(policy_dir: str, prompts: list[list[int]]) -> list:
    from fastzero.model import load_causal_lm
    from fastzero.rollout.base import SamplingParams
    from fastzero.rollout.hf import HFEngine
    from fastzero.sharding import ShardedEngine, shard_model

    ctx = init_distributed("cpu")
    policy, _ = load_causal_lm(policy_dir)
    shard_model(policy, ctx)
    engine = ShardedEngine(HFEngine(policy, eos_token_ids=[1], seed=0), policy, shares_model=True)
    mine = prompts[prompt_slice(len(prompts), ctx)]
    # Different prompt lengths and max_new_tokens per rank: the ranks run different numbers of
    # forwards, which would deadlock if a collective ran inside the decoding loop.
    params = SamplingParams(max_new_tokens=6 + 3 * ctx.rank, temperature=0.0)
    completions = [[c.response_ids for c in group] for group in engine.generate(mine, params)]
    assert all(hasattr(p, "full_tensor") for p in policy.parameters()), "parameters left unsharded"
    return completions


@pytest.mark.slow
def test_generation_inside_gathered_matches_unsharded(tmp_path_factory):
    from fastzero.model import load_causal_lm
    from fastzero.rollout.base import SamplingParams
    from fastzero.rollout.hf import HFEngine

    directory = tiny_dir(tmp_path_factory, tie=True)
    prompts = [[5, 6, 7], [9, 3], [11, 12, 13, 14]]
    results = run_ranks(2, rank_generate, directory, prompts)
    policy, _ = load_causal_lm(directory)
    engine = HFEngine(policy, eos_token_ids=[1], seed=0)
    for rank, got in enumerate(results):
        share = prompt_slice(len(prompts), DistContext(rank=rank, world_size=2))
        params = SamplingParams(max_new_tokens=6 + 3 * rank, temperature=0.0)
        expected = [[c.response_ids for c in group] for group in engine.generate(prompts[share], params)]
        assert got == expected


def rank_sglang(policy_dir: str, prompts: list[list[int]]) -> dict:
    from fastzero.model import load_causal_lm
    from fastzero.rollout.base import SamplingParams
    from fastzero.rollout.sglang import SGLangEngine
    from fastzero.sharding import ShardedEngine, full_state_dict, shard_model
    from tests.rollout.test_sglang import StandInEngine

    ctx = init_distributed("cpu")
    policy, _ = load_causal_lm(policy_dir)
    shard_model(policy, ctx)
    engine = ShardedEngine(SGLangEngine(policy_dir, dtype="float32", engine_factory=StandInEngine), policy,
                           shares_model=False)
    mine = prompts[prompt_slice(len(prompts), ctx)]
    engine.generate(mine, SamplingParams(max_new_tokens=3, n=2))
    with engine.memory_released(weights=policy):  # release, resume, then reload the gathered weights
        pass
    calls = engine.engine._engine.calls
    synced = {name: tensor for name, args in calls if name == "update_weights_from_tensor"
              for name, tensor in args["named_tensors"]}
    full = full_state_dict(policy, ctx)  # collective: every rank joins, rank 0 receives
    return {"prompts": [c[1]["input_ids"] for c in calls if c[0] == "generate"], "synced": synced,
            "full": full if ctx.is_main else None}


@pytest.mark.slow
def test_sglang_engine_per_rank_gets_its_slice_and_full_weights(tmp_path_factory):
    directory = tiny_dir(tmp_path_factory, tie=True)
    prompts = [[5, 6, 7], [9, 3], [11, 12, 13, 14], [2, 2]]
    results = run_ranks(2, rank_sglang, directory, prompts)
    full = results[0]["full"]
    for rank, got in enumerate(results):
        share = prompts[prompt_slice(len(prompts), DistContext(rank=rank, world_size=2))]
        sent = [tuple(ids) for call in got["prompts"] for ids in call]  # n samples: repeated or not
        assert list(dict.fromkeys(sent)) == [tuple(p) for p in share]
        assert set(got["synced"]) == {n for n in full if n != "lm_head.weight"}  # the tied head once
        for name, tensor in got["synced"].items():
            assert torch.equal(tensor, full[name]), name  # whole tensors, not shards
