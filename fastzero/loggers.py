"""Metric sinks besides metrics.jsonl: TensorBoard event files and Weights & Biases (offline).

`--report-to tensorboard,wandb` adds sinks to the run's MetricsLog; every row logged to
metrics.jsonl goes to each sink under the same names (`reward/mean`, `eval/accuracy`, ...), with
`step` as the x axis. Both packages are optional (`pip install fastzero[logging]`) and imported only
when asked for, so a missing one is a clear usage error before any work.

TensorBoard: event files under <output_dir>/tensorboard; on resume the writer purges events past
the checkpoint's step, as metrics.jsonl drops its lines past it. W&B: always `mode="offline"` (this
trainer never talks to the network; `wandb sync <output_dir>/wandb/offline-run-*` uploads later);
the run id is kept in <output_dir>/wandb_id so a resumed run continues the same W&B run.
"""
from __future__ import annotations

import math
import os
import uuid
from typing import Any, Protocol

from .atomic import atomic_write_text

REPORTERS = ("tensorboard", "wandb")


class MetricSink(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def parse_report_to(spec: str) -> tuple[str, ...]:
    """'none' | 'tensorboard' | 'wandb' | 'tensorboard,wandb' -> the sink names (usage error otherwise)."""
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise ValueError(f"--report-to: {', '.join(unknown)} is not one of none, {', '.join(REPORTERS)}")
    return names


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics row, minus `step` (the x axis)."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, output_dir: str, *, resume_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--report-to tensorboard: the tensorboard package is not installed "
                             "(pip install tensorboard, or fastzero[logging])") from None
        purge = resume_step + 1 if resume_step is not None else None
        self.log_dir = os.path.join(output_dir, "tensorboard")
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=purge)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, output_dir: str, *, config: dict[str, Any], resume_step: int | None = None, wandb=None):
        if wandb is None:
            try:
                import wandb
            except ImportError:
                raise ValueError("--report-to wandb: the wandb package is not installed "
                                 "(pip install wandb, or fastzero[logging])") from None
        self.wandb = wandb
        id_path = os.path.join(output_dir, "wandb_id")
        run_id = None
        if resume_step is not None and os.path.isfile(id_path):
            with open(id_path) as fh:
                run_id = fh.read().strip() or None
        run_id = run_id or uuid.uuid4().hex[:8]  # W&B's id format: short lowercase alphanumerics
        atomic_write_text(id_path, run_id + "\n")
        self.run = wandb.init(mode="offline", dir=output_dir, id=run_id, project="fastzero", config=config,
                              resume="allow" if resume_step is not None else None,
                              name=os.path.basename(os.path.abspath(output_dir)))
        self.run.define_metric("*", step_metric="step")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({"step": int(row.get("step", 0)), **scalars(row)})

    def close(self) -> None:
        self.run.finish()


def make_sinks(spec: str, output_dir: str, *, config: dict[str, Any], resume_step: int | None) -> list[MetricSink]:
    sinks: list[MetricSink] = []
    for name in parse_report_to(spec):
        if name == "tensorboard":
            sinks.append(TensorBoardSink(output_dir, resume_step=resume_step))
        else:
            sinks.append(WandbSink(output_dir, config=config, resume_step=resume_step))
    return sinks
