"""User rewards in a sandbox: `--reward module.path:function` runs in worker processes, never in the
trainer, and cannot stall or crash a step.

The function is `f(responses, problems) -> list[float]` (batch mode, the default) or, with
`per_sample`, `f(response, problem) -> float`. Responses are the generated text only; problems are
the task's JSON-able form (`task.to_json`, e.g. `{"numbers": [3, 7, 12], "target": 22}`).

Guarantees, per call of `RewardSandbox.score`:
- **Hard timeout.** One call of the user's function may take `timeout` seconds of wall time: one
  sample in per-sample mode, one chunk (a worker's share of the batch, about n / workers samples) in
  batch mode. Past it the worker is killed (SIGKILL) and its samples in flight time out; a worker
  also ends when it spends `timeout` seconds of CPU (RLIMIT_CPU: threads cannot dodge the limit).
- **Memory.** Each worker may allocate `memory_mb` beyond what it holds after importing the module
  (RLIMIT_AS); past it, MemoryError: an error, and the worker is replaced.
- **Crashes** (a segfault, `os._exit`, the OOM killer): the sample in flight is an error and the
  worker is restarted; samples it had not started go to another worker.
- **Bad values.** A sample whose reward times out, raises, or is not a finite real number gets
  `fallback` (default 0.0) and is counted (`SandboxResult.timeouts`, `.errors`; the first error's
  text is kept); the call goes on.
- **Watchdog.** If nothing resolves (no sample scored, failed or timed out) for `stall_seconds` (for
  example replacement workers never come up), the call raises `RewardStalled` naming the option;
  the trainer then stops, and its last checkpoint stays.
- Output the function prints is discarded; nothing it does touches the trainer's memory or stdio.
  FastZero never evaluates model output; what the user's function does with it is its own business.

Workers are plain `python -m fastzero.tasks.sandbox_worker` processes (no fork of the trainer, which
holds threads and maybe a CUDA context), each started once and reused, with OMP/BLAS threads at 1.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from .spec import check_spec

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_MAX_AUTO_WORKERS = 16
_PER_SAMPLE_CHUNKS_PER_WORKER = 4  # small chunks balance load; a crash then loses little
# A per-sample chunk's results must fit in the results socket's buffer, so that a worker never blocks
# sending them while the trainer is not reading (the next sample's deadline counts from when the last
# one finished). Linux's default 208 KiB buffer holds ~270 small messages (each costs ~770 bytes of
# kernel buffer), ~130 with the longest error texts; 64 leaves room.
_PER_SAMPLE_MAX_CHUNK = 64


class RewardLoadError(ValueError):
    """The reward module or function cannot be loaded (a usage error: exit 2)."""


class RewardStalled(RuntimeError):
    """The sandbox made no progress for `stall_seconds`."""


@dataclasses.dataclass(frozen=True)
class SandboxOptions:
    timeout: float = 10.0  # wall (and CPU) seconds for one call of the user's function
    memory_mb: int = 1024  # allocation beyond the loaded module, per worker (0 = no limit)
    workers: int = 0  # 0 = the usable cores, at most 16
    fallback: float = 0.0  # the reward of a sample that timed out or failed
    per_sample: bool = False  # f(response, problem) instead of f(responses, problems)
    stall_seconds: float = 120.0  # watchdog: no progress for this long raises RewardStalled
    cpu_seconds: int = 0  # CPU seconds for one call of the user's function (0 = the timeout, rounded up)

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"--reward-timeout: must be a positive number of seconds, got {self.timeout}")
        if self.memory_mb < 0:
            raise ValueError(f"--reward-memory-mb: must be >= 0, got {self.memory_mb}")
        if self.workers < 0:
            raise ValueError(f"--reward-workers: must be >= 0, got {self.workers}")
        if not math.isfinite(self.fallback):
            raise ValueError(f"--reward-fallback: must be finite, got {self.fallback}")
        if self.cpu_seconds < 0:
            raise ValueError(f"cpu_seconds: must be >= 0, got {self.cpu_seconds}")
        if not self.stall_seconds > self.timeout:
            raise ValueError(f"--reward-stall-seconds: must exceed --reward-timeout ({self.timeout}), "
                             f"got {self.stall_seconds}")

    def worker_count(self) -> int:
        if self.workers:
            return self.workers
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(cores, _MAX_AUTO_WORKERS))


@dataclasses.dataclass
class SandboxResult:
    rewards: list[float]
    timeouts: int = 0
    errors: int = 0
    first_error: str | None = None


class _Worker:
    """One worker process and what it is doing: starting, idle, or busy with a chunk of indices."""

    def __init__(self, init: dict[str, Any]):
        (parent, child), (results, results_child) = socket.socketpair(), socket.socketpair()
        env = dict(os.environ)
        for name in _THREAD_VARS:
            env.setdefault(name, "1")
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
        fds = (child.fileno(), results_child.fileno())
        with child, results_child:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastzero.tasks.sandbox_worker", *map(str, fds)],
                                         pass_fds=fds, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                         start_new_session=True)  # its own process group: see kill()
        self.conn, self.results = Connection(parent.detach()), Connection(results.detach())
        self.conn.send(init)
        self.state, self.started = "starting", time.monotonic()
        self.chunk: list[int] = []
        self.done = 0  # samples of the chunk resolved so far
        self.deadline = math.inf

    def kill(self) -> None:
        """SIGKILL to the worker's whole process group: processes the user's function started go too."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:  # already gone
            pass
        self.conn.close()
        self.results.close()
        self.state = "dead"


def _exit_reason(proc: subprocess.Popen) -> tuple[str, bool]:
    """(how the worker ended, whether that was the CPU-time limit)."""
    try:
        code = proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "did not exit after closing its socket (killed)", False
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"worker died from signal {name}", -code == signal.SIGXCPU
    return f"worker exited with code {code}", False


class RewardSandbox:
    """A pool of reward workers; `score(responses, problems)` is one batch. Close it (or use `with`)."""

    def __init__(self, spec: str, options: SandboxOptions = SandboxOptions()):
        check_spec(spec, "--reward")
        self.spec, self.options = spec, options
        self._init = {"spec": spec, "per_sample": options.per_sample, "memory_mb": options.memory_mb,
                      "cpu_seconds": options.cpu_seconds or max(1, math.ceil(options.timeout))}
        self.workers: list[_Worker] = []
        self._reaping: list[subprocess.Popen] = []  # killed workers not yet waited for
        self.startup_seconds = 0.0  # the slowest worker's start, measured (tests derive margins from it)
        self._finalizer = weakref.finalize(self, _kill_all, self.workers)
        try:
            self.workers.extend(_Worker(self._init) for _ in range(options.worker_count()))
            self._wait_until_started()
        except BaseException:
            self.close()
            raise

    # ---- lifecycle -------------------------------------------------------------------------------
    def _wait_until_started(self) -> None:
        deadline = time.monotonic() + self.options.stall_seconds
        while any(w.state == "starting" for w in self.workers):
            starting = [w for w in self.workers if w.state == "starting"]
            if not wait([w.conn for w in starting], max(0.0, deadline - time.monotonic())):
                raise RewardStalled(f"--reward {self.spec}: the reward workers did not start within "
                                    f"--reward-stall-seconds {self.options.stall_seconds:g} (does importing the module hang?)")
            for w in starting:
                if w.conn.poll():
                    self._on_message(w, None)

    def close(self) -> None:
        # Only an idle worker reads the goodbye: one still starting may hang in the user's import, a
        # busy one is inside the user's function. Those are killed at once, so a hung worker does not
        # add a wait to the watchdog's error; idle ones get one shared second to exit on their own.
        polite = [w for w in self.workers if w.state == "idle"]
        for w in polite:
            try:
                w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for w in self.workers:
            if w in polite:
                try:
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            w.kill()
        for proc in self._reaping + [w.proc for w in self.workers]:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))  # SIGKILLed: reaped at once
            except subprocess.TimeoutExpired:
                pass
        self.workers.clear()
        self._reaping.clear()

    def __enter__(self) -> "RewardSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- one batch -------------------------------------------------------------------------------
    def score(self, responses: Sequence[str], problems: Sequence[Any]) -> SandboxResult:
        if len(responses) != len(problems):
            raise ValueError(f"responses and problems must have the same length, got {len(responses)} and {len(problems)}")
        n = len(responses)
        if not self.workers:
            raise RuntimeError("the reward sandbox is closed")
        for w in list(self.workers):
            if w.state == "busy":  # left over from a call that was interrupted: its results are stale
                self._replace(w)
        self._call = _Call(list(responses), list(problems), self.options)
        call = self._call
        parts = len(self.workers) * (_PER_SAMPLE_CHUNKS_PER_WORKER if self.options.per_sample else 1)
        size = max(1, math.ceil(n / parts))
        if self.options.per_sample:
            size = min(size, _PER_SAMPLE_MAX_CHUNK)
        call.queue.extend(list(range(i, min(n, i + size))) for i in range(0, n, size))
        while call.unresolved:
            for w in self.workers:
                if w.state == "idle" and call.queue:
                    self._dispatch(w, call.queue.popleft())
            live = [w for w in self.workers if w.state in ("starting", "busy")]
            now = time.monotonic()
            until = min([w.deadline for w in live] + [call.progress_at + self.options.stall_seconds])
            for conn in wait([w.conn for w in live], max(0.0, until - now)):
                w = next(w for w in live if w.conn is conn)
                while w.state in ("starting", "busy") and w.conn.poll():
                    self._on_message(w, call)
            for w in self.workers:
                if w.state == "busy":
                    self._drain(w, call)
            now = time.monotonic()
            for w in self.workers:
                if w.state == "busy" and now >= w.deadline:
                    self._lose_worker(w, call, timed_out=True, reason=f"timed out after {self.options.timeout:g} s")
            if call.unresolved and now >= call.progress_at + self.options.stall_seconds:
                raise RewardStalled(
                    f"--reward {self.spec}: no reward finished, failed or timed out for "
                    f"{self.options.stall_seconds:g} s (--reward-stall-seconds); {call.unresolved} of {n} "
                    "samples unscored. Check that the module imports quickly and the machine is not out of memory.")
        self._call = None
        return SandboxResult(call.rewards, call.timeouts, call.errors, call.first_error)

    def _dispatch(self, w: _Worker, chunk: list[int]) -> None:
        call = self._call
        w.chunk, w.done, w.state = chunk, 0, "busy"
        w.deadline = time.monotonic() + self.options.timeout
        try:
            w.conn.send(([call.responses[i] for i in chunk], [call.problems[i] for i in chunk]))
        except OSError:  # it died between two calls: its chunk goes back untouched
            call.queue.appendleft(chunk)
            self._replace(w)

    def _on_message(self, w: _Worker, call: "_Call | None") -> None:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            if w.state == "starting":
                reason, _ = _exit_reason(w.proc)
                self.close()
                raise RewardLoadError(f"--reward {self.spec}: a reward worker died while loading the module ({reason})") from None
            reason, cpu_limit = _exit_reason(w.proc)
            self._lose_worker(w, call, timed_out=cpu_limit, reason=reason)
            return
        kind = message[0]
        if kind == "ready":
            w.state = "idle"
            self.startup_seconds = max(self.startup_seconds, time.monotonic() - w.started)
            if call is not None:
                call.progress_at = time.monotonic()
        elif kind == "load_error":
            self.close()
            raise RewardLoadError(message[1])
        elif kind == "done":
            self._drain(w, call)
            w.state, w.deadline = "idle", math.inf
        elif kind == "batch":
            for i, (value, error) in zip(w.chunk, message[1]):
                call.resolve(i, value, error)
            w.done, w.state, w.deadline = len(w.chunk), "idle", math.inf
        elif kind == "retire":  # it exits by itself after a MemoryError: the rest of its chunk moves on
            self._drain(w, call)
            if w.done < len(w.chunk):
                call.queue.appendleft(w.chunk[w.done:])
            self._replace(w)

    def _drain(self, w: _Worker, call: "_Call") -> None:
        """Per-sample results the worker has sent so far; the next sample's deadline counts from when
        the last one finished (the worker's own clock reading)."""
        try:
            while w.done < len(w.chunk) and w.results.poll():
                value, error, finished_at = w.results.recv()
                call.resolve(w.chunk[w.done], value, error)
                w.done += 1
                w.deadline = finished_at + self.options.timeout
        except (EOFError, OSError):  # it died; what it sent before is in, the rest is for _lose_worker
            pass

    def _lose_worker(self, w: _Worker, call: "_Call", *, timed_out: bool, reason: str) -> None:
        """The worker is gone (killed on timeout, or it died): the sample(s) in flight fail, the rest move on."""
        if w.state == "busy":
            self._drain(w, call)
        was_busy = w.state == "busy"
        w.kill()
        if was_busy and w.done < len(w.chunk):
            in_flight = w.chunk[w.done:w.done + 1] if self.options.per_sample else w.chunk[w.done:]
            for i in in_flight:
                call.fail(i, timed_out, reason)
            rest = w.chunk[w.done + len(in_flight):]
            if rest:
                call.queue.appendleft(rest)
        self._replace(w)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._reaping = [p for p in self._reaping + [w.proc] if p.poll() is None]  # no waiting here
        self.workers[self.workers.index(w)] = _Worker(self._init)


class _Call:
    """The state of one `score` call: rewards so far, counts, the queue of chunks, the watchdog clock."""

    def __init__(self, responses: list, problems: list, options: SandboxOptions):
        self.responses, self.problems, self.fallback = responses, problems, options.fallback
        self.rewards: list[float] = [options.fallback] * len(responses)
        self.unresolved = len(responses)
        self.timeouts = self.errors = 0
        self.first_error: str | None = None
        self.queue: collections.deque[list[int]] = collections.deque()
        self.progress_at = time.monotonic()

    def resolve(self, i: int, value: float | None, error: str | None) -> None:
        if error is None:
            self.rewards[i] = value
        else:
            self.errors += 1
            self.first_error = self.first_error or error
        self.unresolved -= 1
        self.progress_at = time.monotonic()

    def fail(self, i: int, timed_out: bool, reason: str) -> None:
        if timed_out:
            self.timeouts += 1
            self.unresolved -= 1
            self.progress_at = time.monotonic()
        else:
            self.resolve(i, None, reason)


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()
