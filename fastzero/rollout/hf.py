"""A transformers rollout engine: our own batched decoding loop over a shared HF causal LM.

Runs anywhere torch runs (the CPU default path, and the GPU fallback when SGLang is absent). It shares
the trainer's model object, so a weight sync is free.

Why an own loop rather than `model.generate`: for the tiny models this project trains on CPU the
per-step overhead of generate's logits processors, stopping criteria and output bookkeeping costs
more than the model itself; the loop is one base-model call, one LM-head matmul on the last
position and one sampling step per token. It also gives us the sampler's log-probs and an RNG we
own (a torch.Generator whose state the trainer checkpoints for bit-identical resumes).

This file: the protocol (validation, micro-batches of at most `max_batch_size` rows, each prompt's
n samples adjacent, weights, memory). The loop itself, and why each of its parts is there, is in
hf_decode.py. Two decode modes:
- "dynamic" (the CPU default): KV buffers grown in place, done rows compacted away once at most
  `compact_fraction` of them are alive (compacting at half alive was the best of never, half and
  every finish: bench/RESULTS.md, "Rollouts");
- "static" (the CUDA default): a fixed batch and full-length buffers, the decode step compiled with
  torch.compile(mode="reduce-overhead") (CUDA-graph capture), stop checks every `sync_every` tokens.
Both give the same tokens for the same generator state (hf_decode.py, "Determinism").
Dropped: beam search, penalties, speculative decoding, prompt-length bucketing (the embedded model's
prompts all have one width; nothing to gain there).
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from fastzero.rollout.base import Completion, SamplingParams, memory_released, validate_prompts
from fastzero.rollout.hf_decode import DecodeOptions, decode, sample_next

__all__ = ["HFEngine", "sample_next"]
DecodeMode = Literal["auto", "dynamic", "static"]
_MASK_KINDS = {"sdpa": "bool", "eager": "additive"}  # anything else gets the 2D mask


def _eos_ids_of(model: nn.Module) -> tuple[int, ...]:
    """The model's EOS ids from its generation config or config (an int, a list, or absent)."""
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        if eos is not None:
            return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return ()


class HFEngine:
    """Rollouts from a transformers causal LM (shared with the trainer). See the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        *,
        eos_token_ids: Sequence[int] | None = None,  # default: the model's config / generation config
        max_batch_size: int = 512,  # rows (prompts x n) decoded together; bounds KV-cache memory
        compact_fraction: float = 0.5,  # dynamic mode: compact when at most this fraction is alive
        seed: int = 0,  # seeds the engine's own random stream (used when params.seed is None)
        pad_token_id: int = 0,  # fills left padding; masked, so any valid id works
        decode_mode: DecodeMode = "auto",  # "dynamic" on CPU, "static" on CUDA
        compile_step: bool | None = None,  # static mode: torch.compile the step (default: on CUDA)
        sync_every: int | None = None,  # tokens between stop checks (default: 1 on CPU, 16 on CUDA)
        share_prefix: bool = True,  # prefill each prompt once for its n samples
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a transformers causal LM (nn.Module), got {type(model).__name__}")
        if model.get_output_embeddings() is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (LM head): not a causal LM")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0.0 <= compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in [0, 1], got {compact_fraction}")
        if decode_mode not in ("auto", "dynamic", "static"):
            raise ValueError(f"decode_mode must be 'auto', 'dynamic' or 'static', got {decode_mode!r}")
        if sync_every is not None and sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.model = model
        self.eos_token_ids = tuple(int(e) for e in eos_token_ids) if eos_token_ids is not None else _eos_ids_of(model)
        self.max_batch_size = max_batch_size
        self.compact_fraction = compact_fraction
        self.pad_token_id = pad_token_id
        self.share_prefix = share_prefix
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.static = decode_mode == "static" or (decode_mode == "auto" and on_cuda)
        self.sync_every = sync_every or (16 if on_cuda else 1)
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        self.mask_kind = _MASK_KINDS.get(attention, "2d")
        if self.static and self.mask_kind == "2d":
            raise ValueError(f"decode_mode 'static' needs sdpa or eager attention, the model uses {attention!r}")
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        base = model.base_model
        # transformers >= 5.x names the cache argument `cache`; older releases `past_key_values`.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self._static_pool: dict = {}  # static mode's KV buffers, kept so captured graphs see one address
        self._static_step = None
        if self.static and (compile_step if compile_step is not None else on_cuda):
            self._static_step = torch.compile(self._forward, mode="reduce-overhead", dynamic=False)

    # ---- RNG state, for checkpoints -------------------------------------------------------------
    def rng_state(self) -> torch.Tensor:
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    # ---- protocol ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        vocab = getattr(self.model.config, "vocab_size", None)
        checked = validate_prompts(prompts, vocab)
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(p) for p in checked)
        if max_positions is not None and longest + params.max_new_tokens > max_positions:
            raise ValueError(
                f"longest prompt ({longest}) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
                f"max_position_embeddings ({max_positions})"
            )
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        else:
            generator = self._generator
        stop_ids = torch.tensor(sorted(set(self.eos_token_ids) | set(params.stop_token_ids)), dtype=torch.long,
                                device=self.device)
        options = DecodeOptions(compact_fraction=self.compact_fraction, sync_every=self.sync_every,
                                static=self.static, mask_kind=self.mask_kind, pad_token_id=self.pad_token_id,
                                dtype=next(self.model.parameters()).dtype)
        rows = [p for p in range(len(checked)) for _ in range(params.n)]  # prompt-major
        results: list[list[Completion]] = [[] for _ in checked]
        was_training = self.model.training
        self.model.eval()
        try:
            # no_grad, not inference_mode: a module that caches a tensor during generation (dynamic
            # RoPE) would otherwise hand the trainer an inference tensor it cannot backprop through.
            with torch.no_grad():
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start:start + self.max_batch_size]
                    groups = self._groups(chunk)
                    completions = self._decode_chunk([checked[p] for p, _ in groups],
                                                     [count for _, count in groups], params, stop_ids,
                                                     generator, options)
                    for prompt_index, completion in zip(chunk, completions):
                        completion.prompt_index = prompt_index
                        results[prompt_index].append(completion)
        finally:
            self.model.train(was_training)
        return results

    def _decode_chunk(self, prompts: list[list[int]], counts: list[int], params: SamplingParams,
                      stop_ids: torch.Tensor, generator: torch.Generator, options: DecodeOptions) -> list[Completion]:
        """counts[i] completions of prompts[i], in row order (hf_decode.decode)."""
        return decode(self._forward, self._static_step, prompts, counts, params, stop_ids, generator, options,
                      self.device, self._static_pool)

    def _groups(self, chunk: list[int]) -> list[tuple[int, int]]:
        """(prompt index, rows) runs of the chunk: one prefill each (one per row without share_prefix)."""
        groups: list[tuple[int, int]] = []
        for prompt_index in chunk:
            if self.share_prefix and groups and groups[-1][0] == prompt_index:
                groups[-1] = (prompt_index, groups[-1][1] + 1)
            else:
                groups.append((prompt_index, 1))
        return groups

    def update_weights(self, source: Any) -> None:
        """No-op for the shared module; otherwise copy a module's state dict or (name, tensor) pairs."""
        if source is self.model:
            return
        pairs: Iterable[tuple[str, torch.Tensor]] = (
            source.state_dict().items() if isinstance(source, nn.Module) else source
        )
        own = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in pairs:
                if name not in own:
                    raise KeyError(f"update_weights: the rollout model has no tensor named {name!r}")
                if own[name].shape != tensor.shape:
                    raise ValueError(f"update_weights: {name!r} has shape {tuple(tensor.shape)}, "
                                     f"the rollout model expects {tuple(own[name].shape)}")
                own[name].copy_(tensor)

    def release_memory(self) -> None:
        """The model is the trainer's own; only static buffers and cached allocator blocks can go."""
        if self.device.type == "cuda" and self._static_step is None:
            self._static_pool.clear()  # a captured graph keeps its buffers' addresses: keep them then
            torch.cuda.empty_cache()

    def resume_memory(self) -> None:
        """Nothing was released that must come back (see release_memory)."""

    def memory_released(self, weights: Any = None):
        """`with engine.memory_released(weights=policy): train()` (base.memory_released); a near no-op
        pair here, kept so the trainer drives every engine the same exception-safe way."""
        return memory_released(self, weights)

    def shutdown(self) -> None:
        self._static_pool.clear()
        self.model = None  # type: ignore[assignment]  # drop our reference; the trainer keeps its own

    # ---- one forward -----------------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """One forward of the base model; logits of the last column only, in fp32 or wider (a float64
        model keeps float64, which is how the tests compare paths without rounding noise)."""
        out = self.model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                    use_cache=True, **{self._cache_kwarg: cache})
        logits = self.model.get_output_embeddings()(out.last_hidden_state[:, -1])
        return logits.to(torch.promote_types(logits.dtype, torch.float32))
