"""Setup: everything a training run holds, built once from a validated Config.

Device and dtype are resolved here, once (fastzero.model.resolve_device / choose_backends), and
every consumer gets the resolved values: the policy, the reference, the critic and the rollout
engine. This is where a task plugs in (the data and the scorer) and where models would be wrapped
for sharding (FSDP) before the optimizers are built. Saving and resuming live in fastzero/resume.py,
what the user sees in fastzero/report.py, the step in fastzero/trainer.py, the loop in fastzero/loop.py.
"""
from __future__ import annotations

import copy
import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import nn

from .atomic import atomic_write_text
from .config import Config, resolve_model_path, sandbox_options
from .data import TaskData, make_task
from .distributed import DistContext, init_distributed, main_only
from .episodes import trim_stop
from .loggers import make_sinks
from .lora import LoraAdapters, add_adapters
from .metrics import MemoryMetrics, MetricsLog
from .model import CriticModel, autocast_dtype, choose_backends, load_causal_lm, resolve_device
from .optim import Optimizers, planned_optimizer_steps
from .rollout import RolloutEngine, make_engine, resolve_engine_kind
from .rollout.tp_engine import make_tp_group_engine
from .rollout.tp_groups import engine_placement, layout_from_env
from .sharding import ShardedEngine
from .state import TrainState
from .tasks.countdown.verifier import default_threads
from .tasks.scoring import TaskScorer


@dataclass
class Models:
    policy: nn.Module
    reference: nn.Module | None  # frozen copy of the starting policy (LoRA: the policy itself); None when --kl-coef is 0
    critic: CriticModel | None  # PPO only
    lora: LoraAdapters | None = None  # --lora-rank > 0: the adapters injected into the policy

    def reference_scope(self) -> ContextManager:
        """Where the reference must be called: with LoRA, the policy with its adapters disabled."""
        return self.lora.disabled() if self.lora is not None and self.reference is self.policy else nullcontext()

    def weights_for(self, engine: RolloutEngine) -> Any:
        """What engine.update_weights gets: the policy, or with LoRA and an engine holding its own
        copy (SGLang), the merged (base + adapter) tensors under the base model's names."""
        if self.lora is None or getattr(engine, "model", None) is self.policy:
            return self.policy
        return self.lora.merged_named_tensors()


class Run:
    """The parts of a run: models, optimizers, data, scorer, rollout engine, RNG, state and outputs."""

    def __init__(self, config: Config, *, output_dir: str, resume: bool = False, log=print):
        cfg = config
        # Under torchrun: join the process group (a world of one, or no torchrun: nothing happens).
        self.dist = init_distributed(cfg.run.device, timeout_s=cfg.run.dist_timeout)
        self.config, self.output_dir, self.say = config, output_dir, main_only(self.dist, log)
        self.wall_started = time.perf_counter()
        torch.set_num_threads(cfg.run.threads or default_threads())
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.run.device)
        backends = choose_backends(self.device, cfg.model.dtype, cfg.model.attn_implementation)
        self.autocast = autocast_dtype(cfg.model.autocast, backends.dtype, self.device)  # --autocast: the body's compute dtype or None
        random.seed(cfg.run.seed)
        torch.manual_seed(cfg.run.seed)
        # The task and its scorer first: a bad --task or --reward fails before any model loads.
        self.task = make_task(cfg)
        reward = cfg.reward.reward
        self.scorer = TaskScorer(self.task, reward=reward, sandbox=sandbox_options(cfg.reward), log=log,
                                 correct_reward=cfg.algorithm.correct_score if reward else None)

        from transformers import AutoTokenizer

        model_path = resolve_model_path(cfg.model.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.load_options = dict(dtype=backends.dtype, device=self.device,
                                 attn_implementation=backends.attn_implementation,
                                 gradient_checkpointing=cfg.model.gradient_checkpointing)
        critic_path = None
        if cfg.algorithm.estimator == "ppo":
            critic_path = resolve_model_path(cfg.model.critic_path or cfg.model.model_path)
        if self.dist.enabled:  # sharded before the optimizers are built (they step the shards), and
            # rank 0 alone reads the weights: the others build on the meta device (sharded_loading.py)
            from .sharded_loading import load_models_sharded

            self.models = Models(*load_models_sharded(model_path, critic_path, self.load_options, self.dist,
                                                      reference=cfg.algorithm.kl_coef > 0, offload=cfg.run.fsdp_offload,
                                                      lora=cfg.model if cfg.model.lora_rank else None))
        else:
            self.models = _load_models(cfg, model_path, critic_path, self.load_options)
        policy, critic = self.models.policy, self.models.critic
        self.optimizers = Optimizers(cfg.optimizer, policy, critic, total_steps=planned_optimizer_steps(cfg))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = tuple(sorted(_stop_ids(policy, self.tokenizer)))
        if self.dist.is_main:  # config.json first: from here on the directory is this run's (data/ cache included)
            os.makedirs(output_dir, exist_ok=True)
            recorded = {**cfg.to_dict(), "world_size": self.dist.world_size}
            atomic_write_text(os.path.join(output_dir, "config.json"), json.dumps(recorded, indent=2) + "\n")
        self.data = TaskData(cfg.data, self.tokenizer, seed=cfg.run.seed, log=self.say, task=self.task,
                             cache_dir=os.path.join(output_dir, "data"))
        self.shuffle_generator = torch.Generator().manual_seed(cfg.run.seed + 17)
        self.engine = _make_engine(cfg, policy, model_path, backends.dtype, self.stop_ids, self.pad_id,
                                   seed=cfg.run.seed + self.dist.rank,  # each rank (TP: each group) its own stream
                                   dist=self.dist)
        self.state = TrainState()
        self.checkpoints = os.path.join(output_dir, "checkpoints")
        self.saved_step: int | None = None  # step of the newest checkpoint on disk (resume.py keeps it)
        resume_step = None
        if resume:
            from .resume import restore_run

            resume_step = restore_run(self)
        if not self.dist.is_main:  # rank 0 alone writes the run's files
            self.metrics = MemoryMetrics()
            return
        self.metrics = MetricsLog(output_dir, resume_step=resume_step)
        self.metrics.sinks = make_sinks(cfg.run.report_to, output_dir, config=cfg.to_dict(), resume_step=resume_step)

    @property
    def policy(self) -> nn.Module:
        return self.models.policy

    def decode_responses(self, responses: list[list[int]]) -> list[str]:
        """Response text for the scorer: the stop token is dropped, special tokens like <answer> kept."""
        return self.tokenizer.batch_decode(trim_stop(responses, self.stop_ids), skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)

    def close(self) -> None:
        """Stop what runs beside the trainer: the reward sandbox's workers and the rollout engine."""
        self.scorer.close()
        self.engine.shutdown()
        self.metrics.close()  # --report-to sinks flush and close

    def wall_seconds(self) -> float:
        """Wall time of the whole run, across resumes."""
        return time.perf_counter() - self.wall_started + self.state.wall_seconds


def _load_models(cfg: Config, model_path: str, critic_path: str | None, load_options: dict) -> Models:
    """The policy, reference and critic of a one-process run, each loaded whole on its device."""
    policy, _ = load_causal_lm(model_path, **load_options)
    lora = add_adapters(policy, cfg.model) if cfg.model.lora_rank else None
    reference = None
    if cfg.algorithm.kl_coef > 0:  # LoRA: the base is the policy with adapters off (no copy)
        reference = policy if lora is not None else copy.deepcopy(policy).eval().requires_grad_(False)
    critic = CriticModel.from_pretrained(critic_path, **load_options) if critic_path is not None else None
    return Models(policy, reference, critic, lora)


def _make_engine(cfg: Config, policy: nn.Module, model_path: str, dtype: torch.dtype, stop_ids, pad_id, *,
                 seed: int, dist: DistContext) -> RolloutEngine:
    """The rollout engine, placed for this process: under torchrun the hf engine decodes with the
    gathered shards on every rank; SGLang runs one engine per rank (data parallel, --sglang-tp 1) or
    one tensor-parallel engine per group of --sglang-tp ranks, held by the group's leader."""
    r = cfg.rollout
    if resolve_engine_kind(r.engine) == "hf":  # shares the policy module: no copy, no weight transfer
        engine = make_engine("hf", model=policy, eos_token_ids=stop_ids, seed=seed,
                             max_batch_size=r.gen_batch_size, pad_token_id=pad_id)
        return ShardedEngine(engine, policy, shares_model=True) if dist.enabled else engine
    options = dict(model_path=model_path, seed=seed, dtype=str(dtype).removeprefix("torch."),
                   mem_fraction_static=r.sglang_mem_fraction, tp_size=r.sglang_tp, bucket_bytes=r.sync_bucket_mb << 20)
    if not dist.enabled:  # one process: SGLang's own TP spreads the engine over GPUs 0 .. tp-1
        return make_engine("sglang", **options)
    if r.sglang_tp == 1:  # one engine per rank, on this rank's GPU (data parallel)
        engine = make_engine("sglang", engine_kwargs=engine_placement(dist.local_rank), **options)
        return ShardedEngine(engine, policy, shares_model=False)
    layout = layout_from_env(r.sglang_tp, dist.rank, dist.world_size, dist.local_rank)
    return make_tp_group_engine(layout, lambda placement: make_engine("sglang", engine_kwargs=placement, **options),
                                timeout_s=cfg.run.dist_timeout)


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token: cannot tell where a response ends")
    return ids
