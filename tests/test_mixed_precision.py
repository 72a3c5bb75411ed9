"""bf16 training must train (fastzero.optim keeps fp32 master weights): with --dtype bfloat16 a few AdamW steps at the Qwen presets' lr 1e-6
apply the update fp32 training applies, within the error bf16 compute itself introduces.

Why it can fail: a weight of ~0.02 has a bf16 spacing of ~1e-4 (and an RMSNorm weight of 1.0 one of
~8e-3), so a 1e-6 step taken on bf16 weights rounds away. Keeping fp32 master weights (and Adam's
moments) and computing in bf16 keeps every step.

The tolerance is derived, not tuned: Adam's early steps are ~lr * sign(g) per element, so bf16
compute changes an element's step only where it flips the gradient's sign, which it can do only
where |g_fp32| <= |g_bf16 - g_fp32| (measured here, at the first step). With a fraction f of such
elements each step's error is at most 2 * lr per flipped element: a relative error <= 2 * sqrt(f).
"""
from __future__ import annotations

import pytest
import torch

from fastzero.batch import collate
from fastzero.kernels.aggregation import token_weights
from fastzero.run import Run
from fastzero.train import config_from_args
from fastzero.trainer import Trainer

SMALL = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "8", "--prompts-per-step", "4", "--samples-per-prompt", "4",
         "--mini-batch-size", "8", "--eval-every", "0", "--progress", "false", "--threads", "1",
         "--lr", "1e-6", "--grad-clip", "1.0"]
STEPS = 3


def _optimized_weights(run: Run) -> dict[str, torch.Tensor]:
    """The weights the optimizer steps, as fp32 (its masters for a bf16 model)."""
    return {name: w.clone() for name, w in run.optimizers.stepped_weights().items()}


def _train_steps(dtype: str, start: dict[str, torch.Tensor] | None, tmp_path):
    cfg = config_from_args(SMALL + ["--dtype", dtype, "--output-dir", str(tmp_path / dtype)])
    run = Run(cfg, output_dir=str(tmp_path / dtype), log=lambda *a: None)
    with torch.no_grad():  # both runs start from the same bf16-representable weights
        for name, p in run.policy.named_parameters():
            p.copy_(start[name] if start is not None else p.to(torch.bfloat16).float())
    trainer = Trainer.from_run(run)
    generator = torch.Generator().manual_seed(0)
    prompts = [run.data.prompt_ids(p) for p in run.data.train[:8]]
    responses = [torch.randint(3, 60, (int(n),), generator=generator).tolist() for n in (3, 9, 5, 12, 1, 7, 10, 4)]
    batch = collate(prompts, responses, pad_id=run.pad_id)
    mask = batch.response_mask
    advantages = torch.randn(len(responses), 1, generator=generator) * mask
    old = torch.zeros_like(mask)  # ratio terms use the current log-probs: filled in below
    weights = token_weights(mask, cfg.algorithm.loss_agg, cfg.rollout.max_new_tokens)
    before = _optimized_weights(run)
    first_grads = None
    for step in range(STEPS):
        run.optimizers.zero_grad()
        if step == 0:
            from fastzero.model import sequence_logprobs
            with torch.no_grad():
                old = sequence_logprobs(run.policy, batch.input_ids, batch.attention_mask, mask).float()
        loss, _ = trainer.policy_loss(batch, old, advantages, None, weights)
        loss.backward()
        if step == 0:
            first_grads = torch.cat([p.grad.float().flatten() for p in run.policy.parameters()])
        run.optimizers.step(step)
    after = _optimized_weights(run)
    update = {name: after[name] - before[name] for name in before}
    return before, update, first_grads


def test_bf16_steps_apply_the_fp32_update(tmp_path):
    start32, update32, grads32 = _train_steps("float32", None, tmp_path)
    _, update16, grads16 = _train_steps("bfloat16", start32, tmp_path)
    flat32 = torch.cat([u.flatten() for u in update32.values()])
    flat16 = torch.cat([u.flatten() for u in update16.values()])
    flip_prone = float((grads32.abs() <= (grads16 - grads32).abs()).float().mean())
    bound = 2 * flip_prone ** 0.5
    relative = float((flat16 - flat32).norm() / flat32.norm())
    assert relative <= bound, f"bf16 applied {float(flat16.norm() / flat32.norm()):.1%} of the fp32 update's norm; " \
                              f"relative error {relative:.3f} > bound {bound:.3f}"
    frozen = [name for name, u in update16.items() if not bool((u != 0).any())]
    assert not frozen, f"parameters that never moved under bf16: {frozen}"


def test_fp32_models_have_no_masters(tmp_path):
    """On fp32 (the CPU default) AdamW steps the parameters themselves: the same path as before."""
    cfg = config_from_args(SMALL + ["--output-dir", str(tmp_path)])
    run = Run(cfg, output_dir=str(tmp_path), log=lambda *a: None)
    stepped = run.optimizers.policy.param_groups[0]["params"]
    assert [id(p) for p in stepped] == [id(p) for p in run.policy.parameters()]


def test_bf16_masters_survive_a_checkpoint(tmp_path):
    """The fp32 masters (not their bf16 rounding) come back on resume."""
    cfg = config_from_args(SMALL + ["--dtype", "bfloat16", "--output-dir", str(tmp_path / "a")])
    run = Run(cfg, output_dir=str(tmp_path / "a"), log=lambda *a: None)
    masters = run.optimizers._policy.masters
    with torch.no_grad():
        for m in masters:
            m.add_(1e-6)  # below bf16's spacing: the module's weights cannot show it
    saved = run.optimizers.state_dicts()
    cfg_b = config_from_args(SMALL + ["--dtype", "bfloat16", "--output-dir", str(tmp_path / "b")])
    other = Run(cfg_b, output_dir=str(tmp_path / "b"), log=lambda *a: None)
    other.optimizers.load_state_dicts(saved)
    for a, b in zip(masters, other.optimizers._policy.masters):
        assert torch.equal(a, b)
