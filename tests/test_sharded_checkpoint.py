"""fastzero.sharded_checkpoint: DCP save on 2 gloo ranks, load on 2, 3 and 1 (no process group);
a one-process checkpoint loaded on 2 ranks; the full HF folder for final/ written by rank 0.
Loading only re-slices stored tensors (no arithmetic), so weights and optimizer moments must come
back bit for bit whatever the world size."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from fastzero.distributed import SINGLE, init_distributed
from fastzero.sharded_checkpoint import (
    is_sharded_checkpoint,
    load_full_into_sharded,
    load_sharded,
    save_full_pretrained,
    save_sharded,
)
from tests._distributed import run_ranks
from tests.test_sharding import tiny_dir


def trained(policy_dir: str, ctx):
    """A tiny policy (sharded when ctx is distributed) after one AdamW step on a fixed loss."""
    from fastzero.model import load_causal_lm
    from fastzero.sharding import shard_model

    policy, _ = load_causal_lm(policy_dir)
    if ctx.enabled:
        shard_model(policy, ctx)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    ids = torch.arange(2, 14).view(2, 6)
    out = policy(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return policy, optimizer


def fresh(policy_dir: str, ctx):
    from fastzero.model import load_causal_lm
    from fastzero.sharding import shard_model

    policy, _ = load_causal_lm(policy_dir)
    if ctx.enabled:
        shard_model(policy, ctx)
    return policy, torch.optim.AdamW(policy.parameters(), lr=1e-2)


def full_state(policy, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(policy, optimizer,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": model_state, "optimizer": optim_state}


def rank_save(policy_dir: str, root: str) -> dict:
    ctx = init_distributed("cpu")
    policy, optimizer = trained(policy_dir, ctx)
    path = save_sharded(root, 1, models={"policy": policy}, optimizers={"policy": optimizer},
                        state={"step": 1, "data": {"epoch": 0, "index": 8}},
                        rank_state={"torch": torch.get_rng_state(), "rank": ctx.rank}, ctx=ctx)
    save_full_pretrained(policy, os.path.join(root, "final"), ctx)
    return {"path": path, **full_state(policy, optimizer)}


def rank_load(policy_dir: str, path: str) -> dict:
    ctx = init_distributed("cpu")
    policy, optimizer = fresh(policy_dir, ctx)
    state, own = load_sharded(path, models={"policy": policy}, optimizers={"policy": optimizer}, ctx=ctx)
    return {"state": state, "own": own, **full_state(policy, optimizer)}


def assert_same(got: dict, expected: dict) -> None:
    assert set(got["model"]) == set(expected["model"])
    for name, tensor in expected["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    assert set(got["optimizer"]["state"]) == set(expected["optimizer"]["state"])
    for name, moments in expected["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(torch.as_tensor(got["optimizer"]["state"][name][key]), torch.as_tensor(value)), (name, key)


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory):
    policy_dir = tiny_dir(tmp_path_factory, tie=True)
    root = str(tmp_path_factory.mktemp("run") / "checkpoints")
    saved = run_ranks(2, rank_save, policy_dir, root)[0]
    return policy_dir, root, saved


def test_directory_is_complete_and_atomic(saved_on_two):
    _, root, saved = saved_on_two
    assert is_sharded_checkpoint(saved["path"])
    assert open(os.path.join(root, "latest")).read().strip() == "step-000001"
    assert sorted(os.listdir(saved["path"])) == ["manifest.json", "policy", "rank-00000.pt", "rank-00001.pt",
                                                  "trainer_state.pt"]
    assert not [d for d in os.listdir(root) if d.startswith(".tmp-")]


def test_manifest_records_every_file_and_the_world_size(saved_on_two):
    from fastzero.manifest import MANIFEST, checkpoint_files, verify_checkpoint

    _, _, saved = saved_on_two
    manifest = json.load(open(os.path.join(saved["path"], MANIFEST)))
    assert manifest["world_size"] == 2
    files = checkpoint_files(saved["path"])
    assert sorted(manifest["files"]) == sorted(files)
    assert {"policy/.metadata", "policy/__0_0.distcp", "policy/__1_0.distcp", "rank-00001.pt"} <= set(files)
    for name in files:  # the ranks hashed a share each: every record is the file's own digest
        digest = hashlib.sha256(open(os.path.join(saved["path"], name), "rb").read()).hexdigest()
        assert manifest["files"][name] == {"bytes": os.path.getsize(os.path.join(saved["path"], name)),
                                           "sha256": digest}
    assert verify_checkpoint(saved["path"]) is None


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_a_damaged_shard_is_named(saved_on_two, tmp_path, damage):
    from fastzero.manifest import newest_intact

    _, root, _ = saved_on_two
    copy = tmp_path / "checkpoints"
    shutil.copytree(root, copy)
    shard = copy / "step-000001" / "policy" / "__1_0.distcp"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    path, notes = newest_intact(str(copy))
    assert path is None
    expected = {"truncate": "is truncated", "delete": "is missing", "flip": "is corrupt"}[damage]
    assert f"{shard} {expected}" in notes[0]


def test_resume_on_one_process_without_a_process_group(saved_on_two):
    import torch.distributed as dist

    policy_dir, _, saved = saved_on_two
    policy, optimizer = fresh(policy_dir, SINGLE)
    state, own = load_sharded(saved["path"], models={"policy": policy}, optimizers={"policy": optimizer}, ctx=SINGLE)
    assert not dist.is_initialized()
    assert state == {"step": 1, "data": {"epoch": 0, "index": 8}}
    assert own is None  # written by 2 ranks: no per-rank RNG stream for a world of one
    assert_same(full_state(policy, optimizer), saved)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_resume_on_two_and_three_ranks(saved_on_two, world_size):
    policy_dir, _, saved = saved_on_two
    results = run_ranks(world_size, rank_load, policy_dir, saved["path"])
    for rank, got in enumerate(results):
        assert got["state"]["step"] == 1
        assert (got["own"] or {}).get("rank") == (rank if world_size == 2 else None)
    assert_same(results[0], saved)


def test_final_folder_loads_in_transformers(saved_on_two):
    from transformers import AutoModelForCausalLM

    _, root, saved = saved_on_two
    model = AutoModelForCausalLM.from_pretrained(os.path.join(root, "final"), local_files_only=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["model"][name]), name


def rank_load_one_process_checkpoint(policy_dir: str, path: str) -> dict:
    from safetensors.torch import load_file

    from fastzero.checkpoint import load_trainer_state

    ctx = init_distributed("cpu")
    policy, optimizer = fresh(policy_dir, ctx)
    _, optimizers = load_trainer_state(path)
    weights = {}
    for name in sorted(os.listdir(os.path.join(path, "policy"))):
        if name.endswith(".safetensors"):
            weights.update(load_file(os.path.join(path, "policy", name)))
    load_full_into_sharded(policy, optimizer, weights, optimizers["policy"])
    return full_state(policy, optimizer)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_ranks(tmp_path_factory):
    from fastzero.checkpoint import save_checkpoint

    policy_dir = tiny_dir(tmp_path_factory, tie=True)
    policy, optimizer = trained(policy_dir, SINGLE)
    root = str(tmp_path_factory.mktemp("single") / "checkpoints")
    path = save_checkpoint(root, 1, models={"policy": policy}, optimizer_state={"policy": optimizer.state_dict()},
                           state={"step": 1})
    expected = full_state(policy, optimizer)
    got = run_ranks(2, rank_load_one_process_checkpoint, policy_dir, path)[0]
    assert_same(got, expected)


def rank_main(argv: list[str]) -> tuple[int, str]:
    """`python -m fastzero.train ARGV` on this rank: (exit status, what it wrote to stderr)."""
    import contextlib
    import io

    from fastzero.train import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


@pytest.mark.slow
def test_resume_from_a_damaged_sharded_run_stops_before_training(tmp_path):
    """A real 2-rank run's checkpoint, a shard truncated / a rank file deleted: resuming on 2 ranks
    and on 1 exits 2 with a message naming the file, without a traceback or a step trained."""
    from tests.test_train_distributed import options, rank_train

    out = tmp_path / "run"
    run_ranks(2, rank_train, options("grpo", str(out), max_steps=1, save_every=1), False, 1)
    rows = (out / "metrics.jsonl").read_text()
    shard = out / "checkpoints" / "step-000001" / "policy" / "__0_0.distcp"
    intact = shard.read_bytes()
    shard.write_bytes(intact[:-7])
    for status, err in run_ranks(2, rank_main, ["--resume", str(out), "--threads", "1"]):
        assert status == 2 and "Traceback" not in err, err
        assert f"{shard} is truncated" in err and "no intact checkpoint" in err
    shard.write_bytes(intact)
    os.unlink(out / "checkpoints" / "step-000001" / "rank-00001.pt")
    status, err = rank_main(["--resume", str(out), "--threads", "1"])  # one process: verified the same way
    assert status == 2 and "Traceback" not in err and "rank-00001.pt is missing" in err, err
    assert (out / "metrics.jsonl").read_text() == rows
