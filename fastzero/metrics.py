"""What a run tells its user: metrics.jsonl, a progress bar, a PNG plot, sample completions, cost.

Kept: one JSON object per step (`step`, and on eval steps `eval/accuracy`, `eval/mean_reward`),
appended and flushed each step so a killed run loses nothing; on resume, lines past the checkpoint's
step are dropped so the file matches the resumed run exactly. TensorBoard and W&B are optional
sinks (fastzero/loggers.py, --report-to) that receive every row under the same names.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

from .atomic import atomic_file, atomic_write_text


class MetricsLog:
    def __init__(self, output_dir: str, *, resume_step: int | None = None):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.samples_path = os.path.join(output_dir, "samples.jsonl")
        self.rows: list[dict[str, Any]] = []
        self.sinks: list[Any] = []  # fastzero.loggers sinks (--report-to), fed every row
        if resume_step is not None:
            self.rows = [r for r in _read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
            kept = [r for r in _read_jsonl(self.samples_path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.samples_path, "".join(json.dumps(r) + "\n" for r in kept))
        else:
            for path in (self.path, self.samples_path):
                atomic_write_text(path, "")

    def log(self, row: dict[str, Any]) -> None:
        row = {k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}
        self.rows.append(row)
        _append_line(self.path, json.dumps(row))
        for sink in self.sinks:
            sink.log(row)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            _append_line(self.samples_path, json.dumps({"step": step, **sample}))

    def last(self, key: str) -> float | None:
        for row in reversed(self.rows):
            if key in row:
                return row[key]
        return None


class MemoryMetrics(MetricsLog):
    """The rows of a run kept in memory and written nowhere: the metrics of ranks other than 0."""

    def __init__(self):
        self.rows = []
        self.sinks = []  # TensorBoard/W&B report from rank 0 only

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append({k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()})

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        pass


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: drop it
                    pass
    return rows


class PhaseTimer:
    """Wall time per phase (rollout, reward, log-probs, update, sync, ...), accumulated over a run."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: dict[str, float] = defaultdict(float, totals or {})
        self.step: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.totals[name] += elapsed
            self.step[name] += elapsed

    def take_step(self) -> dict[str, float]:
        out, self.step = dict(self.step), defaultdict(float)
        return out


class ProgressBar:
    """One line on stderr: step, reward, accuracy, tokens/s, ETA. No dependency, no threads."""

    def __init__(self, total: int, *, enabled: bool = True, start_step: int = 0):
        self.total, self.enabled, self.start_step = total, enabled and total > 0, start_step
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, **fields: float | None) -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        width = 24
        filled = int(width * step / self.total)
        parts = [f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total}"]
        for key, value in fields.items():
            if value is not None:
                parts.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
        parts.append(f"ETA {_fmt_seconds(eta)}")
        line = "  ".join(parts)
        sys.stderr.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _fmt_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


PLOT_PANELS = (  # (keys drawn together, title); a panel is drawn when the rows carry one of its keys
    (("reward/mean",), "mean reward (train)"), (("eval/accuracy",), "held-out greedy accuracy"),
    (("response/length", "eval/response/length"), "mean response length"), (("kl/ref",), "KL to reference"),
    (("accuracy/train",), "train accuracy (sampled)"), (("entropy",), "entropy"),
    # The R1-Zero signature (a task's response_metrics: Countdown's think blocks)
    (("think/equations", "eval/think/equations"), "equations per response"),
    (("think/search_success", "eval/think/search_success"), "search succeeded (share)"),
    (("think/verified", "eval/think/verified"), "correct answers checked in think"),
    (("think/arithmetic_right", "eval/think/arithmetic_right"), "think arithmetic right (share)"),
)


def plot_metrics(rows: list[dict[str, Any]], path: str) -> None:
    """PNG of reward, accuracy, response length, KL and the think signature over steps (whatever the
    rows carry): rollouts as lines, held-out evaluations as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(keys, t) for keys, t in PLOT_PANELS if any(k in r for r in rows for k in keys)]
    panels = panels or [(("reward/mean",), "mean reward")]
    columns = min(len(panels), 6)
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.2 * lines), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (keys, title) in zip(axes.flat, panels):
        drawn = 0
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                held_out = key.startswith("eval/")
                ax.plot(xs, ys, marker="o" if held_out else None, markersize=3,
                        label="held-out" if held_out else "rollouts")
                drawn += 1
        if drawn > 1:
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, dpi=110, format="png")
    plt.close(fig)


def cost_summary(phase_totals: dict[str, float], *, wall_seconds: float, tokens: int,
                 price_per_hour: float, device: str, devices: int = 1) -> dict[str, Any]:
    """Wall time per phase, throughput and the price of the run at `price_per_hour` per device."""
    return {
        "device": device,
        "devices": devices,
        "wall_seconds": round(wall_seconds, 2),
        "phase_seconds": {k: round(v, 3) for k, v in sorted(phase_totals.items(), key=lambda kv: -kv[1])},
        "tokens": tokens,
        "tokens_per_second": round(tokens / wall_seconds, 1) if wall_seconds > 0 else None,
        "price_per_hour": price_per_hour,
        "cost_usd": round(price_per_hour * devices * wall_seconds / 3600, 4) if price_per_hour else None,
    }


def format_cost(summary: dict[str, Any]) -> str:
    lines = [f"wall time {summary['wall_seconds']:.1f} s on {summary['device']}"]
    total = sum(summary["phase_seconds"].values()) or 1.0
    for name, seconds in summary["phase_seconds"].items():
        lines.append(f"  {name:<11}{seconds:9.1f} s  {100 * seconds / total:5.1f}%")
    lines.append(f"  tokens {summary['tokens']}  ({summary['tokens_per_second']} tokens/s)")
    if summary["cost_usd"] is not None:
        lines.append(f"  cost ${summary['cost_usd']:.4f} at ${summary['price_per_hour']}/device-hour")
    return "\n".join(lines)
