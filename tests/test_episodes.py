"""fastzero.episodes.sample_episodes with the real hf engine on the embedded model: responses are
flattened prompt-major, decoded without the stop token, scored by the given scorer, and the
sampler's log-probs and finish reasons travel with them."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fastzero.config import EMBEDDED_MODEL, resolve_model_path
from fastzero.episodes import countdown_scorer, sample_episodes, trim_stop
from fastzero.rollout import SamplingParams, make_engine
from fastzero.tasks.countdown.problems import generate_problems
from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.tasks.countdown.verifier import score_batch


@pytest.fixture(scope="module")
def setup():
    path = resolve_model_path(EMBEDDED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    eos = tokenizer.eos_token_id
    engine = make_engine("hf", model=model, eos_token_ids=(eos,), seed=0, pad_token_id=tokenizer.pad_token_id)
    problems = generate_problems(5, seed=11, min_numbers=3, max_numbers=3, min_value=1, max_value=20,
                                 min_target=1, max_target=50)
    prompts = [tokenizer(render_prompt("compact", p.numbers, p.target, tokenizer), add_special_tokens=False)["input_ids"]
               for p in problems]

    def decode(responses):
        return tokenizer.batch_decode(trim_stop(responses, (eos,)), skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
    return engine, problems, prompts, decode, eos


def test_sampled_episodes_line_up_with_their_prompts(setup):
    engine, problems, prompts, decode, eos = setup
    seen = []

    def scorer(texts, owners):
        seen.append((list(texts), list(owners)))
        return [float(i) for i in range(len(texts))]

    params = SamplingParams(n=3, max_new_tokens=6, temperature=1.0, stop_token_ids=(eos,))
    episodes = sample_episodes(engine, prompts, problems, params, decode=decode, scorer=scorer)
    assert len(episodes) == 15 and episodes.scores == [float(i) for i in range(15)]
    assert episodes.problems == [p for p in problems for _ in range(3)]  # prompt-major groups
    assert episodes.prompt_ids == [ids for ids in prompts for _ in range(3)]
    assert seen == [(episodes.texts, episodes.problems)]
    for response, logprobs, reason in zip(episodes.response_ids, episodes.sampler_logprobs, episodes.finish_reasons):
        assert len(logprobs) == len(response) and all(lp <= 0.0 for lp in logprobs)
        assert reason == ("stop" if response[-1] == eos else "length")
        assert reason == "stop" or len(response) == 6


def test_greedy_evaluation_scores_with_the_countdown_verifier(setup):
    engine, problems, prompts, decode, eos = setup
    timed = []

    @contextmanager
    def phase(name):
        timed.append(name)
        yield

    @torch.no_grad()
    def run():
        return sample_episodes(engine, prompts, problems, SamplingParams(max_new_tokens=16, temperature=0.0,
                                                                         stop_token_ids=(eos,)),
                               decode=decode, scorer=countdown_scorer(format_score=0.1, correct_score=1.0),
                               phase=phase)
    episodes = run()
    assert episodes.scores == score_batch(episodes.texts, [p.numbers for p in problems], [p.target for p in problems])
    assert not any("<|endoftext|>" in t for t in episodes.texts)  # the stop token is not part of the text
    assert timed == ["rollout", "reward"]
    assert run().response_ids == episodes.response_ids  # greedy is deterministic


def test_trim_stop_only_drops_a_final_stop_token():
    assert trim_stop([[1, 2, 9], [9, 1], [], [9]], (9,)) == [[1, 2], [9, 1], [], []]
