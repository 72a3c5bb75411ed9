"""The optimizers of a run and everything around their step: AdamW for the policy and (PPO) the
critic, the linear warm-up, gradient clipping, the non-finite guard and zero-grad.

This is the one owner of parameter updates, so it is where fp32 master weights for bf16 training
belong (keep fp32 copies and optimizer state here, step them, copy back into the bf16 modules) and
where a sharded (FSDP) model's optimizer is built. The trainer only calls zero_grad() and step().
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .config import OptimizerConfig


class NonFiniteError(RuntimeError):
    """A loss or gradient was NaN/inf: the step is skipped (see the loop's --max-bad-steps)."""


class Optimizers:
    def __init__(self, cfg: OptimizerConfig, policy: torch.nn.Module, critic: torch.nn.Module | None = None):
        self.cfg, self.policy_module, self.critic_module = cfg, policy, critic
        trainable = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapters only
        self.policy = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.critic = (torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
                       if critic is not None else None)

    def zero_grad(self) -> None:
        self.policy.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic.zero_grad(set_to_none=True)

    def set_learning_rates(self, steps_done: int) -> None:
        """Linear warm-up over --warmup-steps optimizer steps, then constant."""
        warmup = self.cfg.warmup_steps
        scale = min(1.0, (steps_done + 1) / warmup) if warmup else 1.0
        for group in self.policy.param_groups:
            group["lr"] = self.cfg.lr * scale
        if self.critic is not None:
            for group in self.critic.param_groups:
                group["lr"] = self.cfg.critic_lr * scale

    def step(self, steps_done: int) -> float:
        """Clip the global gradient norm, refuse a non-finite one, step; returns the policy's norm."""
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        params = [p for p in self.policy_module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded: a DTensor
        if not math.isfinite(norm):
            raise NonFiniteError("gradient")
        self.set_learning_rates(steps_done)
        self.policy.step()
        if self.critic is not None:
            critic_params = [p for p in self.critic_module.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(critic_params, max_norm)
            self.critic.step()
        return norm

    def state_dicts(self) -> dict[str, Any]:
        out = {"policy": self.policy.state_dict()}
        if self.critic is not None:
            out["critic"] = self.critic.state_dict()
        return out

    def load_state_dicts(self, saved: dict[str, Any]) -> None:
        self.policy.load_state_dict(saved["policy"])
        if self.critic is not None:
            self.critic.load_state_dict(saved["critic"])
