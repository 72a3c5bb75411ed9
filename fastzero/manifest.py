"""Checkpoint integrity: a size and SHA-256 manifest written with each checkpoint, verification that
names the damaged file, and the search for the newest intact checkpoint.

A checkpoint directory is renamed into place only once complete, so a kill mid-save never leaves a
half checkpoint under a step name. What this guards against is what happens afterwards or outside
the trainer: a disk or copy that truncates or flips bytes, a file deleted by hand, a `latest`
pointer lost or left pointing at a pruned directory. `manifest.json` lists every file of the
checkpoint with its byte count and SHA-256 (the same digest `sha256sum` prints, so a copy can be
checked by hand); it is written last, inside the temporary directory, before the rename.

`newest_intact(root)` ignores `latest` except as a note: it returns the newest `step-NNNNNN`
directory whose files match its manifest, and for every newer one it skipped, why. A checkpoint
without a manifest (written before manifests existed) is used, with a note that it was not verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

MANIFEST = "manifest.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")
_CHUNK = 8 << 20


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def checkpoint_files(folder: str) -> list[str]:
    """Every file under `folder` but the manifest, as sorted relative '/' paths."""
    out = []
    for here, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(here, name), folder)
            if rel != MANIFEST:
                out.append(rel.replace(os.sep, "/"))
    return out


def _hash_all(folder: str, names: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
        return list(pool.map(lambda name: _sha256(os.path.join(folder, name)), names))


def file_entries(folder: str, names: list[str]) -> dict[str, dict]:
    """{name: {"bytes", "sha256"}} for the files `names` under `folder` (hashed in parallel threads)."""
    digests = _hash_all(folder, names)
    return {name: {"bytes": os.path.getsize(os.path.join(folder, name)), "sha256": digest}
            for name, digest in zip(names, digests)}


def write_manifest(folder: str, *, entries: dict[str, dict] | None = None, extra: dict | None = None) -> None:
    """Record every file under `folder` (size and SHA-256) in `folder/manifest.json`, durably.

    entries: the files' records when the caller hashed them already (a sharded checkpoint's ranks
    hash a share each); extra: more top-level fields (a sharded checkpoint's world_size).
    """
    files = entries if entries is not None else file_entries(folder, checkpoint_files(folder))
    path = os.path.join(folder, MANIFEST)
    with open(path, "w") as fh:
        json.dump({**(extra or {}), "format": 1, "files": files}, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def verify_checkpoint(folder: str) -> str | None:
    """None when every file listed in the manifest is present with its size and checksum; else one
    line naming the first damaged file. Sizes are checked for all files before any is hashed."""
    try:
        with open(os.path.join(folder, MANIFEST), "rb") as fh:
            files = json.load(fh)["files"]
        entries = [(str(name), int(meta["bytes"]), str(meta["sha256"])) for name, meta in files.items()]
    except FileNotFoundError:
        return f"{os.path.join(folder, MANIFEST)} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{os.path.join(folder, MANIFEST)} is unreadable or damaged"
    for name, size, _ in entries:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{path} is missing"
        actual = os.path.getsize(path)
        if actual != size:
            return f"{path} is {'truncated' if actual < size else 'too long'}: {actual} bytes, {size} expected"
    names = [name for name, _, _ in entries]
    for (name, _, expected), actual in zip(entries, _hash_all(folder, names)):
        if actual != expected:
            return f"{os.path.join(folder, name)} is corrupt: its SHA-256 does not match the manifest"
    return None


def step_directories(root: str) -> list[tuple[int, str]]:
    """(step, path) of every `step-NNNNNN` directory under `root`, newest first."""
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in names
             if (m := STEP_DIR.match(name)) and os.path.isdir(os.path.join(root, name))]
    return sorted(found, reverse=True)


def _pointer_note(root: str, chosen: str | None) -> str | None:
    pointer = os.path.join(root, LATEST)
    try:
        with open(pointer) as fh:
            name = fh.read().strip()
    except FileNotFoundError:
        return f"{pointer} is missing" if chosen else None
    except (OSError, UnicodeDecodeError):
        return f"{pointer} is unreadable"
    if not os.path.isdir(os.path.join(root, name)):
        return f"{pointer} points to {name!r}, which does not exist"
    if chosen is None or os.path.basename(chosen) != name:
        return f"{pointer} points to {name!r}, which is not the newest intact checkpoint"
    return None


def newest_intact(root: str) -> tuple[str | None, list[str]]:
    """(path of the newest intact checkpoint under `root` or None, notes on what was passed over:
    damaged newer checkpoints, an unverified legacy one, a missing or stale `latest` pointer)."""
    notes: list[str] = []
    chosen = None
    for _, path in step_directories(root):
        if not os.path.exists(os.path.join(path, MANIFEST)):
            chosen = path
            notes.append(f"{path} has no {MANIFEST} (written by an older FastZero): used unverified")
            break
        problem = verify_checkpoint(path)
        if problem is None:
            chosen = path
            break
        notes.append(f"skipped damaged checkpoint {os.path.basename(path)}: {problem}")
    pointer = _pointer_note(root, chosen)
    if pointer is not None:
        notes.append(pointer)
    return chosen, notes
