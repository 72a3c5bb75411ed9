"""A reward sandbox worker process: loads the user's reward function, then scores what it is sent.

Started by `fastzero.tasks.sandbox` as `python -m fastzero.tasks.sandbox_worker CONTROL RESULTS` with
stdout and stderr discarded; the two numbers are its ends of two socket pairs to the trainer. Stdlib
only, so it starts fast.

Protocol (pickled messages):
  trainer -> worker (control): an init dict, then chunks `(responses, problems)`, then None to stop;
  worker -> trainer (control): ("ready",) or ("load_error", text); per chunk ("done",) in per-sample
  mode or ("batch", [(value, error), ...]) in batch mode; ("retire",) before it exits by itself
  (after a MemoryError, to come back with a clean heap);
  worker -> trainer (results, per-sample mode): (value, error, finished_at) as each sample finishes.
  The trainer does not wake for these (that costs a context switch per sample); it reads them when
  it wakes for a control message or a deadline, and `finished_at` (CLOCK_MONOTONIC, shared by all
  processes) tells it exactly when the next sample started, hence its deadline.
Every value is checked here: only a finite float or an error text crosses the socket.

Limits (`resource`, Linux): the address space is capped at what the worker holds after loading the
user's module plus `memory_mb` (an allocation past it raises MemoryError); before each call the
CPU-time soft limit is set to `cpu_seconds` beyond what the worker has used (past it the kernel sends
SIGXCPU, which ends the process); no core files. SIGINT is ignored (Ctrl-C is the trainer's to
handle) and, on Linux, the worker dies with the trainer (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import math
import numbers
import os
import resource
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection

from fastzero.tasks.spec import load_object

_PR_SET_PDEATHSIG = 1


def describe(error: BaseException) -> str:
    """One line: the exception and the innermost place it came from."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}"[:300] + where


def as_reward(value) -> tuple[float | None, str | None]:
    """(the reward, None), or (None, why it is not one): only finite real numbers count."""
    if not isinstance(value, numbers.Real):
        return None, f"returned {type(value).__name__}, not a number"
    try:
        reward = float(value)
    except (OverflowError, ValueError, TypeError) as err:
        return None, f"returned {type(value).__name__} that is not a float: {err}"
    if not math.isfinite(reward):
        return None, f"returned a non-finite reward ({reward})"
    return reward, None


def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the trainer's close() and EOF on the socket still end us
        pass


def _limit_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    try:
        with open("/proc/self/statm") as f:
            held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        held = 0
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = held + (memory_mb << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class _CpuLimit:
    """Before each call: at most `seconds` more CPU time (the soft RLIMIT_CPU, in whole seconds, so
    between `seconds` and `seconds + 1`). Set only when it changes: calls are often microseconds."""

    def __init__(self, seconds: int):
        self.seconds, self.soft = seconds, None
        self.hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    def arm(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + self.seconds)
        if self.hard != resource.RLIM_INFINITY:
            soft = min(soft, self.hard)
        if soft != self.soft:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, self.hard))
            self.soft = soft


def _call(fn, *args):
    """(result, error text, memory exhausted)."""
    try:
        return fn(*args), None, False
    except MemoryError as err:
        return None, describe(err), True
    except BaseException as err:  # SystemExit and KeyboardInterrupt from user code are errors too
        return None, describe(err), False


def _score_batch(fn, responses, problems):
    result, error, out_of_memory = _call(fn, list(responses), list(problems))
    if error is None:
        try:
            values = list(result)
        except BaseException as err:
            values, error = None, f"returned {type(result).__name__}, not a list of rewards ({describe(err)})"
        if values is not None and len(values) != len(responses):
            error = f"returned {len(values)} rewards for {len(responses)} responses"
        if error is None:
            return [as_reward(v) for v in values], False
    return [(None, error)] * len(responses), out_of_memory


def serve(conn: Connection, results: Connection) -> None:
    init = conn.recv()
    option = f"--reward {init['spec']}"
    try:
        fn = load_object(init["spec"], option)
    except BaseException as err:  # a ValueError from load_object already names the option
        conn.send(("load_error", str(err) if isinstance(err, ValueError) else f"{option}: {describe(err)}"))
        return
    _limit_memory(init["memory_mb"])
    cpu_limit = _CpuLimit(init["cpu_seconds"])
    conn.send(("ready",))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        responses, problems = chunk
        if init["per_sample"]:
            for response, problem in zip(responses, problems):
                cpu_limit.arm()
                result, error, out_of_memory = _call(fn, response, problem)
                value, error = as_reward(result) if error is None else (None, error)
                results.send((value, error, time.monotonic()))
                if out_of_memory:
                    conn.send(("retire",))
                    return
            conn.send(("done",))
        else:
            cpu_limit.arm()
            results, out_of_memory = _score_batch(fn, responses, problems)
            conn.send(("batch", results))
            if out_of_memory:
                conn.send(("retire",))
                return


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    conn, results = Connection(int(sys.argv[1])), Connection(int(sys.argv[2]))
    try:
        serve(conn, results)
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the trainer went away
        pass
    finally:
        os._exit(0)  # skip interpreter teardown: user objects may hang or crash in __del__


if __name__ == "__main__":
    main()
