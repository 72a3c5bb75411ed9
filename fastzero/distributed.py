"""Ranks, the process group and the few collectives the trainer needs, on torchrun's environment.

`python -m fastzero.train` without torchrun (or with a world of one) never touches
torch.distributed: init_distributed returns a single-process context and every helper here is then
the identity, so a one-process run computes exactly what it computed before this module existed.

Under `torchrun --nproc-per-node N` every rank reads RANK / WORLD_SIZE / LOCAL_RANK (and torchrun's
rendezvous variables) and joins one process group: NCCL on CUDA (one GPU per local rank), gloo on
CPU. The group gets a timeout, so a collective that one rank never reaches (a hang, a rank stuck in
a different branch) raises on the others instead of blocking the job forever.

How a step's data is split (what makes N ranks compute the same update as one process):
- every rank draws the same global batch of prompts (the data position is global), and takes the
  contiguous slice `prompt_slice(...)` of it; samples of one prompt stay on one rank, so a GRPO
  group is always whole where its advantages are computed;
- a mini-batch is a set of GLOBAL row indices, drawn from a generator seeded identically on every
  rank; each rank trains the rows of it that it holds (`local_rows`);
- loss normalisers come from the whole global mini-batch (`global_token_weights`): token-mean
  divides by the tokens of all ranks, not of one;
- FSDP averages gradients over ranks, so the trainer multiplies its loss by `grad_scale(ctx)`
  (= the world size) and the averaged gradient is the global sum, as in one process. (gloo cannot
  reduce with a pre-multiplied sum, so FSDP's divide factor cannot be set to 1 instead.)
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Callable, Mapping

import torch

DEFAULT_TIMEOUT_S = 600.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits. world_size 1 means: no process group, no collective, ever."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh of all ranks; None in one process

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def launched_by_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return all(name in env for name in TORCHRUN_VARIABLES)


def _env_int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_distributed(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S,
                     env: Mapping[str, str] = os.environ) -> DistContext:
    """Join torchrun's process group, or return the single-process context when not under torchrun.

    device: "auto" (cuda when available), "cpu" or "cuda". On CUDA each rank takes GPU LOCAL_RANK.
    """
    if not launched_by_torchrun(env) or _env_int(env, "WORLD_SIZE") == 1:
        return SINGLE
    rank, world, local_rank = (_env_int(env, name) for name in TORCHRUN_VARIABLES)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    if timeout_s <= 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                               "start at most one rank per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
        the_device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        the_device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    mesh = init_device_mesh(the_device.type, (world,), mesh_dim_names=("fsdp",))
    return DistContext(rank, world, local_rank, the_device, mesh)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def main_only(ctx: DistContext, log: Callable[..., Any]) -> Callable[..., Any]:
    """`log` on rank 0, a no-op elsewhere: only one rank prints, draws progress or writes files."""
    return log if ctx.is_main else (lambda *args, **kwargs: None)


# ---- splitting the data --------------------------------------------------------------------------


def prompt_slice(num_prompts: int, ctx: DistContext) -> slice:
    """This rank's contiguous share of a step's prompts; sizes differ by at most one.

    Ranks [0, extra) take one more. Contiguous, so rank r's rows of the flattened prompt-major batch
    are one range too (prompt i's G samples are rows i*G .. i*G+G-1).
    """
    if num_prompts < ctx.world_size:
        raise ValueError(f"--prompts-per-step {num_prompts} is smaller than the number of ranks "
                         f"({ctx.world_size}): every rank needs at least one prompt")
    base, extra = divmod(num_prompts, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))


def local_rows(global_rows: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The rows of a global mini-batch held here (global index in [start, stop)) as local indices."""
    held = (global_rows >= start) & (global_rows < stop)
    return global_rows[held] - start


def grad_scale(ctx: DistContext) -> float:
    """What the loss is multiplied by so that FSDP's rank-averaged gradient is the global sum."""
    return float(ctx.world_size)


# ---- collectives -----------------------------------------------------------------------------------


def comm_device(ctx: DistContext) -> torch.device:
    """Where collectives' tensors live: the rank's GPU under NCCL, host memory under gloo."""
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (a new tensor on the input's device; the input itself is untouched)."""
    if not ctx.enabled:
        return tensor.clone()
    import torch.distributed as dist

    out = tensor.detach().to(comm_device(ctx), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_max(value: int, ctx: DistContext) -> int:
    """The largest of one int per rank (e.g. how many micro-batches every rank must run)."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    out = torch.tensor([value], dtype=torch.int64, device=comm_device(ctx))
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return int(out.item())


def reduce_sums(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each named number over ranks (float64); a key a rank lacks counts as 0 there."""
    if not ctx.enabled:
        return dict(values)
    keys = sorted({key for keys in all_gather_object(sorted(values), ctx) for key in keys})
    summed = all_reduce_sum(torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64), ctx)
    return dict(zip(keys, summed.tolist()))


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """[rank 0's obj, rank 1's, ...] (pickled; for small things: keys, counts, per-rank RNG states)."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank `src`'s obj on every rank."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate each rank's [n_r, ...] tensor along dim 0 in rank order (n_r may differ)."""
    if not ctx.enabled:
        return tensor.clone()
    import torch.distributed as dist

    device = comm_device(ctx)
    counts = all_gather_object(int(tensor.shape[0]), ctx)
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]), device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    chunks = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(chunks, padded)
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, counts)]).to(tensor.device)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


# ---- loss normalisers ---------------------------------------------------------------------------------


def global_mask_profile(mask: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """A [B_global, T'] 0/1 mask with the token count of every row of every rank, in rank order.

    Aggregations depend on the rows' token counts only, so computing one on this profile gives
    exactly the floats one process computes on the whole mini-batch (integer sums, any order).
    """
    lengths = all_gather_rows((mask != 0).sum(dim=1).long(), ctx)
    width = max(1, int(lengths.max()) if lengths.numel() else 1)
    return (torch.arange(width, device=mask.device)[None, :] < lengths.to(mask.device)[:, None]).float()


def global_token_weights(mask: torch.Tensor, agg: str, norm_len: float | None, ctx: DistContext) -> torch.Tensor:
    """token_weights of the whole global mini-batch, at this rank's rows: [B_local, T] fp32.

    Each rank sends only its rows' token counts; every rank runs the one definition of the
    aggregation (kernels.aggregation.row_weights) on the global profile, so the weights are
    bit-identical to those one process computes for the same rows.
    """
    from fastzero.kernels.aggregation import row_weights, token_weights

    if not ctx.enabled:
        return token_weights(mask, agg, norm_len)
    profile = global_mask_profile(mask, ctx)
    start = sum(all_gather_object(int(mask.shape[0]), ctx)[: ctx.rank])
    weights = row_weights(profile, agg, norm_len)[start:start + mask.shape[0]]
    return (mask != 0).to(torch.float32) * weights[:, None]


def gather_padded_rows(tensors: list[torch.Tensor], ctx: DistContext) -> list[torch.Tensor]:
    """All ranks' rows of each [B_r, T_r, ...] tensor, right-padded with zeros to the widest T.

    For what needs the whole batch at once (whitening advantages over all tokens): rows padded the
    way one process's collate pads them, so the result equals one process's batch.
    """
    width = all_reduce_max(max(int(t.shape[1]) for t in tensors), ctx)
    out = []
    for tensor in tensors:
        padded = tensor.new_zeros((tensor.shape[0], width, *tensor.shape[2:]))
        padded[:, : tensor.shape[1]] = tensor
        out.append(all_gather_rows(padded, ctx))
    return out
