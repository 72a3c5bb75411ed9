"""fastzero.checkpoint and fastzero.resume: layout, `latest`, pruning, leftovers of killed saves,
and a run restored from a checkpoint holding exactly what was saved."""
from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM

from fastzero import checkpoint as ckpt
from fastzero.config import EMBEDDED_MODEL, resolve_model_path
from fastzero.state import TrainState


def _model():
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(EMBEDDED_MODEL), local_files_only=True)


def test_save_points_latest_at_the_newest_and_prunes(tmp_path):
    model, root = _model(), str(tmp_path / "checkpoints")
    optimizer = torch.optim.AdamW(model.parameters())
    assert ckpt.latest_checkpoint(root) is None
    for step in (1, 2, 3):
        state = TrainState(step=step, tokens=10 * step).to_dict()
        path = ckpt.save_checkpoint(root, step, models={"policy": model}, optimizer_state={"policy": optimizer.state_dict()},
                                    state=state)
    assert path == os.path.join(root, "step-000003") == ckpt.latest_checkpoint(root)
    assert sorted(d for d in os.listdir(root) if d.startswith("step-")) == ["step-000002", "step-000003"]
    saved, optimizers = ckpt.load_trainer_state(path)
    assert TrainState.from_dict(saved) == TrainState(step=3, tokens=30)
    assert set(optimizers) == {"policy"}
    reloaded = AutoModelForCausalLM.from_pretrained(os.path.join(path, "policy"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_a_killed_save_leaves_the_old_checkpoint_and_is_swept_later(tmp_path):
    model, root = _model(), str(tmp_path / "checkpoints")
    ckpt.save_checkpoint(root, 1, models={"policy": model}, optimizer_state={}, state={})
    os.makedirs(os.path.join(root, ".tmp-0123456789ab-step-000002"))  # what a SIGKILL mid-save leaves
    assert ckpt.latest_checkpoint(root).endswith("step-000001")
    ckpt.save_checkpoint(root, 2, models={"policy": model}, optimizer_state={}, state={})
    assert not [d for d in os.listdir(root) if d.startswith(".tmp-")]


def test_latest_pointing_nowhere_is_no_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest").write_text("step-000009\n")
    assert ckpt.latest_checkpoint(str(root)) is None
