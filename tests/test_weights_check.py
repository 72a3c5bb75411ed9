"""fastzero.weights_check against the real safetensors reader: what the header check accepts loads,
and every truncation, random file or damaged header is refused naming the file."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastzero.config import resolve_model_path, EMBEDDED_MODEL
from fastzero.weights_check import safetensors_problem, weights_problem


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(37, 5, generator=g), "b": torch.randn(3, generator=g).to(torch.bfloat16),
            "scalar": torch.tensor(7, dtype=torch.int64), "empty": torch.zeros(0, 4), "c": torch.ones(2, 2, 2, dtype=torch.float16)}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    return path


def _loads(path) -> bool:
    try:
        load_file(str(path))
    except Exception:  # noqa: BLE001 - any failure of the real reader counts
        return False
    return True


def test_a_complete_file_and_the_embedded_model_pass(weights):
    assert safetensors_problem(str(weights)) is None and _loads(weights)
    assert weights_problem(resolve_model_path(EMBEDDED_MODEL)) is None


def test_every_truncation_is_refused_naming_the_file(weights):
    data = weights.read_bytes()
    for cut in sorted({0, 1, 7, 8, 9, 20, len(data) // 2, len(data) - 1} | set(random.Random(0).sample(range(len(data)), 20))):
        weights.write_bytes(data[:cut])
        problem = safetensors_problem(str(weights))
        assert problem is not None and problem.startswith(str(weights)), cut
        assert not _loads(weights), cut


@pytest.mark.parametrize("seed", range(30))
def test_damage_the_check_lets_through_still_loads(weights, seed):
    """Random byte damage anywhere (header or data): if the check passes it, the real reader loads it."""
    rng = random.Random(seed)
    data = bytearray(weights.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(header_end if rng.random() < 0.7 else len(data))
        data[i] = rng.randrange(256)
    weights.write_bytes(bytes(data))
    if safetensors_problem(str(weights)) is None:
        assert _loads(weights)


@pytest.mark.parametrize("content, reason", [
    (b"", "truncated or empty"), (os.urandom(4096), "not a safetensors file"),
    (b"\x04\x00\x00\x00\x00\x00\x00\x00abcd", "not JSON"), (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a table"),
])
def test_files_that_are_not_safetensors(tmp_path, content, reason):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    assert reason in safetensors_problem(str(path))


def test_model_directories(tmp_path, weights):
    assert weights_problem(str(tmp_path)) is None
    weights.unlink()
    assert weights_problem(str(tmp_path)) == f"{tmp_path} holds no weights (model.safetensors is missing)"
    shard = tmp_path / "model-00001-of-00002.safetensors"
    save_file(_tensors(), str(shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": shard.name, "b": "model-00002-of-00002.safetensors"}}))
    assert weights_problem(str(tmp_path)) == f"{tmp_path / 'model-00002-of-00002.safetensors'} is missing"
    (tmp_path / "model.safetensors.index.json").write_text("{")
    assert "model.safetensors.index.json is unreadable" in weights_problem(str(tmp_path))
