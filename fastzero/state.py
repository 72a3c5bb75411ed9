"""TrainState: the counters and positions of a run, the one thing a checkpoint saves besides weights
and optimizer moments.

Everything that changes from step to step and is not a tensor lives here, typed, so the step, the
loop, the report and save/resume agree on one set of names. `data` and `rng` are filled when a
checkpoint is written (fastzero/resume.py captures them from the data stream and the generators)
and consumed when it is read; during a run the live data position and RNGs are the source of truth.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    step: int = 0  # completed RL steps
    tokens: int = 0  # prompt + response tokens of every rollout trained on (throughput, cost)
    optimizer_steps: int = 0  # AdamW steps taken (drives the warm-up)
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient, in total
    bad_in_a_row: int = 0  # ... and in a row (the run stops at --max-bad-steps)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase, whole run
    eval_start: dict[str, float] | None = None  # the evaluation before step 1
    wall_seconds: float = 0.0  # wall time of the run before this process started (earlier resumes)
    data: dict[str, int] | None = None  # data position at the last save (TaskData.position())
    rng: dict[str, Any] | None = None  # RNG states at the last save
    target_reached: dict[str, Any] | None = None  # --target-accuracy: step, wall time, cost when first reached
    stop_reason: str | None = None  # why the run stopped before --max-steps (a stop rule), if it did

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "TrainState":
        """From a checkpoint's trainer_state.pt (missing keys take their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        saved = {k: v for k, v in saved.items() if k != "wall_before_resume"}  # older checkpoints' copy
        unknown = set(saved) - names
        if unknown:
            raise ValueError(f"trainer_state.pt has unknown entries {sorted(unknown)}: not a checkpoint of this version")
        return cls(**saved)
