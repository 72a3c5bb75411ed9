"""The GPU check's training-step stage: one RL step's phases on a full-depth, random-weight
Qwen2.5-shaped model, timed and measured, with the trainer's own pieces (hf engine, fused
log-probs, fused policy loss, fastzero.optim with fp32 masters).

Per phase: tokens/s, peak allocated memory against fastzero.memory_plan's phase total, and MFU:
model FLOPs (6 x body params x tokens for forward + backward, 2x for a forward; the LM head only on
response tokens; causal attention 2 x layers x hidden x tokens x sequence per forward) over the
phase's time, as % of a bf16 matmul measured in the same run. Run by bench/gpu_check.py.
"""
from __future__ import annotations

import time

import torch

SIZES = {  # rows (gen batch), prompt tokens, response tokens, micro-batch tokens
    "gpu": dict(rows=64, prompt=128, response=256, micro=16384),
    "dry": dict(rows=4, prompt=16, response=8, micro=64),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, t0 = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


class _Phase:
    """Times a phase and records its peak allocated bytes (CUDA only)."""

    def __init__(self, device: torch.device, report: dict, name: str):
        self.device, self.report, self.name = device, report, name

    def __enter__(self):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        entry = self.report.setdefault(self.name, {})
        entry["seconds"] = round(time.perf_counter() - self.t0, 4)
        if self.device.type == "cuda":
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
        return False


def train_step_stage(shape_name: str, *, dry: bool) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from fastzero.batch import collate, microbatches
    from fastzero.config import OptimizerConfig
    from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss
    from fastzero.kernels.aggregation import token_weights
    from fastzero.memory_plan import ModelShape, PlanOptions, plan_memory
    from fastzero.model import lm_head_weight, response_tokens, sequence_logprobs
    from fastzero.optim import Optimizers
    from fastzero.rollout.base import SamplingParams
    from fastzero.rollout.hf import HFEngine
    from fastzero.testing.qwen_standin import qwen25_config

    device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = SIZES["dry" if dry else "gpu"]
    heads = qwen25_config(shape_name)["num_attention_heads"]
    config = qwen25_config(shape_name, layers=2 if dry else None, hidden=8 * heads if dry else None)
    shape = ModelShape.from_config(config)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}))
    model = model.to(device=device, dtype=dtype)
    optimizers = Optimizers(OptimizerConfig(lr=1e-6), model)
    report: dict = {"shape": shape_name, "params": shape.params, "device": str(device), "dtype": str(dtype),
                    **size, "phases": {}}
    phases = report["phases"]

    rows, prompt_len, response_len = size["rows"], size["prompt"], size["response"]
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 151643, (rows, prompt_len), generator=g).tolist()
    engine = HFEngine(model, eos_token_ids=[shape.vocab + 1], max_batch_size=rows)  # never stops: full length
    params = SamplingParams(max_new_tokens=response_len, temperature=1.0)
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=2))  # warm-up
    with _Phase(device, phases, "rollout"):
        groups = engine.generate(prompts, params)
    responses = [c.response_ids for group in groups for c in group]
    batch = collate(prompts, responses, pad_id=0, device=device)
    everything = torch.arange(len(batch))
    with _Phase(device, phases, "logprobs"), torch.no_grad():
        old = torch.zeros_like(batch.response_mask)
        for mb_rows in microbatches(everything, batch.lengths, size["micro"]):
            mb = batch.select(mb_rows)
            old[mb_rows, :mb.input_ids.shape[1]] = sequence_logprobs(model, mb.input_ids, mb.attention_mask,
                                                                     mb.response_mask)
    advantages = torch.randn(len(batch), 1, generator=g).to(device) * batch.response_mask
    weights = token_weights(batch.response_mask, "token-mean", response_len)
    with _Phase(device, phases, "update"):
        optimizers.zero_grad()
        for mb_rows in microbatches(everything, batch.lengths, size["micro"]):
            mb = batch.select(mb_rows)
            width = mb.input_ids.shape[1]
            resp = response_tokens(model, mb.input_ids, mb.attention_mask, mb.response_mask)
            loss, _ = fused_linear_policy_loss(resp.hidden, lm_head_weight(model), resp.targets,
                                               resp.gather(old[mb_rows, :width]), resp.gather(advantages[mb_rows, :width]),
                                               resp.gather(weights[mb_rows, :width]))
            loss.backward()
        optimizers.step(0)

    tokens = rows * (prompt_len + response_len)
    generated = rows * response_len
    body = shape.params - shape.vocab * shape.hidden  # tied: the embedding lookup costs no FLOPs
    attention = 2 * shape.layers * shape.heads * shape.head_dim * tokens * (prompt_len + response_len)
    forward = 2 * body * tokens + 2 * shape.vocab * shape.hidden * generated + attention
    decode = 2 * (body + shape.vocab * shape.hidden) * generated + 2 * body * rows * prompt_len + attention
    flops = {"rollout": decode, "logprobs": forward, "update": 3 * forward}
    ceiling = matmul_tflops(device, dtype, 512 if dry else 8192)
    report["matmul_tflops"] = round(ceiling, 3)
    plan = plan_memory(shape, PlanOptions(param_bytes=2 if dtype == torch.bfloat16 else 4, micro_batch_tokens=size["micro"],
                                          prompt_tokens=prompt_len, response_tokens=response_len, gen_batch_size=rows,
                                          cuda=device.type == "cuda"))
    for name, entry in phases.items():
        count = generated if name == "rollout" else tokens
        entry["tokens_per_s"] = round(count / entry["seconds"], 1)
        entry["tflops"] = round(flops[name] / entry["seconds"] / 1e12, 4)
        entry["mfu_pct_of_matmul"] = round(100 * entry["tflops"] / ceiling, 2)
        plan_phase = "update" if name == "update" else name
        entry["plan_gib"] = round(max(plan.phase_bytes(plan_phase),
                                      plan.phase_bytes("optimizer step") if name == "update" else 0) / 2 ** 30, 3)
    return report
