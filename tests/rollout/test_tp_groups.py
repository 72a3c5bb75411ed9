"""The arithmetic of tensor-parallel SGLang groups under torchrun, and the usage error for layouts
that do not fit (checked against an independent enumeration of ranks, node by node)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fastzero.rollout.tp_groups import (PORTS_PER_ENGINE, TPLayout, check_tp_layout, engine_placement,
                                        layout_from_env, sglang_tp_usage_error)


def layouts(tp: int, nodes: int, per_node: int) -> list[TPLayout]:
    return [TPLayout(tp, node * per_node + local, nodes * per_node, local, per_node)
            for node in range(nodes) for local in range(per_node)]


@pytest.mark.parametrize("tp,nodes,per_node", [(1, 1, 1), (2, 1, 2), (2, 1, 4), (4, 1, 4), (2, 2, 2), (4, 2, 8),
                                               (3, 2, 6), (8, 3, 8)])
def test_groups_tile_each_node_with_consecutive_ranks(tp, nodes, per_node):
    everyone = layouts(tp, nodes, per_node)
    groups = everyone[0].all_groups()
    assert all(layout.all_groups() == groups for layout in everyone)  # every rank creates the same groups
    assert sorted(rank for group in groups for rank in group) == list(range(nodes * per_node))  # a partition
    for layout in everyone:
        members = [other for other in everyone if other.leader == layout.leader]
        assert [m.rank for m in members] == layout.ranks and layout.ranks in groups and len(layout.ranks) == tp
        assert len({m.rank // per_node for m in members}) == 1  # one node
        leader = members[0]
        assert leader.is_leader and leader.tp_rank == 0 and sum(m.is_leader for m in members) == 1
        assert [m.tp_rank for m in members] == list(range(tp))
        # the engine's GPUs base_gpu_id .. + tp - 1 are exactly the group's local ranks
        placement = engine_placement(layout.leader_local_rank)
        assert list(range(placement["base_gpu_id"], placement["base_gpu_id"] + tp)) == [m.local_rank for m in members]
    for node in range(nodes):  # engines on one node never share a port
        leaders = [layout for layout in everyone if layout.is_leader and layout.rank // per_node == node]
        ports = [p for layout in leaders for key, p in engine_placement(layout.local_rank).items() if key != "base_gpu_id"]
        assert len(ports) == len(set(ports)) == 2 * (per_node // tp)


def test_placement_ports_stay_in_their_block():
    for local in range(16):
        placement = engine_placement(local)
        assert placement["base_gpu_id"] == local
        assert placement["port"] % PORTS_PER_ENGINE == engine_placement(0)["port"] % PORTS_PER_ENGINE
        assert placement["port"] < placement["nccl_port"] < engine_placement(local + 1)["port"]


@pytest.mark.parametrize("tp,world,per_node,message", [
    (3, 4, 4, "must divide the ranks per node"),
    (4, 4, 2, "larger than the ranks per node"),  # would span two nodes
    (8, 8, 4, "larger than the ranks per node"),
    (2, 3, 3, "must divide"),
    (4, 6, 6, "must divide"),
    (0, 2, 2, "must be an int >= 1"),
])
def test_layouts_that_do_not_fit_name_the_option(tp, world, per_node, message):
    with pytest.raises(ValueError, match=message) as caught:
        check_tp_layout(tp, world, per_node)
    assert "--sglang-tp" in str(caught.value)
    with pytest.raises(ValueError, match="--sglang-tp"):
        layout_from_env(tp, 0, world, 0, env={"LOCAL_WORLD_SIZE": str(per_node)})


def test_ranks_not_numbered_node_by_node_are_refused():
    with pytest.raises(RuntimeError, match="node by node"):
        TPLayout(2, rank=1, world_size=4, local_rank=0, local_world_size=2)


@pytest.mark.parametrize("env,engine,expected", [
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "sglang", "larger than the ranks per node"),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "auto", "larger than the ranks per node"),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "hf", None),  # hf ignores --sglang-tp
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, "sglang", None),
    ({}, "sglang", None),  # one process: SGLang's own TP over GPUs 0 .. tp-1
    ({"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}, "sglang", None),
])
def test_usage_error_for_this_launch(env, engine, expected):
    config = SimpleNamespace(rollout=SimpleNamespace(sglang_tp=4, engine=engine))  # the shape of Config
    error = sglang_tp_usage_error(config, env)
    assert (error is None) if expected is None else (expected in error and "--sglang-tp 4" in error)


def test_train_refuses_the_layout_before_any_work(capsys, monkeypatch, tmp_path):
    """`torchrun --nproc-per-node 2 ... --sglang-tp 4` (as rank 0 sees it): exit 2, one line, no run dir."""
    from fastzero.train import main

    for name, value in {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert main(["--rollout", "sglang", "--sglang-tp", "4", "--output-dir", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sglang-tp 4 is larger than the ranks per node (2") and "Traceback" not in err
    assert not out.exists()
