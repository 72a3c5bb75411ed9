"""The policy, reference and critic of a run on several ranks, without a full copy of the weights
on every rank.

Loading a checkpoint on each rank and then sharding it costs N full copies of the model in host
memory at once (8 x 15 GB for a 7B model in bf16 on one node) for a moment that ends with every
rank holding 1/N of it. Here only rank 0 reads the weights:
1. rank 0 loads the Hugging Face checkpoint on the CPU, exactly as one process does (the source);
2. every rank (rank 0 too) builds the same architecture on the meta device (shapes, no storage),
   with the same dtype, attention, Liger patches and activation checkpointing as the one-process
   loader (fastzero.model), and fully_shards it; shard_model then allocates storage for this
   rank's shards only (fastzero.sharding.shard_model materializes meta models);
3. the shards are filled from rank 0, one tensor at a time (torch.distributed.checkpoint's
   set_model_state_dict with full_state_dict + broadcast_from_rank0), and so are the buffers that
   a state dict does not carry (rotary inv_freq: non-persistent), broadcast from the source;
4. rank 0's torch RNG state is broadcast: the one-process loader draws from it (the critic's value
   head init), the meta build does not, and every rank must leave loading with the same state
   (what a run on N ranks had when each rank loaded the checkpoint itself).
The reference policy is filled from the same source as the policy (no copy of it is made), and
the source is dropped before the critic's is loaded: rank 0's peak is one full model plus its
shards; the other ranks' is their shards plus the largest single tensor (the broadcast buffer).
The loaded shards are bit-identical to those of loading everywhere and sharding (no arithmetic).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .distributed import DistContext, comm_device
from .model import CriticModel, check_model_dir, finish_model, choose_backends


def empty_causal_lm(path: str, *, dtype: Any, device: Any, attn_implementation: str = "auto",
                    gradient_checkpointing: bool = False) -> nn.Module:
    """The causal LM of the checkpoint at `path` on the meta device, configured like load_causal_lm's."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    directory = check_model_dir(path)
    backends = choose_backends(device, dtype, attn_implementation)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=backends.dtype,
                                                 attn_implementation=backends.attn_implementation)
    if (directory / "generation_config.json").is_file():  # its EOS ids name the stop tokens
        model.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)
    model.eval()  # as from_pretrained returns it
    return finish_model(model, backends, gradient_checkpointing, move=False)


def empty_critic(path: str, *, dtype: Any, device: Any, attn_implementation: str = "auto",
                 gradient_checkpointing: bool = False) -> CriticModel:
    """A CriticModel on the meta device (backbone and value head), configured like from_pretrained's."""
    from transformers import AutoConfig, AutoModel

    directory = check_model_dir(path)
    backends = choose_backends(device, dtype, attn_implementation)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, dtype=backends.dtype, attn_implementation=backends.attn_implementation)
        backbone.eval()  # as from_pretrained returns it
        return CriticModel(finish_model(backbone, backends, gradient_checkpointing, move=False))


def source_causal_lm(path: str, *, dtype: Any, **_unused) -> nn.Module:
    """The full checkpoint in host memory (rank 0 only): the source the shards are filled from."""
    from transformers import AutoModelForCausalLM

    backends = choose_backends("cpu", dtype, "sdpa")  # the weights do not depend on the attention kernel
    return AutoModelForCausalLM.from_pretrained(check_model_dir(path), dtype=backends.dtype, local_files_only=True,
                                                attn_implementation="sdpa")


def source_critic(path: str, *, dtype: Any, **_unused) -> CriticModel:
    return CriticModel.from_pretrained(path, dtype=dtype, device="cpu", attn_implementation="sdpa")


def fill_from_rank0(model: nn.Module, source: nn.Module | None, ctx: DistContext) -> None:
    """Copy rank 0's `source` into the sharded `model` on every rank (collective; source None elsewhere)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = source.state_dict() if ctx.is_main else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    source_buffers = dict(source.named_buffers()) if ctx.is_main else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            staged = buffer.detach().to(comm_device(ctx))
            if ctx.is_main:
                staged.copy_(source_buffers[name])
            dist.broadcast(staged, src=0)
            buffer.copy_(staged)


def load_sharded(path: str, ctx: DistContext, *, build: Callable[..., nn.Module], read: Callable[..., nn.Module],
                 options: dict[str, Any], shard: Callable[[nn.Module], Any],
                 variants: tuple[Callable[[nn.Module], nn.Module], ...] = (lambda m: m,)) -> list[nn.Module]:
    """One sharded model per variant (the policy, then its frozen reference), all filled from one
    read of `path` on rank 0. A variant prepares the empty model before it is sharded."""
    source = read(path, **options) if ctx.is_main else None
    models = []
    for prepare in variants:
        model = prepare(build(path, **options))
        if not all(t.is_meta for t in model.parameters()):
            raise AssertionError("a meta-device build allocated parameters")  # the point of this module
        shard(model)
        fill_from_rank0(model, source, ctx)
        models.append(model)
    del source
    return models


def share_rng_state(ctx: DistContext) -> None:
    """Every rank leaves loading with rank 0's torch RNG state (see the module docstring, step 4)."""
    from .distributed import broadcast_object

    torch.set_rng_state(broadcast_object(torch.get_rng_state(), ctx))


def load_models_sharded(model_path: str, critic_path: str | None, load_options: dict[str, Any], ctx: DistContext, *,
                        reference: bool, offload: bool, lora: Any = None) -> tuple:
    """(policy, reference or None, critic or None, LoraAdapters or None), all sharded, rank 0 the
    only reader of weights. lora: the ModelConfig when --lora-rank > 0: the adapters are injected
    into the empty policy before it is sharded (and into rank 0's source, which draws their initial
    values from the RNG as one process does); the reference is then the policy with them disabled."""
    from .lora import add_adapters
    from .sharding import shard_model

    adapters: list[Any] = []

    def with_adapters(model: nn.Module) -> nn.Module:
        adapters.append(add_adapters(model, lora))
        return model

    def read(path: str, **options: Any) -> nn.Module:
        source = source_causal_lm(path, **options)
        if lora is not None:
            add_adapters(source, lora)
        return source

    frozen = lambda model: model.eval().requires_grad_(False)  # noqa: E731 - the reference, as in one process
    if lora is not None:
        variants = (with_adapters,)
    else:
        variants = (lambda m: m, frozen) if reference else (lambda m: m,)
    loaded = load_sharded(model_path, ctx, build=empty_causal_lm, read=read, options=load_options,
                          shard=lambda m: shard_model(m, ctx, offload=offload), variants=variants)
    policy = loaded[0]
    ref = (policy if lora is not None else loaded[1]) if reference else None
    critic = None
    if critic_path is not None:
        critic = load_sharded(critic_path, ctx, build=empty_critic, read=source_critic, options=load_options,
                              shard=lambda m: shard_model(m, ctx, offload=offload, fp32_modules=(m.value_head,)))[0]
    share_rng_state(ctx)
    return policy, ref, critic, (adapters[0] if adapters else None)
