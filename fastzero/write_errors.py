"""Write failures as OSError, whatever library did the writing.

A full disk should end a run with "could not write PATH: No space left on device", but the
libraries that write checkpoints hide the OSError: `torch.save` turns it into
`RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`, and safetensors (under
`save_pretrained`) into `SafetensorError: ... I/O error: No space left on device (os error 28)`.
`torch_save` keeps the OSError that torch's writes hit; `as_os_error` recovers the errno from a
safetensors message. Both name the file.

The same hiding swallows Ctrl-C: a signal handler runs inside our `write`, and its
KeyboardInterrupt reaches torch's C++ writer as a failed write; the writer's position is then off
and `write_end_of_file` raises that RuntimeError instead. A stop that the run would have handled
(fastzero/interrupts.py) became a traceback. `torch_save` re-raises the interrupt itself.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch

_OS_ERROR = re.compile(r"os error (\d+)")


class _RecordingFile:
    """A binary file whose first failed write is kept, for torch.save to hide and us to raise."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except BaseException as err:  # an OSError, or a signal handler's KeyboardInterrupt
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save(obj: Any, path: str) -> None:
    """torch.save to `path`, raising the OSError of a failed write (with the path) as such, and a
    signal's KeyboardInterrupt during a write as itself."""
    with open(path, "wb") as handle:
        recording = _RecordingFile(handle)
        try:
            torch.save(obj, recording)
        except RuntimeError:
            cause = recording.error
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror, path) from None
            if isinstance(cause, KeyboardInterrupt):
                raise cause from None  # its own type: StepAborted and StopRequested mean different stops
            raise


@contextmanager
def as_os_error(path: str) -> Iterator[None]:
    """Turn a library's error that carries an OS error number ("os error 28") into that OSError."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - only errors that name an OS error number are converted
        match = _OS_ERROR.search(str(err))
        if match is None:
            raise
        number = int(match.group(1))
        raise OSError(number, os.strerror(number), path) from None
