"""fastzero.distributed: the single-process path touches no process group; prompt slices cover a
step disjointly with whole groups; the collectives and the global loss normalisers on 2 and 3
gloo ranks equal what one process computes over the whole batch (bit for bit: integer counts);
a collective that one rank never reaches times out with an error instead of hanging."""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastzero.distributed import (
    SINGLE,
    DistContext,
    all_gather_object,
    all_gather_rows,
    all_reduce_max,
    broadcast_object,
    global_token_weights,
    init_distributed,
    local_rows,
    prompt_slice,
    reduce_sums,
)
from fastzero.kernels.aggregation import AGGREGATIONS, token_weights
from tests._distributed import rank_env, run_ranks


def test_no_torchrun_means_no_process_group():
    import torch.distributed as dist

    assert init_distributed("cpu", env={}) is SINGLE
    assert init_distributed("cpu", env=rank_env(0, 1, 12345)) is SINGLE  # a world of one: the same
    assert not dist.is_initialized()
    assert reduce_sums({"a": 1.5}, SINGLE) == {"a": 1.5}
    assert all_reduce_max(3, SINGLE) == 3 and broadcast_object("x", SINGLE) == "x"


def test_bad_torchrun_environment_is_named():
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu", env={**rank_env(0, 2, 1), "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK=2"):
        init_distributed("cpu", env=rank_env(2, 2, 1))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 9), st.integers(1, 8))
def test_prompt_slices_cover_the_step_disjointly(prompts, world, group):
    if prompts < world:
        with pytest.raises(ValueError, match="prompts-per-step"):
            prompt_slice(prompts, DistContext(rank=0, world_size=world))
        return
    slices = [prompt_slice(prompts, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(prompts))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    # Rows of the prompt-major flattened batch: a rank's rows are whole groups of `group` samples.
    rows = [set(range(s.start * group, s.stop * group)) for s in slices]
    for p in range(prompts):
        owners = [r for r, held in enumerate(rows) if p * group in held]
        assert len(owners) == 1 and all(p * group + k in rows[owners[0]] for k in range(group))


def test_local_rows_of_a_global_minibatch():
    mini = torch.tensor([7, 0, 3, 9, 4])
    assert local_rows(mini, 3, 8).tolist() == [4, 0, 1]
    assert local_rows(mini, 10, 12).tolist() == []


def make_mask(seed: int = 0, rows: int = 11, width: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (rows,), generator=g)
    lengths[3] = 0  # an empty response
    start = torch.randint(0, 3, (rows,), generator=g)
    cols = torch.arange(width)[None]
    return ((cols >= start[:, None]) & (cols < (start + lengths)[:, None])).float()


def rank_collectives() -> dict:
    ctx = init_distributed("cpu")
    mask = make_mask()
    share = prompt_slice(mask.shape[0], ctx)
    out = {"weights": {agg: global_token_weights(mask[share], agg, 13.0, ctx) for agg in AGGREGATIONS}}
    out["sums"] = reduce_sums({"a": float(ctx.rank + 1), "b": 0.5}, ctx)
    out["rows"] = all_gather_rows(torch.arange(ctx.rank + 1, dtype=torch.float32).view(-1, 1), ctx)
    out["max"] = all_reduce_max(10 * ctx.rank, ctx)
    out["objects"] = all_gather_object({"r": ctx.rank}, ctx)
    out["broadcast"] = broadcast_object(f"from {ctx.rank}", ctx)
    out["share"] = share
    return out


@pytest.mark.parametrize("world_size", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_collectives_match_one_process(world_size):
    results = run_ranks(world_size, rank_collectives)
    mask = make_mask()
    for agg in AGGREGATIONS:
        expected = token_weights(mask, agg, 13.0)
        got = torch.cat([r["weights"][agg] for r in results])
        assert torch.equal(got, expected), agg  # the same integer counts -> the same floats
    ranks = range(world_size)
    for r in results:
        assert r["sums"] == {"a": float(sum(k + 1 for k in ranks)), "b": 0.5 * world_size}
        assert r["rows"].view(-1).tolist() == [float(i) for k in ranks for i in range(k + 1)]
        assert r["max"] == 10 * (world_size - 1)
        assert r["objects"] == [{"r": k} for k in ranks]
        assert r["broadcast"] == "from 0"


def rank_hang(timeout_s: float) -> dict:
    ctx = init_distributed("cpu", timeout_s=timeout_s)
    started = time.monotonic()
    if ctx.rank == 1:  # never joins the collective; waits past rank 0's timeout, then leaves
        time.sleep(timeout_s * 3)
        return {"rank": 1}
    try:
        reduce_sums({"x": 1.0}, ctx)
    except RuntimeError as err:
        return {"rank": 0, "error": str(err), "seconds": time.monotonic() - started}
    return {"rank": 0, "error": None}


def test_a_collective_one_rank_never_reaches_times_out():
    timeout = 4.0
    zero, _ = run_ranks(2, rank_hang, timeout)
    assert zero["error"] is not None, "the collective returned although rank 1 never joined"
    assert zero["seconds"] < timeout * 3
