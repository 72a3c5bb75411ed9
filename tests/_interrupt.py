"""A harness for interruption tests: run `python -m fastzero.train` in a subprocess, send it
SIGINT / SIGTERM / SIGKILL at seeded random moments, continue it the way a user would (`--resume`
when the directory holds a run, else the same command again), and compare the finished run with an
uninterrupted one bit for bit: final weights, every metrics row (timings aside) and the samples.

Moments are drawn relative to three anchors: the process start (start-up: imports, data, model),
the banner line the trainer prints once it is built (then the first evaluation and steps), and the
first checkpoint appearing (mid-training: steps, evaluations, saves). A plan can put a second signal
shortly after the first, which lands while the first one's checkpoint is being written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNER = "FastZero: "  # printed by fastzero.train once the run is built
TINY = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "16", "--prompts-per-step", "4", "--samples-per-prompt", "4",
        "--mini-batch-size", "8", "--eval-every", "2", "--save-every", "1", "--progress", "false",
        "--threads", "1", "--max-steps", "4"]
# Before Python has run fastzero's first lines (interpreter start-up, ~0.1 s) a signal ends the
# process the way Python does; nothing has been written then. Start-up shots come later than this.
PYTHON_STARTUP = 1.0
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGKILL: "SIGKILL"}


@dataclasses.dataclass(frozen=True)
class Shot:
    """Send `sig` `delay` seconds after `anchor`: "start" of the process, the trainer's "banner", or
    the first "checkpoint" of the attempt (its `checkpoints/latest` written or rewritten)."""

    sig: int
    anchor: str
    delay: float

    def __str__(self) -> str:
        return f"{SIGNAL_NAMES.get(self.sig, self.sig)} at {self.anchor}+{self.delay:.2f}s"


@dataclasses.dataclass
class Attempt:
    """One process: its command, the shots actually fired, its exit status and its output."""

    argv: list[str]
    fired: list[str]
    returncode: int
    output: str

    def describe(self) -> str:
        tail = "\n".join(self.output.strip().splitlines()[-8:])
        return f"  {' '.join(self.argv)}\n  fired: {self.fired or 'nothing'}; exit {self.returncode}\n{tail}"


class _Watched:
    """A child process whose merged output is read by a thread, with the time each line arrived."""

    def __init__(self, argv: list[str], out: Path):
        self.latest = out / "checkpoints" / "latest"
        self.latest_before = _mtime(self.latest)
        # As a CPU user runs it: the kernels' PyTorch path, not the Triton interpreter the tests set.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "fastzero.train", *argv], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def anchor_time(self, anchor: str, timeout: float) -> float | None:
        """When the anchor happened (None: the process ended without it)."""
        if anchor == "start":
            return self.started
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if anchor == "checkpoint" and _mtime(self.latest) != self.latest_before:
                return time.monotonic()
            for at, line in list(self.lines):
                if anchor == "banner" and line.startswith(BANNER):
                    return at
            if self.proc.poll() is not None:
                return None
            time.sleep(0.005)
        raise TimeoutError(f"no {anchor!r} line within {timeout} s")

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout=10)
        return code, "".join(line for _, line in self.lines)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def run_once(argv: list[str], out: Path, shots: list[Shot] = (), *, timeout: float = 300) -> Attempt:
    """Run the trainer once on `out`, firing `shots` in order (each waits for its anchor)."""
    child = _Watched(argv, out)
    fired = []
    for shot in shots:
        at = child.anchor_time(shot.anchor, timeout)
        if at is None:
            break  # the run ended before this anchor
        time.sleep(max(0.0, at + shot.delay - time.monotonic()))
        if child.proc.poll() is not None:
            break
        child.proc.send_signal(shot.sig)
        fired.append(str(shot))
    code, output = child.finish(timeout)
    return Attempt(list(argv), fired, code, output)


def next_command(out: Path, fresh: list[str]) -> list[str]:
    """What a user runs to carry on: --resume once the directory holds a run, else the same command."""
    from fastzero.rundir import is_run_directory

    return ["--resume", str(out)] if is_run_directory(str(out)) else [*fresh, "--output-dir", str(out)]


def interrupted_run(out: Path, args: list[str], plans: list[list[Shot]], *, timeout: float = 300) -> list[Attempt]:
    """Start the run in `out`, interrupt attempt i with plans[i], then let a last attempt finish.
    Raises AssertionError, showing every attempt, when an attempt fails or the run never completes."""
    attempts: list[Attempt] = []
    for shots in [*plans, []]:
        attempt = run_once(next_command(out, args), out, shots, timeout=timeout)
        attempts.append(attempt)
        expected = {0} | ({130} if any("SIGKILL" not in f for f in attempt.fired) else set()) | (
            {-signal.SIGKILL} if any("SIGKILL" in f for f in attempt.fired) else set())
        if attempt.returncode not in expected or "Traceback" in attempt.output:
            raise AssertionError("an attempt ended badly:\n" + "\n".join(a.describe() for a in attempts))
        if attempt.returncode == 0:
            return attempts
    raise AssertionError("the run never completed:\n" + "\n".join(a.describe() for a in attempts))


def random_plans(seed: int, count: int, profile: "Profile", *, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGKILL),
                 windows=("start", "banner", "checkpoint", "checkpoint"), second_shot: float = 0.25) -> list[list[Shot]]:
    """`count` seeded plans. Each fires one signal at a uniform moment of a window drawn from
    `windows` (start-up, the first evaluation and step, mid-training, sized by `profile`); with
    probability `second_shot` a second SIGINT/SIGTERM follows within half a second (during the save)."""
    rng = random.Random(seed)
    window = {"start": (PYTHON_STARTUP, max(PYTHON_STARTUP, profile.startup)), "banner": (0.0, profile.first_step),
              "checkpoint": (0.0, profile.step)}
    plans = []
    for _ in range(count):
        anchor = rng.choice(windows)
        shots = [Shot(rng.choice(signals), anchor, rng.uniform(*window[anchor]))]
        if shots[0].sig != signal.SIGKILL and rng.random() < second_shot:
            shots.append(Shot(rng.choice((signal.SIGINT, signal.SIGTERM)), anchor,
                              shots[0].delay + rng.uniform(0.01, 0.5)))
        plans.append(shots)
    return plans


@dataclasses.dataclass
class Profile:
    """Seconds a reference run spent (this machine, now): before its banner, from the banner to its
    first checkpoint, and per step after that (a step with its evaluation and save)."""

    startup: float
    first_step: float
    step: float


def reference_run(out: Path, args: list[str], *, timeout: float = 300) -> Profile:
    """The uninterrupted run every interrupted one is compared with; its timing sizes the plans."""
    child = _Watched([*args, "--output-dir", str(out)], out)
    code, output = child.finish(timeout)
    assert code == 0, output
    banner = next(at for at, line in child.lines if line.startswith(BANNER))
    steps = [row for row in _rows(out / "metrics.jsonl") if "time/step" in row]
    seconds = [sum(row.get(f"time/{k}", 0.0) for k in ("step", "eval", "checkpoint")) for row in steps]
    return Profile(startup=banner - child.started, first_step=seconds[0], step=sum(seconds[1:]) / max(1, len(seconds) - 1))


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparable_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in _rows(run_dir / "metrics.jsonl")]


def assert_same_run(expected: Path, actual: Path, context: str = "") -> None:
    """Final weights equal bit for bit, metrics rows (without timings) and samples equal."""
    a, b = load_file(expected / "final" / "model.safetensors"), load_file(actual / "final" / "model.safetensors")
    assert a.keys() == b.keys(), context
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"weights differ in {different[:3]}{context}"
    rows_a, rows_b = comparable_rows(expected), comparable_rows(actual)
    for i, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        assert ra == rb, f"metrics row {i} differs:\n  {ra}\n  {rb}{context}"
    assert len(rows_a) == len(rows_b), f"{len(rows_a)} vs {len(rows_b)} metrics rows{context}"
    assert _rows(expected / "samples.jsonl") == _rows(actual / "samples.jsonl"), f"samples differ{context}"
