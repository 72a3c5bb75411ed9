"""Tensor-parallel SGLang groups on 2 and 4 CPU ranks (gloo, FSDP2-sharded policy), with the
recording stand-in for sglang.Engine (SGLang cannot start without CUDA: the real TP engine never
ran here). Checked: only leaders build an engine, with tp_size and their own GPU and ports; each
leader gets exactly its group's prompts in one call; each rank gets back exactly the completions
the per-rank (data-parallel) engine would have given it; seeds are distinct within a group; every
leader receives every parameter, full-shaped, equal to the unsharded model after the same update;
a failure on a leader (starting its engine, a generate, a weight sync) is raised on every rank of
its group and leaves the collectives aligned; run._make_engine builds these groups for the run."""
from __future__ import annotations

import os

import pytest
import torch

from fastzero.distributed import DistContext, prompt_slice
from fastzero.rollout.base import SamplingParams
from tests._distributed import run_ranks
from tests.rollout.test_sglang import StandInEngine

VOCAB = 30  # the stand-in's vocabulary
PROMPTS = [[5, 6, 7], [9, 3], [11, 12, 13, 14], [2, 2], [8], [20, 21], [4, 4, 4], [17, 3]]
PLAIN = SamplingParams(max_new_tokens=3, n=2)
SEEDED = SamplingParams(max_new_tokens=3, n=2, seed=100)
SHIFT = 0.25  # the "training step": every parameter += SHIFT


def tiny_dir(tmp_path_factory) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, eos_token_id=1)
    directory = tmp_path_factory.mktemp("tp-tiny")
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return str(directory)


def plain(groups) -> list:
    return [[(c.prompt_index, c.response_ids, c.logprobs, c.finish_reason) for c in group] for group in groups]


def stand_in_engine(policy_dir: str, **options):
    from fastzero.rollout.sglang import SGLangEngine

    return SGLangEngine(policy_dir, dtype="float32", deterministic=True, engine_factory=StandInEngine, **options)


def rank_tp(policy_dir: str, tp: int, per_node: int) -> dict:
    from fastzero.distributed import init_distributed
    from fastzero.model import load_causal_lm
    from fastzero.rollout.tp_engine import make_tp_group_engine
    from fastzero.rollout.tp_groups import layout_from_env
    from fastzero.sharding import full_state_dict, shard_model

    rank = int(os.environ["RANK"])  # simulate nodes of `per_node` ranks as torchrun numbers them
    os.environ.update(LOCAL_RANK=str(rank % per_node), LOCAL_WORLD_SIZE=str(per_node))
    ctx = init_distributed("cpu")
    policy, _ = load_causal_lm(policy_dir)
    shard_model(policy, ctx)
    built = []
    layout = layout_from_env(tp, ctx.rank, ctx.world_size, ctx.local_rank)
    start_error = _raised(lambda: make_tp_group_engine(layout, lambda placement: stand_in_engine("/no/such/model")),
                          (RuntimeError, FileNotFoundError))  # a leader that cannot start its engine
    engine = make_tp_group_engine(layout, lambda placement: built.append(stand_in_engine(
        policy_dir, tp_size=tp, seed=7 + ctx.rank, bucket_bytes=4 << 10, engine_kwargs=placement)) or built[-1])
    mine = PROMPTS[prompt_slice(len(PROMPTS), ctx)]
    out = {"start_error": start_error, "built": len(built), "plain": plain(engine.generate(mine, PLAIN)),
           "seeded": plain(engine.generate(mine, SEEDED))}
    with engine.memory_released(weights=policy):  # the RL step: release, train, resume + reload
        with torch.no_grad():
            for param in policy.parameters():
                param.add_(SHIFT)  # on the local shards
    out["after_sync"] = plain(engine.generate(mine, PLAIN))
    stand_in = built[0]._engine if built else None
    if stand_in is not None:  # a leader whose engine fails: the whole group must raise, then carry on
        stand_in.output_patch = lambda outputs: outputs[:-1]
    out["generate_error"] = _raised(lambda: engine.generate(mine, PLAIN))
    if stand_in is not None:
        stand_in.output_patch = None
        stand_in.update_result = (False, "refused by the stand-in")
    out["sync_error"] = _raised(lambda: engine.update_weights(policy))
    if stand_in is not None:
        stand_in.update_result = (True, "Success")
    engine.update_weights(policy)  # the collectives still line up: a clean sync after the failed one
    full = full_state_dict(policy, ctx)
    engine.shutdown()
    out["calls"] = stand_in.calls if stand_in is not None else None
    out["full"] = full if ctx.is_main else None
    out["wired"] = {t: _wired(policy_dir, policy, ctx, t) for t in (1, tp)}
    return out


def _wired(policy_dir: str, policy, ctx, tp: int):
    """What fastzero.run._make_engine builds under torchrun for --rollout sglang --sglang-tp tp (with the
    stand-in as sglang.Engine): (wrapper class, the leader's Engine kwargs or None)."""
    import fastzero.rollout as rollout
    import fastzero.rollout.sglang as sglang_adapter
    from fastzero.config import Config
    from fastzero.run import _make_engine

    rollout.sglang_available = lambda: True
    sglang_adapter._sglang_engine_class = lambda: StandInEngine
    cfg = Config()
    cfg.rollout.engine, cfg.rollout.sglang_tp = "sglang", tp
    engine = _make_engine(cfg, policy, policy_dir, torch.float32, (1,), 0, seed=3 + ctx.rank, dist=ctx)
    inner = getattr(engine, "engine", None)
    return type(engine).__name__, inner._engine.calls[0][1] if inner is not None else None


def _raised(call, kinds=RuntimeError) -> str | None:
    try:
        call()
    except kinds as error:
        return str(error)
    return None


def expected_per_rank(policy_dir: str, world: int, params: SamplingParams) -> list[list]:
    """What the per-rank (data-parallel) path returns: each rank's own engine on its own slice."""
    out = []
    for rank in range(world):
        share = PROMPTS[prompt_slice(len(PROMPTS), DistContext(rank=rank, world_size=world))]
        out.append(plain(stand_in_engine(policy_dir).generate(share, params)))
    return out


@pytest.mark.parametrize("world,tp,per_node", [
    (2, 2, 2),  # one node, one group
    pytest.param(4, 2, 2, marks=pytest.mark.slow),  # two nodes of two ranks, a group on each
], ids=["2-ranks-tp2", "4-ranks-tp2-two-nodes"])
def test_tp_groups_generate_for_their_ranks_and_get_full_weights(tmp_path_factory, world, tp, per_node):
    from fastzero.model import load_causal_lm

    policy_dir = tiny_dir(tmp_path_factory)
    results = run_ranks(world, rank_tp, policy_dir, tp, per_node)
    slices = [prompt_slice(len(PROMPTS), DistContext(rank=r, world_size=world)) for r in range(world)]
    reference, _ = load_causal_lm(policy_dir)  # the unsharded model after the same "step"
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(SHIFT)
    expected_weights = {name: p.detach() for name, p in reference.named_parameters()}
    assert [r["plain"] for r in results] == expected_per_rank(policy_dir, world, PLAIN)  # as data parallel
    assert [r["after_sync"] for r in results] == expected_per_rank(policy_dir, world, PLAIN)
    for leader in range(0, world, tp):
        group = range(leader, leader + tp)
        got = results[leader]
        assert got["built"] == 1 and all(results[m]["built"] == 0 and results[m]["calls"] is None
                                         for m in group if m != leader)
        calls = got["calls"]
        init = calls[0][1]
        local = leader % per_node
        assert (init["tp_size"], init["base_gpu_id"], init["random_seed"]) == (tp, local, 7 + leader)
        assert (init["port"], init["nccl_port"]) == (30000 + 16 * local, 30000 + 16 * local + 1)
        # exactly the group's prompts, in rank order, one engine call per generate
        group_prompts = [p for m in group for p in PROMPTS[slices[m]]]
        generates = [kw for name, kw in calls if name == "generate"]
        for call in generates[:2]:
            assert call["input_ids"] == [p for p in group_prompts for _ in range(PLAIN.n)]
        seeds = [sp["sampling_seed"] for sp in generates[1]["sampling_params"]]
        assert seeds == list(range(100, 100 + len(group_prompts) * SEEDED.n))  # distinct per sampled row
        whole = plain(stand_in_engine(policy_dir).generate(group_prompts, SEEDED))
        start = 0
        for m in group:  # the group's one seeded call, split back: each rank its own rows
            count = slices[m].stop - slices[m].start
            assert results[m]["seeded"] == [[(i - start, *rest) for i, *rest in row] for row in whole[start:start + count]]
            start += count
        # three syncs: memory_released's, the refused one, the clean one; the first and last are full
        sessions, current = [], None
        for name, kw in calls:
            if name == "begin_weight_update":
                current = []
            elif name == "update_weights_from_tensor":
                current.append(kw)
            elif name == "end_weight_update":
                sessions.append(current)
        assert len(sessions) == 3 and len(sessions[1]) == 1  # the refused bucket ended that sync
        for session in (sessions[0], sessions[2]):
            assert len(session) > 1 and [kw["flush_cache"] for kw in session] == [False] * (len(session) - 1) + [True]
            sent = [pair for kw in session for pair in kw["named_tensors"]]
            assert [name for name, _ in sent] == list(expected_weights)  # every parameter once, in order
            for name, tensor in sent:
                assert tensor.shape == expected_weights[name].shape and torch.equal(tensor, expected_weights[name]), name
        release = [name for name, _ in calls].index("release_memory_occupation")
        assert [name for name, _ in calls][release:release + 3] == ["release_memory_occupation",
                                                                    "resume_memory_occupation", "begin_weight_update"]
        assert calls[-1][0] == "shutdown"
        for m in group:  # the leader's failures reach every rank of its group
            assert "no config.json" in results[m]["start_error"]
            assert "outputs for" in results[m]["generate_error"]
            assert "refused by the stand-in" in results[m]["sync_error"]
            if m != leader:
                for failure in ("start_error", "generate_error", "sync_error"):
                    assert f"leader (rank {leader})" in results[m][failure], failure
    for rank, got in enumerate(results):  # the run's own wiring: per-rank engines at tp 1, groups above
        local, leader = rank % per_node, rank - rank % tp
        kind, init = got["wired"][1]
        assert kind == "ShardedEngine" and (init["tp_size"], init["base_gpu_id"], init["random_seed"]) == (1, local, 3 + rank)
        kind, init = got["wired"][tp]
        assert kind == "TPGroupEngine" and (init is None) == (rank != leader)
        if init is not None:
            assert (init["tp_size"], init["base_gpu_id"], init["port"], init["random_seed"]) == (
                tp, local, 30000 + 16 * local, 3 + rank)
    full = results[0]["full"]
    for name, tensor in expected_weights.items():
        assert torch.equal(full[name], tensor), name  # the sharded model itself took the same step
