"""Can this path be written? Asked before any work, so a bad output path fails in a second with one
line instead of after minutes of work with a traceback.

Permission bits are not enough: root ignores them, and read-only mounts, /proc or /sys refuse
files whatever the bits say. So the check creates (and removes) a probe file in the nearest folder
that exists - the folders below it would be created by the real write.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".fastzero-probe-")
    except OSError as err:
        return f"cannot write under {ancestor} ({err.strerror or err})"
    os.close(fd)
    os.unlink(probe)
    return None
