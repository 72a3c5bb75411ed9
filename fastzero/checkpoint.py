"""Atomic, resumable checkpoints.

A checkpoint is a directory `checkpoints/step-000120/` holding, per model, a Hugging Face folder
(`policy/`, `critic/`: loadable by transformers as they are), the optimizer states and everything
else the trainer needs to continue bit-identically (`trainer_state.pt`: step, RNG states, data
position, counters). It is written under a temporary name and renamed into place in one step, then
the `latest` pointer file is replaced atomically: a run killed at any moment leaves either the old
or the new checkpoint, never half of one. Older checkpoints beyond `keep` are deleted afterwards.
Each checkpoint carries `manifest.json` (sizes and SHA-256 of its files): resume verifies it and
falls back to the newest intact checkpoint (fastzero/manifest.py).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from .atomic import TMP_PREFIX, atomic_directory, atomic_write_text
from .manifest import write_manifest
from .write_errors import as_os_error, torch_save

LATEST = "latest"


def save_checkpoint(root: str, step: int, *, models: dict[str, Any], optimizer_state: dict[str, Any],
                    state: dict[str, Any], tokenizer: Any = None, keep: int = 2) -> str:
    """Write checkpoint `step` under `root` atomically and return its path.

    models: name -> module with save_pretrained; optimizer_state: name -> optimizer state dict;
    state: TrainState.to_dict().
    """
    name = f"step-{step:06d}"
    final = os.path.join(root, name)
    with atomic_directory(final) as tmp:  # a re-save of the same step (Ctrl-C right after a save) replaces it
        for model_name, model in models.items():
            with as_os_error(os.path.join(tmp, model_name)):
                model.save_pretrained(os.path.join(tmp, model_name))  # safetensors by default
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(tmp, "policy"))
        torch_save(optimizer_state, os.path.join(tmp, "optimizers.pt"))
        torch_save(state, os.path.join(tmp, "trainer_state.pt"))
        write_manifest(str(tmp))  # last: sizes and checksums of everything above (fastzero/manifest.py)
    atomic_write_text(os.path.join(root, LATEST), name + "\n")
    _prune(root, keep=keep, current=name)
    return final


def _prune(root: str, *, keep: int, current: str) -> None:
    steps = sorted(d for d in os.listdir(root) if d.startswith("step-") and d != current)
    for old in steps[: max(0, len(steps) - (keep - 1))]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    for leftover in os.listdir(root):  # temporaries of a run that was killed mid-save
        if leftover.startswith(TMP_PREFIX):
            path = os.path.join(root, leftover)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


def latest_checkpoint(root: str) -> str | None:
    """Path of the newest complete checkpoint under `root`, or None."""
    pointer = os.path.join(root, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as fh:
        name = fh.read().strip()
    path = os.path.join(root, name)
    return path if os.path.isdir(path) else None


def load_trainer_state(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state, optimizer state dicts) of the checkpoint at `path`."""
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=False)
    optimizers = torch.load(os.path.join(path, "optimizers.pt"), weights_only=False)
    return state, optimizers
