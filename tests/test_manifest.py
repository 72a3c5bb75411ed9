"""fastzero.manifest: every kind of damage to a checkpoint file is found and named, and resume picks
the newest intact checkpoint whatever state `latest` is in."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re

import pytest

from fastzero.manifest import MANIFEST, newest_intact, verify_checkpoint, write_manifest

FILES = {"policy/model.safetensors": 3000, "policy/config.json": 40, "optimizers.pt": 9000,
         "trainer_state.pt": 500, "critic/sub/empty.bin": 0}


def _checkpoint(folder, seed=0):
    rng = random.Random(seed)
    for name, size in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    write_manifest(str(folder))
    return folder


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    folder = _checkpoint(tmp_path / "step-000001")
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == set(FILES)
    for name, meta in files.items():
        data = (folder / name).read_bytes()
        assert meta == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_checkpoint(str(folder)) is None


def _truncate(p):
    p.write_bytes(p.read_bytes()[:-1])


def _flip(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (_truncate, r"is truncated: 2999 bytes, 3000 expected"),
    (_flip, r"is corrupt: its SHA-256 does not match"),
    (lambda p: p.write_bytes(random.Random(1).randbytes(3000)), r"is corrupt"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x"), r"is too long"),
    (lambda p: p.unlink(), r"is missing"),
])
def test_each_kind_of_damage_names_the_file(tmp_path, damage, reason):
    folder = _checkpoint(tmp_path / "step-000001")
    victim = folder / "policy" / "model.safetensors"
    damage(victim)
    problem = verify_checkpoint(str(folder))
    assert problem is not None and problem.startswith(str(victim)), problem
    assert re.search(reason, problem), problem


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"files": {"a": 3}}', b"[]"])
def test_a_damaged_manifest_is_damage_too(tmp_path, content):
    folder = _checkpoint(tmp_path / "step-000001")
    (folder / MANIFEST).write_bytes(content)
    assert "manifest.json is unreadable or damaged" in verify_checkpoint(str(folder))


def _run_with_steps(root, steps, latest):
    for step in steps:
        _checkpoint(root / f"step-{step:06d}", seed=step)
    if latest is not None:
        (root / "latest").write_text(latest + "\n")


def test_newest_intact_with_a_good_latest_has_nothing_to_say(tmp_path):
    _run_with_steps(tmp_path, [10, 20], "step-000020")
    assert newest_intact(str(tmp_path)) == (str(tmp_path / "step-000020"), [])


@pytest.mark.parametrize("latest, note", [
    (None, "latest is missing"),
    ("step-000030", "points to 'step-000030', which does not exist"),
    ("step-000010", "points to 'step-000010', which is not the newest intact checkpoint"),
])
def test_newest_intact_when_latest_is_missing_dangling_or_stale(tmp_path, latest, note):
    _run_with_steps(tmp_path, [10, 20], latest)
    path, notes = newest_intact(str(tmp_path))
    assert path == str(tmp_path / "step-000020")
    assert len(notes) == 1 and note in notes[0]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    _run_with_steps(tmp_path, [10, 20, 30], "step-000030")
    _truncate(tmp_path / "step-000030" / "trainer_state.pt")
    _flip(tmp_path / "step-000020" / "optimizers.pt")
    (tmp_path / ".tmp-step-000040-abc").mkdir()  # a save killed midway is never a candidate
    path, notes = newest_intact(str(tmp_path))
    assert path == str(tmp_path / "step-000010")
    assert "step-000030" in notes[0] and "trainer_state.pt is truncated" in notes[0]
    assert "step-000020" in notes[1] and "optimizers.pt is corrupt" in notes[1]
    assert "latest" in notes[2]


def test_no_intact_checkpoint_and_no_checkpoint_at_all(tmp_path):
    assert newest_intact(str(tmp_path / "nothing")) == (None, [])
    _run_with_steps(tmp_path, [5], "step-000005")
    (tmp_path / "step-000005" / "optimizers.pt").unlink()
    path, notes = newest_intact(str(tmp_path))
    assert path is None and "optimizers.pt is missing" in notes[0]


def test_a_checkpoint_from_before_manifests_is_used_with_a_note(tmp_path):
    _run_with_steps(tmp_path, [10], "step-000010")
    os.unlink(tmp_path / "step-000010" / MANIFEST)
    path, notes = newest_intact(str(tmp_path))
    assert path == str(tmp_path / "step-000010") and "used unverified" in notes[0]
