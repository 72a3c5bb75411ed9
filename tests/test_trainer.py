"""fastzero.trainer at the level of one mini-batch: however the rows are split into micro-batches
(the --micro-batch-tokens budget), the accumulated gradient is the mini-batch's, for every
--loss-agg, both loss paths, with skipped rows, and with the critic's value loss.

The model is the embedded one in fp32 (the log-prob kernels take fp32/bf16/fp16 only; the float64
version of this property is tests/kernels/test_micro_batches.py at the kernel level). Different
splits change only rounding: the order in which fp32 partial gradients are added and the padding
width each row is computed at. The bound is fp32's reduction bound over the longest chain of sums
a gradient entry goes through (every token of the mini-batch, times the widest dot product of the
model), norm-wise against the gradient's scale.
"""
from __future__ import annotations

import pytest
import torch

from fastzero.kernels.aggregation import AGGREGATIONS
from fastzero.run import Run
from fastzero.train import config_from_args
from fastzero.trainer import Trainer
from tests._helpers import assert_grad_close, sum_rtol

SMALL = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "4", "--prompts-per-step", "4", "--samples-per-prompt", "2",
         "--progress", "false", "--threads", "1", "--kl-coef", "0.01", "--entropy-coef", "0.01"]
LENGTHS = (1, 5, 9, 3, 7, 2, 6)
BUDGETS = (10**6, 1, 40, 25)  # one micro-batch, one row each, and two uneven packings


def _run(tmp_path, extra) -> Run:
    return Run(config_from_args(SMALL + extra + ["--output-dir", str(tmp_path)]), output_dir=str(tmp_path),
               log=lambda *a: None)


def _inputs(run: Run, seed: int):
    from fastzero.batch import collate
    from fastzero.model import sequence_logprobs

    gen = torch.Generator().manual_seed(seed)
    prompts = [run.data.prompt_ids(p) for p in run.data.train[:len(LENGTHS)]]
    responses = [torch.randint(3, 40, (n,), generator=gen).tolist() for n in LENGTHS]
    batch = collate(prompts, responses, pad_id=run.pad_id)
    mask = batch.response_mask
    with torch.no_grad():
        current = sequence_logprobs(run.policy, batch.input_ids, batch.attention_mask, mask)
    noisy = [(current + torch.randn(mask.shape, generator=gen) * 0.3) * mask for _ in range(2)]
    adv = torch.randn(mask.shape, generator=gen) * mask
    values = torch.randn(mask.shape, generator=gen) * mask
    returns = torch.randn(mask.shape, generator=gen) * mask
    return batch, noisy[0], adv, noisy[1], values, returns


def _gradients(run: Run, trainer: Trainer, inputs, budget: int, trained: torch.Tensor):
    batch, old, adv, ref, values, returns = inputs
    run.config.algorithm.micro_batch_tokens = budget
    run.optimizers.zero_grad()
    mini = torch.arange(len(batch))
    stats = trainer.accumulate_gradients(batch, mini, trained, old, adv, ref, values, returns)
    modules = [run.models.policy] + ([run.models.critic] if run.models.critic is not None else [])
    grads = {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()
             if p.grad is not None}
    return grads, stats


def _bound(run: Run, batch) -> float:
    """fp32 reduction bound: the mini-batch's tokens plus the dot products one token's gradient goes
    through (every layer's MLP and attention width, the vocabulary of the LM head)."""
    c = run.policy.config
    return sum_rtol(torch.float32, int(batch.response_mask.sum()) + c.num_hidden_layers * (c.intermediate_size + c.hidden_size)
                    + c.vocab_size)


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    run = _run(tmp_path_factory.mktemp("grpo"), [])
    return run, Trainer.from_run(run), _inputs(run, 0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_any_micro_batch_split_gives_the_mini_batch_gradient(grpo_run, agg, fused):
    run, trainer, inputs = grpo_run
    run.config.algorithm.loss_agg, run.config.algorithm.fused_loss = agg, fused
    trained = torch.tensor([0, 1, 3, 4, 6])  # rows 2 and 5 skipped: they still count in the normalizers
    reference, ref_stats = _gradients(run, trainer, inputs, BUDGETS[0], trained)
    rel = _bound(run, inputs[0])
    for budget in BUDGETS[1:]:
        grads, stats = _gradients(run, trainer, inputs, budget, trained)
        assert grads.keys() == reference.keys()
        for name in reference:
            assert_grad_close(grads[name], reference[name], rel)
        assert stats.keys() == ref_stats.keys()
        for key in stats:
            assert stats[key] == pytest.approx(ref_stats[key], rel=rel, abs=rel)


def test_the_critic_loss_splits_the_same_way(tmp_path):
    run = _run(tmp_path, ["--algorithm", "ppo", "--samples-per-prompt", "1"])
    trainer, inputs = Trainer.from_run(run), _inputs(run, 1)
    everything = torch.arange(len(LENGTHS))
    reference, ref_stats = _gradients(run, trainer, inputs, BUDGETS[0], everything)
    assert any(name.startswith("1.") for name in reference)  # the critic got gradients
    rel = _bound(run, inputs[0])
    for budget in BUDGETS[1:]:
        grads, stats = _gradients(run, trainer, inputs, budget, everything)
        for name in reference:
            assert_grad_close(grads[name], reference[name], rel)
        assert stats["critic/loss"] == pytest.approx(ref_stats["critic/loss"], rel=rel)


class _Recording:
    """The real rollout engine, with a log of the memory calls around the update."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def release_memory(self):
        self.calls.append("release")
        self.engine.release_memory()

    def resume_memory(self):
        self.calls.append("resume")
        self.engine.resume_memory()

    def memory_released(self, weights=None):
        from fastzero.rollout.base import memory_released

        return memory_released(self, weights)

    def update_weights(self, source):
        self.calls.append("update_weights")
        self.engine.update_weights(source)


def test_a_non_finite_step_still_gives_the_engine_its_memory_and_weights_back(grpo_run, monkeypatch):
    import fastzero.trainer as trainer_module
    from fastzero.optim import NonFiniteError

    run, _, _ = grpo_run
    run.config.algorithm.micro_batch_tokens = 10**6
    real = trainer_module.fused_linear_policy_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(trainer_module, "fused_linear_policy_loss", poisoned)
    engine = _Recording(run.engine)
    trainer = Trainer.from_run(run)
    trainer.engine = engine
    run.config.algorithm.fused_loss = True
    with pytest.raises(NonFiniteError, match="loss"):
        trainer.step(1)
    assert engine.calls == ["release", "resume", "update_weights"]  # SGLang needs its weights back


@pytest.mark.parametrize("preset", ["tiny-think", "tiny-direct"])
def test_a_thinking_model_logs_its_signature_and_a_direct_one_does_not(tmp_path, preset):
    run = _run(tmp_path, ["--preset", preset, "--max-new-tokens", "30"])
    trainer = Trainer.from_run(run)
    row, episodes = trainer.step(1)
    result = trainer.evaluate()
    signature = {"think/has_think", "think/equations", "think/search_success"}
    if preset == "tiny-think":
        assert signature <= row.keys() and {"eval/" + k for k in signature} <= result.keys()
        assert row["think/has_think"] > 0 and result["eval/response/length"] > 0
        from fastzero.tasks.countdown.traces import trace_metrics

        expected = trace_metrics(episodes.texts, [p.numbers for p in episodes.problems],
                                 [p.target for p in episodes.problems])
        assert {k: row[k] for k in expected} == expected  # the step's own responses, measured as they are
    else:
        assert not [k for k in {**row, **result} if "think/" in k or k == "eval/response/length"]
