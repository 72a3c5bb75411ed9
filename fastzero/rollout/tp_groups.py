"""Tensor-parallel SGLang groups under torchrun: which ranks share one engine, and where it runs.

`--sglang-tp N` under torchrun splits the ranks into groups of N consecutive ranks. The group's
first rank (its leader, tp rank 0) starts one SGLang engine with tp_size=N on GPUs
base_gpu_id = its local rank, .., + N - 1: exactly the GPUs of its group's ranks, so the engine is
colocated with the trainer shards of those ranks (how veRL's SGLang rollout places it). The other
ranks of the group hold no engine. A group must sit on one node (the engine is not started
multi-node): N must divide the ranks per node (LOCAL_WORLD_SIZE), and torchrun numbers the ranks
of a node consecutively (rank = node * LOCAL_WORLD_SIZE + LOCAL_RANK), so the group's ranks are
that node's local ranks leader .. leader + N - 1.

Ports: the offline Engine talks to its own processes over IPC files, but its TP workers rendezvous
over TCP on `nccl_port`, which it otherwise picks at random when it starts: two leaders on one
node starting at the same moment could pick the same one. Each engine gets a fixed block of ports
from its leader's local rank instead (different on one node; nodes do not share ports).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

BASE_PORT = 30000  # SGLang's default HTTP port; above torchrun's 29500
PORTS_PER_ENGINE = 16  # a block per local rank: port, nccl_port, room for SGLang's own offsets


def check_tp_layout(tp: int, world_size: int, local_world_size: int) -> None:
    """A usage error (ValueError naming --sglang-tp) unless groups of `tp` ranks tile every node."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"--sglang-tp must be an int >= 1, got {tp!r}")
    if tp > local_world_size:
        raise ValueError(f"--sglang-tp {tp} is larger than the ranks per node ({local_world_size}, torchrun's "
                         "--nproc-per-node): a tensor-parallel SGLang group must sit on one node")
    if local_world_size % tp or world_size % tp:
        raise ValueError(f"--sglang-tp {tp} must divide the ranks per node ({local_world_size}) and the world size "
                         f"({world_size}): every rank belongs to one group of {tp} ranks on one node")


@dataclasses.dataclass(frozen=True)
class TPLayout:
    """Where one rank sits among the tensor-parallel groups."""

    tp: int
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    def __post_init__(self) -> None:
        check_tp_layout(self.tp, self.world_size, self.local_world_size)
        if self.local_rank != self.rank % self.local_world_size:  # torchrun numbers a node's ranks consecutively
            raise RuntimeError(f"RANK={self.rank}, LOCAL_RANK={self.local_rank}, LOCAL_WORLD_SIZE="
                               f"{self.local_world_size}: ranks are not numbered node by node, so a "
                               "tensor-parallel group cannot be placed on one node")

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def leader(self) -> int:
        """Global rank of this group's leader (the rank that holds the engine)."""
        return self.rank - self.tp_rank

    @property
    def is_leader(self) -> bool:
        return self.tp_rank == 0

    @property
    def ranks(self) -> list[int]:
        """This group's global ranks, leader first."""
        return list(range(self.leader, self.leader + self.tp))

    @property
    def leader_local_rank(self) -> int:
        return self.local_rank - self.tp_rank

    def all_groups(self) -> list[list[int]]:
        """Every group's ranks, in order (dist.new_group is collective: all ranks create all of them)."""
        return [list(range(start, start + self.tp)) for start in range(0, self.world_size, self.tp)]


def layout_from_env(tp: int, rank: int, world_size: int, local_rank: int,
                    env: Mapping[str, str] = os.environ) -> TPLayout:
    """The layout for this rank; LOCAL_WORLD_SIZE (set by torchrun) gives the ranks per node."""
    return TPLayout(tp, rank, world_size, local_rank, local_world_size_of(env, world_size))


def local_world_size_of(env: Mapping[str, str], world_size: int) -> int:
    value = env.get("LOCAL_WORLD_SIZE")
    if value is None:  # torchrun always sets it; without it, assume one node
        return world_size
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable LOCAL_WORLD_SIZE={value!r} is not an integer (set by torchrun)") from None


def engine_placement(local_rank: int) -> dict[str, int]:
    """sglang.Engine keyword arguments placing an engine led from `local_rank` (tp or not)."""
    port = BASE_PORT + PORTS_PER_ENGINE * local_rank
    return {"base_gpu_id": local_rank, "port": port, "nccl_port": port + 1}


def sglang_tp_usage_error(config: Any, env: Mapping[str, str] = os.environ) -> str | None:
    """The --sglang-tp error for this torchrun launch (None when fine, or not under torchrun, or the
    hf engine, which ignores the option): checked before anything loads."""
    tp, engine = config.rollout.sglang_tp, config.rollout.engine
    world = env.get("WORLD_SIZE")
    if tp == 1 or engine == "hf" or world is None or not world.isdigit() or int(world) == 1:
        return None
    try:
        check_tp_layout(tp, int(world), local_world_size_of(env, int(world)))
    except ValueError as err:
        return str(err)
    return None


def new_tp_group(layout: TPLayout, timeout_s: float | None = None) -> Any:
    """This rank's process group. Collective: every rank creates every group, in the same order.

    gloo, also on GPUs: only pickled objects travel over it (prompts, completions, a verdict), and
    on the CPU they need no staging on the GPU and no NCCL watchdog. A member waits in it for the
    leader's whole generate call, so `timeout_s` (the run's --dist-timeout) must cover one rollout.
    """
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s is not None else None
    mine = None
    for ranks in layout.all_groups():
        group = dist.new_group(ranks, backend="gloo", timeout=timeout)
        if layout.rank in ranks:
            mine = group
    return mine
