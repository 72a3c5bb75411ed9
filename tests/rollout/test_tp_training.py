"""The real training loop on 2 gloo ranks with `--rollout sglang --sglang-tp 2` against
`--sglang-tp 1` (one engine per rank), with a stand-in for sglang.Engine that really generates.

The stand-in holds its own copy of the model, loaded from model_path as SGLang loads it, takes its
weights only through update_weights_from_tensor, and turns them into NaN on resume (what
torch_memory_saver leaves in released memory), so a sync that is skipped, partial or stale shows up
in the next rollout. It samples each request with the real HF sampler, seeded from the request's
prompt ids (and its place among identical requests), so the two placements see the same samples
exactly when the engines hold the same weights. Everything else - the trainer, FSDP2, the
evaluation, checkpoints and final/ - is the run's own code. The real SGLang engine never ran here.
"""
from __future__ import annotations

import collections
import zlib

import pytest
import torch

from fastzero.rollout.base import SamplingParams
from tests._distributed import run_ranks

pytestmark = pytest.mark.slow


class ModelBackedEngine:
    """Answers like sglang.Engine 0.5.23 (the format tests/rollout/test_sglang.py documents)."""

    def __init__(self, **kwargs):
        from fastzero.model import load_causal_lm

        self.kwargs = kwargs
        self.model, _ = load_causal_lm(kwargs["model_path"])
        self.model.eval().requires_grad_(False)
        self.released = False

    def generate(self, input_ids=None, sampling_params=None, return_logprob=False):
        from fastzero.rollout.hf import HFEngine

        assert return_logprob and not self.released
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(input_ids)
        seen = collections.Counter()
        outputs = []
        for ids, sp in zip(input_ids, params):
            seen[tuple(ids)] += 1
            seed = zlib.crc32(bytes(str(list(ids)), "ascii")) + seen[tuple(ids)]
            stops = tuple(sp.get("stop_token_ids") or ())
            engine = HFEngine(self.model, eos_token_ids=stops + (self.model.config.eos_token_id,))
            done = engine.generate([ids], SamplingParams(max_new_tokens=sp["max_new_tokens"],
                                                         temperature=sp["temperature"], top_p=sp["top_p"],
                                                         top_k=sp["top_k"], seed=seed))[0][0]
            reason = ({"type": "stop", "matched": done.response_ids[-1]} if done.finish_reason == "stop"
                      else {"type": "length", "length": sp["max_new_tokens"]})
            outputs.append({"output_ids": done.response_ids, "meta_info": {
                "finish_reason": reason, "output_token_logprobs": [(lp, t, None) for lp, t in
                                                                   zip(done.logprobs, done.response_ids)]}})
        return outputs

    def begin_weight_update(self, selector="all"):
        return True, "Success"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                params[name].copy_(tensor)
        return True, "Success"

    def end_weight_update(self):
        return True, "Success"

    def release_memory_occupation(self, tags=None):
        self.released = True

    def resume_memory_occupation(self, tags=None):
        self.released = False
        with torch.no_grad():
            for param in self.model.parameters():
                param.fill_(float("nan"))

    def shutdown(self):
        pass


def rank_train(tp: int, output_dir: str) -> dict:
    import fastzero.rollout as rollout
    import fastzero.rollout.sglang as sglang_adapter
    from fastzero import config as C
    from fastzero.presets import from_preset
    from fastzero.distributed import shutdown
    from fastzero.loop import train_loop
    from fastzero.report import finish_run
    from fastzero.run import Run
    from fastzero.sharding import full_state_dict

    rollout.sglang_available = lambda: True  # CPU ranks; the engine is the stand-in above
    sglang_adapter._sglang_engine_class = lambda: ModelBackedEngine
    config = from_preset("tiny-direct")
    for key, value in dict(rollout="sglang", sglang_tp=tp, sync_bucket_mb=1, prompts_per_step=4,
                           samples_per_prompt=4, mini_batch_size=8, micro_batch_tokens=96, max_new_tokens=8,
                           num_test=6, num_train=100, eval_every=1, save_every=1, max_steps=2,
                           time_limit_minutes=0.0, threads=1, progress=False, log_samples=0, lr=1e-3, seed=3,
                           output_dir=output_dir).items():
        config.set(key, value)
    C.validate(config)
    run = Run(config, output_dir=output_dir, log=lambda *a, **k: None)
    kind = type(run.engine).__name__
    train_loop(run)
    finish_run(run)
    weights = full_state_dict(run.policy, run.dist)
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in run.metrics.rows]
    run.close()
    shutdown(run.dist)
    return {"kind": kind, "rows": rows, "weights": weights}


def test_tp_groups_train_exactly_like_one_engine_per_rank(tmp_path):
    per_rank = run_ranks(2, rank_train, 1, str(tmp_path / "tp1"))
    grouped = run_ranks(2, rank_train, 2, str(tmp_path / "tp2"))
    assert [r["kind"] for r in per_rank] == ["ShardedEngine"] * 2
    assert [r["kind"] for r in grouped] == ["TPGroupEngine"] * 2
    expected, got = per_rank[0], grouped[0]
    assert max(row["step"] for row in got["rows"]) == 2
    assert sum("eval/accuracy" in row for row in got["rows"]) >= 2  # before training and after a sync
    for row in got["rows"]:  # NaN weights (a missed sync) would show as NaN log-probs and losses
        assert all(value == value for value in row.values() if isinstance(value, float)), row
    assert got["rows"] == expected["rows"]  # the same samples, losses and updates, to the bit
    assert set(got["weights"]) == set(expected["weights"])
    for name, weight in expected["weights"].items():
        assert torch.equal(got["weights"][name], weight), name
    assert (tmp_path / "tp2" / "final" / "config.json").is_file()
