"""Save a run to a checkpoint and restore it: weights, optimizer moments, TrainState, RNGs, data position.

Resume restores, besides weights and optimizer moments, every RNG that a step draws from (Python's,
torch's global RNG, the shuffling generator, the rollout engine's sampler) and the data position,
which is what makes a killed-and-resumed CPU run bit-identical to one that was never interrupted.
The file layout and its atomicity are fastzero/checkpoint.py's.
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint as ckpt
from .model import CriticModel
from .state import TrainState

if TYPE_CHECKING:
    from .run import Run


def capture_rng(run: "Run") -> dict[str, Any]:
    engine = run.engine
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "shuffle": run.shuffle_generator.get_state(),
            "engine": engine.rng_state() if hasattr(engine, "rng_state") else None}


def restore_rng(run: "Run", rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    run.shuffle_generator.set_state(rng["shuffle"])
    if rng["engine"] is not None and hasattr(run.engine, "set_rng_state"):
        run.engine.set_rng_state(rng["engine"])


def save_run(run: "Run") -> str:
    """Checkpoint the run at its current step; returns the checkpoint's path."""
    models = {"policy": run.models.policy}
    if run.models.critic is not None:
        models["critic"] = run.models.critic
    saved = dataclasses.replace(run.state, rng=capture_rng(run), data=run.data.position(),
                                wall_seconds=run.wall_seconds())
    return ckpt.save_checkpoint(run.checkpoints, run.state.step, models=models,
                                optimizer_state=run.optimizers.state_dicts(), state=saved.to_dict(),
                                tokenizer=run.tokenizer)


def restore_run(run: "Run") -> int:
    """Load the newest checkpoint of `run.checkpoints` into the run; returns its step."""
    path = ckpt.latest_checkpoint(run.checkpoints)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run.checkpoints}")
    saved, optimizer_state = ckpt.load_trainer_state(path)
    state = TrainState.from_dict(saved)
    from safetensors.torch import load_file

    _load_weights(run.models.policy, os.path.join(path, "policy"), load_file)
    if run.models.critic is not None:
        critic = CriticModel.from_pretrained(os.path.join(path, "critic"), **run.load_options)
        run.models.critic.load_state_dict(critic.state_dict())
        del critic
    run.optimizers.load_state_dicts(optimizer_state)
    run.engine.update_weights(run.models.weights_for(run.engine))
    restore_rng(run, state.rng)
    run.data.restore(state.data)
    run.state = dataclasses.replace(state, rng=None, data=None)  # live RNGs and data are the truth now
    run.say(f"resumed from {path} at step {state.step}")
    return state.step


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
