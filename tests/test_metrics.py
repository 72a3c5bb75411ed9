"""fastzero.metrics: the resume-safe metrics log, phase timing and the cost summary."""
from __future__ import annotations

import json

import pytest

from fastzero.metrics import MetricsLog, PhaseTimer, cost_summary, format_cost


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_log_appends_rows_and_samples(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.log({"step": 0, "eval/accuracy": 0.5})
    log.log({"step": 1, "reward/mean": 0.25})
    log.log_samples(1, [{"response": "<answer>1+2</answer>", "reward": 1.0}])
    assert _lines(tmp_path / "metrics.jsonl") == log.rows
    assert log.last("eval/accuracy") == 0.5 and log.last("missing") is None
    assert _lines(tmp_path / "samples.jsonl") == [{"step": 1, "response": "<answer>1+2</answer>", "reward": 1.0}]


def test_resume_drops_rows_past_the_checkpoint_and_a_line_cut_by_a_kill(tmp_path):
    log = MetricsLog(str(tmp_path))
    for step in range(5):
        log.log({"step": step})
        log.log_samples(step, [{"response": str(step)}])
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "rew')  # killed mid-write
    resumed = MetricsLog(str(tmp_path), resume_step=2)
    assert [r["step"] for r in resumed.rows] == [0, 1, 2]
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert [r["step"] for r in _lines(tmp_path / "samples.jsonl")] == [0, 1, 2]


def test_a_fresh_log_starts_empty(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')
    assert MetricsLog(str(tmp_path)).rows == [] and (tmp_path / "metrics.jsonl").read_text() == ""


def test_phase_timer_accumulates_per_step_and_over_the_run():
    timer = PhaseTimer({"rollout": 10.0})
    with timer.phase("rollout"):
        pass
    with pytest.raises(ZeroDivisionError):
        with timer.phase("update"):  # an exception still books the time
            1 / 0
    step = timer.take_step()
    assert set(step) == {"rollout", "update"} and timer.take_step() == {}
    assert timer.totals["rollout"] >= 10.0 and timer.totals["update"] == step["update"]


def test_cost_summary_and_its_text():
    summary = cost_summary({"update": 30.0, "rollout": 60.0}, wall_seconds=100.0, tokens=5000,
                           price_per_hour=3.6, device="cpu")
    assert list(summary["phase_seconds"]) == ["rollout", "update"]  # largest first
    assert summary["tokens_per_second"] == 50.0 and summary["cost_usd"] == pytest.approx(0.1)
    text = format_cost(summary)
    assert "rollout" in text and "$0.1000" in text
    assert cost_summary({}, wall_seconds=0.0, tokens=0, price_per_hour=0.0, device="cpu")["cost_usd"] is None


def test_the_plot_draws_the_think_signature_beside_the_usual_panels(tmp_path):
    from fastzero.metrics import PLOT_PANELS, plot_metrics

    rows = [{"step": 0, "eval/accuracy": 0.1, "eval/think/equations": 2.0, "eval/response/length": 20.0}]
    rows += [{"step": s, "reward/mean": 0.1 * s, "response/length": 20.0 + s, "think/equations": 2.0 + s / 10,
              "think/search_success": 0.1, "think/verified": 0.5, "think/arithmetic_right": 0.9} for s in (1, 2, 3)]
    path = tmp_path / "metrics.png"
    plot_metrics(rows, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [title for keys, title in PLOT_PANELS if any(k in r for r in rows for k in keys)]
    assert "equations per response" in titles and "correct answers checked in think" in titles
