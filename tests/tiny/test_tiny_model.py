"""The embedded tiny Countdown model: the shipped folder, its tokenizer, its corpus, and its build."""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.tiny.corpus import ProblemRanges, all_expressions, build_documents, random_expression, solution_table
from fastzero.tiny.tokenizer import EOS, PAD, TAGS

ASSET = Path(__file__).resolve().parents[2] / "fastzero" / "assets" / "tiny-countdown"
RECIPE = json.loads((ASSET / "recipe.json").read_text())
RANGES = ProblemRanges(**{k: RECIPE["problems"][k] for k in ("min_value", "max_value", "min_target", "max_target")})


@pytest.fixture(scope="module")
def auto_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSET)


@pytest.fixture(scope="module")
def trained_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ASSET / "tokenizer.json"))


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ASSET).eval()


@pytest.fixture(scope="module")
def held_out():
    from fastzero.tasks.countdown.problems import generate_problems

    h = RECIPE["held_out"]
    return generate_problems(h["n"], seed=h["seed"], min_numbers=3, max_numbers=3, min_value=h["min_value"],
                             max_value=h["max_value"], min_target=h["min_target"], max_target=h["max_target"])


def test_shipped_folder_is_a_small_qwen2_with_pad_and_eos(trained_tokenizer):
    files = {p.name for p in ASSET.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json", "recipe.json", "BUILD.md"} <= files
    assert sum(p.stat().st_size for p in ASSET.iterdir()) <= 20 * 2**20
    config = json.loads((ASSET / "config.json").read_text())
    generation = json.loads((ASSET / "generation_config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    pad, eos = trained_tokenizer.token_to_id(PAD), trained_tokenizer.token_to_id(EOS)
    assert (config["pad_token_id"], config["eos_token_id"]) == (pad, eos)
    assert (generation["pad_token_id"], generation["eos_token_id"]) == (pad, eos)
    assert json.loads((ASSET / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_prompt_and_answer_are_whole_integer_tokens(auto_tokenizer, trained_tokenizer):
    vocab = trained_tokenizer.get_vocab()
    text = "3 7 12=19:<answer>7+12</answer>"
    expected = [vocab[t] for t in ["3", " ", "7", " ", "12", "=", "19", ":", "<answer>", "7", "+", "12", "</answer>"]]
    assert trained_tokenizer.encode(text).ids == expected
    assert auto_tokenizer(text)["input_ids"] == expected
    assert (auto_tokenizer.pad_token_id, auto_tokenizer.eos_token_id) == (vocab[PAD], vocab[EOS])
    # Every integer the problems can show is one token.
    for n in range(0, max(RANGES.max_value, RANGES.max_target) + 1):
        assert auto_tokenizer(str(n))["input_ids"] == [vocab[str(n)]]


@settings(max_examples=60, deadline=None)
@given(numbers=st.lists(st.integers(0, 50), min_size=3, max_size=3), target=st.integers(0, 50),
       seed=st.integers(0, 2**16), tag=st.sampled_from(TAGS))
def test_auto_tokenizer_reproduces_trained_ids(auto_tokenizer, trained_tokenizer, numbers, target, seed, tag):
    text = (render_prompt("compact", numbers, target) + f"<answer>{random_expression(numbers, random.Random(seed))}"
            f"</answer>{tag} \n")
    ids = trained_tokenizer.encode(text).ids
    assert auto_tokenizer(text)["input_ids"] == ids
    assert auto_tokenizer.decode(ids) == text == trained_tokenizer.decode(ids, skip_special_tokens=False)
    assert auto_tokenizer.decode(ids + [auto_tokenizer.eos_token_id], skip_special_tokens=True) == text


def test_greedy_answers_are_well_formed_and_match_recorded_accuracy(model, auto_tokenizer, held_out):
    from fastzero.tasks.countdown.verifier import score_batch

    prompts = [render_prompt("compact", p.numbers, p.target) for p in held_out]
    batch = auto_tokenizer(prompts, return_tensors="pt")  # all compact prompts have the same length
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    responses = auto_tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(r.startswith("<answer>") and r.endswith("</answer>") for r in responses)
    assert all(auto_tokenizer.eos_token_id in row.tolist() for row in out)
    scores = score_batch(responses, [p.numbers for p in held_out], [p.target for p in held_out])
    assert min(scores) >= 0.1  # formatted: every answer parses and uses the given numbers
    accuracy = sum(s == 1.0 for s in scores) / len(scores)
    assert accuracy == pytest.approx(RECIPE["base_greedy_accuracy"], abs=0.02)


def test_expressions_are_exact_and_solvability_matches_the_solver():
    from fastzero.tasks.countdown.verifier import score, solve

    rng = random.Random(7)
    for _ in range(40):
        numbers = [rng.randint(0, 12) for _ in range(3)]
        for value, texts in all_expressions(numbers).items():
            assert isinstance(value, Fraction)
            if value.denominator == 1 and value >= 0:
                for text in texts:
                    assert score(f"<answer>{text}</answer>", numbers, int(value)) == 1.0
    small = ProblemRanges(1, 6, 0, 20)
    table = solution_table(small)
    for numbers in [(a, b, c) for a in range(1, 7) for b in range(a, 7) for c in range(b, 7)]:
        for target in range(0, 21):
            assert ((numbers, target) in table) == (solve(list(numbers), target) is not None)


def test_corpus_is_deterministic_and_excludes_held_out(held_out):
    from fastzero.tasks.countdown.verifier import score_batch

    excluded = [(p.numbers, p.target) for p in held_out]
    kwargs = dict(seed=3, ranges=RANGES, correct_fraction=0.5, excluded=excluded)
    documents = build_documents(2000, **kwargs)
    assert documents == build_documents(2000, **kwargs)
    assert documents != build_documents(2000, **{**kwargs, "seed": 4})
    held_keys = {(tuple(sorted(p.numbers)), p.target) for p in held_out}
    parsed = []
    for prompt, answer in documents:
        numbers, target = prompt.rstrip(":").split("=")
        parsed.append(([int(n) for n in numbers.split()], int(target)))
        assert (tuple(sorted(parsed[-1][0])), parsed[-1][1]) not in held_keys
    scores = score_batch([a for _, a in documents], [n for n, _ in parsed], [t for _, t in parsed])
    assert min(scores) >= 0.1
    assert 0.45 < sum(s == 1.0 for s in scores) / len(scores) < 0.65  # 50% correct, plus lucky noise


def test_bad_corpus_arguments_fail_clearly():
    with pytest.raises(ValueError, match="correct_fraction"):
        build_documents(1, seed=0, ranges=RANGES, correct_fraction=1.5)
    with pytest.raises(ValueError, match="min_value"):
        ProblemRanges(5, 2, 1, 10)
    with pytest.raises(ValueError, match="exactly 3"):
        all_expressions([1, 2])


def test_tiny_build_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fastzero.tiny.__main__ import main

    out = tmp_path / "tiny"
    main(["build", "--out", str(out), "--steps", "3", "--docs", "300", "--hidden-size", "16", "--layers", "1",
          "--heads", "2", "--intermediate-size", "32", "--eval-size", "20", "--threads", "1"])
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["pretrain"]["steps"] == 3 and 0.0 <= recipe["base_greedy_accuracy"] <= 1.0
    assert recipe["command"].startswith("python -m fastzero.tiny build --out ")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("3 7 12=19:", return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 8)
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] <= 12
