"""How much memory a run needs per GPU, computed from the model's config.json and the options
before anything is loaded, and which option to change when it does not fit.

Pure arithmetic (no torch), so `--plan` is instant and a run that cannot fit stops before loading.
A run passes through three phases and the peak is the largest of them:
  rollout   resident state + the rollout engine (hf: KV cache of gen_batch_size x (prompt +
            response) tokens and the [rows, V] fp32 sampling buffers; sglang: its
            mem_fraction_static share of the device, which holds its weights and KV cache)
  logprobs  resident state + one no-grad forward of a micro-batch + the fused log-prob chunk
  update    resident state + gradients + saved activations of a micro-batch (policy, and the
            critic's for PPO) + the fused loss's buffers; then the optimizer step (fp32 gradients
            of the masters, AdamW's temporaries)
Resident state: policy weights, fp32 masters and AdamW moments (fastzero.optim), the frozen
reference (KL > 0) and the critic with its optimizer (PPO). FSDP over `world_size` GPUs shards
weights, gradients, masters and moments; activations and engine buffers are per GPU.

Activations per token and layer are counted from what a transformers Qwen2/Llama decoder layer
saves for backward with SDPA (b = bytes of the compute dtype, H hidden, I intermediate, K = kv
heads x head size): each RMSNorm keeps its fp32 input, its fp32 normalized value and its output
(12H bytes, twice), q (before and after RoPE, and rotate_half), the attention output and o_proj's
input (5bH), k likewise and v (4bK), the MLP's gate, SiLU, up and product (4bI), and SDPA's
log-sum-exp (4 bytes per head). Gradient checkpointing keeps each layer's input (bH) and
recomputes one layer at a time. The backward's working set adds the gradients of one MLP (3bI +
2bH per token). tests/test_memory_plan.py checks these terms against torch's allocator on CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

GiB = 2 ** 30
FUSED_CHUNK_BYTES = 256 * 2 ** 20  # fastzero.kernels.logprob.CHUNK_BUDGET_BYTES
SAMPLING_BUFFERS = 6  # hf engine, top-p 1: fp32 [rows, V] logits, scaled, log-softmax, probabilities, noise, ratio
CUDA_OVERHEAD = GiB  # what a CUDA process holds besides tensors: context, cuBLAS workspace, slack


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        """From a Hugging Face config.json (Qwen2, Llama and their kin)."""
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(vocab=int(config["vocab_size"]), hidden=hidden, intermediate=int(config["intermediate_size"]),
                       layers=int(config["num_hidden_layers"]), heads=heads,
                       kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads),
                       tied=bool(config.get("tie_word_embeddings", False)))
        except KeyError as err:
            raise ValueError(f"config.json has no {err.args[0]!r}: cannot plan memory for this model") from None

    @property
    def layer_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * q + q + 2 * (self.hidden * kv + kv) + q * self.hidden
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def body_params(self) -> int:
        """Embedding, decoder layers and final norm: what a critic backbone holds."""
        return self.vocab * self.hidden + self.layers * self.layer_params + self.hidden

    @property
    def params(self) -> int:
        return self.body_params + (0 if self.tied else self.vocab * self.hidden)

    def activation_bytes_per_token(self, b: int, checkpointing: bool) -> int:
        """Saved for backward per token, all layers (see the module docstring)."""
        h, i, k = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        layer = 24 * h + 5 * b * h + 4 * b * k + 4 * b * i + 4 * self.heads
        outside = b * h  # the embedding's output
        if checkpointing:  # layer inputs kept, one layer recomputed at a time during backward
            return self.layers * b * h + layer + outside
        return self.layers * layer + outside

    def backward_bytes_per_token(self, b: int) -> int:
        return b * (self.intermediate + 4 * self.hidden)

    def prefill_bytes_per_token(self, b: int) -> int:
        """One decoder layer's live tensors in a no-grad forward (the MLP's three [tokens, I] at once)."""
        return b * (3 * self.intermediate + 4 * self.hidden)

    def kv_bytes_per_token(self, b: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * b


@dataclass(frozen=True)
class PlanOptions:
    param_bytes: int = 2  # 2 = bf16 (GPU default), 4 = fp32
    micro_batch_tokens: int = 16384
    gradient_checkpointing: bool = False
    prompt_tokens: int = 256
    response_tokens: int = 1024
    engine: str = "hf"  # hf | sglang
    gen_batch_size: int = 512
    sglang_mem_fraction: float = 0.5
    reference: bool = False  # --kl-coef > 0
    critic: bool = False  # PPO
    world_size: int = 1
    device_bytes: int | None = None  # None: report only
    cuda: bool = True  # CPU differs: AdamW loops (no foreach temporaries), bf16 matmuls upcast the LM head
    overhead_bytes: int = 0  # CUDA context, cuBLAS workspaces, allocator slack (not allocated tensors)


@dataclass
class MemoryPlan:
    shape: ModelShape
    options: PlanOptions
    items: dict[str, int] = field(default_factory=dict)  # name -> bytes per GPU
    phases: dict[str, list[str]] = field(default_factory=dict)  # phase -> item names alive in it
    advice: list[str] = field(default_factory=list)

    def phase_bytes(self, phase: str) -> int:
        return sum(self.items[name] for name in self.phases[phase])

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.phase_bytes(self.peak_phase)

    @property
    def fits(self) -> bool:
        return self.options.device_bytes is None or self.peak_bytes <= self.options.device_bytes

    def format(self) -> str:
        o = self.options
        lines = [f"memory plan per GPU: {self.shape.params / 1e9:.2f}B parameters, "
                 f"{'bf16' if o.param_bytes == 2 else 'fp32'} weights, world size {o.world_size}, "
                 f"micro-batch {o.micro_batch_tokens} tokens, gradient checkpointing "
                 f"{'on' if o.gradient_checkpointing else 'off'}, engine {o.engine}",
                 f"  {'item':<40}{'GiB':>9}  phases"]
        for name, size in self.items.items():
            alive = ", ".join(p for p, names in self.phases.items() if name in names)
            lines.append(f"  {name:<40}{size / GiB:>9.2f}  {alive}")
        for phase in self.phases:
            lines.append(f"  {'= ' + phase + ' phase':<40}{self.phase_bytes(phase) / GiB:>9.2f}")
        device = f" of {o.device_bytes / GiB:.1f} GiB" if o.device_bytes else ""
        verdict = "" if o.device_bytes is None else (" - fits" if self.fits else " - DOES NOT FIT")
        lines.append(f"  peak: {self.peak_bytes / GiB:.2f} GiB in the {self.peak_phase} phase{device}{verdict}")
        lines += [f"  to fit: {tip}" for tip in self.advice]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"items": dict(self.items), "phases": {p: self.phase_bytes(p) for p in self.phases},
                "peak_bytes": self.peak_bytes, "peak_phase": self.peak_phase, "fits": self.fits,
                "device_bytes": self.options.device_bytes, "advice": list(self.advice)}


def hf_engine_bytes(shape: ModelShape, rows: int, prompt: int, response: int, b: int) -> int:
    """The hf engine's peak: the prefill (prompt KV, one layer's no-grad tensors, the [rows, P, P]
    mask) or the last decode step (full KV cache, one layer's copy as it grows, sampling buffers)."""
    kv = shape.kv_bytes_per_token(b)
    prefill = rows * prompt * (kv + shape.prefill_bytes_per_token(b) + prompt)
    full = rows * (prompt + response) * kv
    return max(prefill, full + full // shape.layers + SAMPLING_BUFFERS * rows * shape.vocab * 4)


def fused_chunk_bytes(shape: ModelShape, tokens: int, b: int, cuda: bool) -> int:
    """The [rows, V] fp32 chunk buffers of fastzero.kernels (Triton: one buffer, plus the bf16 grad
    on GPU; the PyTorch path on CPU: two), capped by the kernels' budget."""
    per_logit = (4 + (b if b < 4 else 0)) if cuda else 8
    return min(FUSED_CHUNK_BYTES, tokens * shape.vocab * per_logit)


def fused_loss_bytes(shape: ModelShape, tokens: int, b: int, cuda: bool) -> int:
    """fused_linear_policy_loss over `tokens` response tokens: the fp32 dW accumulator, the chunk,
    dH and the upstream-scaled copy, and on CPU in bf16 an fp32 copy of the head (no mixed matmul)."""
    upcast = 0 if (cuda or b == 4) else 4 * shape.vocab * shape.hidden
    return 4 * shape.vocab * shape.hidden + upcast + fused_chunk_bytes(shape, tokens, b, cuda) + 2 * tokens * shape.hidden * b


def _model_state(shape: ModelShape, params: int, b: int, world: int, prefix: str) -> dict[str, int]:
    state = {f"{prefix} weights": params * b // world}
    if b < 4:
        state[f"{prefix} fp32 master weights"] = params * 4 // world
    state[f"{prefix} AdamW moments (fp32)"] = 2 * params * 4 // world
    return state


def plan_memory(shape: ModelShape, options: PlanOptions, critic_shape: ModelShape | None = None, *,
                advise: bool = True) -> MemoryPlan:
    o, b, w = options, options.param_bytes, options.world_size
    critic_shape = critic_shape or shape
    result = MemoryPlan(shape, options)
    items = result.items
    resident = list(_model_state(shape, shape.params, b, w, "policy"))
    items.update(_model_state(shape, shape.params, b, w, "policy"))
    if o.reference:
        items["reference weights"] = shape.params * b // w
        resident.append("reference weights")
    critic_params = critic_shape.body_params + critic_shape.hidden + 1
    if o.critic:
        critic_state = _model_state(critic_shape, critic_params, b, w, "critic")
        items.update(critic_state)
        resident += list(critic_state)

    sequence = o.prompt_tokens + o.response_tokens
    micro = max(o.micro_batch_tokens, sequence)  # a longer sequence forms a micro-batch of its own
    rows = max(1, micro // sequence)
    response = rows * o.response_tokens  # tokens through the LM head, at full-length responses

    if o.engine == "sglang":
        if o.device_bytes is None:
            raise ValueError("an sglang plan needs the device's memory (its share is a fraction of it)")
        items["sglang share (its weights + KV cache)"] = int(o.sglang_mem_fraction * o.device_bytes)
        engine = ["sglang share (its weights + KV cache)"]
    else:
        items["hf engine (KV cache, decode buffers)"] = hf_engine_bytes(shape, o.gen_batch_size, o.prompt_tokens,
                                                                        o.response_tokens, b)
        engine = ["hf engine (KV cache, decode buffers)"]

    upcast_head = 0 if (o.cuda or b == 4) else 4 * shape.vocab * shape.hidden  # CPU bf16: fp32 copy of W
    chunk = fused_chunk_bytes(shape, response, b, o.cuda)
    items["no-grad forward of a micro-batch"] = micro * shape.prefill_bytes_per_token(b) + response * shape.hidden * b
    items["fused log-prob chunk"] = chunk + upcast_head

    items["policy gradients"] = shape.params * b // w
    items["policy activations"] = micro * shape.activation_bytes_per_token(b, o.gradient_checkpointing)
    items["backward working set"] = micro * shape.backward_bytes_per_token(b)
    items["fused loss (fp32 dW, dH, chunk)"] = fused_loss_bytes(shape, response, b, o.cuda)
    update = ["policy gradients", "policy activations", "backward working set", "fused loss (fp32 dW, dH, chunk)"]
    largest = max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate)
    step_extra = {"fp32 gradients at the optimizer step": shape.params * 4 // w if b < 4 else 0,
                  "AdamW temporaries": (shape.params if o.cuda else largest) * 4 // w}
    if o.critic:
        items["critic gradients"] = critic_params * b // w
        items["critic activations"] = micro * critic_shape.activation_bytes_per_token(b, o.gradient_checkpointing)
        update += ["critic gradients", "critic activations"]
        step_extra["fp32 gradients at the optimizer step"] += critic_params * 4 // w if b < 4 else 0
    items.update(step_extra)
    if o.overhead_bytes:
        items["CUDA context and allocator slack"] = o.overhead_bytes
        resident.append("CUDA context and allocator slack")

    result.phases = {
        "rollout": resident + engine,
        "logprobs": resident + (engine if o.engine == "sglang" else []) +
                    ["no-grad forward of a micro-batch", "fused log-prob chunk"],
        "update": resident + update,
        "optimizer step": resident + list(step_extra),
    }
    if advise and not result.fits:
        result.advice = _advice(result, critic_shape)
    return result


def _advice(result: MemoryPlan, critic_shape: ModelShape) -> list[str]:
    """Option changes that fit: each single change that does, or else one combination of them."""
    o, budget = result.options, result.options.device_bytes

    def phase(name: str, **change) -> int:
        plan = plan_memory(result.shape, dataclasses.replace(o, **change), critic_shape, advise=False)
        return plan.phase_bytes(name) if name else plan.peak_bytes

    def largest(field_name: str, start: int, floor: int, phase_name: str | None, **fixed) -> int:
        value = start
        while value > floor and phase(phase_name, **fixed, **{field_name: value}) > budget:
            value //= 2
        return max(value, floor)

    tips = []
    if not o.gradient_checkpointing and phase(None, gradient_checkpointing=True) <= budget:
        tips.append("--gradient-checkpointing true")
    tokens = largest("micro_batch_tokens", o.micro_batch_tokens, 1, None)
    if tokens < o.micro_batch_tokens and phase(None, micro_batch_tokens=tokens) <= budget:
        tips.append(f"--micro-batch-tokens {tokens}")
    if o.engine == "hf":
        rows = largest("gen_batch_size", o.gen_batch_size, 1, None)
        if rows < o.gen_batch_size and phase(None, gen_batch_size=rows) <= budget:
            tips.append(f"--gen-batch-size {rows}")
    elif phase(None, sglang_mem_fraction=round(o.sglang_mem_fraction / 2, 2)) <= budget:
        tips.append(f"--sglang-mem-fraction {round(o.sglang_mem_fraction / 2, 2)}")
    for world in (2, 4, 8, 16, 32, 64):
        if world > o.world_size and phase(None, world_size=world) <= budget:
            tips.append(f"{world} GPUs (FSDP shards weights, gradients, masters and moments)")
            break
    if tips:
        return tips
    for world in sorted({o.world_size, 2, 4, 8, 16, 32, 64, 128}):  # combine, per world size
        if world < o.world_size:
            continue
        combo: dict = {"world_size": world, "gradient_checkpointing": True}
        combo["micro_batch_tokens"] = largest("micro_batch_tokens", o.micro_batch_tokens, 1, "update", **combo)
        if o.engine == "hf":
            combo["gen_batch_size"] = largest("gen_batch_size", o.gen_batch_size, 1, "rollout", **combo)
        if phase(None, **combo) <= budget:
            flags = (f"--gradient-checkpointing true --micro-batch-tokens {combo['micro_batch_tokens']}"
                     + (f" --gen-batch-size {combo['gen_batch_size']}" if "gen_batch_size" in combo else ""))
            return [flags + (f" on {world} GPUs (FSDP)" if world > 1 else "")]
    return ["a smaller model: nothing here fits even on 128 GPUs"]


def plan_for_config(config, *, cuda: bool, device_bytes: int | None, world_size: int = 1) -> MemoryPlan:
    """The plan of a validated fastzero.config.Config, from its model's config.json (nothing loaded)."""
    from .config import resolve_model_path

    def shape_of(path: str) -> ModelShape:
        with open(os.path.join(resolve_model_path(path), "config.json"), encoding="utf-8") as fh:
            return ModelShape.from_config(json.load(fh))

    m, d, r, a = config.model, config.data, config.rollout, config.algorithm
    param_bytes = {"float32": 4, "bfloat16": 2}.get(m.dtype, 2 if cuda else 4)
    options = PlanOptions(
        param_bytes=param_bytes, micro_batch_tokens=a.micro_batch_tokens, gradient_checkpointing=m.gradient_checkpointing,
        prompt_tokens=d.max_prompt_tokens, response_tokens=r.max_new_tokens,
        engine="sglang" if r.engine == "sglang" or (r.engine == "auto" and cuda and _sglang_importable()) else "hf",
        gen_batch_size=r.gen_batch_size, sglang_mem_fraction=r.sglang_mem_fraction, reference=a.kl_coef > 0,
        critic=a.estimator == "ppo", world_size=world_size, device_bytes=device_bytes, cuda=cuda,
        overhead_bytes=CUDA_OVERHEAD if cuda else 0)
    critic = shape_of(m.critic_path) if options.critic and m.critic_path else None
    return plan_memory(shape_of(m.model_path), options, critic)


def _sglang_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang") is not None
