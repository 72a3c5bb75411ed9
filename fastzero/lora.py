"""LoRA RL through PEFT (--lora-rank r > 0): adapters on the policy, nothing else changes shape.

`add_adapters` calls peft.get_peft_model, which injects LoRA layers into the policy module *in
place*: the trainer, the hf rollout engine and the kernels keep using the same transformers model
(`model.base_model` is still the body, `get_output_embeddings()` still the LM head whose weight the
fused loss reads directly; lm_head and embed_tokens are never targets, config.validate refuses
them, so that weight is the frozen base one, tied to the embedding in the tiny model). Base weights
are frozen, so Optimizers holds AdamW state for the adapters only.

- Reference policy: the base with adapters disabled (`LoraAdapters.disabled()`), so a KL term
  needs no second copy of the model.
- Weight sync to an engine that holds its own copy (SGLang): `merged_named_tensors()` yields the
  base model's parameter names with W + (alpha / r) B A computed on the fly; the policy's own
  weights are never merged in place (merge then unmerge would not round-trip bit-exactly).
- Output: `final/adapter/` (PEFT's adapter_config.json + adapter_model.safetensors, loadable with
  peft.PeftModel.from_pretrained on the base), and with --lora-save-merged the merged model in final/.
PEFT is an optional extra (`pip install fastzero[lora]`), imported only when LoRA is on.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .config import ModelConfig

ADAPTER = "default"


def lora_targets(cfg: ModelConfig) -> list[str]:
    return [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]


class LoraAdapters:
    """The PEFT wrapper around a policy whose modules now carry LoRA layers."""

    def __init__(self, peft_model):
        from peft.tuners.lora import LoraLayer

        self.peft_model = peft_model
        self.model: nn.Module = peft_model.base_model.model  # the policy object itself, adapters injected
        self.layers = {name: module for name, module in self.model.named_modules() if isinstance(module, LoraLayer)}

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model: every adapter off inside the block (the reference policy)."""
        with self.peft_model.disable_adapter():
            yield

    @torch.no_grad()
    def merged_named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(base parameter name, merged tensor) pairs: what a plain copy of the model would hold."""
        for name, param in self.model.named_parameters():
            if ".lora_" in name:
                continue
            owner, sep, leaf = name.rpartition(".base_layer.")
            if not sep:
                yield name, _full(param.detach())
                continue
            layer = self.layers[owner]
            tensor = _full(param.detach())
            if leaf == "weight":
                tensor = tensor + self._delta(layer).to(tensor.dtype)
            yield f"{owner}.{leaf}", tensor

    @staticmethod
    def _delta(layer) -> torch.Tensor:
        """(alpha / r) B A; under FSDP2 from the gathered factors (collective: every rank asks)."""
        lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if not hasattr(lora_a, "full_tensor"):
            return layer.get_delta_weight(ADAPTER)
        return (_full(lora_b.detach()) @ _full(lora_a.detach())) * layer.scaling[ADAPTER]

    def save_adapter(self, folder: str) -> None:
        self.peft_model.save_pretrained(folder)

    def save_merged(self, folder: str | None, save) -> None:
        """A plain transformers model directory of base + adapter (the policy itself is left as it is).
        Sharded: collective, and only the rank given a folder (rank 0) writes."""
        merged = dict(self.merged_named_tensors())
        if folder is None:
            return
        config = self.model.config
        with torch.device("meta"):  # no random init, no second allocation: the merged tensors are assigned
            plain = type(self.model)(config)
        missing, unexpected = plain.load_state_dict(merged, strict=False, assign=True)
        untouched = {k for k in missing if "lm_head" in k}  # tied to the embedding
        if set(missing) - untouched or unexpected:
            raise RuntimeError(f"merged LoRA weights do not match the model: missing {sorted(set(missing) - untouched)}, "
                               f"unexpected {sorted(unexpected)}")
        if untouched:
            plain.tie_weights()
        plain.generation_config = self.model.generation_config
        save(plain, folder)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) parameter; a plain one as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def save_final_policy(policy: nn.Module, lora: LoraAdapters | None, folder: str, *, merged: bool,
                      save=None) -> None:
    """final/: the model (full fine-tuning), or the adapter in adapter/ (and the merged model on
    request); `save(model, folder)` writes a full model (default: save_pretrained)."""
    save = save or (lambda model, where: model.save_pretrained(where))
    if lora is None:
        save(policy, folder)
        return
    lora.save_adapter(os.path.join(folder, "adapter"))
    if merged:
        lora.save_merged(folder, save)


def save_final_sharded(lora: LoraAdapters, folder: str | None, ctx, *, merged: bool, save) -> None:
    """final/ of a LoRA run on several ranks (collective; rank 0, the one given a folder, writes):
    the adapter from the gathered state dict in PEFT's format, and the merged model on request."""
    from .sharding import full_state_dict

    state = full_state_dict(lora.model, ctx)  # every parameter gathered to rank 0
    if folder is not None:
        prefixed = {"base_model.model." + name: tensor for name, tensor in state.items()}  # PeftModel's names
        lora.peft_model.save_pretrained(os.path.join(folder, "adapter"), state_dict=prefixed)
    del state
    if merged:
        lora.save_merged(folder, save)


def add_adapters(policy: nn.Module, cfg: ModelConfig) -> LoraAdapters:
    """Inject LoRA adapters of rank --lora-rank into `policy` (in place) and freeze its base weights."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("--lora-rank: the peft package is not installed (pip install peft, or fastzero[lora])") from None
    names = {name.rsplit(".", 1)[-1] for name, _ in policy.named_modules()}
    missing = [t for t in lora_targets(cfg) if t not in names]
    if missing:
        raise ValueError(f"--lora-targets: the model has no module named {', '.join(missing)}")
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=lora_targets(cfg),
                        lora_dropout=0.0, bias="none")  # no dropout: old and new log-probs stay comparable
    adapters = LoraAdapters(get_peft_model(policy, config))
    if adapters.model is not policy:
        raise RuntimeError("peft.get_peft_model did not inject into the policy in place")
    return adapters
