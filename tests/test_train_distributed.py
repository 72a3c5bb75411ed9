"""The trainer on 1, 2 and 3 gloo ranks (FSDP2): the same config, seed and global batch give the
same metrics and updated weights; a resumed 2-rank run equals an uninterrupted one; a checkpoint
saved on 2 ranks resumes on 1 and one saved on 1 resumes on 2.

Sampling: each rank's engine draws from its own stream (seed + rank), so a real run on N ranks
samples different tokens than on one. To compare the updates, the tests make sampling
rank-invariant: every prompt is decoded alone with a seed derived from its token ids
(`PerPromptSeeds`, the real HF engine and sampler underneath), so every world size trains on the
same responses. Everything downstream - rewards, log-probs, advantages, mini-batches, the loss and
its normalisers, clipping, AdamW - is the trainer's own code path.

Tolerance: the ranks' partial gradients are the same fp32 terms summed in another grouping, so a
gradient differs by <= n * eps * sum|terms| (n = tokens in a mini-batch, a few hundred here:
relative ~1e-5). Losses and norms are compared at 1e-4 relative. AdamW maps a gradient difference
dg to an update difference of at most lr * dg / eps_adam per step (its slope near g = 0), which
bounds nothing useful; each update is at most ~lr per element, so after k optimizer steps two
trajectories that agree on the metrics may still differ by up to 2 * k * lr in an element with a
near-zero gradient. We assert that bound and, stronger, that 99.9% of elements agree to 1e-6.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib

import pytest
import torch

from fastzero.rollout.base import SamplingParams
from tests._distributed import run_ranks

STEPS, LR = 2, 1e-4


class PerPromptSeeds:
    """An engine whose samples for a prompt depend on the prompt only, not on batch or rank."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, prompts, params: SamplingParams):
        out = []
        for prompt in prompts:
            seed = zlib.crc32(bytes(str(list(prompt)), "ascii"))
            out += self.engine.generate([prompt], dataclasses.replace(params, seed=seed))
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def options(estimator: str, output_dir: str, **extra) -> dict:
    base = dict(prompts_per_step=6, samples_per_prompt=4, mini_batch_size=12, micro_batch_tokens=96,
                max_new_tokens=10, num_test=9, num_train=200, eval_every=0, save_every=0, max_steps=STEPS,
                time_limit_minutes=0.0, threads=1, progress=False, log_samples=0, lr=LR, output_dir=output_dir,
                fused_loss=True, seed=3)
    if estimator == "ppo":
        base.update(algorithm="ppo", samples_per_prompt=1, prompts_per_step=12, mini_batch_size=6, kl_coef=0.01,
                    kl_in_reward=True)
    return {**base, **extra}


def train(opts: dict, *, resume: bool = False, stop_after: int | None = None) -> dict:
    """One run (on whatever ranks this process is part of); returns rank 0's rows and weights."""
    from fastzero import config as C
    from fastzero.presets import from_preset
    from fastzero.loop import train_loop
    from fastzero.report import finish_run
    from fastzero.resume import save_run
    from fastzero.run import Run
    from fastzero.sharding import full_state_dict

    config = from_preset("tiny-direct")
    for key, value in opts.items():
        config.set(key, value)
    if stop_after is not None:
        config.run.max_steps = stop_after
    if resume:
        config.run.resume = opts["output_dir"]
    C.validate(config)
    run = Run(config, output_dir=opts["output_dir"], resume=resume, log=lambda *a, **k: None)
    inner = getattr(run.engine, "engine", None)
    if inner is not None:
        run.engine.engine = PerPromptSeeds(inner)
    else:
        run.engine = PerPromptSeeds(run.engine)
    train_loop(run)
    save_run(run)
    if stop_after is None:
        finish_run(run)
    weights = full_state_dict(run.models.policy, run.dist)
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in run.metrics.rows]
    from fastzero.distributed import shutdown

    shutdown(run.dist)
    return {"rows": rows, "weights": weights, "world_size": run.dist.world_size}


def rank_train(opts: dict, resume: bool = False, stop_after: int | None = None) -> dict:
    return train(opts, resume=resume, stop_after=stop_after)


def rank_train_loading_everywhere(opts: dict) -> dict:
    """A run whose ranks each load the whole checkpoint before sharding (the path meta-device
    loading replaced), to compare with today's."""
    from fastzero import sharded_loading
    from tests.test_sharded_loading import load_everywhere_then_shard

    sharded_loading.load_models_sharded = load_everywhere_then_shard
    return train(opts)


def without_eval(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("eval/")}


def assert_same_run(got: dict, expected: dict) -> None:
    assert len(got["rows"]) == len(expected["rows"])
    for a, b in zip(got["rows"], expected["rows"]):
        assert set(a) == set(b)
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (b["step"], key)
    optimizer_steps = STEPS * 2  # mini-batches per step (an upper bound: 1 PPO epoch)
    bound = 2 * optimizer_steps * LR
    close, total = 0, 0
    for name, weight in expected["weights"].items():
        error = (got["weights"][name] - weight).abs()
        assert float(error.max()) <= bound, (name, float(error.max()))
        close += int((error <= 1e-6).sum())
        total += error.numel()
    assert close >= 0.999 * total, f"only {close}/{total} elements within 1e-6"


@pytest.fixture(scope="module")
def one_process_grpo(tmp_path_factory):
    return train(options("grpo", str(tmp_path_factory.mktemp("single") / "run")))


def test_two_ranks_train_like_one_process(one_process_grpo, tmp_path):
    got = run_ranks(2, rank_train, options("grpo", str(tmp_path / "run")))[0]
    assert got["world_size"] == 2
    assert_same_run(got, one_process_grpo)
    recorded = json.load(open(tmp_path / "run" / "config.json"))
    assert recorded["world_size"] == 2
    assert json.load(open(tmp_path / "run" / "summary.json"))["world_size"] == 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final", local_files_only=True)


@pytest.mark.slow
def test_three_ranks_train_like_one_process(one_process_grpo, tmp_path):
    got = run_ranks(3, rank_train, options("grpo", str(tmp_path / "run")))[0]
    assert_same_run(got, one_process_grpo)


@pytest.mark.slow
def test_dynamic_sampling_on_two_ranks_trains_like_one_process(tmp_path):
    """DAPO: rounds until the global batch holds --prompts-per-step informative groups, overlong
    shaping and masking; the ranks agree on the rounds and share the kept groups out evenly."""
    dapo = dict(dynamic_sampling=True, max_sampling_rounds=3, overlong_buffer=4, mask_truncated=True,
                prompts_per_step=4, mini_batch_size=8)
    expected = train(options("grpo", str(tmp_path / "one"), **dapo))
    got = run_ranks(2, rank_train, options("grpo", str(tmp_path / "two"), **dapo))[0]
    assert any(r.get("sampling/rounds", 0) > 1 for r in expected["rows"])  # extra rounds did run
    assert_same_run(got, expected)


@pytest.mark.slow
def test_lora_on_two_ranks_trains_like_one_process(tmp_path):
    """PEFT adapters injected before fully_shard, AdamW over the adapters only, the reference as the
    base with adapters off; final/ holds the adapter (and the merged model) as one process writes."""
    pytest.importorskip("peft")
    lora = dict(lora_rank=4, lora_alpha=8.0, kl_coef=0.01, lora_save_merged=True)
    expected = train(options("grpo", str(tmp_path / "one"), **lora))
    got = run_ranks(2, rank_train, options("grpo", str(tmp_path / "two"), **lora))[0]
    assert any(".lora_B." in name for name in got["weights"])
    assert_same_run(got, expected)
    from safetensors.torch import load_file

    for name in ("adapter/adapter_model.safetensors", "model.safetensors"):
        one, two = load_file(str(tmp_path / "one" / "final" / name)), load_file(str(tmp_path / "two" / "final" / name))
        assert set(one) == set(two), name
        for key, tensor in one.items():
            assert float((two[key] - tensor).abs().max()) <= 2 * STEPS * 2 * LR, (name, key)


@pytest.mark.slow
def test_ppo_with_a_critic_on_two_ranks(tmp_path):
    expected = train(options("ppo", str(tmp_path / "one")))
    got = run_ranks(2, rank_train, options("ppo", str(tmp_path / "two")))[0]
    assert any("critic/loss" in r for r in got["rows"])
    assert_same_run(got, expected)


@pytest.mark.slow
def test_meta_device_loading_trains_exactly_like_loading_everywhere(tmp_path):
    """PPO with a KL term: the policy, its reference and the critic all come through the loader."""
    expected = run_ranks(2, rank_train_loading_everywhere, options("ppo", str(tmp_path / "old")))[0]
    got = run_ranks(2, rank_train, options("ppo", str(tmp_path / "new")))[0]
    assert got["rows"] == expected["rows"]
    for name, weight in expected["weights"].items():
        assert torch.equal(got["weights"][name], weight), name


@pytest.mark.slow
def test_resume_on_two_ranks_equals_uninterrupted(tmp_path):
    uninterrupted = run_ranks(2, rank_train, options("grpo", str(tmp_path / "a")))[0]
    run_ranks(2, rank_train, options("grpo", str(tmp_path / "b")), False, 1)
    resumed = run_ranks(2, rank_train, options("grpo", str(tmp_path / "b")), True)[0]
    # Same world size: bit for bit. (The stopped run evaluated after its last step, step 1.)
    assert [without_eval(r) for r in resumed["rows"]] == [without_eval(r) for r in uninterrupted["rows"]]
    assert resumed["rows"][-1] == uninterrupted["rows"][-1]
    for name, weight in uninterrupted["weights"].items():
        assert torch.equal(resumed["weights"][name], weight), name


@pytest.mark.slow
def test_save_on_two_resume_on_one_and_back(tmp_path):
    run_ranks(2, rank_train, options("grpo", str(tmp_path / "a")), False, 1)
    on_one = train(options("grpo", str(tmp_path / "a")), resume=True)
    assert on_one["rows"][-1]["step"] == STEPS
    train(options("grpo", str(tmp_path / "b")), stop_after=1)
    on_two = run_ranks(2, rank_train, options("grpo", str(tmp_path / "b")), True)[0]
    assert on_two["rows"][-1]["step"] == STEPS
    assert os.path.isdir(tmp_path / "b" / "final")
