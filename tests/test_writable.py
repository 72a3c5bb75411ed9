"""fastzero.writable.why_not_writable: every way an output path can be unwritable, found up front."""
from __future__ import annotations

import os

import pytest

from fastzero.writable import why_not_writable
from tests._files import unwritable_folder


def test_writable_paths_pass_and_leave_nothing_behind(tmp_path):
    assert why_not_writable(tmp_path / "new" / "deeper" / "f.jsonl") is None
    assert why_not_writable(tmp_path / "run", folder=True) is None
    (tmp_path / "existing").mkdir()
    assert why_not_writable(tmp_path / "existing", folder=True) is None
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # the probe file is gone, nothing was created
    assert os.listdir(tmp_path / "existing") == []


def test_an_interrupt_inside_the_probe_still_removes_it(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the trainer turns into the same exception) landing between the
    probe's creation and its removal: the exception goes on, the probe does not stay behind (a
    leftover made the next run refuse its own output directory as "holding other files")."""
    real_close = os.close

    def interrupted_close(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        why_not_writable(tmp_path / "run", folder=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_each_unwritable_case_gets_a_reason_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    cases = {
        (tmp_path / "file", True): "is a file, not a folder",
        (tmp_path / "folder", False): "is a folder",
        (tmp_path / "file" / "run", True): f"cannot write under {tmp_path / 'file'}: it is a file",
        (tmp_path / "dangling" / "run", True): "it is a broken link",
        (tmp_path / ("x" * 300), True): "File name too long",
        (os.path.join(unwritable_folder(tmp_path), "run"), True): "cannot write under",
    }
    for (path, folder), reason in cases.items():
        message = why_not_writable(path, folder=folder)
        assert message is not None and reason in message, (path, message)
