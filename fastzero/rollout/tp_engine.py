"""A tensor-parallel SGLang group as a RolloutEngine: the leader holds the engine, every rank calls it.

Under `torchrun ... --sglang-tp N` (see tp_groups.py for the layout) every rank of a group holds a
TPGroupEngine; only the leader's wraps a real SGLangEngine (tp_size=N). The trainer calls every
method on every rank as it does with one engine per rank; the methods talk over the group's
process group:

- generate: each rank passes its own prompts (its disjoint slice, GRPO groups whole). They are
  gathered to the leader (gather_object over the group, in rank order), the leader generates all
  of them in ONE engine call (SGLang batches them; with SamplingParams.seed each sampled row gets
  seed + its row in that call, so seeds are reproducible and distinct within the group), and each
  rank's completions are scattered back in its own order, prompt_index local to its own prompts.
- update_weights: DTensor.full_tensor() is a collective over the whole FSDP mesh, so EVERY rank
  gathers every parameter, one at a time and in the same order (sharding.full_named_parameters).
  The leader feeds them to its engine, which buckets them (--sync-bucket-mb) and pushes each
  bucket; the other ranks drop each full tensor as soon as it is gathered. If the leader's push
  fails it still gathers the rest (the other ranks are inside those collectives), then every rank
  of the group raises.
- release_memory / resume_memory / shutdown act on the leader only; memory_released is the shared
  base.memory_released, so every rank passes through the same release / resume / update_weights
  structure and the collectives in update_weights line up.
A failure on the leader (a refused prompt, an engine error, a failed start) is sent to the whole
group and raised on every rank, so no rank waits in a collective for a leader that has given up.

Not done (untestable without GPUs): members send nothing to the engine, so SGLang's TP workers
read the leader's full tensors over CUDA IPC; veRL instead hands each TP worker the copy gathered
on its own GPU (LocalSerializedTensor), which saves the cross-GPU reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from torch import nn

from fastzero.rollout.base import Completion, SamplingParams, memory_released
from fastzero.rollout.tp_groups import TPLayout, engine_placement, new_tp_group


class TPGroupEngine:
    """One rank's handle on its group's engine (the engine itself on the leader, None elsewhere)."""

    def __init__(self, layout: TPLayout, group: Any, engine: Any | None):
        if layout.is_leader != (engine is not None):
            raise ValueError("the group's leader, and only it, holds the engine")
        self.layout, self.group, self.engine = layout, group, engine

    # ---- collectives over the group ------------------------------------------------------------
    def _gather(self, obj: Any) -> list[Any] | None:
        import torch.distributed as dist

        out = [None] * self.layout.tp if self.layout.is_leader else None
        dist.gather_object(obj, out, group=self.group, group_dst=0)
        return out

    def _scatter(self, per_rank: list[Any] | None) -> Any:
        import torch.distributed as dist

        box = [None]
        dist.scatter_object_list(box, per_rank, group=self.group, group_src=0)
        return box[0]

    def _raise_leader_error(self, what: str, error: str | None) -> None:
        if error is not None and not self.layout.is_leader:
            raise RuntimeError(f"{what} failed on this tensor-parallel group's leader (rank {self.layout.leader}): "
                               f"{error}")

    # ---- the RolloutEngine protocol ---------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        parts = self._gather(([list(p) for p in prompts], params))
        replies, failure = None, None
        if self.layout.is_leader:
            try:
                replies = [("ok", groups) for groups in self._generate_for_group(parts)]
            except Exception as error:  # noqa: BLE001 - sent to the members, then raised here too
                failure = error
                replies = [("error", f"{type(error).__name__}: {error}")] * self.layout.tp
        status, value = self._scatter(replies)
        if failure is not None:
            raise failure
        if status != "ok":
            self._raise_leader_error("generate", value)
        return value

    def _generate_for_group(self, parts: list[tuple[list[list[int]], SamplingParams]]) -> list[list[list[Completion]]]:
        """On the leader: all ranks' prompts in one engine call, split back per rank."""
        params = parts[0][1]
        for offset, (_, other) in enumerate(parts):
            if other != params:
                raise ValueError(f"ranks {self.layout.leader} and {self.layout.leader + offset} of one "
                                 f"tensor-parallel group asked for different sampling: {params} vs {other}")
        counts = [len(prompts) for prompts, _ in parts]
        everything = [prompt for prompts, _ in parts for prompt in prompts]
        groups = self.engine.generate(everything, params)
        if len(groups) != len(everything):
            raise RuntimeError(f"the engine answered {len(groups)} prompts of {len(everything)}")
        out, start = [], 0
        for count in counts:  # prompt_index becomes local to the rank's own prompts
            out.append([[dataclasses.replace(c, prompt_index=c.prompt_index - start) for c in group]
                        for group in groups[start:start + count]])
            start += count
        return out

    def update_weights(self, source: Any) -> None:
        """Every rank gathers every full tensor (collective); the leader pushes them to its engine."""
        from fastzero.sharding import full_named_parameters, is_sharded

        pairs = iter(full_named_parameters(source) if isinstance(source, nn.Module) and is_sharded(source)
                     else source.named_parameters() if isinstance(source, nn.Module) else source)
        failure = None
        try:
            if self.engine is not None:
                try:
                    self.engine.update_weights(pairs)
                except Exception as error:  # noqa: BLE001 - raised below, after the collectives
                    failure = error
        finally:
            for _ in pairs:  # members: gather and drop; a failed leader: finish the gathers the others are in
                pass
        error = leader_verdict(self.group, None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        self._raise_leader_error("the weight sync", error)

    def release_memory(self) -> None:
        if self.engine is not None:
            self.engine.release_memory()

    def resume_memory(self) -> None:
        if self.engine is not None:
            self.engine.resume_memory()

    def memory_released(self, weights: Any = None):
        """Release/resume on the leader; `weights` are then reloaded by the whole group (collective)."""
        return memory_released(self, weights)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()


def make_tp_group_engine(layout: TPLayout, build: Callable[[dict[str, int]], Any], *,
                         timeout_s: float | None = None) -> TPGroupEngine:
    """Create every group's process group (collective; `timeout_s` see tp_groups.new_tp_group), then
    the leader's engine: `build(placement)` gets the sglang.Engine placement kwargs (base_gpu_id,
    port, nccl_port)."""
    group = new_tp_group(layout, timeout_s)
    engine, failure = None, None
    if layout.is_leader:
        try:
            engine = build(engine_placement(layout.local_rank))
        except Exception as error:  # noqa: BLE001 - the members must not wait for an engine that never came
            failure = error
    error = leader_verdict(group, None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if error is not None:
        raise RuntimeError(f"starting the SGLang engine failed on this tensor-parallel group's leader "
                           f"(rank {layout.leader}): {error}")
    return TPGroupEngine(layout, group, engine)


def leader_verdict(group: Any, error: str | None) -> str | None:
    """The leader's error (or None) on every rank of the group (collective over the group)."""
    import torch.distributed as dist

    box = [error]
    dist.broadcast_object_list(box, group=group, group_src=0)
    return box[0]
