"""The optimizers of a run and everything around their step: AdamW for the policy and (PPO) the
critic, fp32 master weights for low-precision models, the learning-rate schedule (linear warm-up,
then constant or a cosine/linear decay), gradient clipping, the non-finite guard and zero-grad.
The trainer only calls zero_grad() and step().

fp32 master weights. AdamW stepping bf16 weights directly loses every update below bf16's spacing
(~1e-4 at a weight of 0.02, ~8e-3 at an RMSNorm weight of 1.0), so at the Qwen presets' lr 1e-6
almost nothing would train. When a module's trainable parameters are bf16/fp16, the optimizer steps
fp32 copies instead (fp32 moments too): step() moves each gradient into its master as fp32 (freeing
the low-precision one), clips the fp32 norm, steps, and writes the masters back rounded to the
module's dtype, which the forward, the rollout engine and the checkpoints' HF folders use. fp32
modules (the CPU default) have no masters: AdamW steps the parameters themselves, exactly as before.
Under FSDP2 with MixedPrecisionPolicy(param_dtype=bf16) the sharded parameters the optimizer sees
are already fp32 (FSDP casts them for compute), so they get no second copy here either.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .config import Config, OptimizerConfig

LOW_PRECISION = (torch.bfloat16, torch.float16)


class NonFiniteError(RuntimeError):
    """A loss or gradient was NaN/inf: the step is skipped (see the loop's --max-bad-steps)."""


class _Stepped:
    """One module's AdamW over the tensors it steps: its parameters, or fp32 masters of them."""

    def __init__(self, module: torch.nn.Module, lr: float, weight_decay: float):
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]  # LoRA: the adapters only
        self.mixed = any(p.dtype in LOW_PRECISION for p in self.params if p.requires_grad)
        self.masters = ([p.detach().float().clone().requires_grad_(p.requires_grad) for p in self.params]
                        if self.mixed else self.params)
        self.optimizer = torch.optim.AdamW(self.masters if self.mixed else self.params, lr=lr,
                                           weight_decay=weight_decay)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.mixed:
            for p in self.params:
                p.grad = None

    def gradients_to_masters(self) -> list[torch.Tensor]:
        """The tensors to clip and step: the module's own, or the masters with fp32 gradients."""
        if self.mixed:
            for p, master in zip(self.params, self.masters):
                if p.grad is not None:
                    master.grad = p.grad.float()
                    p.grad = None  # one low-precision gradient at a time is freed as its copy is made
        return [m for m in self.masters if m.grad is not None]

    def step(self) -> None:
        self.optimizer.step()
        # Gradients are dead once stepped: freeing them here (not at the next zero_grad) gives their
        # memory to the rollout and log-prob phases (fastzero.memory_plan counts them in the update only).
        self.optimizer.zero_grad(set_to_none=True)
        if self.mixed:
            with torch.no_grad():
                for p, master in zip(self.params, self.masters):
                    p.copy_(master)  # round to nearest in the module's dtype

    def state_dict(self) -> dict[str, Any]:
        out = self.optimizer.state_dict()
        if self.mixed:  # resume needs the fp32 values; the HF folder holds them rounded
            out = {**out, "fp32_masters": [m.detach().clone() for m in self.masters]}
        return out

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        saved = dict(saved)
        masters = saved.pop("fp32_masters", None)
        if self.mixed:
            if masters is None:  # a checkpoint from an fp32 run or an older version: start from the weights
                masters = [p.detach().float() for p in self.params]
            with torch.no_grad():
                for master, value, p in zip(self.masters, masters, self.params):
                    master.copy_(value)
                    p.copy_(master)
        self.optimizer.load_state_dict(saved)


def lr_scale(cfg: OptimizerConfig, steps_done: int, total_steps: int | None) -> float:
    """The learning rate of optimizer step `steps_done` (0-based) as a share of --lr: a linear warm-up
    over --warmup-steps, then constant, or a decay from 1 at the warm-up's end to --min-lr-ratio at
    `total_steps` (the run's last optimizer step; held there beyond it)."""
    warmup = cfg.warmup_steps
    if warmup and steps_done < warmup:
        return (steps_done + 1) / warmup
    if cfg.lr_schedule == "constant" or not total_steps:
        return 1.0
    last = total_steps - 1
    progress = 1.0 if steps_done >= last else (steps_done - warmup) / max(1, last - warmup)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def planned_optimizer_steps(cfg: Config) -> int:
    """The optimizer steps of a whole run: --max-steps RL steps, each --ppo-epochs passes over its
    mini-batches (a step whose mini-batch carries no gradient takes fewer)."""
    sequences = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    per_epoch = -(-sequences // cfg.algorithm.mini_batch_size)
    return cfg.run.max_steps * cfg.algorithm.ppo_epochs * per_epoch


class Optimizers:
    def __init__(self, cfg: OptimizerConfig, policy: torch.nn.Module, critic: torch.nn.Module | None = None,
                 total_steps: int | None = None):
        """total_steps: the run's optimizer steps (the decaying schedules end there)."""
        self.cfg, self.total_steps = cfg, total_steps
        self._policy = _Stepped(policy, cfg.lr, cfg.weight_decay)
        self._critic = _Stepped(critic, cfg.critic_lr, cfg.weight_decay) if critic is not None else None
        self.policy = self._policy.optimizer
        self.critic = self._critic.optimizer if self._critic is not None else None

    def zero_grad(self) -> None:
        self._policy.zero_grad()
        if self._critic is not None:
            self._critic.zero_grad()

    def set_learning_rates(self, steps_done: int) -> None:
        """The schedule's rate for optimizer step `steps_done` (lr_scale)."""
        scale = lr_scale(self.cfg, steps_done, self.total_steps)
        for group in self.policy.param_groups:
            group["lr"] = self.cfg.lr * scale
        if self.critic is not None:
            for group in self.critic.param_groups:
                group["lr"] = self.cfg.critic_lr * scale

    def step(self, steps_done: int) -> float:
        """Clip the global gradient norm, refuse a non-finite one, step; returns the policy's norm."""
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self._policy.gradients_to_masters(), max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded: a DTensor
        if not math.isfinite(norm):
            raise NonFiniteError("gradient")
        self.set_learning_rates(steps_done)
        self._policy.step()
        if self._critic is not None:
            torch.nn.utils.clip_grad_norm_(self._critic.gradients_to_masters(), max_norm)
            self._critic.step()
        return norm

    def stepped_weights(self, which: str = "policy") -> dict[str, torch.Tensor]:
        """name -> the fp32 tensor AdamW steps (the master, or the fp32 parameter itself)."""
        stepped = self._policy if which == "policy" else self._critic
        names = [name for name, _ in stepped.module.named_parameters()]
        return {name: m.detach().float() for name, m in zip(names, stepped.masters)}

    def state_dicts(self) -> dict[str, Any]:
        out = {"policy": self._policy.state_dict()}
        if self._critic is not None:
            out["critic"] = self._critic.state_dict()
        return out

    def load_state_dicts(self, saved: dict[str, Any]) -> None:
        self._policy.load_state_dict(saved["policy"])
        if self._critic is not None:
            self._critic.load_state_dict(saved["critic"])
