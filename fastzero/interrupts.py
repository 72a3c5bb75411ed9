"""Ctrl-C and SIGTERM that stop a run only where its state is consistent.

A Python signal handler runs between two bytecodes, wherever the main thread is: in the middle of
an optimizer step, between advancing the data position and using it, inside a checkpoint write.
Saving the state found there mixes two steps. So while a step runs (`with interrupts.step():`), the first
SIGINT/SIGTERM only records the request and the step finishes (with its evaluation, log line and
any periodic save); the loop then raises `StopRequested` at the top of the next step, where the
state is exactly that of a completed step and may be saved. A second signal during a step stops at
once with `StepAborted`: that step is discarded and nothing is saved (the last checkpoint stands).
Outside a step (start-up, the first evaluation, the final save) a signal raises KeyboardInterrupt
at once: there is either nothing new to save or only a consistent state. Except inside an import:
torch's C++ (and pybind11 modules) import Python modules lazily, and a KeyboardInterrupt raised in
one crosses C++ that cannot unwind it, so the process aborts (SIGABRT, seen in the random-interrupt
test at start-up) instead of exiting cleanly. There the signal is sent again `IMPORT_RETRY_S` later,
until it lands outside the import.

Both signals are treated alike (exit status 130 either way): SIGTERM is what schedulers and
`timeout` send, and it deserves the same clean stop as Ctrl-C.

Under torchrun (fastzero/loop.py): a signal may reach only some ranks, or reach them during
different steps, so the stop is agreed: between steps every rank all-reduces whether it holds a
request (one int), and when any does, all of them stop at that same boundary and write one
checkpoint together. Ctrl-C in a terminal reaches torchrun's agent only (its workers run in
sessions of their own), which forwards it to every worker; a scheduler that signals every process
of the job (Slurm's scancel) reaches each worker twice, directly and through the agent: a repeat
of the pending signal within `repeat_window_s` (2 s under torchrun) is that echo, not a second
request to stop at once. torchrun SIGKILLs its workers --shutdown-timeout seconds (default 30)
after forwarding a signal: raise it above a step plus a checkpoint for the stop to complete.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130
IMPORT_RETRY_S = 0.05  # imports take milliseconds: ask again this soon


class StopRequested(KeyboardInterrupt):
    """Raised between steps after a deferred signal: the state is that of a completed step."""


class StepAborted(KeyboardInterrupt):
    """Raised by a second signal during a step: the step is incomplete and must not be saved."""


def inside_import(frame) -> bool:
    """Whether the main thread was interrupted while importing a module (see the module docstring)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Interrupts:
    """SIGINT/SIGTERM handling for one run (main thread only)."""

    def __init__(self, say: Callable[[str], None] = _stderr, *, repeat_window_s: float = 0.0):
        self.say = say
        self.pending: int | None = None  # the signal received during a step, if any
        self.repeat_window_s = repeat_window_s  # the same signal again this soon is an echo (see above)
        self._pending_since = 0.0
        self._in_step = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def installed(self) -> Iterator["Interrupts"]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if not self._in_step:
            if inside_import(frame):
                retry = threading.Timer(IMPORT_RETRY_S, os.kill, (os.getpid(), signum))
                retry.daemon = True  # never holds the process open
                retry.start()
                return
            raise KeyboardInterrupt(name)
        if self.pending is None:
            self.pending, self._pending_since = signum, time.monotonic()
            self.say(f"\n{name}: finishing this step, then saving a checkpoint and stopping "
                     "(send it again to stop at once; this step is then not saved)")
            return
        if signum == self.pending and time.monotonic() - self._pending_since < self.repeat_window_s:
            return  # torchrun's agent forwarding the Ctrl-C every worker already received
        raise StepAborted(name)

    @contextmanager
    def step(self) -> Iterator[None]:
        """One step (its evaluation and saves included): a first signal waits for its end."""
        self._in_step = True
        try:
            yield
        finally:
            self._in_step = False

    def request(self, signum: int) -> None:
        """A stop asked for elsewhere (another rank's signal): this rank stops at the next check too."""
        if self.pending is None:
            self.pending, self._pending_since = signum, time.monotonic()

    def check(self) -> None:
        """Between steps: raise StopRequested if a signal arrived during the last one."""
        if self.pending is not None:
            raise StopRequested(signal.Signals(self.pending).name)
