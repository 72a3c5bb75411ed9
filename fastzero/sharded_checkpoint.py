"""Checkpoints of a run on several ranks: torch.distributed.checkpoint (DCP), atomic per directory.

Layout of `checkpoints/step-000120/` (the same directory name and `latest` pointer as the
single-process format of fastzero.checkpoint):
    policy/, critic/     DCP folders (.metadata + one .distcp file per rank): the model's and its
                         optimizer's state, keyed by parameter name, each tensor stored with its
                         global shape and the offsets of every rank's shard
    trainer_state.pt     what is the same on every rank (step, counters, data position, the
                         mini-batch shuffling RNG), written by rank 0, plus the world size
    rank-00003.pt        what each rank owns: its torch / Python / rollout-engine RNG states
    tokenizer/           the run's tokenizer (rank 0)
    manifest.json        size and SHA-256 of every file above, and the world size (last)
Atomic: rank 0 creates a staging directory (fastzero.atomic.atomic_directory) and broadcasts its
name, every rank writes its part, a barrier; then each rank hashes a share of the files (every
world_size-th of the sorted list), rank 0 gathers the records and writes manifest.json (the
one-process format of fastzero/manifest.py, plus world_size), swaps the directory in and replaces
`latest`; a job killed at any moment leaves the previous checkpoint intact (and a `.tmp-*`
directory that the next save removes). Resume verifies the manifest like a one-process
checkpoint's (fastzero.manifest.newest_intact; on rank 0, which broadcasts the verdict): a
missing, truncated or altered shard is named before anything is loaded.

Changing the number of ranks on resume:
- model and optimizer state load on ANY world size, 1 included: DCP re-slices each stored tensor
  to the loading ranks' shards (and in one process reads it whole, without a process group);
- the global state (step, data position, shuffling RNG) does not depend on the world size;
- the per-rank RNG streams do: with a different world size there is no rank-r stream to restore,
  so `load_sharded` returns None for it and the caller reseeds. The run continues correctly from
  the same weights, optimizer moments and data position, but its samples differ from those of an
  uninterrupted run; bit-identical continuation needs the same world size.
- a single-process checkpoint (Hugging Face folders + optimizers.pt) loads into a sharded model with
  `load_full_into_sharded` (every rank reads the full tensors and keeps its shard).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from torch import nn

from .atomic import TMP_PREFIX, atomic_directory, atomic_write_text
from .checkpoint import LATEST
from .distributed import DistContext, all_gather_object, barrier, broadcast_object
from .manifest import checkpoint_files, file_entries, write_manifest

TRAINER_STATE = "trainer_state.pt"


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def is_sharded_checkpoint(path: str) -> bool:
    """True for a directory written by save_sharded (its policy folder is a DCP checkpoint)."""
    return os.path.isfile(os.path.join(path, "policy", ".metadata"))


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return {"model": get_model_state_dict(model)}
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_sharded(root: str, step: int, *, models: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer | None], state: dict[str, Any],
                 rank_state: dict[str, Any], ctx: DistContext, keep: int = 2, tokenizer: Any = None) -> str:
    """Write checkpoint `step` under `root` from every rank (collective); returns its path."""
    import torch.distributed.checkpoint as dcp

    name = f"step-{step:06d}"
    final = os.path.join(root, name)

    def write_parts(staging: str | None) -> None:
        staging = broadcast_object(staging, ctx)  # rank 0's staging directory, on every rank
        for key, model in models.items():
            dcp.save(_state_dicts(model, optimizers.get(key)), checkpoint_id=os.path.join(staging, key))
        torch.save(rank_state, os.path.join(staging, _rank_file(ctx.rank)))
        if ctx.is_main:
            torch.save({**state, "world_size": ctx.world_size}, os.path.join(staging, TRAINER_STATE))
            if tokenizer is not None:
                tokenizer.save_pretrained(os.path.join(staging, "tokenizer"))
        barrier(ctx)  # every rank's files are complete before they are hashed
        write_sharded_manifest(staging, ctx)

    if ctx.is_main:
        with atomic_directory(final) as staging:  # a re-save of the same step replaces it
            write_parts(str(staging))
        atomic_write_text(os.path.join(root, LATEST), name + "\n")
        _prune(root, keep=keep, current=name)
    else:
        write_parts(None)
    barrier(ctx)
    return final


def write_sharded_manifest(staging: str, ctx: DistContext) -> None:
    """manifest.json of a complete staging directory: each rank hashes a share, rank 0 writes it."""
    names = broadcast_object(checkpoint_files(staging) if ctx.is_main else None, ctx)
    entries: dict[str, dict] = {}
    for part in all_gather_object(file_entries(staging, names[ctx.rank::ctx.world_size]), ctx):
        entries.update(part)
    if ctx.is_main:
        write_manifest(staging, entries=entries, extra={"world_size": ctx.world_size})


def _prune(root: str, *, keep: int, current: str) -> None:
    """Older checkpoints beyond `keep`, and the temporaries of a run killed mid-save, go."""
    steps = sorted(d for d in os.listdir(root) if d.startswith("step-") and d != current)
    for old in steps[: max(0, len(steps) - (keep - 1))] + [d for d in os.listdir(root) if d.startswith(TMP_PREFIX)]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def load_sharded(path: str, *, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer | None],
                 ctx: DistContext) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load models and optimizers in place from `path` on any world size (collective).

    Returns (the global trainer state, this rank's own state or None when the checkpoint was
    written by a different number of ranks).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a sharded checkpoint (no policy/.metadata)")
    for key, model in models.items():
        optimizer = optimizers.get(key)
        target = _state_dicts(model, optimizer)
        dcp.load(target, checkpoint_id=os.path.join(path, key))
        if optimizer is None:
            model.load_state_dict(target["model"])
        else:
            set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
    state = torch.load(os.path.join(path, TRAINER_STATE), weights_only=False)
    saved_world = state.pop("world_size")
    rank_path = os.path.join(path, _rank_file(ctx.rank))
    own = torch.load(rank_path, weights_only=False) if saved_world == ctx.world_size else None
    return state, own


def load_full_into_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                           model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None) -> None:
    """Full (unsharded) state dicts -> a sharded model and its optimizer; every rank passes them.

    optimizer_state is torch.optim's own format (parameters by index, in model.parameters() order:
    how fastzero.checkpoint saves a one-process run); it is re-keyed by parameter name for DCP.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [name for name, _ in model.named_parameters()]
    by_name = None
    if optimizer is not None and optimizer_state is not None:
        by_name = {"state": {names[i]: s for i, s in optimizer_state["state"].items()},
                   "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                    for group in optimizer_state["param_groups"]]}
    options = StateDictOptions(full_state_dict=True, strict=False)
    if optimizer is None or by_name is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, model_state, options=options)
        return
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=by_name, options=options)


def save_full_pretrained(model: nn.Module, directory: str, ctx: DistContext, tokenizer: Any = None) -> None:
    """One Hugging Face folder of the whole model, written by rank 0 (gathering is collective)."""
    from .sharding import full_state_dict

    state = full_state_dict(model, ctx)
    if ctx.is_main:
        model.save_pretrained(directory, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
    barrier(ctx)
