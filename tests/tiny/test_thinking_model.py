"""The shipped thinking model (fastzero/assets/tiny-countdown-think): its folder, its tokenizer under
transformers, and greedy responses in R1-Zero's shape at the recorded base accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.tiny.tokenizer import EOS, PAD

ASSET = Path(__file__).resolve().parents[2] / "fastzero" / "assets" / "tiny-countdown-think"
RECIPE = json.loads((ASSET / "recipe.json").read_text())


@pytest.fixture(scope="module")
def tokenizers():
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    return Tokenizer.from_file(str(ASSET / "tokenizer.json")), AutoTokenizer.from_pretrained(ASSET)


def test_folder_is_a_small_qwen2_that_fits_its_responses():
    assert sum(p.stat().st_size for p in ASSET.iterdir()) <= 20 * 2**20
    config = json.loads((ASSET / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    generation = json.loads((ASSET / "generation_config.json").read_text())
    assert 8 + generation["max_new_tokens"] <= config["max_position_embeddings"]
    assert RECIPE["corpus"]["format"] == "think" and RECIPE["corpus"]["excludes_held_out"]
    assert "--format think" in RECIPE["command"] and RECIPE["command"] in (ASSET / "BUILD.md").read_text()


def test_think_text_is_whole_integer_tokens_under_transformers(tokenizers):
    trained, auto = tokenizers
    vocab = trained.get_vocab()
    text = "3 7 12=22:<think>3*7=21 21-12=9\n12+7=19 19+3=22</think><answer>12+7+3</answer>"
    ids = trained.encode(text).ids
    assert vocab["<think>"] in ids and vocab["\n"] in ids and vocab["400"] not in ids
    assert len(ids) == 8 + 1 + 11 + 1 + 11 + 1 + 1 + 5 + 1
    assert auto(text)["input_ids"] == ids
    assert auto.decode(ids) == text
    assert (auto.pad_token_id, auto.eos_token_id) == (vocab[PAD], vocab[EOS])
    for n in range(0, RECIPE["corpus"]["traces"]["max_value_in_think"] + 1):
        assert auto(str(n))["input_ids"] == [vocab[str(n)]]


def test_greedy_responses_think_then_answer_at_the_recorded_accuracy(tokenizers):
    from transformers import AutoModelForCausalLM

    from fastzero.tasks.countdown.problems import generate_problems
    from fastzero.tasks.countdown.traces import trace_metrics
    from fastzero.tasks.countdown.verifier import score_batch

    _, auto = tokenizers
    model = AutoModelForCausalLM.from_pretrained(ASSET).eval()
    h = RECIPE["held_out"]
    problems = generate_problems(h["n"], seed=h["seed"], min_numbers=3, max_numbers=3, min_value=h["min_value"],
                                 max_value=h["max_value"], min_target=h["min_target"], max_target=h["max_target"])
    batch = auto([render_prompt("compact", p.numbers, p.target) for p in problems], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False)  # max_new_tokens from generation_config.json
    responses = auto.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    numbers, targets = [p.numbers for p in problems], [p.target for p in problems]
    row = trace_metrics(responses, numbers, targets)
    assert row["think/has_think"] > 0.95 and row["think/equations"] >= 2
    scores = score_batch(responses, numbers, targets)
    accuracy = sum(s == 1.0 for s in scores) / len(scores)
    assert accuracy == pytest.approx(RECIPE["base_greedy_accuracy"], abs=0.02)
