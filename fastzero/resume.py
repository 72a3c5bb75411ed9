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
from .distributed import all_reduce_max, broadcast_object
from .manifest import newest_intact, step_directories
from .model import CriticModel
from .sharded_checkpoint import is_sharded_checkpoint, load_full_into_sharded, load_sharded, save_sharded
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


class NonFiniteWeights(RuntimeError):
    """The weights hold NaN or inf: such a state is never saved over a good checkpoint."""


def weights_are_finite(*modules) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules if m is not None for p in m.parameters())


def save_run(run: "Run") -> str:
    """Checkpoint the run at its current (completed) step; returns the checkpoint's path. A step
    already on disk is not written again, and non-finite weights raise NonFiniteWeights instead."""
    path = os.path.join(run.checkpoints, f"step-{run.state.step:06d}")
    if run.saved_step == run.state.step:
        return path
    models = {"policy": run.models.policy}
    if run.models.critic is not None:
        models["critic"] = run.models.critic
    finite = weights_are_finite(*models.values())
    if run.dist.enabled:  # each rank sees its shards: all of them save, or none (a save is collective)
        finite = all_reduce_max(int(not finite), run.dist) == 0
    if not finite:
        kept = f"step {run.saved_step}" if run.saved_step is not None else "none yet"
        raise NonFiniteWeights(f"the weights are no longer finite at step {run.state.step} (lower --lr or "
                               f"--grad-clip); no checkpoint was written over the last good one ({kept})")
    if run.dist.enabled:
        path = _save_sharded(run, models)
        run.saved_step = run.state.step
        return path
    saved = dataclasses.replace(run.state, rng=capture_rng(run), data=run.data.position(),
                                wall_seconds=run.wall_seconds())
    path = ckpt.save_checkpoint(run.checkpoints, run.state.step, models=models,
                                optimizer_state=run.optimizers.state_dicts(), state=saved.to_dict(),
                                tokenizer=run.tokenizer)
    run.saved_step = run.state.step
    return path


def restore_run(run: "Run") -> int | None:
    """Load the newest intact checkpoint of `run.checkpoints` into the run; returns its step, or
    None when there is none (the run then starts from step 0 with its saved config)."""
    # Under torchrun rank 0 verifies (the checkpoint is on a filesystem every rank shares) and
    # every rank goes on with its verdict, so all of them load the same one or stop together.
    path, notes = broadcast_object(newest_intact(run.checkpoints) if run.dist.is_main else None, run.dist)
    for note in notes:
        run.say(f"warning: {note}")
    if path is None and step_directories(run.checkpoints):
        damaged = "; ".join(note.removeprefix("skipped damaged checkpoint ") for note in notes
                            if note.startswith("skipped damaged"))
        raise ValueError(f"--resume {run.output_dir}: no intact checkpoint under {run.checkpoints} ({damaged}); "
                         "restore the damaged files (or move those step-* directories away to start again "
                         "from step 0)")
    if path is None:
        run.say(f"--resume: no intact checkpoint under {run.checkpoints}: starting from step 0 with the saved config")
        return None
    if is_sharded_checkpoint(path) or run.dist.enabled:
        run.saved_step = _restore_sharded(run, path)
        return run.saved_step
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
    run.saved_step = state.step
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


# ---- runs on several ranks (fastzero/sharded_checkpoint.py has the layout) ----------------------------

_RANK_OWN = ("python", "torch", "cuda", "engine")  # each rank's own streams; "shuffle" is global


def _save_sharded(run: "Run", models: dict[str, torch.nn.Module]) -> str:
    rng = capture_rng(run)
    saved = dataclasses.replace(run.state, rng={"shuffle": rng["shuffle"]}, data=run.data.position(),
                                wall_seconds=run.wall_seconds())
    optimizers = {"policy": run.optimizers.policy, "critic": run.optimizers.critic}
    return save_sharded(run.checkpoints, run.state.step, models=models, optimizers=optimizers,
                        state=saved.to_dict(), rank_state={k: rng[k] for k in _RANK_OWN}, ctx=run.dist,
                        tokenizer=run.tokenizer)


def _restore_sharded(run: "Run", path: str) -> int:
    """A sharded checkpoint on any number of ranks (1 included), or a one-process one on several."""
    models = {"policy": run.models.policy}
    optimizers = {"policy": run.optimizers.policy}
    if run.models.critic is not None:
        models["critic"], optimizers["critic"] = run.models.critic, run.optimizers.critic
    if is_sharded_checkpoint(path):
        saved, own = load_sharded(path, models=models, optimizers=optimizers, ctx=run.dist)
    else:  # written by one process: every rank reads the full tensors and keeps its shard
        saved, optimizer_state = ckpt.load_trainer_state(path)
        own = None
        for name, model in models.items():
            weights = _read_weights(os.path.join(path, name), critic=name == "critic")
            load_full_into_sharded(model, optimizers[name], weights, optimizer_state.get(name))
    state = TrainState.from_dict(saved)
    rng = {**state.rng, **(own or {})}
    if own is None:  # another world size wrote it: there is no stream of this rank to continue
        seed = run.config.run.seed + 7919 * (state.step + 1) + run.dist.rank
        random.seed(seed)
        torch.manual_seed(seed)
        if hasattr(run.engine, "set_rng_state"):
            generator = torch.Generator(device=getattr(run.engine, "device", "cpu")).manual_seed(seed)
            run.engine.set_rng_state(generator.get_state())
        run.say(f"note: {path} was written by a different number of ranks; weights, optimizer state and data "
                "position are restored, the sampling streams are reseeded (the run continues, but its samples "
                "differ from those of an uninterrupted run)")
    else:
        restore_rng(run, rng)
    run.shuffle_generator.set_state(rng["shuffle"])
    run.engine.update_weights(run.models.policy)
    run.data.restore(state.data)
    run.state = dataclasses.replace(state, rng=None, data=None)
    run.say(f"resumed from {path} at step {state.step}")
    return state.step


def _read_weights(folder: str, *, critic: bool) -> dict[str, torch.Tensor]:
    """A saved HF folder's tensors, named as the module names them (a critic: backbone. / value_head.)."""
    from safetensors.torch import load_file

    from .model import VALUE_HEAD_FILE

    weights: dict[str, torch.Tensor] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            prefix = ("value_head." if name == VALUE_HEAD_FILE else "backbone.") if critic else ""
            weights.update({prefix + k: v for k, v in load_file(os.path.join(folder, name)).items()})
    return weights
