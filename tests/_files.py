"""File-system helpers shared by tests that need paths a run cannot write."""
from __future__ import annotations

import os

import pytest


def unwritable_folder(tmp_path) -> str:
    """A folder this process cannot create files in: mode 0500 for a normal user; for root (which
    ignores permission bits) a kernel pseudo-filesystem that refuses new files."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o500)
        return str(folder)
    for candidate in ("/sys", "/proc"):
        try:
            with open(os.path.join(candidate, "fastzero-probe.jsonl"), "w"):
                pass
        except OSError:
            return candidate
    pytest.skip("no unwritable folder on this machine")
