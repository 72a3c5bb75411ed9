"""The Qwen2.5 presets end to end on CPU, on a stand-in with Qwen2.5-0.5B's config and the real
Qwen2.5 tokenizer (2 layers, width 112, random weights; see fastzero.testing.qwen_standin).

Each run is 2 RL steps through `python -m fastzero.train`'s entry point with small sizes. What a
user with a real checkpoint depends on is checked on the way: the base prompt is TinyZero's text
token for token, responses end exactly at the stop ids, and final/ reloads with plain transformers
and tokenizes identically.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from fastzero.presets import PRESETS
from fastzero.rollout.hf import HFEngine
from fastzero.train import main

ENDOFTEXT, IM_END = 151643, 151645
QWEN_PRESETS = [name for name in PRESETS if name.startswith("qwen2.5-")]
FAST = ["--preset", "tiny-direct", "--num-train", "48", "--num-test", "3", "--prompts-per-step", "2", "--mini-batch-size", "2",
        "--max-new-tokens", "12", "--max-steps", "2", "--eval-every", "0", "--save-every", "0",
        "--progress", "false", "--threads", "1", "--log-samples", "2"]

# TinyZero's base prompt (examples/data_preprocess/countdown.py, template_type="base"), typed out
# here rather than imported so the test does not check the code against itself.
TINYZERO_BASE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer.\n"
    "User: Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And "
    "return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.\n"
    "Assistant: Let me solve this step by step.\n<think>")


@pytest.fixture
def rollouts(monkeypatch) -> list:
    """Every generate call of the (real) hf engine: (prompts, params, completions)."""
    calls = []
    real = HFEngine.generate

    def recording(self, prompts, params):
        out = real(self, prompts, params)
        calls.append(([list(p) for p in prompts], params, out))
        return out

    monkeypatch.setattr(HFEngine, "generate", recording)
    return calls


def _train(model_dir: str, out, *extra: str) -> None:
    assert main(FAST + ["--model-path", model_dir, "--output-dir", str(out), *extra]) == 0


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]


def _check_stops(calls, stop_ids: set[int]) -> None:
    stopped = 0
    for _, params, groups in calls:
        assert set(params.stop_token_ids) == stop_ids
        for completion in (c for group in groups for c in group):
            ids = completion.response_ids
            if completion.finish_reason == "stop":
                stopped += 1
                assert ids[-1] in stop_ids and not set(ids[:-1]) & stop_ids, ids
            else:
                assert len(ids) == params.max_new_tokens and not set(ids) & stop_ids, ids
    assert stopped, "no response stopped: the stand-in's stop rate is not wired"


def _check_final(out, model_dir: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = os.path.join(out, "final")
    model = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    from safetensors import safe_open

    with safe_open(os.path.join(final, "model.safetensors"), "pt") as fh:  # the source's bf16, not fp32
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
        assert "lm_head.weight" not in set(fh.keys())  # tied: saved once
    assert json.load(open(os.path.join(final, "config.json")))["dtype"] == "bfloat16"
    assert model.config.vocab_size == 151936 and model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    saved, source = (AutoTokenizer.from_pretrained(d, local_files_only=True) for d in (final, model_dir))
    texts = [TINYZERO_BASE.format(numbers=[3, 7, 12], target=22), "<|im_start|>user\nhé 😀 12345<|im_end|>",
             "def f(x):\n\treturn x  # ñ", "  \n\n  trailing   "]
    assert saved(texts)["input_ids"] == source(texts)["input_ids"]
    assert (saved.eos_token_id, saved.pad_token_id) == (source.eos_token_id, source.pad_token_id)


def _slow_unless(name: str, *fast: str):
    return pytest.param(name, marks=() if name in fast else pytest.mark.slow)


@pytest.mark.parametrize("preset", [_slow_unless(n, "qwen2.5-0.5b") for n in QWEN_PRESETS])
def test_preset_base_template(preset, qwen_standin, rollouts, tmp_path):
    grpo = PRESETS[preset]["algorithm"] != "ppo"
    shrink = ["--samples-per-prompt", "2"] if grpo else []
    if PRESETS[preset].get("overlong_buffer", 0) > 12:  # sized for the preset's own cap, not FAST's 12 tokens
        shrink += ["--overlong-buffer", "2"]
    _train(qwen_standin["base"], tmp_path / "run", "--preset", preset, *shrink)
    assert [r["step"] for r in _rows(tmp_path / "run") if "reward/mean" in r] == [1, 2]
    # The prompts fed to the engine are TinyZero's text, token for token.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_standin["base"], local_files_only=True)
    prompts = [p for prompts, _, _ in rollouts for p in prompts]
    texts = {tokenizer.decode(p) for p in prompts}
    assert all(text == TINYZERO_BASE.format(numbers=_numbers(text), target=_target(text)) for text in texts)
    for prompt in prompts:
        text = tokenizer.decode(prompt)
        assert prompt == tokenizer(text, add_special_tokens=False)["input_ids"]
    _check_stops(rollouts, {ENDOFTEXT})
    _check_final(tmp_path / "run", qwen_standin["base"])


def _numbers(text: str) -> list[int]:
    inside = text.split("Using the numbers [", 1)[1].split("]", 1)[0]
    return [int(n) for n in inside.split(", ")]


def _target(text: str) -> int:
    return int(text.split("create an equation that equals ", 1)[1].split(".", 1)[0])


@pytest.mark.parametrize("preset", ["qwen2.5-0.5b-grpo", pytest.param("qwen2.5-0.5b", marks=pytest.mark.slow)])
def test_preset_instruct_template(preset, qwen_standin, rollouts, tmp_path):
    grpo = PRESETS[preset]["algorithm"] != "ppo"
    _train(qwen_standin["instruct"], tmp_path / "run", "--preset", preset, "--template", "instruct",
           *(["--samples-per-prompt", "2"] if grpo else []))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_standin["instruct"], local_files_only=True)
    for prompt in (p for prompts, _, _ in rollouts for p in prompts):
        text = tokenizer.decode(prompt)
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant. You first thinks")
        assert "<|im_end|>\n<|im_start|>user\nUsing the numbers [" in text
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\nLet me solve this step by step.\n<think>")
        assert prompt.count(IM_END) == 2
    _check_stops(rollouts, {ENDOFTEXT, IM_END})
    _check_final(tmp_path / "run", qwen_standin["instruct"])


@pytest.mark.slow
def test_resume_continues_a_qwen_run(qwen_standin, tmp_path):
    """A 2-step run stopped after step 1 and resumed ends with the same weights as a straight run."""
    from safetensors.torch import load_file

    args = ["--preset", "qwen2.5-0.5b-grpo", "--samples-per-prompt", "2", "--save-every", "1"]
    _train(qwen_standin["base"], tmp_path / "straight", *args)
    _train(qwen_standin["base"], tmp_path / "split", *args, "--max-steps", "1")
    assert main(["--resume", str(tmp_path / "split"), "--max-steps", "2"]) == 0
    a, b = (load_file(os.path.join(tmp_path, d, "final", "model.safetensors")) for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Training rows match; the split run also evaluated at its last step 1 (every run ends with one).
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "eval/"))}  # noqa: E731
                          for r in rows if "reward/mean" in r]
    assert strip(_rows(tmp_path / "straight")) == strip(_rows(tmp_path / "split"))


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_run(qwen_standin, tmp_path):
    """Recomputing activations changes memory, not numbers: same metrics (fp32 CPU) with and without."""
    args = ["--preset", "qwen2.5-0.5b", "--kl-coef", "0.001"]
    _train(qwen_standin["base"], tmp_path / "plain", *args)
    _train(qwen_standin["base"], tmp_path / "ckpt", *args, "--gradient-checkpointing", "true")
    keys = ("reward/mean", "grad_norm", "critic/loss", "response/length")
    plain, ckpt = ([{k: r.get(k) for k in keys} for r in _rows(tmp_path / d) if "reward/mean" in r]
                   for d in ("plain", "ckpt"))
    assert len(plain) == 2 and plain[0]["grad_norm"] is not None
    for p, c in zip(plain, ckpt):
        for key in keys:
            assert c[key] == pytest.approx(p[key], rel=1e-4, abs=1e-6), key
