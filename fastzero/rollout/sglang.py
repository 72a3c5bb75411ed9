"""Rollouts with SGLang's offline Engine, colocated with the trainer on the same GPU(s).

Written against sglang 0.5.23 and checked name by name against the installed package
(tests/rollout/test_sglang.py::test_calls_match_installed_sglang_api, run in a venv that has it).
SGLang cannot start on a machine without CUDA, so the adapter's logic is tested with a stand-in
engine passed through `engine_factory`; the real Engine never ran here.

One RL step, as the trainer drives it (`with engine.memory_released(weights=policy): train()` does
release, resume and update_weights around the block, even when training raises):
    release_memory()          -> Engine.release_memory_occupation()  (weights, KV cache, CUDA graphs)
    ... train ...
    resume_memory()           -> Engine.resume_memory_occupation()   (memory is back; the weights in
                                 it are garbage: torch_memory_saver does not keep their contents)
    update_weights(model)     -> begin_weight_update(); update_weights_from_tensor(bucket,
                                 flush_cache=False) per bucket and flush_cache=True on the last one
                                 (the radix cache holds KV computed with the old weights);
                                 end_weight_update()
    generate(prompts, params) -> refused until the weights were reloaded after a resume.
Facts taken from the installed source, not from docs:
- 0.5.23's scheduler rejects update_weights_from_tensor outside a begin_weight_update() /
  end_weight_update() session (success=False, it does not raise), so every call's (success,
  message) is checked;
- update_weights_from_tensor takes plain (name, tensor) pairs and serializes them itself
  (MultiprocessingSerializer, one payload per TP rank): no LocalSerializedTensor needed;
- with skip_tokenizer_init the output dict is {"output_ids", "meta_info"}; output_ids keep the
  matched stop token (only the detokenizer's text path trims it); meta_info["finish_reason"] is
  {"type": "stop", "matched": id} or {"type": "length", ...}; output_token_logprobs holds
  (logprob, token_id, None) tuples, log-softmax of temperature-scaled logits before top-p/top-k
  (plain log-softmax when greedy): the same convention as the HF engine;
- per-request sampling_seed only acts under enable_deterministic_inference, and would make the n
  samples of one prompt identical, so seeded requests are expanded to one seed per sample.
Under torchrun, run._make_engine places one of these per rank (--sglang-tp 1) or one per group of
--sglang-tp ranks on the group's first rank (rollout/tp_engine.py, rollout/tp_groups.py).
Kept out: fine-grained resume (weights first, KV cache after loading, a lower peak), since it
cannot be tested here; multi-node; the flattened_bucket load format.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from fastzero.rollout.base import Completion, SamplingParams, memory_released, validate_prompts

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 512 * 2**20
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile / DDP wrappers add these to names


def _sglang_engine_class() -> Callable[..., Any]:
    try:
        from sglang.srt.entrypoints.engine import Engine
    except ImportError as error:
        raise RuntimeError("rollout engine 'sglang' needs `pip install sglang` (CUDA only)") from error
    return Engine


def named_tensors_of(source: Any) -> Iterable[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs from a module (tied weights once) or an iterable of pairs."""
    pairs = source.named_parameters() if isinstance(source, nn.Module) else source
    for name, tensor in pairs:
        for prefix in _WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        yield name, tensor


def buckets_of(pairs: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int,
               dtype: torch.dtype | None) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Group pairs into lists of about bucket_bytes (a bigger tensor travels alone), cast to dtype."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in pairs:
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def _check_ok(result: Any, what: str) -> None:
    """Engine calls answer (success, message); a refused call must not pass silently."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool) and not result[0]:
        raise RuntimeError(f"sglang {what} failed: {result[1]}")


class SGLangEngine:
    """The RolloutEngine protocol over sglang.Engine; see the module docstring for the call order."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",  # what the engine computes in; weights are cast to it on sync
        mem_fraction_static: float = 0.5,  # share of GPU memory for weights + KV cache
        tp_size: int = 1,
        seed: int = 0,  # the engine's random_seed
        deterministic: bool = False,  # enable_deterministic_inference: batch-invariant, seedable
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,  # weight-sync bucket size
        engine_kwargs: dict[str, Any] | None = None,  # passed through to sglang.Engine
        engine_factory: Callable[..., Any] | None = None,  # default sglang.Engine; tests pass a stand-in
    ) -> None:
        config_file = Path(model_path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no config.json in model directory {str(model_path)!r}")
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.vocab_size = json.loads(config_file.read_text()).get("vocab_size")
        self.dtype = getattr(torch, dtype) if dtype != "auto" else None
        self.bucket_bytes = bucket_bytes
        self.deterministic = deterministic
        kwargs = dict(model_path=str(model_path), dtype=dtype, mem_fraction_static=mem_fraction_static,
                      tp_size=tp_size, random_seed=seed, enable_memory_saver=True, skip_tokenizer_init=True,
                      enable_deterministic_inference=deterministic)
        kwargs.update(engine_kwargs or {})
        self._engine = (engine_factory or _sglang_engine_class())(**kwargs)
        self._released = False
        self._weights_stale = False  # True from a resume until the next update_weights

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if self._released:
            raise RuntimeError("SGLangEngine.generate after release_memory(): call resume_memory() and "
                               "update_weights() first")
        if self._weights_stale:
            raise RuntimeError("SGLangEngine.generate after resume_memory() without update_weights(): the "
                               "engine's weights were released and hold garbage")
        checked = validate_prompts(prompts, self.vocab_size)
        if params.seed is not None and not self.deterministic:
            logger.warning("SamplingParams.seed has no effect unless SGLangEngine(deterministic=True)")
        # n is expanded here, one request per sample: the prefix (radix) cache still shares each
        # prompt's KV, and each sample can carry its own seed.
        rows = [ids for ids in checked for _ in range(params.n)]
        base = self._sampling_dict(params)
        sampling: dict | list[dict] = base
        if params.seed is not None:
            sampling = [dict(base, sampling_seed=params.seed + row) for row in range(len(rows))]
        outputs = self._engine.generate(input_ids=rows, sampling_params=sampling, return_logprob=True)
        if len(outputs) != len(rows):
            raise RuntimeError(f"sglang returned {len(outputs)} outputs for {len(rows)} requests")
        results: list[list[Completion]] = [[] for _ in checked]
        for row, output in enumerate(outputs):
            prompt_index = row // params.n
            results[prompt_index].append(self._completion(prompt_index, output))
        return results

    @staticmethod
    def _sampling_dict(params: SamplingParams) -> dict[str, Any]:
        return {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,  # sglang: < 1e-6 means greedy
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,  # sglang: -1 = whole vocabulary
            "stop_token_ids": list(params.stop_token_ids) or None,  # the model's EOS stops anyway
            "n": 1,
        }

    @staticmethod
    def _completion(prompt_index: int, output: dict[str, Any]) -> Completion:
        meta = output["meta_info"]
        response = [int(t) for t in output["output_ids"]]
        reason = meta.get("finish_reason") or {}
        kind = reason.get("type")
        if kind not in ("stop", "length"):
            raise RuntimeError(f"sglang request {meta.get('id')} ended with {reason!r}")
        matched = reason.get("matched")
        if kind == "stop" and isinstance(matched, int) and (not response or response[-1] != matched):
            raise RuntimeError(f"sglang dropped the matched stop token {matched} from output_ids; "
                               "the trainer needs it in the response")
        logprobs = [float(entry[0]) for entry in meta.get("output_token_logprobs") or []]
        if len(logprobs) != len(response):
            raise RuntimeError(f"sglang returned {len(logprobs)} log-probs for {len(response)} tokens")
        return Completion(prompt_index=prompt_index, response_ids=response, logprobs=logprobs,
                          finish_reason=kind)

    # ---- weights and memory ------------------------------------------------------------------------
    def update_weights(self, source: Any) -> None:
        """Send a module's parameters (or (name, tensor) pairs) in buckets; flush after the last."""
        if self._released:
            raise RuntimeError("SGLangEngine.update_weights while memory is released: call resume_memory() first")
        buckets = buckets_of(named_tensors_of(source), self.bucket_bytes, self.dtype)
        pending = next(buckets, None)
        if pending is None:
            raise ValueError("update_weights got no tensors")
        _check_ok(self._engine.begin_weight_update(), "begin_weight_update")
        try:
            while pending is not None:
                following = next(buckets, None)
                result = self._engine.update_weights_from_tensor(named_tensors=pending, load_format=None,
                                                                 flush_cache=following is None)
                _check_ok(result, "update_weights_from_tensor")
                pending = following
        finally:  # close the session even when a bucket failed, so the next sync can open one
            ended = self._engine.end_weight_update()
        _check_ok(ended, "end_weight_update")
        self._weights_stale = False

    def release_memory(self) -> None:
        if not self._released:
            self._engine.release_memory_occupation()
            self._released = True

    def resume_memory(self) -> None:
        if self._released:
            self._engine.resume_memory_occupation()
            self._released = False
            self._weights_stale = True

    def memory_released(self, weights: Any = None):
        """`with engine.memory_released(weights=policy): train()`: resumes and reloads `weights` on any
        exit, an exception included (base.memory_released), so the engine is never left released."""
        return memory_released(self, weights)

    def shutdown(self) -> None:
        self._engine.shutdown()
