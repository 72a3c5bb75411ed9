"""The transformers rollout engine on a tiny random Qwen2, against full-forward (no cache) oracles."""
from __future__ import annotations

import pytest
import torch

from fastzero.rollout import make_engine, resolve_engine_kind
from fastzero.rollout.base import SamplingParams
from fastzero.rollout.hf import HFEngine, sample_next
from fastzero.rollout.hf_decode import exponential_noise

from tests.rollout.conftest import (EOS, PROMPTS, VOCAB, full_forward_logits, full_forward_logprobs,
                                    greedy_oracle, rounding_tolerance)


def test_greedy_equals_cache_free_oracle_and_padding_is_invisible(model, model64):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    # float64: batched, single-row and cache-free paths agree to float64 rounding, so any gap is a bug
    engine = HFEngine(model64, eos_token_ids=[])
    batch = engine.generate(PROMPTS, params)
    responses = [group[0].response_ids for group in batch]
    assert len({tuple(r) for r in responses}) > 1 and any(len(set(r)) > 2 for r in responses)  # not degenerate
    fp32 = HFEngine(model, eos_token_ids=[]).generate(PROMPTS, params)
    for prompt, group, group32 in zip(PROMPTS, batch, fp32):
        alone = engine.generate([prompt], params)[0][0]
        oracle, margins = greedy_oracle(model64, prompt, 12)
        assert group[0].response_ids == alone.response_ids == oracle
        assert group[0].finish_reason == "length" and len(group[0].response_ids) == 12
        want = full_forward_logprobs(model64, prompt, oracle, 0.0)
        scale = float(full_forward_logits(model64, prompt, oracle).abs().max())
        tol64 = rounding_tolerance(model64, torch.float64, len(prompt) + 12, scale)
        for got in (group[0], alone):
            torch.testing.assert_close(torch.tensor(got.logprobs, dtype=torch.float64), want, atol=tol64, rtol=0)
        # fp32 (what runs in practice): its rounding is far below every argmax gap of this model
        # (a property of the fixed weights), so the tokens are the same; the log-probs within the bound
        tol32 = rounding_tolerance(model, torch.float32, len(prompt) + 12, scale)
        assert min(margins) > 4 * tol32, "the test model has a near-tie: fp32 could pick either token"
        assert group32[0].response_ids == oracle
        torch.testing.assert_close(torch.tensor(group32[0].logprobs, dtype=torch.float64), want, atol=tol32, rtol=0)


def test_stop_token_ends_response_and_is_included(model64):
    free = HFEngine(model64, eos_token_ids=[]).generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0))
    sequence = free[1][0].response_ids
    stop = sequence[4]  # a token the greedy path reaches at step 4 (or earlier)
    cut = sequence.index(stop) + 1
    for engine, params in [
        (HFEngine(model64, eos_token_ids=[stop]), SamplingParams(max_new_tokens=12, temperature=0)),  # as EOS
        (HFEngine(model64, eos_token_ids=[]), SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop,))),
    ]:
        out = engine.generate(PROMPTS, params)
        got = out[1][0]
        assert got.response_ids == sequence[:cut] and got.finish_reason == "stop"
        assert len(got.logprobs) == cut
        for prompt, group in zip(PROMPTS, out):  # every row: stops at its first stop token, else length
            oracle, _ = greedy_oracle(model64, prompt, 12, stop=(stop,))
            assert group[0].response_ids == oracle
            assert group[0].finish_reason == ("stop" if oracle[-1] == stop else "length")


def test_model_eos_is_default_stop(model):
    engine = HFEngine(model)
    assert engine.eos_token_ids == (EOS,)
    for group in engine.generate(PROMPTS, SamplingParams(max_new_tokens=40, n=4, seed=3)):
        for c in group:
            assert EOS not in c.response_ids[:-1]
            assert (c.finish_reason == "stop") == (c.response_ids[-1] == EOS)
            assert len(c.response_ids) <= 40 and (c.finish_reason == "stop" or len(c.response_ids) == 40)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, -1, 1.0), (0.7, 5, 0.9), (1.3, 0, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_logprobs_match_full_forward_and_samples_are_in_order(model, model64, dtype, temperature, top_k,
                                                                     top_p):
    policy = model if dtype == torch.float32 else model64
    engine = HFEngine(policy, seed=1)
    params = SamplingParams(max_new_tokens=9, n=3, temperature=temperature, top_k=top_k, top_p=top_p,
                            stop_token_ids=(2,))
    out = engine.generate(PROMPTS, params)
    assert [len(group) for group in out] == [3] * len(PROMPTS)
    for index, (prompt, group) in enumerate(zip(PROMPTS, out)):
        for c in group:
            assert c.prompt_index == index and 1 <= len(c.response_ids) <= 9
            # recomputing from THIS prompt reproduces the log-probs: completions sit with their prompt
            want = full_forward_logprobs(model64, prompt, c.response_ids, temperature)
            scale = float(full_forward_logits(model64, prompt, c.response_ids).abs().max()) / temperature
            tol = rounding_tolerance(model, dtype, len(prompt) + 9, scale)
            torch.testing.assert_close(torch.tensor(c.logprobs, dtype=torch.float64), want, atol=tol, rtol=0)


def test_seeded_runs_are_identical_and_rng_state_round_trips(model):
    params = SamplingParams(max_new_tokens=10, n=4, temperature=1.0)
    first = HFEngine(model, seed=7).generate(PROMPTS, params)
    assert HFEngine(model, seed=7).generate(PROMPTS, params) == first
    assert HFEngine(model, seed=8).generate(PROMPTS, params) != first
    engine = HFEngine(model, seed=7)
    state = engine.rng_state()
    a = engine.generate(PROMPTS, params)
    b = engine.generate(PROMPTS, params)
    assert a == first and b != a  # the stream advances between calls
    engine.set_rng_state(state)
    assert engine.generate(PROMPTS, params) == a  # a resumed run continues the same stream
    # params.seed: a fresh stream per call, leaving the engine's own stream alone
    seeded = SamplingParams(max_new_tokens=10, n=4, temperature=1.0, seed=11)
    state = engine.rng_state()
    assert engine.generate(PROMPTS, seeded) == engine.generate(PROMPTS, seeded)
    assert torch.equal(engine.rng_state(), state)


def test_micro_batching_and_compaction_do_not_change_greedy_output(model64):
    params = SamplingParams(max_new_tokens=10, n=2, temperature=0.0, stop_token_ids=(3, 7))
    want = HFEngine(model64, max_batch_size=64, compact_fraction=0.0).generate(PROMPTS, params)
    scale = max(float(full_forward_logits(model64, p, g[0].response_ids).abs().max()) for p, g in zip(PROMPTS, want))
    tol = rounding_tolerance(model64, torch.float64, max(map(len, PROMPTS)) + 10, scale)
    for batch, compact in [(3, 0.5), (1, 0.0), (64, 1.0)]:
        got = HFEngine(model64, max_batch_size=batch, compact_fraction=compact).generate(PROMPTS, params)
        assert [[c.response_ids for c in g] for g in got] == [[c.response_ids for c in g] for g in want]
        for g_got, g_want in zip(got, want):
            for a, b in zip(g_got, g_want):
                torch.testing.assert_close(torch.tensor(a.logprobs, dtype=torch.float64),
                                           torch.tensor(b.logprobs, dtype=torch.float64), atol=tol, rtol=0)


def test_sample_next_filters():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    def support(params):
        seen = set()
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            seen.add(int(sample_next(logits, params, torch.empty_like(logits).exponential_(generator=g))[0]))
        return seen
    assert support(SamplingParams(max_new_tokens=1, top_k=2)) == {0, 1}
    assert support(SamplingParams(max_new_tokens=1, top_p=0.7)) == {0, 1}
    assert support(SamplingParams(max_new_tokens=1, top_p=0.85)) == {0, 1, 2}
    assert support(SamplingParams(max_new_tokens=1)) == {0, 1, 2, 3}
    # one log-softmax over 4 terms of magnitude <= 3: a few fp32 roundings of the largest term
    tol = 4 * 4 * torch.finfo(torch.float32).eps * 3.0
    tokens, logp = sample_next(logits, SamplingParams(max_new_tokens=1, temperature=0.0), None)
    assert int(tokens) == 0
    torch.testing.assert_close(logp, probs[0, :1].log(), atol=tol, rtol=0)
    # the reported log-prob ignores the filters: it is the temperature-scaled distribution's
    tokens, logp = sample_next(logits, SamplingParams(max_new_tokens=1, top_k=1, temperature=0.5),
                               torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(0)))
    assert int(tokens) == 0 and torch.equal(logp, torch.log_softmax(logits / 0.5, -1)[0, :1])  # the same op


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_with_noise_is_torch_multinomial(dtype):
    """argmax(probs / Exp(1) noise) is the formula torch.multinomial uses for one sample: the same
    generator state gives the same tokens and leaves the generator in the same state."""
    logits = torch.randn(37, 1001, dtype=dtype, generator=torch.Generator().manual_seed(3)) * 3
    params = SamplingParams(max_new_tokens=1, temperature=0.8)
    ours, theirs = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(3):
        tokens, _ = sample_next(logits, params, torch.empty_like(logits).exponential_(generator=ours))
        want = torch.multinomial(torch.softmax(logits / 0.8, -1), 1, generator=theirs).squeeze(-1)
        assert torch.equal(tokens, want)
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_training_mode_is_restored(model):
    model.train()
    try:
        HFEngine(model).generate([[5, 6]], SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()
    HFEngine(model).generate([[5, 6]], SamplingParams(max_new_tokens=2))
    assert not model.training


def test_update_weights(model):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(5)
    other = Qwen2ForCausalLM(model.config).eval()
    student = Qwen2ForCausalLM(model.config).eval()
    engine = HFEngine(student)
    engine.update_weights(student)  # the shared module: nothing to do
    engine.update_weights(other)
    for (name, a), b in zip(student.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    engine.update_weights([("model.norm.weight", torch.full((64,), 2.0))])
    assert torch.equal(student.model.norm.weight, torch.full((64,), 2.0))
    with pytest.raises(KeyError, match="no tensor named"):
        engine.update_weights([("model.nope", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights([("model.norm.weight", torch.zeros(3))])


def test_bad_inputs_fail_clearly(model):
    engine = HFEngine(model)
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([], params)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[3], []], params)
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[3, VOCAB]], params)
    with pytest.raises(TypeError, match="token ids"):
        engine.generate(["3 4 5"], params)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        engine.generate([[3] * 61], params)  # 61 + 4 > 64
    for bad in [dict(max_new_tokens=0), dict(max_new_tokens=2, temperature=-1.0), dict(max_new_tokens=2, top_p=0.0),
                dict(max_new_tokens=2, n=0), dict(max_new_tokens=2, stop_token_ids=(-1,)),
                dict(max_new_tokens=2, temperature=float("nan")), dict(max_new_tokens=2, seed=1.5)]:
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_make_engine_picks_hf_without_sglang_or_cuda(model):
    engine = make_engine("auto", model=model)
    if not torch.cuda.is_available():
        assert isinstance(engine, HFEngine)
        with pytest.raises(RuntimeError, match="sglang"):
            resolve_engine_kind("sglang")
    with pytest.raises(ValueError, match="one of auto, hf, sglang"):
        make_engine("vllm", model=model)
    with pytest.raises(ValueError, match="model="):
        make_engine("hf")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_exponential_noise_is_exp1(dtype):
    """The sampler's noise is Exp(1): its empirical CDF stays within the Kolmogorov-Smirnov bound of
    1 - exp(-x) at the 0.1% level (a fixed seed: the same draws every run), it is never 0 or NaN,
    and half-precision logits get float32 noise (a small draw would round to 0 in float16)."""
    n = 200_000
    noise = exponential_noise((n // 400, 400), dtype, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert noise.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert bool((noise > 0).all()) and not bool(noise.isnan().any())
    x = noise.flatten().double().sort().values
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum((empirical - (1 - torch.exp(-x))).abs(),
                             (empirical - 1 / n - (1 - torch.exp(-x))).abs()).max())
    assert ks < 1.95 / n ** 0.5, ks


def test_sampled_token_frequencies_follow_the_softmax():
    """With exponential_noise, argmax(probs / noise) draws tokens with probabilities softmax(logits / T):
    each token's count over 40,000 draws is within 5 binomial standard deviations of its expectation."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]]).repeat(40_000, 1)
    params = SamplingParams(max_new_tokens=1, temperature=0.7)
    noise = exponential_noise(tuple(logits.shape), logits.dtype, torch.device("cpu"), torch.Generator().manual_seed(2))
    tokens, _ = sample_next(logits, params, noise)
    counts = torch.bincount(tokens, minlength=5).double()
    p = torch.softmax(logits[0].double() / 0.7, -1)
    expected, sd = 40_000 * p, (40_000 * p * (1 - p)).sqrt()
    assert bool(((counts - expected).abs() <= 5 * sd).all()), (counts, expected)
