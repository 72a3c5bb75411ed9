"""Everything a training run holds, built from a validated Config: models, optimizers, data, the
rollout engine, RNG, metrics and output directory; plus saving and resuming it.

Resume restores, besides weights and optimizer moments, every RNG that a step draws from (torch's
global RNG, the shuffling generator, the rollout engine's sampler) and the data position, which is
what makes a killed-and-resumed CPU run bit-identical to one that was never interrupted.
"""
from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import Config, resolve_model_path
from .data import TaskData
from .metrics import MetricsLog, ProgressBar, cost_summary, format_cost, plot_metrics
from .model import CriticModel, load_causal_lm
from .rollout import make_engine, resolve_engine_kind


class Run:
    def __init__(self, config: Config, *, output_dir: str, resume: bool = False, log=print):
        self.config, self.output_dir, self.say = config, output_dir, log
        self.wall_started = time.perf_counter()
        cfg = config
        threads = cfg.run.threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if cfg.run.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.run.device == "auto" else cfg.run.device))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
        random.seed(cfg.run.seed)
        torch.manual_seed(cfg.run.seed)

        from transformers import AutoTokenizer

        model_path = resolve_model_path(cfg.model.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        load = dict(dtype=dtype, device=self.device, attn_implementation=cfg.model.attn_implementation,
                    gradient_checkpointing=cfg.model.gradient_checkpointing)
        self._load_options = load
        self.policy, self.backends = load_causal_lm(model_path, **load)
        self.reference = None
        if cfg.algorithm.kl_coef > 0:  # a frozen copy of the starting policy; none when KL is off
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.critic = None
        if cfg.algorithm.algorithm == "ppo":
            critic_path = resolve_model_path(cfg.model.critic_path or cfg.model.model_path)
            self.critic = CriticModel.from_pretrained(critic_path, **load)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.optimizer.lr,
                                           weight_decay=cfg.optimizer.weight_decay)
        self.critic_optimizer = (torch.optim.AdamW(self.critic.parameters(), lr=cfg.optimizer.critic_lr,
                                                   weight_decay=cfg.optimizer.weight_decay)
                                 if self.critic is not None else None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = tuple(sorted(_stop_ids(self.policy, self.tokenizer)))
        self.data = TaskData(cfg.data, self.tokenizer, seed=cfg.run.seed, log=log)
        self.shuffle_generator = torch.Generator().manual_seed(cfg.run.seed + 17)
        self.engine_kind = resolve_engine_kind(cfg.rollout.rollout)
        if self.engine_kind == "hf":  # shares the policy module: no copy, no weight transfer
            self.engine = make_engine("hf", model=self.policy, eos_token_ids=self.stop_ids, seed=cfg.run.seed,
                                      max_batch_size=cfg.rollout.gen_batch_size, pad_token_id=self.pad_id)
        else:
            self.engine = make_engine("sglang", model_path=model_path, seed=cfg.run.seed,
                                      mem_fraction_static=cfg.rollout.sglang_mem_fraction,
                                      tp_size=cfg.rollout.sglang_tp,
                                      bucket_bytes=cfg.rollout.sync_bucket_mb << 20)
        self.state: dict[str, Any] = {}
        self.checkpoints = os.path.join(output_dir, "checkpoints")
        resume_step = None
        if resume:
            resume_step = self._restore()
        os.makedirs(output_dir, exist_ok=True)
        ckpt.atomic_write_text(os.path.join(output_dir, "config.json"), json.dumps(cfg.to_dict(), indent=2) + "\n")
        self.metrics = MetricsLog(output_dir, resume_step=resume_step)
        self.bar: ProgressBar | None = None

    # ---- helpers the trainer calls ---------------------------------------------------------------
    def decode_responses(self, responses: list[list[int]]) -> list[str]:
        """Response text for the scorer: the stop token is dropped, special tokens like <answer> kept."""
        trimmed = [r[:-1] if r and r[-1] in self.stop_ids else r for r in responses]
        return self.tokenizer.batch_decode(trimmed, skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)

    def set_learning_rates(self) -> None:
        warmup = self.config.optimizer.warmup_steps
        done = self.state.get("optimizer_steps", 0)
        scale = min(1.0, (done + 1) / warmup) if warmup else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.optimizer.lr * scale
        if self.critic_optimizer is not None:
            for group in self.critic_optimizer.param_groups:
                group["lr"] = self.config.optimizer.critic_lr * scale

    def discard_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)

    def log_samples(self, step: int, problems, texts, scores) -> None:
        count = self.config.run.log_samples
        if count:
            self.metrics.log_samples(step, [
                {"numbers": list(p.numbers), "target": p.target, "response": t, "reward": float(s)}
                for p, t, s in zip(problems[:count], texts[:count], scores[:count].tolist())])

    def report_eval(self, when: str, result: dict[str, float]) -> None:
        self.say(f"[{when}] held-out greedy accuracy {100 * result['eval/accuracy']:.1f}% "
                 f"(mean reward {result['eval/mean_reward']:.3f}, {result['eval/n']} problems)")

    def progress_start(self, start_step: int) -> None:
        self.bar = ProgressBar(self.config.run.max_steps, enabled=self.config.run.progress, start_step=start_step)
        self._tokens_at_start = self.state.get("tokens", 0)
        self._progress_started = time.perf_counter()

    def progress(self, step: int, row: dict[str, float], last_eval: dict[str, float] | None) -> None:
        if self.bar is None:
            return
        elapsed = time.perf_counter() - self._progress_started
        tokens = self.state.get("tokens", 0) - self._tokens_at_start
        accuracy = row.get("eval/accuracy", (last_eval or {}).get("eval/accuracy"))
        self.bar.update(step, reward=row.get("reward/mean"), acc=accuracy,
                        **{"tok/s": tokens / elapsed if elapsed > 0 else None})

    # ---- save / restore --------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        return {"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "shuffle": self.shuffle_generator.get_state(),
                "engine": self.engine.rng_state() if hasattr(self.engine, "rng_state") else None}

    def save(self) -> str:
        models = {"policy": self.policy}
        optimizers = {"policy": self.optimizer}
        if self.critic is not None:
            models["critic"], optimizers["critic"] = self.critic, self.critic_optimizer
        state = {**self.state, "rng": self._rng_state(), "data": self.data.position(),
                 "wall_seconds": self.wall_seconds()}
        return ckpt.save_checkpoint(self.checkpoints, self.state.get("step", 0), models=models,
                                    optimizers=optimizers, state=state, tokenizer=self.tokenizer)

    def wall_seconds(self) -> float:
        """Wall time of the whole run, across resumes."""
        return time.perf_counter() - self.wall_started + self.state.get("wall_before_resume", 0.0)

    def _restore(self) -> int:
        path = ckpt.latest_checkpoint(self.checkpoints)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.checkpoints}")
        state, optimizers = ckpt.load_trainer_state(path)
        from safetensors.torch import load_file

        _load_weights(self.policy, os.path.join(path, "policy"), load_file)
        self.optimizer.load_state_dict(optimizers["policy"])
        if self.critic is not None:
            saved = CriticModel.from_pretrained(os.path.join(path, "critic"), **self._load_options)
            self.critic.load_state_dict(saved.state_dict())
            del saved
            self.critic_optimizer.load_state_dict(optimizers["critic"])
        rng = state.pop("rng")
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.shuffle_generator.set_state(rng["shuffle"])
        self.engine.update_weights(self.policy)
        if rng["engine"] is not None and hasattr(self.engine, "set_rng_state"):
            self.engine.set_rng_state(rng["engine"])
        self.data.restore(state.pop("data"))
        state["wall_before_resume"] = state.pop("wall_seconds", 0.0)
        self.state = state
        self.say(f"resumed from {path} at step {state.get('step', 0)}")
        return state.get("step", 0)

    def finish(self) -> dict[str, Any]:
        """Final model, plot and cost summary; returns the summary."""
        if self.bar is not None:
            self.bar.close()
        final_dir = os.path.join(self.output_dir, "final")
        tmp = final_dir + ".tmp"
        self.policy.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        if os.path.isdir(final_dir):
            import shutil
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
        plot_metrics(self.metrics.rows, os.path.join(self.output_dir, "metrics.png"))
        wall = self.wall_seconds()
        cost = cost_summary(self.state.get("phase_seconds", {}), wall_seconds=wall,
                            tokens=self.state.get("tokens", 0), price_per_hour=self.config.run.price_per_hour,
                            device=str(self.device))
        start, end = self.state.get("eval_start", {}), self.metrics.last("eval/accuracy")
        summary = {"start_accuracy": start.get("eval/accuracy"), "end_accuracy": end,
                   "steps": self.state.get("step", 0), "bad_steps": self.state.get("bad_steps", 0), "cost": cost}
        ckpt.atomic_write_text(os.path.join(self.output_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
        self.say(format_cost(cost))
        return summary


def _load_weights(module: torch.nn.Module, folder: str, load_file) -> None:
    state = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(folder, name)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k}  # tied to the embedding, saved once
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token: cannot tell where a response ends")
    return ids
