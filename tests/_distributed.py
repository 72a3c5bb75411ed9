"""Run a function on N CPU ranks from a test: real processes, a real gloo process group.

Each rank is a spawned process with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), one torch thread (several ranks share two cores) and the Triton
interpreter. The function must be importable (a module-level function of a test module); its
return value comes back through a file, and a failure on any rank fails the test with that rank's
traceback.
"""
from __future__ import annotations

import faulthandler
import multiprocessing
import os
import socket
import tempfile
import traceback
from typing import Any, Callable

import torch

RANK_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}


def _child(fn: Callable[..., Any], args: tuple, env: dict[str, str], out_path: str) -> None:
    os.environ.update(env)
    torch.set_num_threads(1)
    faulthandler.enable()  # a crash in native code (one SIGSEGV seen under load) prints the rank's Python stack
    try:
        result = ("ok", fn(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        result = ("error", traceback.format_exc())
    torch.save(result, out_path)


def run_ranks(world_size: int, fn: Callable[..., Any], *args: Any, timeout_s: float = RANK_TIMEOUT_S) -> list[Any]:
    """fn(*args) on ranks 0..world_size-1; returns their results in rank order."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastzero-ranks-") as folder:
        outs = [os.path.join(folder, f"rank-{r}.pt") for r in range(world_size)]
        procs = [context.Process(target=_child, args=(fn, args, rank_env(r, world_size, port), outs[r]))
                 for r in range(world_size)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout_s)
        hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
        for r in hung:
            procs[r].kill()
            procs[r].join()
        results = []
        for r, path in enumerate(outs):
            if not os.path.exists(path):
                state = "hung" if r in hung else f"exited with code {procs[r].exitcode}"
                raise AssertionError(f"rank {r} returned nothing ({state})")
            status, value = torch.load(path, weights_only=False)
            if status != "ok":
                raise AssertionError(f"rank {r} failed:\n{value}")
            results.append(value)
        return results
