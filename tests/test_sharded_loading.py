"""fastzero.sharded_loading on 2 gloo ranks: rank 0 alone reads the weights, the others build on the
meta device; the shards, buffers and RNG state afterwards are bit-identical to loading the whole
checkpoint on every rank and sharding it (the path it replaces: only tensors are copied, no
arithmetic, so equality is exact), for the policy, its frozen reference and the critic."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from fastzero.distributed import init_distributed
from tests._distributed import run_ranks
from tests.test_sharding import tiny_dir


def local_state(model) -> dict[str, torch.Tensor]:
    """This rank's shard of every parameter and buffer, and the requires_grad flags."""
    out = {}
    for name, tensor in model.state_dict().items():
        out[name] = (tensor.to_local() if hasattr(tensor, "to_local") else tensor).clone()
    out.update({"buffer:" + n: b.clone() for n, b in model.named_buffers()})
    out.update({"grad:" + n: torch.tensor(p.requires_grad) for n, p in model.named_parameters()})
    return out


def load_everywhere_then_shard(model_path: str, critic_path: str | None, load_options: dict, ctx, *,
                               reference: bool, offload: bool, lora=None) -> tuple:
    """The path sharded_loading replaced (load_models_sharded's signature): every rank loads the
    whole checkpoint, then shards it."""
    import copy

    from fastzero.model import CriticModel, load_causal_lm
    from fastzero.sharding import shard_model

    assert lora is None, "the old path had no LoRA under torchrun"
    policy, _ = load_causal_lm(model_path, **load_options)
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if reference else None
    critic = CriticModel.from_pretrained(critic_path, **load_options) if critic_path is not None else None
    for model in (policy, ref):
        if model is not None:
            shard_model(model, ctx, offload=offload)
    if critic is not None:
        shard_model(critic, ctx, offload=offload, fp32_modules=(critic.value_head,))
    return policy, ref, critic, None


def rank_load_both_ways(policy_dir: str) -> dict:
    from fastzero.sharded_loading import load_models_sharded

    ctx = init_distributed("cpu")
    options = dict(dtype=torch.float32, device=torch.device("cpu"), attn_implementation="sdpa",
                   gradient_checkpointing=False)
    torch.manual_seed(5)
    models = load_models_sharded(policy_dir, policy_dir, options, ctx, reference=True, offload=False)[:3]
    new = {"models": [local_state(m) for m in models], "rng": torch.get_rng_state(),
           "training": [[mod.training for mod in m.modules()] for m in models], "eos": models[0].generation_config.eos_token_id}
    torch.manual_seed(5)
    old_models = load_everywhere_then_shard(policy_dir, policy_dir, options, ctx, reference=True, offload=False)[:3]
    old = {"models": [local_state(m) for m in old_models], "rng": torch.get_rng_state(),
           "training": [[mod.training for mod in m.modules()] for m in old_models], "eos": old_models[0].generation_config.eos_token_id}
    return {"new": new, "old": old}


def test_shards_equal_those_of_loading_everywhere(tmp_path_factory):
    policy_dir = tiny_dir(tmp_path_factory, tie=True)
    for rank, got in enumerate(run_ranks(2, rank_load_both_ways, policy_dir)):
        new, old = got["new"], got["old"]
        assert torch.equal(new["rng"], old["rng"]), rank  # the critic's head init drew the same numbers
        assert new["training"] == old["training"] and new["eos"] == old["eos"]
        for which, (a, b) in enumerate(zip(new["models"], old["models"])):
            assert set(a) == set(b), (rank, which)
            for name, tensor in b.items():
                assert torch.equal(a[name], tensor), (rank, which, name)


def big_dir(tmp_path_factory) -> tuple[str, int]:
    """A model large enough (~54 MB fp32) for its full copy to stand out in a process's peak memory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64,
                         tie_word_embeddings=True, eos_token_id=1)
    model = Qwen2ForCausalLM(config)
    directory = tmp_path_factory.mktemp("big")
    model.save_pretrained(directory)
    return str(directory), sum(p.numel() * p.element_size() for p in model.parameters())


def resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rank_peak_memory(warm_up_dir: str, policy_dir: str) -> int:
    """How far this rank's resident memory rose above where it was while loading the policy
    (bytes; sampled every millisecond by a thread: the loading runs in C++ without the GIL)."""
    from fastzero.sharded_loading import load_models_sharded

    ctx = init_distributed("cpu")
    options = dict(dtype=torch.float32, device=torch.device("cpu"))
    load_models_sharded(warm_up_dir, None, options, ctx, reference=False, offload=False)  # imports: not measured

    baseline, peak, done = resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes() - baseline)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        models = load_models_sharded(policy_dir, None, options, ctx, reference=False, offload=False)
    finally:
        done.set()
        sampler.join()
    del models
    return peak[0]


@pytest.mark.slow
def test_only_rank_zero_holds_a_full_copy(tmp_path_factory):
    """Measured, not assumed: rank 0's peak grows by at least the model (its source copy), rank 1's
    by its half shard plus one tensor in flight - well under the model's size."""
    policy_dir, size = big_dir(tmp_path_factory)
    grew = run_ranks(2, rank_peak_memory, tiny_dir(tmp_path_factory, tie=True), policy_dir)
    assert grew[0] >= 0.9 * size, (grew, size)
    assert grew[1] <= 0.75 * size, (grew, size)
