"""One run per output directory, and only in directories that are (or will be) FastZero runs.

`claim(path, resume=...)` is called before any work. It refuses, with one line naming the option:
- a path that cannot hold a run (a file, below a file, read-only; see writable.py);
- a fresh run into a directory that already holds a run (continue it with --resume) or that holds
  other files and no run (a user's own folder is never written into);
- `--resume` of a directory that is not a run;
- a directory another live run is using. The lock is `fcntl.flock` on `.fastzero.lock` inside the
  directory: the kernel drops it when the holding process ends in any way, SIGKILL included, so a
  dead run never leaves a stale lock. The file holds the holder's pid, for the message.

A directory is a run once it holds the run's `config.json` (a table per config section, written at
start-up before anything else). A directory holding only the lock file (and perhaps a writability
probe, see writable.py) is a run that died before it saved its config: empty, as far as a fresh run
is concerned.
"""
from __future__ import annotations

import fcntl
import json
import os
import time

from .writable import PROBE_PREFIX, why_not_writable

LOCK_NAME = ".fastzero.lock"
CONFIG_NAME = "config.json"
RUN_SECTIONS = ("model", "algorithm", "run")  # tables every FastZero config.json has


class RunDirError(ValueError):
    """A directory that cannot be used as asked; the message is for the user, one line."""


def is_run_directory(path: str) -> bool:
    """Whether `path` holds a FastZero run (its config.json, with the config's tables)."""
    try:
        with open(os.path.join(path, CONFIG_NAME), "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(data.get(name), dict) for name in RUN_SECTIONS)


def _other_entries(path: str) -> list[str]:
    """What `path` holds besides FastZero's own traces: its lock, and the writability probes a
    killed start-up can leave (SIGKILL between creating and removing one)."""
    try:
        return sorted(name for name in os.listdir(path) if name != LOCK_NAME and not name.startswith(PROBE_PREFIX))
    except FileNotFoundError:
        return []


class RunLock:
    """The held lock of one run directory; released by `release()` or when the process ends."""

    def __init__(self, directory: str, fd: int):
        self.directory, self._fd = directory, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_pid(lock_path: str) -> str:
    for _ in range(20):  # the holder writes its pid right after locking; give it a moment
        try:
            with open(lock_path) as fh:
                text = fh.read().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def acquire_lock(directory: str) -> RunLock:
    """Lock `directory` (created if missing) for this process, or raise RunDirError naming the
    holder's pid. The descriptor is not inherited by programs this process starts."""
    os.makedirs(directory, exist_ok=True)
    lock_path = os.path.join(directory, LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(
            f"{directory!r} is in use by another FastZero run (pid {_holder_pid(lock_path)}); wait for it "
            "to finish or stop it, or choose another directory") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(directory, fd)


def resume_refusal(path: str) -> str | None:
    """Why `--resume path` cannot continue a run there (None: it can)."""
    return _refusal(path, resume=True)


def _refusal(path: str, *, resume: bool) -> str | None:
    """Why a run (fresh or resumed) may not use `path`, judged from what it holds now."""
    option = "--resume" if resume else "--output-dir"
    reason = why_not_writable(path, folder=True)
    if reason is not None:
        return f"{option}: {reason}"
    if resume:
        if not os.path.isdir(path):
            return f"--resume: {path!r} does not exist"
        if not is_run_directory(path):
            if not _other_entries(path):
                return (f"--resume: {path!r} holds no run (it stopped before saving its config); "
                        f"start it afresh with --output-dir {path}")
            return f"--resume: {path!r} is not a FastZero run directory (no {CONFIG_NAME} of a run)"
        return None
    entries = _other_entries(path)
    if not entries:
        return None
    if is_run_directory(path):
        if not any(name.startswith("step-") for name in _other_entries(os.path.join(path, "checkpoints"))):
            return (f"--output-dir {path!r} already holds a run that has no checkpoint yet; restart it with "
                    f"--resume {path} (any option may change until its first checkpoint) or choose another directory")
        return (f"--output-dir {path!r} already holds a run; continue it with --resume {path} "
                "or choose another directory (nothing was overwritten)")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return (f"--output-dir {path!r} holds other files ({shown}) and no FastZero run; choose a new or "
            "empty directory (nothing was touched)")


def claim(path: str, *, resume: bool) -> RunLock:
    """Check that a run may use `path`, lock it, and check again under the lock (another run may
    have started there in between). Raises RunDirError with one line; nothing is written into a
    directory that is refused before locking."""
    refusal = _refusal(path, resume=resume)
    if refusal is not None:
        raise RunDirError(refusal)
    existed = os.path.isdir(path)
    lock = acquire_lock(path)
    refusal = _refusal(path, resume=resume)
    if refusal is not None:
        lock.release()
        if not existed:  # leave no trace of a directory this call created
            try:
                os.unlink(os.path.join(path, LOCK_NAME))
                os.rmdir(path)
            except OSError:
                pass
        raise RunDirError(refusal)
    return lock
