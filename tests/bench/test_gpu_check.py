"""bench/gpu_check.py's dry run (tiny shapes on CPU), so the one-shot GPU script cannot rot before
the GPU window it is written for. It measures nothing; it runs every code path and checks the
output folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.py")


def _dry_run(out, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out), "--budget-s", "1500", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "gpu_check"
    return json.loads((out / "results.json").read_text())


def test_dry_run_of_the_step_stages(tmp_path):
    results = _dry_run(tmp_path, "--stages", "kernel_tests,step_3b")
    stages = results["stages"]
    assert set(stages) == {"kernel_tests", "step_3b"}
    assert all(s["status"] == "ok" for s in stages.values()), stages
    step = stages["step_3b"]["result"]
    assert step["shape"] == "3b" and set(step["phases"]) == {"rollout", "logprobs", "update"}
    for phase in step["phases"].values():
        assert phase["tokens_per_s"] > 0 and phase["plan_gib"] > 0 and phase["mfu_pct_of_matmul"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "dry run" in text and "| 3b | update |" in text
    assert os.path.isfile(tmp_path / stages["step_3b"]["log"])


@pytest.mark.slow
def test_dry_run_of_every_stage(tmp_path):
    results = _dry_run(tmp_path)
    stages = results["stages"]
    assert stages["install"]["status"] == "skipped"
    failed = {k: v for k, v in stages.items() if k != "install" and v["status"] != "ok"}
    assert not failed, failed
    assert stages["grpo_30"]["result"]["steps"] == 2
    assert stages["bench_logprobs"]["result"]["rows"] and stages["bench_loss"]["result"]["rows"]
    text = (tmp_path / "results.md").read_text()
    assert "bench_loss" in text and "GRPO end to end: 2 steps" in text
