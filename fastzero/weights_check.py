"""Cheap, up-front checks of a model directory's weight files, so that a truncated, random or
missing `model.safetensors` is one line naming the file before any work, not a Rust traceback
from deep inside transformers after the data was built.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor
to its dtype, shape and [begin, end) byte range, then the data. Reading only the header tells
whether the file is complete: its size must be exactly 8 + N + the largest `end`, and every range
must match its dtype and shape. Sharded checkpoints list their files in
`model.safetensors.index.json`; each shard is checked the same way. Directories holding only
PyTorch `.bin` weights are left to torch (their format has no cheap completeness check).
"""
from __future__ import annotations

import json
import math
import os
import struct

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_MAX_HEADER = 100 << 20  # safetensors itself refuses headers over 100 MB
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_problem(path: str) -> str | None:
    """None when `path` is a complete safetensors file as far as its header can tell; else why not."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path} is truncated or empty ({size} bytes): not a safetensors file"
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                return f"{path} is not a safetensors file, or is truncated (its header length {length} exceeds the file)"
            header = json.loads(fh.read(length).decode("utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{path} is not a safetensors file (its header is not JSON)"
    except OSError as err:
        return f"{path} cannot be read ({err.strerror or err})"
    if not isinstance(header, dict):
        return f"{path} is not a safetensors file (its header is not a table)"
    ranges = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in meta["data_offsets"])
            expected = math.prod(int(n) for n in meta["shape"]) * _DTYPE_BYTES[meta["dtype"]]
        except (KeyError, TypeError, ValueError):
            return f"{path} is damaged: tensor {name!r} has a malformed header entry"
        if stop - begin != expected:
            return f"{path} is damaged: tensor {name!r} has byte range {begin}..{stop} for {expected} bytes"
        ranges.append((begin, stop, name))
    end = 0
    for begin, stop, name in sorted(ranges):  # the reader wants the ranges to tile the data exactly
        if begin != end:
            return f"{path} is damaged: tensor {name!r} starts at byte {begin}, not {end}"
        end = stop
    actual = size - 8 - length
    if actual != end:
        return (f"{path} is {'truncated' if actual < end else 'damaged'}: {size} bytes, its header "
                f"describes {8 + length + end}")
    return None


def weights_problem(directory: str) -> str | None:
    """Why the weights of the model in `directory` cannot be loaded, or None when they look whole."""
    index = os.path.join(directory, INDEX)
    if os.path.isfile(index):
        try:
            with open(index, "rb") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is unreadable or damaged"
        files = [os.path.join(directory, shard) for shard in shards]
    elif os.path.isfile(os.path.join(directory, SINGLE)) or os.path.islink(os.path.join(directory, SINGLE)):
        files = [os.path.join(directory, SINGLE)]
    elif any(name.endswith(".bin") for name in os.listdir(directory)):
        return None  # PyTorch weights: loaded and checked by torch
    else:
        return f"{directory} holds no weights ({SINGLE} is missing)"
    for path in files:
        problem = safetensors_problem(path)
        if problem is not None:
            return problem
    return None
