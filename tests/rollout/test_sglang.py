"""The SGLang adapter: its logic against a stand-in engine that records every call (SGLang cannot
start without CUDA), and every name it uses against the installed sglang package (skipped, with the
reason, where sglang is not importable; run it with a venv that has sglang:
`PYTHONPATH=. /path/to/sglang-venv/bin/python -m pytest tests/rollout/test_sglang.py`)."""
from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch

from fastzero.rollout.base import SamplingParams
from fastzero.rollout.sglang import SGLangEngine, buckets_of, named_tensors_of

VOCAB, EOS = 30, 1


class StandInEngine:
    """Answers like sglang.Engine 0.5.23 (output format read from its source) and records calls."""

    def __init__(self, **kwargs):
        self.calls = [("__init__", kwargs)]
        self.update_result = (True, "Success")
        self.output_patch = None  # a function that may corrupt outputs, to test the adapter's checks

    def generate(self, input_ids=None, sampling_params=None, return_logprob=False):
        self.calls.append(("generate", dict(input_ids=input_ids, sampling_params=sampling_params,
                                            return_logprob=return_logprob)))
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(input_ids)
        outputs = []
        for row, (ids, sp) in enumerate(zip(input_ids, params)):
            stops = {EOS} | set(sp.get("stop_token_ids") or ())
            out, reason = [], {"type": "length", "length": sp["max_new_tokens"]}
            for k in range(sp["max_new_tokens"]):  # a fake model: counts up from the last prompt token
                token = (ids[-1] + k + 1 + (sp.get("sampling_seed") or 0)) % VOCAB
                out.append(token)
                if token in stops:
                    reason = {"type": "stop", "matched": token}
                    break
            logprobs = [(-0.1 * (k + 1), t, None) for k, t in enumerate(out)]
            outputs.append({"output_ids": out, "meta_info": {"id": f"r{row}", "finish_reason": reason,
                                                             "output_token_logprobs": logprobs}})
        return self.output_patch(outputs) if self.output_patch else outputs

    def begin_weight_update(self, selector="all"):
        self.calls.append(("begin_weight_update", {}))
        return True, "Success"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        self.calls.append(("update_weights_from_tensor", dict(named_tensors=list(named_tensors),
                                                              load_format=load_format, flush_cache=flush_cache)))
        return self.update_result

    def end_weight_update(self):
        self.calls.append(("end_weight_update", {}))
        return True, "Success"

    def release_memory_occupation(self, tags=None):
        self.calls.append(("release_memory_occupation", dict(tags=tags)))

    def resume_memory_occupation(self, tags=None):
        self.calls.append(("resume_memory_occupation", dict(tags=tags)))

    def flush_cache(self):
        self.calls.append(("flush_cache", {}))

    def shutdown(self):
        self.calls.append(("shutdown", {}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, eos_token_id=EOS)
    model = Qwen2ForCausalLM(config)
    directory = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(directory)
    return model, directory


def make(directory, **options) -> tuple[SGLangEngine, StandInEngine]:
    made = []
    engine = SGLangEngine(str(directory), engine_factory=lambda **kw: made.append(StandInEngine(**kw)) or made[0],
                          **options)
    return engine, made[0]


def names(stand_in):
    return [name for name, _ in stand_in.calls]


def test_rl_step_call_sequence(tiny):
    model, directory = tiny
    engine, stand_in = make(directory, bucket_bytes=8 * 2**10, seed=5)
    init = stand_in.calls[0][1]
    assert init["enable_memory_saver"] and init["skip_tokenizer_init"] and init["random_seed"] == 5
    params = SamplingParams(max_new_tokens=4, n=2)
    engine.generate([[3, 4]], params)
    engine.release_memory()
    with pytest.raises(RuntimeError, match="release_memory"):
        engine.generate([[3, 4]], params)
    with pytest.raises(RuntimeError, match="resume_memory"):
        engine.update_weights(model)
    with torch.no_grad():  # "training"
        model.model.norm.weight.add_(1.0)
    engine.resume_memory()
    with pytest.raises(RuntimeError, match="garbage"):
        engine.generate([[3, 4]], params)
    engine.update_weights(model)
    engine.generate([[3, 4]], params)
    engine.shutdown()
    updates = [kw for name, kw in stand_in.calls if name == "update_weights_from_tensor"]
    assert len(updates) > 2  # the small bucket size forces several buckets
    assert names(stand_in) == (["__init__", "generate", "release_memory_occupation", "resume_memory_occupation",
                                "begin_weight_update"] + ["update_weights_from_tensor"] * len(updates)
                               + ["end_weight_update", "generate", "shutdown"])
    assert [u["flush_cache"] for u in updates] == [False] * (len(updates) - 1) + [True]  # flush after the last
    sent = dict(pair for u in updates for pair in u["named_tensors"])
    assert torch.equal(sent["model.norm.weight"], model.model.norm.weight.detach().to(torch.bfloat16))
    # release/resume twice in a row are no-ops (the engine asserts it is idle on release)
    engine.release_memory(); engine.release_memory(); engine.resume_memory(); engine.resume_memory()
    assert names(stand_in).count("release_memory_occupation") == 2


class NonFiniteLoss(Exception):
    """Stands in for the trainer's NonFiniteError: a step skipped inside the update."""


def test_memory_released_resumes_and_reloads_even_when_the_step_fails(tiny):
    model, directory = tiny
    engine, stand_in = make(directory)
    params = SamplingParams(max_new_tokens=3)
    with pytest.raises(NonFiniteLoss):
        with engine.memory_released(weights=model):
            assert names(stand_in)[-1] == "release_memory_occupation"
            with pytest.raises(RuntimeError, match="release_memory"):
                engine.generate([[3, 4]], params)  # released inside the block
            raise NonFiniteLoss("loss")
    tail = names(stand_in)[names(stand_in).index("release_memory_occupation"):]
    assert tail[:3] == ["release_memory_occupation", "resume_memory_occupation", "begin_weight_update"]
    assert tail[-1] == "end_weight_update"
    assert engine.generate([[3, 4]], params)[0][0].response_ids == [5, 6, 7]  # the next rollout works
    # the normal exit does the same; without weights the engine resumes but refuses stale weights
    with engine.memory_released(weights=model):
        pass
    assert names(stand_in)[-1] == "end_weight_update"
    engine.generate([[3, 4]], params)
    with engine.memory_released():
        pass
    assert names(stand_in)[-1] == "resume_memory_occupation"
    with pytest.raises(RuntimeError, match="garbage"):
        engine.generate([[3, 4]], params)
    # a failing release leaves nothing released and resumes nothing
    stand_in.release_memory_occupation = lambda tags=None: (_ for _ in ()).throw(RuntimeError("busy"))
    engine.update_weights(model)
    calls = len(stand_in.calls)
    with pytest.raises(RuntimeError, match="busy"):
        with engine.memory_released(weights=model):
            pytest.fail("the block must not run when the release failed")
    assert len(stand_in.calls) == calls
    engine.generate([[3, 4]], params)


def test_buckets_cover_every_parameter_once_within_the_size(tiny):
    model, _ = tiny
    pairs = list(named_tensors_of(model))
    assert "lm_head.weight" not in dict(pairs)  # tied: sglang loads it from model.embed_tokens.weight
    limit = 6 * 2**10
    buckets = list(buckets_of(pairs, limit, torch.bfloat16))
    flat = [pair for bucket in buckets for pair in bucket]
    assert [name for name, _ in flat] == [name for name, _ in pairs]
    for (_, sent), (_, original) in zip(flat, pairs):
        assert sent.dtype == torch.bfloat16 and torch.equal(sent, original.detach().to(torch.bfloat16))
    for bucket in buckets:
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= limit or len(bucket) == 1  # only a single oversized tensor may exceed it
    for first, second in zip(buckets, buckets[1:]):  # greedy: the next tensor did not fit
        size = sum(t.numel() * t.element_size() for _, t in first)
        assert size + second[0][1].numel() * 2 > limit
    assert len(list(buckets_of(pairs, 2**40, None))) == 1
    # wrapper prefixes (torch.compile, DDP) are stripped
    assert [n for n, _ in named_tensors_of([("_orig_mod.model.norm.weight", torch.zeros(1))])] == ["model.norm.weight"]


def test_failed_bucket_raises_and_still_closes_the_session(tiny):
    model, directory = tiny
    engine, stand_in = make(directory)
    stand_in.update_result = (False, "update_weights_from_tensor must run between begin and end")
    with pytest.raises(RuntimeError, match="must run between"):
        engine.update_weights(model)
    assert names(stand_in)[-1] == "end_weight_update"
    with pytest.raises(ValueError, match="no tensors"):
        engine.update_weights([])


def test_outputs_parsed_in_order_with_stop_token_and_logprobs(tiny):
    _, directory = tiny
    engine, stand_in = make(directory)
    prompts = [[3, 27], [5], [10, 11, 12]]
    out = engine.generate(prompts, SamplingParams(max_new_tokens=5, n=3, temperature=0.8, top_k=0,
                                                  stop_token_ids=(13,)))
    call = stand_in.calls[-1][1]
    assert call["input_ids"] == [p for p in prompts for _ in range(3)] and call["return_logprob"] is True
    assert call["sampling_params"] == {"max_new_tokens": 5, "temperature": 0.8, "top_p": 1.0, "top_k": -1,
                                       "stop_token_ids": [13], "n": 1}
    assert [[c.prompt_index for c in group] for group in out] == [[0] * 3, [1] * 3, [2] * 3]
    first, second, third = (group[0] for group in out)
    assert first.response_ids == [28, 29, 0, 1] and first.finish_reason == "stop"  # EOS kept, last
    assert second.response_ids == [6, 7, 8, 9, 10] and second.finish_reason == "length"
    assert third.response_ids == [13] and third.finish_reason == "stop"  # a stop_token_ids hit
    assert first.logprobs == [-0.1 * k for k in (1, 2, 3, 4)]  # passed through unchanged: exact


def test_seed_gives_each_sample_its_own_sampling_seed(tiny):
    _, directory = tiny
    engine, stand_in = make(directory, deterministic=True)
    assert stand_in.calls[0][1]["enable_deterministic_inference"] is True
    out = engine.generate([[3], [4]], SamplingParams(max_new_tokens=2, n=2, seed=100))
    seeds = [sp["sampling_seed"] for sp in stand_in.calls[-1][1]["sampling_params"]]
    assert seeds == [100, 101, 102, 103]
    assert out[0][0].response_ids != out[0][1].response_ids  # identical seeds would give identical samples


@pytest.mark.parametrize("corrupt,message", [
    (lambda outs: [dict(o, meta_info=dict(o["meta_info"], finish_reason={"type": "abort", "message": "oom"}))
                   for o in outs], "abort"),
    (lambda outs: [dict(o, output_ids=o["output_ids"][:-1]) if o["meta_info"]["finish_reason"]["type"] == "stop"
                   else o for o in outs], "stop token"),
    (lambda outs: [dict(o, meta_info=dict(o["meta_info"], output_token_logprobs=[])) for o in outs], "log-probs"),
    (lambda outs: outs[:-1], "outputs for"),
])
def test_malformed_outputs_are_errors(tiny, corrupt, message):
    _, directory = tiny
    engine, stand_in = make(directory)
    stand_in.output_patch = corrupt
    with pytest.raises(RuntimeError, match=message):
        engine.generate([[28], [3]], SamplingParams(max_new_tokens=4))


def test_bad_construction(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SGLangEngine(str(tmp_path), engine_factory=StandInEngine)
    with pytest.raises(ValueError, match="bucket_bytes"):
        SGLangEngine(str(tiny[1]), engine_factory=StandInEngine, bucket_bytes=0)
    engine, _ = make(tiny[1])
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[VOCAB]], SamplingParams(max_new_tokens=1))


# ---- the names we use, against the installed sglang --------------------------------------------------

SGLANG_MISSING = importlib.util.find_spec("sglang") is None


@pytest.mark.skipif(SGLANG_MISSING, reason="sglang is not installed in this interpreter (CUDA-only; it lives in "
                                            "a separate venv: see the module docstring)")
def test_calls_match_installed_sglang_api(tiny):
    """Replays a full RL step through the stand-in, then checks every recorded method, keyword,
    constructor argument and sampling key exists in the installed sglang, and that sglang's own
    output builders produce the format the adapter parses."""
    from sglang.srt.constants import GPU_MEMORY_ALL_TYPES
    from sglang.srt.entrypoints.engine import Engine
    from sglang.srt.managers.schedule_batch import FINISH_LENGTH, FINISH_MATCHED_TOKEN, Req
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLangSamplingParams
    from sglang.srt.server_args import ServerArgs

    from fastzero.rollout.tp_groups import engine_placement

    model, directory = tiny
    # placed as under torchrun (a TP group's leader at local rank 2): base_gpu_id, port, nccl_port
    engine, stand_in = make(directory, deterministic=True, tp_size=2, engine_kwargs=engine_placement(2))
    engine.generate([[3, 4]], SamplingParams(max_new_tokens=3, n=2, temperature=0.0, top_k=4, top_p=0.9,
                                             stop_token_ids=(7,), seed=3))
    engine.generate([[3, 4]], SamplingParams(max_new_tokens=3))
    engine.release_memory()
    engine.resume_memory()
    engine.update_weights(model)
    engine.shutdown()

    server_fields = set(ServerArgs.__struct_fields__) if hasattr(ServerArgs, "__struct_fields__") else \
        {f.name for f in __import__("dataclasses").fields(ServerArgs)}
    constructor = stand_in.calls[0][1]
    assert set(constructor) <= server_fields, set(constructor) - server_fields
    for name, kwargs in stand_in.calls[1:]:
        method = getattr(Engine, name, None)
        assert callable(method), f"sglang.Engine has no {name}"
        accepted = inspect.signature(method).parameters
        assert set(kwargs) <= set(accepted), (name, set(kwargs) - set(accepted))
    assert "named_tensors" in inspect.signature(Engine.update_weights_from_tensor).parameters
    # every sampling dict we sent is valid for sglang's SamplingParams
    for name, kwargs in stand_in.calls:
        if name == "generate":
            dicts = kwargs["sampling_params"]
            for sp in dicts if isinstance(dicts, list) else [dicts]:
                SGLangSamplingParams(**sp).verify(VOCAB)
    # releasing with tags=None covers weights, KV cache and CUDA graphs
    assert {"weights", "kv_cache", "cuda_graph"} <= set(GPU_MEMORY_ALL_TYPES)
    # the output format the adapter parses, built by sglang's own code
    assert FINISH_MATCHED_TOKEN(matched=EOS).to_json() == {"type": "stop", "matched": EOS}
    assert FINISH_LENGTH(length=3).to_json()["type"] == "length"
    assert TokenizerManager.detokenize_logprob_tokens(None, [-0.5], [3], False) == [(-0.5, 3, None)]
    assert "Stop position is included" in (Req.output_ids_through_stop.__doc__ or "")
