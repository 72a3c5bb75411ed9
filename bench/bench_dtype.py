"""The thinking preset's training step in float32 against bf16 weights and bf16 autocast, on the CPU, in one run.

Four arms, stepped in turn (round-robin, so that the machine's drift hits them alike), each a
`Trainer` of the tiny-think preset (the default run's recipe) from the same seed:
- float32: the CPU default;
- bfloat16: `--dtype bfloat16` (bf16 weights, fp32 master weights and moments in the optimizer),
  its training attention in float32 (fastzero/cpu_attention.py);
- bfloat16, bf16 attention: the same with transformers' SDPA in bf16 for the backward too (what
  `--dtype bfloat16` ran before cpu_attention), to show what that kernel costs;
- float32, bf16 autocast: `--autocast bfloat16` (float32 weights; the training forwards' model body
  under bf16 autocast, its attention in float32; LM head, loss and rollouts in float32).
bf16 pays off where the CPU has bf16 matrix units (AMX: Sapphire Rapids and later); the bench
prints whether this one does. Printed: seconds per phase (mean of the timed steps) and each bf16
arm's speed-up over float32, then one JSON line.

    python bench/bench_dtype.py [--steps 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from fastzero import cpu_attention
from fastzero.config import validate
from fastzero.model import has_bf16_matrix_units
from fastzero.presets import from_preset
from fastzero.run import Run
from fastzero.trainer import Trainer

PHASES = ("rollout", "logprobs", "update")
ARMS = ("float32", "bfloat16", "bfloat16, bf16 attention", "float32, bf16 autocast")
# --dtype and --autocast of each arm
SETTINGS = {"float32": ("float32", "off"), "bfloat16": ("bfloat16", "off"),
            "bfloat16, bf16 attention": ("bfloat16", "off"), "float32, bf16 autocast": ("float32", "bfloat16")}


def build_trainer(arm: str, threads: int, output_dir: str) -> Trainer:
    cfg = from_preset("tiny-think")
    dtype, autocast = SETTINGS[arm]
    for key, value in dict(dtype=dtype, autocast=autocast, threads=threads, num_train=4000, num_test=16, eval_every=0, save_every=0,
                           progress=False, lr_schedule="constant").items():
        cfg.set(key, value)
    validate(cfg)
    return Trainer.from_run(Run(cfg, output_dir=output_dir, log=lambda *a: None))


def attention_functions() -> tuple[object, object]:
    """cpu_attention's wrapper of transformers' "sdpa" entry, and the function it wraps."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cpu_attention.install()
    wrapper = ALL_ATTENTION_FUNCTIONS["sdpa"]
    return wrapper, wrapper.fastzero_wraps


def use_attention(function) -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS["sdpa"] = function


def timed_step(trainer: Trainer, step: int) -> dict[str, float]:
    trainer.timer.take_step()
    started = time.perf_counter()
    trainer.step(step)
    phases = trainer.timer.take_step()
    phases["total"] = time.perf_counter() - started
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    amx = has_bf16_matrix_units(torch.device("cpu"))  # what --autocast auto checks

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {arm: build_trainer(arm, args.threads, f"{tmp}/{i}")
                    for i, arm in enumerate(ARMS)}
        times: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
        wrapper, bf16_sdpa = attention_functions()
        for step in range(args.steps + 1):  # step 0 warms up
            for arm, trainer in trainers.items():
                use_attention(bf16_sdpa if arm.endswith("bf16 attention") else wrapper)
                phases = timed_step(trainer, step)
                if step:
                    times[arm].append(phases)
        use_attention(wrapper)

    def mean(arm: str, key: str) -> float:
        return sum(row.get(key, 0.0) for row in times[arm]) / len(times[arm])

    print(f"tiny-think preset step on the CPU, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"AMX {'yes' if amx else 'no'}, mean of {args.steps} steps per arm, arms in turn")
    print(f"{'phase':<10}" + "".join(f"{arm:>26}" for arm in ARMS))
    result = {}
    for key in PHASES + ("total",):
        row = {arm: mean(arm, key) for arm in ARMS}
        result[key] = {arm: round(value, 4) for arm, value in row.items()}
        print(f"{key:<10}" + "".join(f"{value:>26.3f}" for value in row.values()))
    speedups = {arm: mean("float32", "total") / mean(arm, "total") for arm in ARMS[1:]}
    print(f"{'x float32':<10}{'':>26}" + "".join(f"{value:>26.2f}" for value in speedups.values()))
    print(json.dumps({"bench": "dtype", "preset": "tiny-think", "threads": args.threads, "amx": amx,
                      "steps": args.steps, "phases_s": result,
                      "speedup_vs_float32": {arm: round(v, 3) for arm, v in speedups.items()}}))


if __name__ == "__main__":
    main()
