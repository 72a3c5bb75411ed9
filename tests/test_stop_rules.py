"""Stop rules: the target-accuracy record and the budget look-ahead against a scripted clock, and
runs that stop at a target (before any step) and at a device-hour / cost budget, with a checkpoint."""
from __future__ import annotations

import json

import pytest

from fastzero.config import RunConfig
from fastzero.state import TrainState
from fastzero.stop_rules import StopRules, format_target, summary_entries
from fastzero.train import main
from tests._runs import TINY, rows


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_look_ahead_stops_the_step_before_the_one_that_would_pass_it():
    clock, state = Clock(), TrainState()
    rules = StopRules(RunConfig(max_device_hours=100 / 3600, price_per_hour=0.0), state, clock, devices=2)
    rules.observe("eval", 4.0)
    rules.observe("checkpoint", 1.0)
    for step in range(1, 100):
        clock.now += 10.0  # each step takes 10 s on 2 devices: 20 device-seconds
        rules.observe("step", 10.0)
        if rules.out_of_budget():
            break
    # after step s: 2 * 10 s * s; one more step + eval + checkpoint = 2 * (10 + 4 + 1) = 30 more
    assert step == 4 and 2 * clock.now + 2 * 5.0 <= 100  # the final eval + checkpoint still fit
    assert 2 * (clock.now + 15.0) > 100


def test_cost_budget_uses_the_price():
    clock = Clock()
    rules = StopRules(RunConfig(max_cost_usd=1.0, price_per_hour=3.6), TrainState(), clock)  # $0.001 per second
    clock.now = 900.0
    rules.observe("step", 50.0)
    assert rules.out_of_budget() is None  # 950 s -> $0.95
    rules.observe("step", 101.0)
    assert "cost budget" in rules.out_of_budget()


def test_the_first_evaluation_reaching_the_target_is_recorded_once():
    clock, state = Clock(), TrainState(tokens=1234)
    rules = StopRules(RunConfig(target_accuracy=0.5, price_per_hour=2.0), state, clock)
    clock.now = 1800.0
    assert rules.after_evaluation(3, {"eval/accuracy": 0.4}) is None and state.target_reached is None
    assert "reached" in rules.after_evaluation(4, {"eval/accuracy": 0.5})
    assert state.target_reached == {"target": 0.5, "accuracy": 0.5, "step": 4, "wall_seconds": 1800.0,
                                    "device_hours": 0.5, "cost_usd": 1.0, "tokens": 1234}
    clock.now = 3600.0
    assert rules.after_evaluation(5, {"eval/accuracy": 0.9}) is None  # a resumed run keeps going
    entry = summary_entries(RunConfig(target_accuracy=0.5), state)["target"]
    assert entry["reached"] and format_target(entry) == ("cost to reach 50%: 4 steps, 1800.0 s, "
                                                         "0.5000 device-hours, $1.0000")


def test_a_target_reached_at_the_start_stops_before_any_step(tmp_path):
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "5", "--target-accuracy", "0.001", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["target"]["reached"] and summary["target"]["step"] == 0
    assert "target accuracy" in summary["stop_reason"]


@pytest.mark.parametrize("budget", [["--max-device-hours", "1e-9"],
                                    ["--max-cost-usd", "1e-9", "--price-per-hour", "2.5"]])
def test_a_budget_stops_cleanly_with_a_checkpoint(tmp_path, budget):
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "5", "--target-accuracy", "1.0", "--output-dir", str(out)] + budget) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and "budget" in summary["stop_reason"]
    assert summary["target"] == {"target": 1.0, "reached": False}
    assert (out / "checkpoints" / "step-000001" / "trainer_state.pt").exists()
    assert "eval/accuracy" in rows(out)[-1]  # the last step was evaluated


@pytest.mark.parametrize("flags, message", [
    (["--target-accuracy", "1.5"], "--target-accuracy"),
    (["--max-cost-usd", "5"], "--max-cost-usd"),  # no --price-per-hour
    (["--max-device-hours", "0"], "--max-device-hours"),
])
def test_bad_stop_rules_are_usage_errors(tmp_path, capsys, flags, message):
    assert main(TINY + flags + ["--output-dir", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
