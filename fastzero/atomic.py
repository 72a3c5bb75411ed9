"""Atomic writes: a reader (or a resumed run) sees the old content or the new, never part of one.

- `atomic_file(path)`: write a file under a temporary name in the same folder, fsync it, then
  `os.replace` it over `path` (one rename: atomic on POSIX). `atomic_write_text` is the one-liner.
- `atomic_directory(path)`: build a whole directory in a staging sibling, then swap it in.
  Without renameat2's exchange a directory cannot replace another in one step, so an existing
  target is first renamed aside and removed only after the new one is in place: a kill between the
  two renames leaves the old content under a `.tmp-old-` name and nothing half-written under `path`.

Temporaries start with `.tmp-` (so a folder's owner can sweep leftovers of a killed run, as
checkpoint pruning does) and are created with the umask's permissions, like a plain `open()`:
mkstemp's 0600 would survive the rename and make shipped files unreadable to other users.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

TMP_PREFIX = ".tmp-"


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f"{kind}{uuid.uuid4().hex[:12]}-{path.name[:200]}")  # a name that fits fits here too


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path`, on error it goes."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, TMP_PREFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the file at `path` with `text` atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds it becomes `path` (replacing any old one)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, TMP_PREFIX)
    staging.mkdir(mode=0o777)  # the umask decides, as for os.makedirs
    try:
        yield staging
        if target.exists():
            retired = _sibling(target, TMP_PREFIX + "old-")
            os.replace(target, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired, target)  # put the old one back rather than leave nothing
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already on success
