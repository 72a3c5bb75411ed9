"""FSDP2 for the policy, reference and critic: shard per transformer block and at the root.

`shard_model` applies torch.distributed.fsdp.fully_shard to every transformer block and then to the
whole model, so a block's parameters are all-gathered just before it runs and freed after, and the
root group holds the rest (embedding, final norm, LM head; one tensor when the embedding is tied).
On CUDA the parameters stay fp32 (the optimizer's master copy) and are all-gathered in bf16, with
gradients reduced in fp32 (MixedPrecisionPolicy); on CPU everything stays fp32. `offload=True`
keeps the sharded parameters, gradients and optimizer state in host memory (CPUOffloadPolicy): the
optimizer step then runs on the CPU.

The fused kernels read the LM-head weight directly (model.lm_head_weight), bypassing the head
module's forward and thus FSDP's hooks; outside a forward they would see a shard (a DTensor). So a
sharded causal LM is entered through its ROOT forward (`root_hidden_states`): FSDP all-gathers the
root group, keeps it gathered until the backward (FSDP never reshards the root after forward), and
the weight read afterwards is the full, unsharded parameter that autograd accumulates into; the
root's gradients are reduce-scattered by FSDP's end-of-backward callback like every other group's.
The root forward computes logits for one position only (logits_to_keep=1): a [B, V] product.

Generation (`gathered`): each rank decodes its own prompts for a different number of steps, so no
collective may run inside the decoding loop. The context all-gathers every group once, keeps them
gathered through all the engine's forwards, and reshards afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .distributed import DistContext

_BLOCK_LIST_NAMES = ("layers", "h", "blocks")  # where HF models keep their transformer blocks


def is_sharded(model: nn.Module) -> bool:
    """True for a module fully_shard was applied to (FSDP2 swaps its class for an FSDPModule one)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(model, FSDPModule)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the (first) block list: model.model.layers of a causal LM, backbone.layers of a critic."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES:
            return list(module)
    raise ValueError(f"{type(model).__name__}: no transformer block list ({'/'.join(_BLOCK_LIST_NAMES)}) to shard")


def mixed_precision_for(device: torch.device):
    """bf16 all-gathers with fp32 gradient reduction on CUDA; None (plain fp32) on CPU."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, ctx: DistContext, *, offload: bool = False,
                fp32_modules: tuple[nn.Module, ...] = ()) -> nn.Module:
    """fully_shard each transformer block, each of `fp32_modules` (kept fp32), then the root; in place.

    Every rank must call this with the same model: the sharding is collective from the first
    forward on. The root is initialized here (FSDP picks as root the first module to run forward;
    an engine that calls a block first would otherwise make that block a root).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if not ctx.enabled:
        raise ValueError("shard_model needs a distributed context (world size > 1)")
    options = dict(mesh=ctx.mesh, mp_policy=mixed_precision_for(ctx.device),
                   offload_policy=CPUOffloadPolicy(pin_memory=ctx.device.type == "cuda") if offload else OffloadPolicy())
    for block in transformer_blocks(model):
        fully_shard(block, **options)
    for module in fp32_modules:  # e.g. the critic's value head: regression targets need fp32
        fully_shard(module, **{**options, "mp_policy": MixedPrecisionPolicy(param_dtype=torch.float32,
                                                                             reduce_dtype=torch.float32)})
    fully_shard(model, **options)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # Built on the meta device (fastzero/sharded_loading.py): storage for this rank's shards
        # only, filled from rank 0 afterwards. FSDP refuses to initialise with meta parameters.
        model.to_empty(device=torch.device("cpu") if offload else ctx.device)
    model._get_fsdp_state()._lazy_init()  # make `model` the root now (see docstring)
    return model


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def root_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       position_ids: torch.Tensor | None) -> torch.Tensor:
    """Final-norm hidden states [B, T, H] of a sharded causal LM, through its root forward.

    Afterwards, and until the backward has run, the LM-head weight is the full parameter.
    """
    captured: list[torch.Tensor] = []
    hook = model.base_model.register_forward_hook(lambda _m, _args, out: captured.append(out.last_hidden_state))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
              logits_to_keep=1)
    finally:
        hook.remove()
    return captured[-1]


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Every parameter of a sharded model all-gathered for the duration (no collective inside).

    For generation: each rank runs its own number of forwards. A no-op for an unsharded model.
    """
    if not is_sharded(model):
        yield model
        return
    modules = _fsdp_modules(model)
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            if module is not model:  # the root never reshards after forward anyway
                module.set_reshard_after_forward(True, recurse=False)


class ShardedEngine:
    """A rollout engine for a sharded policy, on every rank.

    shares_model (the hf engine decodes with the trainer's own module): generate runs inside
    `gathered(model)` and a weight sync is free. Otherwise (SGLang, one engine per rank) the sync
    hands the engine full tensors gathered from the shards one at a time, so each rank's engine
    receives the whole model; the engine buckets them itself.
    """

    def __init__(self, engine: Any, model: nn.Module, *, shares_model: bool):
        self.engine, self.model, self.shares_model = engine, model, shares_model

    def generate(self, prompts, params):
        if not self.shares_model:
            return self.engine.generate(prompts, params)
        with torch.no_grad(), gathered(self.model):
            return self.engine.generate(prompts, params)

    def update_weights(self, source: Any) -> None:
        if isinstance(source, nn.Module) and is_sharded(source) and not self.shares_model:
            source = full_named_parameters(source)
        self.engine.update_weights(source)

    def memory_released(self, weights: Any = None):
        """base.memory_released through this wrapper, so the reload of `weights` gathers full tensors
        (forwarded to the inner engine it would push the shards)."""
        from .rollout.base import memory_released

        return memory_released(self, weights)

    def __getattr__(self, name: str) -> Any:  # rng_state, release_memory, shutdown, ...
        return getattr(self.engine, name)


def shard_models(models: Any, ctx: DistContext, *, offload: bool = False) -> None:
    """Shard the policy, the reference and the critic (its value head kept fp32) of a Models."""
    shard_model(models.policy, ctx, offload=offload)
    if models.reference is not None:
        shard_model(models.reference, ctx, offload=offload)
    if models.critic is not None:
        shard_model(models.critic, ctx, offload=offload, fp32_modules=(models.critic.value_head,))


def full_named_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, gathering shards one tensor at a time (for a weight
    sync to a rollout engine). Collective: every rank must consume the whole iterator."""
    for name, param in model.named_parameters():
        data = param.detach()
        yield name, data.full_tensor() if hasattr(data, "full_tensor") else data


def full_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU on rank 0 ({} on the other ranks). Collective."""
    if not ctx.enabled:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
