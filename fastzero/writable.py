"""Can this path be written? Asked before any work, so a bad output path fails in a second with one
line instead of after minutes of work with a traceback.

Permission bits are not enough: root ignores them, and read-only mounts, /proc or /sys refuse
files whatever the bits say. So the check creates (and removes) a probe file in the nearest folder
that exists - the folders below it would be created by the real write. A process killed between
the two leaves the probe behind; its name starts with PROBE_PREFIX so that a run directory's
"is it empty?" check (fastzero.rundir) can tell such a leftover from a user's file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROBE_PREFIX = ".fastzero-probe-"


def why_not_writable(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why `path` (a file to write, or with `folder` a folder to create or fill) cannot be written,
    or None when it can. Missing parent folders are fine: the writer creates them."""
    path = Path(path).absolute()
    ancestor = path
    while True:  # the nearest existing path; lstat, not exists(): a too-long name raises, not False
        try:
            os.lstat(ancestor)
            break
        except (FileNotFoundError, NotADirectoryError):  # missing, or below a file: look higher
            ancestor = ancestor.parent
        except OSError as err:
            return f"{path}: {err.strerror or err}"
    if ancestor == path:
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder"
        if not folder:
            ancestor = path.parent
    if not ancestor.is_dir():
        return f"cannot write under {ancestor}: it is {'a broken link' if ancestor.is_symlink() else 'a file'}, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=PROBE_PREFIX)
    except OSError as err:
        return f"cannot write under {ancestor} ({err.strerror or err})"
    try:  # a Ctrl-C or SIGTERM (raised here as an exception) still removes the probe
        os.close(fd)
    finally:
        os.unlink(probe)
    return None
