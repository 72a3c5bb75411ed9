"""FastZero against Hugging Face TRL's GRPOTrainer: same model, prompts, problems, reward, recipe.

Both train an embedded tiny model with GRPO on the same problem
pool (written to files that FastZero reads with --train-path / --test-path and TRL gets as a
dataset), the same compact prompts (the bench checks that TRL tokenizes them to FastZero's ids), the
same reward (fastzero's C++ Countdown verifier on the response with special tokens kept) and the
same recipe, one of two (--model):
- direct (fastzero/assets/tiny-countdown, preset tiny-direct): 64 prompts x 8 samples per step, 14
  new tokens, temperature 1, AdamW lr 1e-4 constant, no KL (TRL beta=0);
- think (fastzero/assets/tiny-countdown-think, the tiny-think preset = the default run's recipe):
  32 prompts x 8 samples, 72 new tokens, temperature 0.7, its lr constant, k3 KL to the base in the
  loss with coefficient 0.05 (TRL beta = the same, the same estimator), which the think block needs
  (bench/RESULTS.md). The preset's cosine decay is left out on both sides: it spans the preset's 200
  steps, and each side's legs stop at a step count or a time budget instead, at different points
  of such a schedule. FastZero takes the preset's --autocast auto (on a CPU with AMX the training
  forwards' body in bf16, float32 weights, attention and LM head); TRL runs in float32, its
  default, or with --trl-bf16 in bf16 autocast (its bf16=True).
Both: the step's batch cut into optimizer steps of the recipe's mini-batch (direct: all 512, one
step; think: the preset's --mini-batch-size), each a token mean over its tokens (TRL
loss_type="dapo" with steps_per_generation = batch / mini-batch divides by the generation batch's
tokens over steps_per_generation: the same in expectation), clip 0.2, group-std normalized
advantages, grad clip 1.0. FastZero runs through its CLI (python -m fastzero.train), TRL
in-process. Held-out accuracy is measured the same way for both: greedy decoding of the final
weights on the same 500 held-out problems, scored by the same verifier.

Per pair (back to back): FastZero for --steps steps; TRL until both --steps steps and --seconds of
training are done (its weights snapshotted at each point); FastZero for --seconds. Training time
excludes start-up and evaluation for both (FastZero: the sum of metrics.jsonl's time/step).
Printed: seconds per step, tokens/s (prompt + response tokens processed per second of training) and
held-out accuracy at equal steps and at equal wall time.

TRL is a `[bench]` extra, never a trainer dependency: run this from a separate venv that has it
(`python3 -m venv venv-trl && venv-trl/bin/pip install torch==2.13.0 -e .[bench]`):
    venv-trl/bin/python bench/bench_vs_trl.py [--model direct|think] [--steps 20] [--seconds 90] [--pairs 1]
Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from fastzero.presets import PRESETS
from fastzero.rollout.base import SamplingParams
from fastzero.rollout.hf import HFEngine
from fastzero.tasks.countdown.problems import generate_problems, save_problems
from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.tasks.countdown.verifier import score_batch

ASSETS = os.path.join(os.path.dirname(__file__), "..", "fastzero", "assets")
RANGES = dict(min_numbers=3, max_numbers=3, min_value=1, max_value=20, min_target=1, max_target=50)
SAMPLES, CLIP, GRAD_CLIP = 8, 0.2, 1.0


@dataclass(frozen=True)
class Recipe:
    """What differs between the two models' runs; both sides get every field."""
    model_dir: str
    prompts: int
    new_tokens: int
    lr: float
    temperature: float
    kl_coef: float
    mini_batch: int  # sequences per optimizer step (TRL: per_device_train_batch_size x steps_per_generation)
    # FastZero's forward/backward chunk (padded tokens; the same update, only its speed changes).
    # TRL gets no equivalent: its per_device_train_batch_size is the optimizer step's batch here.
    micro_batch_tokens: int = 16384
    # Where FastZero's PPO ratio takes its old log-probs once an update is off-policy: the think
    # preset's "rollout" (the sampler's own). TRL's GRPOTrainer recomputes them with a forward on
    # its transformers generation path (steps_per_generation > 1); that is its design, timed as is.
    old_logprobs: str = "recompute"
    # FastZero's --autocast: the think preset's "auto" (bf16 autocast of the training forwards' body
    # on a CPU with AMX, float32 weights). TRL computes in float32 unless --trl-bf16 gives it
    # bf16=True (its autocast through accelerate).
    autocast: str = "off"


_THINK = PRESETS["tiny-think"]  # the default run's recipe, wherever the preset moves it
RECIPES = {
    "direct": Recipe(os.path.join(ASSETS, "tiny-countdown"), prompts=64, new_tokens=14, lr=1e-4,
                     temperature=1.0, kl_coef=0.0, mini_batch=64 * SAMPLES),
    "think": Recipe(os.path.join(ASSETS, "tiny-countdown-think"), prompts=_THINK["prompts_per_step"],
                    new_tokens=_THINK["max_new_tokens"], lr=_THINK["lr"], temperature=_THINK["temperature"],
                    kl_coef=_THINK["kl_coef"], mini_batch=_THINK["mini_batch_size"],
                    micro_batch_tokens=_THINK["micro_batch_tokens"],
                    old_logprobs=_THINK["old_logprobs"], autocast=_THINK["autocast"]),
}


def load_model(recipe: Recipe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(recipe.model_dir).eval(),
            AutoTokenizer.from_pretrained(recipe.model_dir))


def prompt_ids(tokenizer, problem) -> list[int]:
    text = render_prompt("compact", problem.numbers, problem.target, tokenizer)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_texts(tokenizer, responses: list[list[int]], stop: int) -> list[str]:
    """What FastZero scores: the response without its stop token, special tokens kept."""
    trimmed = [r[:-1] if r and r[-1] == stop else r for r in responses]
    return tokenizer.batch_decode(trimmed, skip_special_tokens=False)


def held_out_accuracy(model, tokenizer, problems, recipe: Recipe) -> float:
    engine = HFEngine(model, eos_token_ids=[tokenizer.eos_token_id])
    out = engine.generate([prompt_ids(tokenizer, p) for p in problems],
                          SamplingParams(max_new_tokens=recipe.new_tokens, temperature=0.0))
    texts = response_texts(tokenizer, [g[0].response_ids for g in out], tokenizer.eos_token_id)
    scores = score_batch(texts, [p.numbers for p in problems], [p.target for p in problems])
    return sum(s == 1.0 for s in scores) / len(scores)


# ---- FastZero, through its CLI -------------------------------------------------------------------------
def run_fastzero(files: dict[str, str], out: str, recipe: Recipe, *, steps: int, seconds: float,
                 threads: int) -> dict:
    command = [sys.executable, "-m", "fastzero.train", "--preset", "tiny-direct", "--model-path", recipe.model_dir,
               "--output-dir", out,
               "--train-path", files["train"], "--test-path", files["test"], "--max-steps", str(steps),
               "--eval-every", "0", "--save-every", "0",
               "--threads", str(threads), "--progress", "false", "--seed", "0", "--lr", str(recipe.lr),
               "--lr-schedule", "constant",
               "--prompts-per-step", str(recipe.prompts), "--samples-per-prompt", str(SAMPLES),
               "--max-new-tokens", str(recipe.new_tokens), "--mini-batch-size", str(recipe.mini_batch),
               "--micro-batch-tokens", str(recipe.micro_batch_tokens),
               "--kl-coef", str(recipe.kl_coef), "--kl-in-reward", "false", "--loss-agg", "token-mean",
               "--grad-clip", str(GRAD_CLIP), "--clip-low", str(CLIP), "--clip-high", str(CLIP),
               "--temperature", str(recipe.temperature), "--old-logprobs", recipe.old_logprobs,
               "--autocast", recipe.autocast,
               "--time-limit-minutes", str(seconds / 60 if seconds else 0)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    steps_rows = [r for r in rows if "time/step" in r and not r.get("skipped")]
    train_seconds = sum(r["time/step"] for r in steps_rows)
    prompt_tokens = _prompt_length(recipe)
    tokens = sum(recipe.prompts * SAMPLES * (prompt_tokens + r["response/length"]) for r in steps_rows)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final")).eval()
    return dict(steps=len(steps_rows), seconds=train_seconds, tokens=tokens, model=model)


def _prompt_length(recipe: Recipe) -> int:
    _, tokenizer = load_model(recipe)
    return len(prompt_ids(tokenizer, generate_problems(1, seed=0, **RANGES)[0]))  # compact prompts: one width


# ---- TRL, in-process -------------------------------------------------------------------------------------
def run_trl(train, tokenizer, recipe: Recipe, *, steps: int, seconds: float, threads: int, out: str,
            bf16: bool = False) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    model, _ = load_model(recipe)
    model.train()
    eos = tokenizer.eos_token_id
    dataset = Dataset.from_list([{"prompt": render_prompt("compact", p.numbers, p.target, tokenizer),
                                  "numbers": list(p.numbers), "target": p.target} for p in train])
    ours = [prompt_ids(tokenizer, p) for p in train[:32]]
    theirs = tokenizer(text=[row["prompt"] for row in dataset.select(range(32))])["input_ids"]
    if ours != theirs:
        raise SystemExit("TRL would tokenize the prompts differently from FastZero: not a like-for-like run")
    counted = {"tokens": 0}

    def countdown_reward(prompts, completions, completion_ids, numbers, target, **_):
        counted["tokens"] += sum(len(ids) for ids in completion_ids) + sum(len(t) for t in
                                                                          tokenizer(text=prompts)["input_ids"])
        return score_batch(response_texts(tokenizer, completion_ids, eos), numbers, target)

    per_generation = recipe.prompts * SAMPLES // recipe.mini_batch  # TRL optimizer steps per RL step

    class Clock(TrainerCallback):
        """Training time only (generation, reward, update), with weight snapshots at `steps` steps and
        when `seconds` of training are used up; stops once both are reached."""

        def __init__(self):
            self.started, self.elapsed, self.snapshots = None, 0.0, {}

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.elapsed += time.perf_counter() - self.started
            if state.global_step % per_generation:  # the middle of an RL step: its batch is not used up
                return
            rl_steps = state.global_step // per_generation
            for name, reached in (("steps", rl_steps == steps), ("time", self.elapsed >= seconds)):
                if reached and name not in self.snapshots:
                    self.snapshots[name] = dict(state={k: v.detach().clone() for k, v in model.state_dict().items()},
                                                steps=rl_steps, seconds=self.elapsed, tokens=counted["tokens"])
            if len(self.snapshots) == 2:
                control.should_training_stop = True

    config = GRPOConfig(
        output_dir=out, use_cpu=True, bf16=bf16, fp16=False, report_to=[], save_strategy="no", logging_steps=10,
        seed=0, max_steps=100_000, learning_rate=recipe.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=GRAD_CLIP, per_device_train_batch_size=recipe.mini_batch,
        gradient_accumulation_steps=1, num_generations=SAMPLES,
        # One generation batch (the step's sequences) per step, cut into optimizer steps of
        # recipe.mini_batch sequences, as FastZero's --mini-batch-size does; TRL counts each of those
        # optimizer steps as a step, so Clock divides its step count back into RL steps.
        steps_per_generation=per_generation,
        max_completion_length=recipe.new_tokens, temperature=recipe.temperature, top_p=1.0,
        beta=recipe.kl_coef,  # k3 in the loss, as FastZero's --kl-in-reward false
        num_iterations=1, epsilon=CLIP,
        loss_type="dapo", scale_rewards="group", disable_dropout=True, dataloader_num_workers=0,
        log_completions=False,
    )
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=countdown_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    result = {}
    for name, snap in clock.snapshots.items():
        snapshot_model, _ = load_model(recipe)
        snapshot_model.load_state_dict(snap["state"])
        result[name] = dict(steps=snap["steps"], seconds=snap["seconds"], tokens=snap["tokens"],
                            model=snapshot_model.eval())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=RECIPES, default="direct", help="which embedded model and recipe")
    parser.add_argument("--steps", type=int, default=20, help="the equal-steps comparison point")
    parser.add_argument("--seconds", type=float, default=90.0, help="the equal-wall-time budget of training")
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trl-bf16", action="store_true",
                        help="TRL with bf16=True (autocast) instead of float32, for a like-for-like precision")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.model]
    _, tokenizer = load_model(recipe)
    test = generate_problems(500, seed=1000, **RANGES)  # FastZero's default held-out split
    train = generate_problems(8000, seed=1001, exclude=test, **RANGES)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"train": os.path.join(tmp, "train.jsonl"), "test": os.path.join(tmp, "test.jsonl")}
        save_problems(train, files["train"])
        save_problems(test, files["test"])
        for pair in range(args.pairs):
            fz_steps = run_fastzero(files, os.path.join(tmp, f"fz-steps-{pair}"), recipe, steps=args.steps,
                                    seconds=0, threads=args.threads)
            trl = run_trl(train, tokenizer, recipe, steps=args.steps, seconds=args.seconds, threads=args.threads,
                          out=os.path.join(tmp, f"trl-{pair}"), bf16=args.trl_bf16)
            fz_time = run_fastzero(files, os.path.join(tmp, f"fz-time-{pair}"), recipe, steps=100_000,
                                   seconds=args.seconds, threads=args.threads)
            results.append(dict(
                fastzero_s_per_step=fz_steps["seconds"] / fz_steps["steps"],
                trl_s_per_step=trl["steps"]["seconds"] / trl["steps"]["steps"],
                fastzero_tok_s=fz_steps["tokens"] / fz_steps["seconds"],
                trl_tok_s=trl["steps"]["tokens"] / trl["steps"]["seconds"],
                fastzero_acc_at_steps=held_out_accuracy(fz_steps["model"], tokenizer, test, recipe),
                trl_acc_at_steps=held_out_accuracy(trl["steps"]["model"], tokenizer, test, recipe),
                fastzero_steps_in_time=fz_time["steps"], trl_steps_in_time=trl["time"]["steps"],
                fastzero_acc_at_time=held_out_accuracy(fz_time["model"], tokenizer, test, recipe),
                trl_acc_at_time=held_out_accuracy(trl["time"]["model"], tokenizer, test, recipe),
            ))
            print(json.dumps({"pair": pair, **{k: round(v, 4) for k, v in results[-1].items()}}), flush=True)
    base = load_model(recipe)[0]
    start = held_out_accuracy(base, tokenizer, test, recipe)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"\nGRPO on the embedded {args.model} model, {recipe.prompts} prompts x {SAMPLES} samples, "
          f"{recipe.new_tokens} new tokens, KL {recipe.kl_coef}, FastZero --autocast {recipe.autocast}, "
          f"TRL {'bf16' if args.trl_bf16 else 'float32'}, {args.threads} thread(s), {args.pairs} pair(s) (median); held-out greedy accuracy at start {start:.1%}")
    print(f"{'':<34}{'FastZero':>12}{'TRL':>12}{'ratio':>8}")
    for label, a, b, higher_better in [
        ("seconds per step", med["fastzero_s_per_step"], med["trl_s_per_step"], False),
        ("tokens/s", med["fastzero_tok_s"], med["trl_tok_s"], True),
        (f"held-out acc after {args.steps} steps", med["fastzero_acc_at_steps"], med["trl_acc_at_steps"], True),
        (f"steps in {args.seconds:.0f} s", med["fastzero_steps_in_time"], med["trl_steps_in_time"], True),
        (f"held-out acc after {args.seconds:.0f} s", med["fastzero_acc_at_time"], med["trl_acc_at_time"], True),
    ]:
        ratio = (a / b if higher_better else b / a) if a and b else float("nan")
        print(f"{label:<34}{a:>12.4g}{b:>12.4g}{ratio:>8.2f}")
    print(json.dumps({"bench": "vs_trl", "model": args.model, "autocast": recipe.autocast, "trl_bf16": args.trl_bf16,
                      "steps": args.steps, "seconds": args.seconds,
                      "pairs": args.pairs, "threads": args.threads, "start_accuracy": start, "median": med,
                      "runs": results}))


if __name__ == "__main__":
    main()
