"""The hf engine's decode strategies (shared-prefix prefill, KV buffers, compaction, stop-check
cadence, static buffers, a compiled step) against cache-free oracles and against each other. In
float64, where the paths agree to rounding, so tokens must be identical and log-probs within the
float64 bound (conftest.rounding_tolerance)."""
from __future__ import annotations

import pytest
import torch

from fastzero.rollout.base import SamplingParams
from fastzero.rollout.hf import HFEngine

from tests.rollout.conftest import PROMPTS, full_forward_logits, rounding_tolerance

STRATEGIES = [
    dict(),  # the CPU default: dynamic buffers, shared prefix, compaction at half alive, sync every token
    dict(share_prefix=False),
    dict(compact_fraction=0.0),  # never compact
    dict(compact_fraction=1.0),  # compact on every finish
    dict(sync_every=3),
    dict(sync_every=3, compact_fraction=1.0),
    dict(decode_mode="static", compile_step=False),
    dict(decode_mode="static", compile_step=False, sync_every=4),
    dict(max_batch_size=5),  # micro-batches that split a prompt's group
]


def sampling_oracle(model, prompts, params, seed):
    """Cache-free seeded sampling: every step one unpadded full forward per row, then one Exp(1)
    draw per (row, vocabulary entry) for ALL rows in order, as -log(U) of a Uniform[0, 1) draw,
    token = argmax(probs / noise) (torch.multinomial's formula). No cache, padding, compaction or
    batching of the model."""
    generator = torch.Generator().manual_seed(seed)
    rows = [list(p) for p in prompts for _ in range(params.n)]
    responses = [[] for _ in rows]
    done = [False] * len(rows)
    stops = set(params.stop_token_ids)
    for _ in range(params.max_new_tokens):
        logits = torch.stack([_last_logits(model, r + resp) for r, resp in zip(rows, responses)])
        probs = torch.softmax(logits / params.temperature, -1)
        noise = -torch.empty_like(probs).uniform_(generator=generator).log()
        tokens = (probs / noise).argmax(-1).tolist()
        for i, token in enumerate(tokens):
            if not done[i]:
                responses[i].append(token)
                done[i] = token in stops
        if all(done):
            break
    return responses


def _last_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].double()


def flat(out):
    return [c for group in out for c in group]


ORACLE_PARAMS = SamplingParams(max_new_tokens=9, n=3, temperature=1.0, stop_token_ids=(2, 5))


@pytest.fixture(scope="module")
def oracle_samples(model64):
    return sampling_oracle(model64, PROMPTS, ORACLE_PARAMS, seed=4)


def _name(options):
    return ",".join(f"{k}={v}" for k, v in options.items()) or "default"


# one micro-batch: the oracle draws the whole batch's noise per step (several micro-batches draw
# theirs chunk after chunk, which the next test covers against the one-chunk engine)
@pytest.mark.parametrize("options", [o for o in STRATEGIES if "max_batch_size" not in o], ids=_name)
def test_seeded_sampling_equals_the_cache_free_oracle(model64, oracle_samples, options):
    want = oracle_samples
    engine = HFEngine(model64, eos_token_ids=[], seed=0, **options)
    engine.set_rng_state(torch.Generator().manual_seed(4).get_state())
    got = flat(engine.generate(PROMPTS, ORACLE_PARAMS))
    assert [c.response_ids for c in got] == want
    assert any(c.finish_reason == "stop" for c in got) and any(c.finish_reason == "length" for c in got)
    for c, response in zip(got, want):
        assert c.finish_reason == ("stop" if response[-1] in (2, 5) else "length")
        assert len(c.logprobs) == len(c.response_ids)


@pytest.mark.parametrize("options", STRATEGIES, ids=_name)
def test_every_strategy_gives_the_same_tokens_and_logprobs(model64, options):
    params = SamplingParams(max_new_tokens=10, n=4, temperature=0.9, top_k=8, stop_token_ids=(3, 7))
    reference = HFEngine(model64, eos_token_ids=[], compact_fraction=0.0, share_prefix=False, seed=2,
                         max_batch_size=options.get("max_batch_size", 512))
    want = flat(reference.generate(PROMPTS, params))
    got = flat(HFEngine(model64, eos_token_ids=[], seed=2, **options).generate(PROMPTS, params))
    assert [c.response_ids for c in got] == [c.response_ids for c in want]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
    prompts = [p for p in PROMPTS for _ in range(params.n)]
    scale = max(float(full_forward_logits(model64, p, c.response_ids).abs().max()) for p, c in zip(prompts, want))
    tol = rounding_tolerance(model64, torch.float64, max(map(len, PROMPTS)) + 10, scale / params.temperature)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a.logprobs, dtype=torch.float64),
                                   torch.tensor(b.logprobs, dtype=torch.float64), atol=tol, rtol=0)


def test_greedy_static_mode_and_padding(model64):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    dynamic = HFEngine(model64, eos_token_ids=[]).generate(PROMPTS, params)
    static = HFEngine(model64, eos_token_ids=[], decode_mode="static", compile_step=False)
    for _ in range(2):  # the second call reuses the pooled buffers, stale columns and all
        out = static.generate(PROMPTS, params)
        assert [g[0].response_ids for g in out] == [g[0].response_ids for g in dynamic]
    for prompt, group in zip(PROMPTS, out):  # padding invisible in static mode too
        assert static.generate([prompt], params)[0][0].response_ids == group[0].response_ids


def test_bad_options(model):
    for bad, message in [(dict(decode_mode="graph"), "decode_mode"), (dict(sync_every=0), "sync_every")]:
        with pytest.raises(ValueError, match=message):
            HFEngine(model, **bad)


@pytest.mark.slow
def test_compiled_static_step_gives_the_same_tokens(model):
    """torch.compile(mode="reduce-overhead") of the static step: on CPU inductor compiles it and the
    CUDA-graph capture is skipped (it needs CUDA); the tokens must not change. ~1-3 min compiling."""
    params = SamplingParams(max_new_tokens=6, n=2, temperature=1.0)
    want = HFEngine(model, decode_mode="static", compile_step=False, seed=3).generate(PROMPTS, params)
    got = HFEngine(model, decode_mode="static", compile_step=True, seed=3).generate(PROMPTS, params)
    assert [c.response_ids for c in flat(got)] == [c.response_ids for c in flat(want)]
