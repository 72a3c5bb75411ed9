"""Few-step training runs for feature tests: the small CLI flags, metrics rows, and a resume check."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from fastzero.train import main

TINY = ["--preset", "tiny-direct", "--num-train", "300", "--num-test", "8", "--prompts-per-step", "4", "--samples-per-prompt", "4",
        "--mini-batch-size", "8", "--eval-every", "0", "--progress", "false", "--threads", "1",
        "--time-limit-minutes", "0"]


def rows(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def comparable(run_rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in run_rows]


def checkpoint_weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(run_dir, "checkpoints", f"step-{step:06d}", "policy", "model.safetensors"))


def assert_resume_is_bit_identical(tmp_path, args: list[str], steps: int = 4) -> None:
    """`steps` steps straight == steps/2, then --resume to `steps`: same weights, same metrics rows."""
    half = steps // 2
    common = args + ["--save-every", str(half), "--eval-every", str(half)]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(common + ["--max-steps", str(steps), "--output-dir", str(straight)]) == 0
    assert main(common + ["--max-steps", str(half), "--output-dir", str(resumed)]) == 0
    assert main(["--resume", str(resumed), "--max-steps", str(steps)]) == 0
    a, b = checkpoint_weights(straight, steps), checkpoint_weights(resumed, steps)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert comparable(rows(straight)) == comparable(rows(resumed))
