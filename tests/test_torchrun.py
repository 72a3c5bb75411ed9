"""`torchrun --nproc-per-node 2 -m fastzero.train` end to end on CPU (gloo): one rank killed mid-run
takes the job down with torchrun naming that rank, and `--resume` on 2 ranks then finishes with
exactly the metrics of an uninterrupted 2-rank run (each rank's RNG streams are checkpointed).
A SIGINT or SIGTERM to one rank only, a Ctrl-C (SIGINT to torchrun's process group: its agent, which
forwards it to the workers), or a scheduler's SIGTERM to every process (each worker gets it twice:
directly and forwarded), stops both ranks at the same step with one valid checkpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests._distributed import free_port

pytestmark = pytest.mark.slow

FLAGS = ["--preset", "tiny-direct", "--threads", "1", "--max-steps", "4", "--save-every", "1", "--eval-every", "0", "--num-test", "8",
         "--prompts-per-step", "4", "--samples-per-prompt", "4", "--mini-batch-size", "8", "--max-new-tokens", "8",
         "--time-limit-minutes", "0", "--progress", "false", "--num-train", "100"]


def torchrun(*options: str) -> list[str]:
    """`torchrun` as this interpreter's module (the console script may live in another venv)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), *options, "-m", "fastzero.train"]


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


def replaced(flags: list[str], values: dict[str, str]) -> list[str]:
    return [values.get(flags[i - 1], flag) if i else flag for i, flag in enumerate(flags)]


# No periodic save: the checkpoint the stop writes is the only one, so it is what --resume reads.
# Six steps: the signal, sent once step 1 is logged, lands well before the last.
SIGNAL_FLAGS = replaced(FLAGS, {"--save-every": "0", "--max-steps": "6"})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    out = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    subprocess.run(torchrun() + SIGNAL_FLAGS + ["--output-dir", out], env=env(), check=True, capture_output=True,
                   timeout=600)
    return metrics(out)


@pytest.mark.parametrize("target,signum", [("rank 1", signal.SIGTERM), ("rank 1", signal.SIGINT),
                                           ("ctrl-c", signal.SIGINT), ("every process", signal.SIGTERM)],
                         ids=["sigterm-rank1", "sigint-rank1", "ctrl-c", "scheduler-sigterm"])
def test_a_stop_signal_stops_every_rank_at_one_step(uninterrupted, tmp_path, target, signum):
    from fastzero.manifest import verify_checkpoint

    out = str(tmp_path / "run")
    # start_new_session: a process group of its own, so the Ctrl-C reaches torchrun and its workers
    # only; --shutdown-timeout: the agent's grace before SIGKILL, above a step plus a save on a busy box.
    job = subprocess.Popen(torchrun("--shutdown-timeout", "300") + SIGNAL_FLAGS + ["--output-dir", out], env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    rows = os.path.join(out, "metrics.jsonl")
    deadline = time.monotonic() + 400
    while not (os.path.exists(rows) and any(json.loads(line)["step"] >= 1 for line in open(rows))):  # step 1 logged
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first step"
        time.sleep(0.1)
    if target == "ctrl-c":
        os.killpg(job.pid, signum)
    elif target == "every process":
        for pid in (job.pid, *rank_pids(job.pid).values()):
            os.kill(pid, signum)
    else:
        os.kill(rank_pids(job.pid)[1], signum)
    output, _ = job.communicate(timeout=400)
    steps = [name for name in os.listdir(os.path.join(out, "checkpoints")) if name.startswith("step-")]
    assert len(steps) == 1, (steps, output[-3000:])
    checkpoint = os.path.join(out, "checkpoints", steps[0])
    assert verify_checkpoint(checkpoint) is None
    assert {"rank-00000.pt", "rank-00001.pt"} <= set(os.listdir(checkpoint))  # one save, by both ranks
    step = int(steps[0].split("-")[1])
    assert 1 <= step < 6 and metrics(out)[-1]["step"] == step, output[-3000:]
    assert f"checkpoint saved at step {step} by all 2 ranks" in output, output[-3000:]
    # torchrun prints its own traceback (ChildFailedError: the workers exited 130); the workers none.
    assert not re.search(r'File ".*fastzero/', output) and "KeyboardInterrupt" not in output, output[-3000:]

    resumed = subprocess.run(torchrun() + ["--resume", out, "--threads", "1"], env=env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resumed from {checkpoint} at step {step}" in resumed.stdout
    assert metrics(out) == uninterrupted
