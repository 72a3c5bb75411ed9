"""fastzero.atomic: whole-file and whole-directory replacement, failure leaves the old content."""
from __future__ import annotations

import os

import pytest

from fastzero.atomic import TMP_PREFIX, atomic_directory, atomic_file, atomic_write_text


def _leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(TMP_PREFIX)]


def test_write_then_replace_text(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and _leftovers(path.parent) == []


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_file(path, "wb") as handle:
            handle.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_files_get_the_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as staging:
            (staging / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_file(tmp_path / "a", "a"):
            pass


def test_directory_is_built_then_swapped_in(tmp_path):
    target = tmp_path / "final"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("v1")
        assert not target.exists()  # nothing visible until the block succeeds
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(os.listdir(target)) == ["weights"] and _leftovers(tmp_path) == []


def test_failed_directory_keeps_the_old_one(tmp_path):
    target = tmp_path / "final"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("good")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as staging:
            (staging / "weights").write_text("partial")
            raise KeyboardInterrupt
    assert (target / "weights").read_text() == "good" and _leftovers(tmp_path) == []
