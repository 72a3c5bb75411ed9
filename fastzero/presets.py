"""Named presets: the recipes `--preset` selects, each a dict of option values applied over the
dataclass defaults (fastzero/config.py, the one config definition). `tiny-direct` is the defaults
themselves; `tiny-cpu` (the default run) and `tiny-think` train the embedded thinking model; the
`qwen2.5-*` presets carry TinyZero's PPO recipe and its GRPO, DAPO and GSPO variants.
"""
from __future__ import annotations

from typing import Any

from .config import THINKING_MODEL, Config

_TINYZERO_PPO = dict(  # TinyZero's published recipe (PPO with a critic)
    algorithm="ppo", gamma=1.0, lam=1.0, lr=1e-6, critic_lr=1e-5, prompts_per_step=256,
    samples_per_prompt=1, mini_batch_size=64, max_new_tokens=1024, max_prompt_tokens=256,
    kl_coef=0.001, kl_in_reward=True, entropy_coef=0.001, temperature=1.0, ppo_epochs=1,
    template="base", min_numbers=3, max_numbers=4, min_value=1, max_value=99, min_target=1,
    max_target=99, num_train=327680, num_test=1024, model_path="", max_steps=300,
    eval_every=50, save_every=50, micro_batch_tokens=32768, gen_batch_size=1024,
    warmup_steps=0, grad_clip=1.0, loss_agg="token-mean", time_limit_minutes=0.0, data_seed=1234,
)
_GRPO_VARIANT = dict(  # the same task with GRPO: groups instead of a critic, KL in the loss
    algorithm="grpo", samples_per_prompt=8, prompts_per_step=64, mini_batch_size=128,
    kl_in_reward=False, kl_coef=0.001, entropy_coef=0.0,
)

# DAPO (Yu et al. 2025, arXiv:2503.14476, section 4 and veRL's recipe/dapo): clip-higher 0.2/0.28,
# no KL term, token-level loss, 16 samples per prompt, 16 gradient updates per rollout step, lr 1e-6
# with 10 warm-up steps, dynamic sampling (veRL's max_num_gen_batches = 10 rounds), the soft
# overlong penalty over the last 20% of the length cap (4096 of 20480) with factor 1.0. The prompt
# count is the -grpo variant's (the paper's 512 prompts are for a 32B model on 17k-token answers).
_DAPO_VARIANT = dict(
    algorithm="grpo", samples_per_prompt=16, prompts_per_step=64, mini_batch_size=64, clip_low=0.2,
    clip_high=0.28, kl_coef=0.0, kl_in_reward=False, entropy_coef=0.0, loss_agg="token-mean", lr=1e-6,
    warmup_steps=10, dynamic_sampling=True, max_sampling_rounds=10, overlong_buffer=205, overlong_penalty=1.0,
)
# GSPO (Zheng et al. 2025, arXiv:2507.18071, section 5.1): sequence-level ratio clipped at
# 3e-4 / 4e-4, no KL term, each rollout batch split into 4 mini-batches; sequence-mean loss.
_GSPO_VARIANT = dict(
    algorithm="grpo", loss_mode="gspo", samples_per_prompt=8, prompts_per_step=64, mini_batch_size=128,
    clip_low=3e-4, clip_high=4e-4, kl_coef=0.0, kl_in_reward=False, entropy_coef=0.0,
    loss_agg="seq-mean-token-mean",
)
_TINY_THINK = dict(  # the embedded thinking model: <think> candidates, then <answer> (fastzero/tiny/thinking.py)
    # Each choice measured on the v4d asset (bench/RESULTS.md, traces v4d):
    # - 72 tokens: three candidate lines and the answer (traces v4).
    # - KL 0.05 keeps the think block: without it RL wrecks the arithmetic; at 0.02 the model
    #   collapsed to one line.
    # - 32 prompts a step, for more steps per minute.
    # - lr 3e-4 learns "stop at the check's 0" by step 60-80 (2e-4 took ~110; 4e-4 was no better).
    # - Two optimizer steps of 128 per rollout batch flip it by step 60 in every run; the second
    #   step's old log-probs come from the sampler (the hf engine in float32 samples from exactly
    #   the trainer's float32 policy: mismatch_kl ~1e-9; ~6e-6 against the bf16-autocast body,
    #   far inside the 0.2 clip), which saves a forward of the policy.
    # - A cosine decay to 0.1 x lr over the run keeps the end from swinging (constant lr:
    #   57.2% at step 100, 50.6% at 112; cosine: 58.4%, 58.8%).
    # - 200 steps, not 120: the flip comes anywhere from step 30 to 140 with the seed, and a late
    #   one was cut off by the shorter cosine (4 seeds, --threads 1: 120 steps ended at 57.0-63.6%,
    #   mean 60.5; 200 steps at 61.4-64.6%, mean 63.4; bench/RESULTS.md, "How long the default runs").
    # - Micro-batches of <= 4096 padded tokens (4-5 per mini-batch of 128, rows sorted by length):
    #   the same update (the loss weights are the mini-batch's), less padding to the longest
    #   response and a working set that stays in cache: update + reference 1.0 -> 0.83 s a step
    #   (bench/RESULTS.md, "Micro-batch budget of the thinking preset").
    # - Autocast auto: on a CPU with AMX the update's and the reference's model body run in bf16
    #   (float32 weights, attention and LM head): 1.16x a step at 2 threads, and at 4 seeds
    #   (--threads 1, 200 steps) 63.6-68.0%, mean 65.3, against float32's 61.4-64.6%, mean 63.4
    #   (bench/RESULTS.md, "bf16 autocast with float32 weights"). Off on other CPUs.
    model_path=THINKING_MODEL, max_new_tokens=72, lr=3e-4, temperature=0.7, kl_coef=0.05,
    prompts_per_step=32, mini_batch_size=128, micro_batch_tokens=4096, old_logprobs="rollout",
    lr_schedule="cosine", min_lr_ratio=0.1, autocast="auto",
    max_steps=200, eval_every=20,  # the default run: 5-7 RL minutes on a quiet 2-core CPU, 11 evaluations
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-cpu": {**_TINY_THINK},  # the default run: the embedded thinking model
    "tiny-think": {**_TINY_THINK},  # the same, by what it runs
    "tiny-direct": {},  # the dataclass defaults: the embedded direct-answer model
    "qwen2.5-0.5b": {**_TINYZERO_PPO},
    "qwen2.5-1.5b": {**_TINYZERO_PPO},
    "qwen2.5-3b": {**_TINYZERO_PPO},
}
# 7B as veRL's and TinyZero's scripts scale the 3B recipe: the same algorithm and global batch, the
# model sharded over the ranks (torchrun + FSDP2), activations recomputed, smaller micro-batches.
PRESETS["qwen2.5-7b"] = {**_TINYZERO_PPO, "gradient_checkpointing": True, "micro_batch_tokens": 16384}
for _name in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"):
    PRESETS[_name + "-grpo"] = {**PRESETS[_name], **_GRPO_VARIANT}
    PRESETS[_name + "-dapo"] = {**PRESETS[_name], **_DAPO_VARIANT}
    PRESETS[_name + "-gspo"] = {**PRESETS[_name], **_GSPO_VARIANT}


def from_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = Config()
    for key, value in PRESETS[name].items():
        config.set(key, value)
    return config
