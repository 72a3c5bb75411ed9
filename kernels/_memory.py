"""Peak memory of a call, for the memory-bound tests and the kernel benchmark (one definition)."""
from __future__ import annotations

import itertools
from typing import Callable

import torch


def peak_allocated_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes torch allocates while `fn` runs, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: the profiler logs every allocator call as a "[memory]" event of +/- nbytes.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))
