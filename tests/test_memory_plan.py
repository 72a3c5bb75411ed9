"""The memory plan against what torch allocates on CPU (the allocator's own log, via the profiler).

Each term the plan computes from shapes is measured on its own at small shapes - saved activations
with and without gradient checkpointing, the fused loss at Qwen's vocabulary, the hf engine's
prefill and decode, the optimizer's masters and moments - in fp32 and bf16, within 15%. On a GPU
the same code allocates the same tensors (the plan adds the CUDA context and allocator slack as a
fixed term, and AdamW's foreach temporaries); bench/gpu_check.py compares the plan with
torch.cuda.max_memory_allocated there.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fastzero.kernels._memory import peak_allocated_bytes
from fastzero.memory_plan import (GiB, ModelShape, PlanOptions, fused_loss_bytes, hf_engine_bytes,
                                  plan_memory)
from fastzero.testing.qwen_standin import qwen25_config

CPU = torch.device("cpu")
DTYPES = {"float32": (torch.float32, 4), "bfloat16": (torch.bfloat16, 2)}
SMALL = dict(vocab_size=1000, hidden_size=224, intermediate_size=1216, num_attention_heads=14,
             num_key_value_heads=2, tie_word_embeddings=True)


def _qwen2(layers: int, dtype: torch.dtype, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**{**SMALL, **overrides, "num_hidden_layers": layers})
    return Qwen2ForCausalLM(config).to(dtype), ModelShape.from_config(config.to_dict())


def _close(measured: int, planned: int, what: str) -> None:
    assert abs(planned - measured) <= 0.15 * measured, f"{what}: plan {planned} vs measured {measured} bytes"


@pytest.mark.parametrize("shape", ["0.5b", "1.5b", "3b"])
def test_parameter_counts_are_qwen25s(shape):
    published = {"0.5b": 494_032_768, "1.5b": 1_543_714_304, "3b": 3_085_938_688}
    assert ModelShape.from_config(qwen25_config(shape)).params == published[shape]


def test_parameter_count_matches_torch():
    model, shape = _qwen2(3, torch.float32, tie_word_embeddings=False)
    assert shape.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_activations_and_backward(dtype, checkpointing):
    from fastzero.model import choose_backends, finish_model

    torch_dtype, b = DTYPES[dtype]
    model, shape = _qwen2(2, torch_dtype)
    finish_model(model, choose_backends(CPU, torch_dtype, "sdpa"), checkpointing)
    model.train()
    rows, width = 4, 256
    ids = torch.randint(0, 1000, (rows, width), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, width // 2:] = 0  # a padded row, as collate makes them (SDPA then takes an explicit mask)

    def forward_backward():
        model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.float().sum().backward()

    forward_backward()  # gradients exist: what follows is what a later micro-batch adds
    measured = peak_allocated_bytes(forward_backward, CPU)
    tokens = rows * width
    planned = tokens * (shape.activation_bytes_per_token(b, checkpointing) + shape.backward_bytes_per_token(b))
    _close(measured, planned, f"{dtype} activations (checkpointing {checkpointing})")


@pytest.mark.parametrize("tokens", [64, 700])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fused_loss_at_qwen_vocabulary(dtype, tokens, monkeypatch):
    monkeypatch.setenv("FASTZERO_KERNELS", "torch")  # what runs on CPU without the interpreter
    from fastzero.kernels.fused_policy_loss import fused_linear_policy_loss

    torch_dtype, b = DTYPES[dtype]
    shape = ModelShape.from_config(qwen25_config("0.5b", hidden=112, layers=1))
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(shape.vocab, shape.hidden, generator=g) * 0.02).to(torch_dtype).requires_grad_(True)
    hidden = torch.randn(tokens, shape.hidden, generator=g).to(torch_dtype).requires_grad_(True)
    targets = torch.randint(0, shape.vocab, (tokens,), generator=g)
    zeros, adv, w = torch.zeros(tokens), torch.randn(tokens, generator=g), torch.full((tokens,), 1.0 / tokens)

    def loss_and_backward():
        weight.grad = hidden.grad = None
        fused_linear_policy_loss(hidden, weight, targets, zeros, adv, w)[0].backward()

    measured = peak_allocated_bytes(loss_and_backward, CPU)
    _close(measured, fused_loss_bytes(shape, tokens, b, cuda=False), f"{dtype} fused loss, {tokens} tokens")


@pytest.mark.parametrize("case", ["decode-bound", "prefill-bound"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_hf_engine(dtype, case):
    from fastzero.rollout.base import SamplingParams
    from fastzero.rollout.hf import HFEngine

    torch_dtype, b = DTYPES[dtype]
    if case == "decode-bound":  # Qwen's vocabulary: the [rows, V] sampling buffers dominate
        model, shape = _qwen2(2, torch_dtype, vocab_size=151936, hidden_size=112, intermediate_size=608)
        rows, prompt, response = 8, 100, 16
    else:  # a small vocabulary and long prompts: one layer's prefill tensors dominate
        model, shape = _qwen2(4, torch_dtype)
        rows, prompt, response = 32, 200, 100
    engine = HFEngine(model, eos_token_ids=[shape.vocab + 1], max_batch_size=rows)
    prompts = [list(range(10, 10 + prompt))] * rows
    params = SamplingParams(max_new_tokens=response, temperature=1.0)
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=2))  # lazy buffers (RoPE) made first
    measured = peak_allocated_bytes(lambda: engine.generate(prompts, params), CPU)
    _close(measured, hf_engine_bytes(shape, rows, prompt, response, b), f"{dtype} hf engine, {case}")


def test_optimizer_state_is_exact():
    """bf16 model: fp32 masters and two fp32 moments per parameter, as planned."""
    from fastzero.config import OptimizerConfig
    from fastzero.optim import Optimizers

    model, shape = _qwen2(2, torch.bfloat16)
    optimizers = Optimizers(OptimizerConfig(lr=1e-6), model)
    model(torch.randint(0, 1000, (2, 8))).logits.float().sum().backward()
    optimizers.step(0)
    masters = sum(m.numel() * m.element_size() for m in optimizers._policy.masters)
    moments = sum(t.numel() * t.element_size() for s in optimizers.policy.state.values()
                  for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
    plan = plan_memory(shape, PlanOptions(param_bytes=2, micro_batch_tokens=16, prompt_tokens=4, response_tokens=4,
                                          gen_batch_size=2, cuda=False))
    assert masters == plan.items["policy fp32 master weights"]
    assert moments == plan.items["policy AdamW moments (fp32)"]


def test_a_plan_that_does_not_fit_names_the_option():
    shape = ModelShape.from_config(qwen25_config("0.5b"))
    options = PlanOptions(param_bytes=2, micro_batch_tokens=32768, prompt_tokens=256, response_tokens=1024,
                          gen_batch_size=1024, reference=True, critic=True, device_bytes=80 * GiB)
    plan = plan_memory(shape, options)
    assert not plan.fits and plan.peak_phase == "update"
    assert "--gradient-checkpointing true" in plan.advice
    assert plan_memory(shape, dataclasses.replace(options, gradient_checkpointing=True)).fits
    text = plan.format()
    assert "DOES NOT FIT" in text and "to fit: --gradient-checkpointing true" in text
    sharded = plan_memory(shape, dataclasses.replace(options, world_size=4))
    assert sharded.items["policy AdamW moments (fp32)"] * 4 == plan.items["policy AdamW moments (fp32)"]
    assert sharded.items["policy activations"] == plan.items["policy activations"]  # per GPU, not sharded


def _config_only_model(tmp_path, shape: str = "0.5b") -> str:
    """A model directory with Qwen2.5's config.json and no weights: loading it would fail."""
    import json

    folder = tmp_path / f"qwen2.5-{shape}-config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(qwen25_config(shape)))
    return str(folder)


def test_plan_flag_prints_the_plan_and_exits(tmp_path, capsys):
    from fastzero.train import main

    model = _config_only_model(tmp_path)
    assert main(["--preset", "qwen2.5-0.5b-grpo", "--model-path", model, "--plan", "true",
                 "--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "memory plan per GPU: 0.49B parameters" in out and "= update phase" in out
    assert not (tmp_path / "run").exists()


def test_a_run_that_does_not_fit_stops_before_loading(tmp_path, capsys):
    from fastzero.train import main

    model = _config_only_model(tmp_path)
    code = main(["--preset", "qwen2.5-0.5b", "--model-path", model, "--device-memory-gb", "24",
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: the run needs" in err and "change --gradient-checkpointing true --micro-batch-tokens" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
