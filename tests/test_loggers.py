"""--report-to: TensorBoard event files (read back with tensorboard's own reader) and W&B offline
runs carry every metric under metrics.jsonl's names. W&B is exercised for real in offline mode
(never network) and, for the exact calls, against a recording stand-in of its documented API."""
from __future__ import annotations

import glob
import time

import pytest

from fastzero.loggers import TensorBoardSink, WandbSink, parse_report_to, scalars
from fastzero.train import main
from tests._runs import TINY, rows


def test_parse_report_to():
    assert parse_report_to("none") == () and parse_report_to("") == ()
    assert parse_report_to("tensorboard, wandb,tensorboard") == ("tensorboard", "wandb")
    with pytest.raises(ValueError, match="--report-to: mlflow"):
        parse_report_to("tensorboard,mlflow")


def test_scalars_keep_finite_numbers_only():
    assert scalars({"step": 3, "a/b": 1, "c": 0.5, "n": float("nan"), "s": "x", "flag": True}) == {"a/b": 1.0, "c": 0.5}


def _events(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_purges_events_past_the_resume_step(tmp_path):
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(str(tmp_path))
    for step in (1, 2, 3):
        sink.log({"step": step, "reward/mean": float(step)})
    sink.close()
    sink = TensorBoardSink(str(tmp_path), resume_step=1)
    sink.log({"step": 2, "reward/mean": 20.0})
    sink.close()
    assert _events(sink.log_dir)["reward/mean"] == [(1, 1.0), (2, 20.0)]


class RecordingWandb:
    """The documented calls: wandb.init(...) -> Run with define_metric, log, finish."""

    def __init__(self):
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def define_metric(self, name, step_metric=None):
        self.calls.append(("define_metric", (name, step_metric)))

    def log(self, data):
        self.calls.append(("log", data))

    def finish(self):
        self.calls.append(("finish", None))


def test_wandb_is_offline_and_a_resume_continues_the_same_run(tmp_path):
    first = RecordingWandb()
    sink = WandbSink(str(tmp_path), config={"lr": 1e-4}, wandb=first)
    sink.log({"step": 1, "reward/mean": 0.5, "note": "x"})
    sink.close()
    init = first.calls[0][1]
    assert init["mode"] == "offline" and init["dir"] == str(tmp_path) and init["config"] == {"lr": 1e-4}
    assert first.calls[1:] == [("define_metric", ("*", "step")), ("log", {"step": 1, "reward/mean": 0.5}),
                               ("finish", None)]
    again = RecordingWandb()
    WandbSink(str(tmp_path), config={}, resume_step=1, wandb=again)
    assert again.calls[0][1]["id"] == init["id"] and again.calls[0][1]["resume"] == "allow"


def test_a_run_reports_every_metric_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "2", "--report-to", "tensorboard,wandb", "--output-dir", str(out)]) == 0
    logged = rows(out)
    events = _events(str(out / "tensorboard"))
    want = {key for row in logged for key in scalars(row)}
    assert set(events) == want
    for key in want:
        assert events[key] == [(row["step"], pytest.approx(row[key])) for row in logged if key in scalars(row)]
    run_files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(run_files) == 1
    keys = [key.encode() for key in ("reward/mean", "eval/accuracy", "time/step")]
    deadline = time.time() + 60  # W&B's service process writes the run file on its own schedule
    while True:
        data = open(run_files[0], "rb").read()
        missing = [key for key in keys if key not in data]
        if not missing or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"the offline W&B run file lacks {missing}"
