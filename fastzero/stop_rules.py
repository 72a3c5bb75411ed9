"""Stop rules: --target-accuracy (stop at the first evaluation reaching it, and record what it
cost to get there), --max-cost-usd and --max-device-hours (stop before the budget is spent).

The budget rule looks one step ahead: after each step it asks whether another step, an evaluation
and a checkpoint (their longest durations seen so far in this process) still fit in what is left;
if not, this step is the last, so the final evaluation and checkpoint land inside the budget. The
cost is device-hours (wall time x devices: the torchrun world size) x --price-per-hour, whole run, across resumes.

What it decided lives in TrainState (`target_reached`, `stop_reason`), so summary.json reports it
and a resumed run does not stop again for a target it already reached.
"""
from __future__ import annotations

from typing import Any, Callable

from .config import RunConfig


class StopRules:
    def __init__(self, cfg: RunConfig, state, wall_seconds: Callable[[], float], devices: int = 1):
        self.cfg, self.state, self.wall_seconds, self.devices = cfg, state, wall_seconds, devices
        self.longest = {"step": 0.0, "eval": 0.0, "checkpoint": 0.0}

    def observe(self, what: str, seconds: float) -> None:
        """Record how long a step, an evaluation or a checkpoint took (the look-ahead uses the longest)."""
        self.longest[what] = max(self.longest[what], seconds)

    def spent(self, extra_seconds: float = 0.0) -> dict[str, Any]:
        hours = (self.wall_seconds() + extra_seconds) * self.devices / 3600
        price = self.cfg.price_per_hour
        return {"device_hours": hours, "cost_usd": hours * price if price else None}

    def out_of_budget(self) -> str | None:
        """Why the step just finished must be the last (another one would pass a budget), or None."""
        ahead = self.longest["step"] + self.longest["eval"] + self.longest["checkpoint"]
        projected = self.spent(ahead)
        if self.cfg.max_device_hours is not None and projected["device_hours"] > self.cfg.max_device_hours:
            return f"device-hour budget of {self.cfg.max_device_hours:g} h"
        if self.cfg.max_cost_usd is not None and projected["cost_usd"] > self.cfg.max_cost_usd:
            return f"cost budget of ${self.cfg.max_cost_usd:g}"
        return None

    def after_evaluation(self, step: int, result: dict[str, Any]) -> str | None:
        """Record the first evaluation reaching --target-accuracy; returns the stop reason then."""
        target = self.cfg.target_accuracy
        if target is None or self.state.target_reached is not None or result["eval/accuracy"] < target:
            return None
        spent = self.spent()
        self.state.target_reached = {"target": target, "accuracy": result["eval/accuracy"], "step": step,
                                     "wall_seconds": round(self.wall_seconds(), 2),
                                     "device_hours": round(spent["device_hours"], 6),
                                     "cost_usd": round(spent["cost_usd"], 4) if spent["cost_usd"] is not None else None,
                                     "tokens": self.state.tokens}
        return f"target accuracy {100 * target:g}% reached"


def summary_entries(cfg: RunConfig, state) -> dict[str, Any]:
    """What summary.json says about the stop rules: the cost to reach the target, why the run stopped."""
    out: dict[str, Any] = {"stop_reason": state.stop_reason}
    if cfg.target_accuracy is not None:
        out["target"] = state.target_reached or {"target": cfg.target_accuracy, "reached": False}
        if state.target_reached is not None:
            out["target"] = {**state.target_reached, "reached": True}
    return out


def format_target(entry: dict[str, Any] | None) -> str | None:
    if not entry:
        return None
    if not entry.get("reached"):
        return f"target accuracy {100 * entry['target']:g}% not reached"
    cost = f", ${entry['cost_usd']:.4f}" if entry.get("cost_usd") is not None else ""
    return (f"cost to reach {100 * entry['target']:g}%: {entry['step']} steps, {entry['wall_seconds']:.1f} s, "
            f"{entry['device_hours']:.4f} device-hours{cost}")
