"""`torchrun --nproc-per-node 2 -m fastzero.train` end to end on CPU (gloo): one rank killed mid-run
takes the job down with torchrun naming that rank, and `--resume` on 2 ranks then finishes with
exactly the metrics of an uninterrupted 2-rank run (each rank's RNG streams are checkpointed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests._distributed import free_port

pytestmark = pytest.mark.slow

FLAGS = ["--threads", "1", "--max-steps", "4", "--save-every", "1", "--eval-every", "0", "--num-test", "8",
         "--prompts-per-step", "4", "--samples-per-prompt", "4", "--mini-batch-size", "8", "--max-new-tokens", "8",
         "--time-limit-minutes", "0", "--progress", "false", "--num-train", "100"]


def torchrun() -> list[str]:
    """`torchrun` as this interpreter's module (the console script may live in another venv)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), "-m", "fastzero.train"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def metrics(directory: str) -> list[dict]:
    with open(os.path.join(directory, "metrics.jsonl")) as fh:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in fh]


def rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes (read from their environment)."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in map(int, out):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                variables = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"RANK" in variables:
            ranks[int(variables[b"RANK"])] = pid
    return ranks


def test_killed_rank_is_named_and_resume_matches_uninterrupted(tmp_path):
    full = str(tmp_path / "full")
    subprocess.run(torchrun() + FLAGS + ["--output-dir", full], env=env(), check=True, capture_output=True,
                   timeout=600)
    expected = metrics(full)

    killed = str(tmp_path / "killed")
    job = subprocess.Popen(torchrun() + FLAGS + ["--output-dir", killed], env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    latest = os.path.join(killed, "checkpoints", "latest")
    deadline = time.monotonic() + 400
    while not (os.path.exists(latest) and open(latest).read().strip() >= "step-000002"):
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its second checkpoint"
        time.sleep(0.2)
    os.kill(rank_pids(job.pid)[1], signal.SIGKILL)
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0
    assert "rank" in output and ": 1 (local_rank: 1)" in output, output[-3000:]

    resumed = subprocess.run(torchrun() + ["--resume", killed, "--threads", "1"], env=env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert metrics(killed) == expected
