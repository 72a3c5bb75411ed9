"""Write failures as OSError, whatever library did the writing.

A full disk should end a run with "could not write PATH: No space left on device", but the
libraries that write checkpoints hide the OSError: `torch.save` turns it into
`RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`, and safetensors (under
`save_pretrained`) into `SafetensorError: ... I/O error: No space left on device (os error 28)`.
`torch_save` keeps the OSError that torch's writes hit; `as_os_error` recovers the errno from a
safetensors message. Both name the file.
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
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save(obj: Any, path: str) -> None:
    """torch.save to `path`, raising the OSError of a failed write (with the path) as such."""
    with open(path, "wb") as handle:
        recording = _RecordingFile(handle)
        try:
            torch.save(obj, recording)
        except RuntimeError:
            if recording.error is not None:
                raise OSError(recording.error.errno, recording.error.strerror, path) from None
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
