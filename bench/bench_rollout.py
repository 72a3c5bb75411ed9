"""Rollout throughput: the hf engine before and after its speed work, in the same run.

- before: the engine as it was (a DynamicCache that torch.cat's every layer's keys/values per token,
  a 2D mask grown by a column per token and expanded by transformers each step, every row of a
  group prefilled on its own), kept below as `BeforeEngine` so the comparison stays runnable;
- after: fastzero.rollout.hf.HFEngine (hf_decode.py: shared-prefix prefill, preallocated KV
  buffers, our own 4D mask), and its variants, to show what each part buys.
Both sample the same way (argmax(probs / Exp(1) noise), torch.multinomial's formula, the noise drawn
by the engine's exponential_noise), so with no compaction they draw the same tokens from the same
seed; the bench checks that and prints the share. (The engine's switch from torch's exponential_
to -log(uniform) noise is therefore in neither column: bench/RESULTS.md, "Rollouts", measures it.)

Settings: the embedded direct model's prompts (64 prompts x 8 samples, 14 new tokens, its own EOS: the
tiny-direct preset's rollout), a longer-response one (EOS off, 48 new tokens: every row decodes
48 tokens), and the embedded thinking model's rollout (32 prompts x 8 samples, 72 new tokens,
temperature 0.7, its EOS: the default run's). Back-to-back pairs (before, after, before, after, ...) so load drifts hit both alike;
the ratio is the median of the pairs' ratios.

    python bench/bench_rollout.py [--pairs 5] [--threads 1]
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from fastzero.rollout.base import Completion, SamplingParams
from fastzero.rollout.hf import HFEngine
from fastzero.rollout.hf_decode import exponential_noise, sample_next
from fastzero.tasks.countdown.problems import generate_problems
from fastzero.tasks.countdown.prompts import render_prompt

MODEL_DIR = "fastzero/assets/tiny-countdown"
THINK_DIR = "fastzero/assets/tiny-countdown-think"


class BeforeEngine(HFEngine):
    """The engine's decode loop before this work (same protocol, validation and chunking)."""

    def _groups(self, chunk):
        return [(p, 1) for p in chunk]  # every row prefilled on its own

    def _decode_chunk(self, prompts, counts, params, stop_ids, generator, options):
        device, batch = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = DynamicCache()
        logits = self._forward(input_ids, mask, positions, cache)
        next_position = positions[:, -1] + 1
        steps = params.max_new_tokens
        tokens_out = torch.zeros((batch, steps), dtype=torch.long, device=device)
        logprobs_out = torch.zeros((batch, steps), dtype=logits.dtype, device=device)
        lengths = torch.full((batch,), steps, dtype=torch.long, device=device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        rows = torch.arange(batch, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        for step in range(steps):
            noise = None if params.greedy else exponential_noise(tuple(logits.shape), logits.dtype, device, generator)
            tokens, logprobs = sample_next(logits, params, noise)  # = torch.multinomial's formula, as before
            live = rows[~done]
            tokens_out[live, step] = tokens[~done]
            logprobs_out[live, step] = logprobs[~done]
            hit = torch.isin(tokens, stop_ids) & ~done
            if bool(hit.any()):
                lengths[rows[hit]] = step + 1
                stopped[rows[hit]] = True
                done |= hit
            alive = int((~done).sum())
            if alive == 0 or step == steps - 1:
                break
            if alive <= self.compact_fraction * rows.numel():
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                rows, tokens, mask, next_position = rows[keep], tokens[keep], mask[keep], next_position[keep]
                done = done[keep]
            tokens = tokens.masked_fill(done, self.pad_token_id)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = self._forward(tokens[:, None], mask, next_position[:, None], cache)
            next_position = next_position + 1
        token_lists, logprob_lists = tokens_out.tolist(), logprobs_out.tolist()
        return [Completion(prompt_index=-1, response_ids=token_lists[r][:n], logprobs=logprob_lists[r][:n],
                           finish_reason="stop" if s else "length")
                for r, (n, s) in enumerate(zip(lengths.tolist(), stopped.tolist()))]


def prompts_of(tokenizer, count: int, seed: int) -> list[list[int]]:
    problems = generate_problems(count, seed=seed, min_numbers=3, max_numbers=3, min_value=1, max_value=20,
                                 min_target=1, max_target=50)
    return [tokenizer(render_prompt("compact", p.numbers, p.target, tokenizer), add_special_tokens=False)["input_ids"]
            for p in problems]


def timed(engine: HFEngine, prompts, params, seed: int) -> tuple[float, int, list]:
    engine.set_rng_state(torch.Generator().manual_seed(seed).get_state())
    started = time.perf_counter()
    out = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    return seconds, sum(len(c.response_ids) for group in out for c in group), out


def same_share(a, b) -> float:
    pairs = [(x.response_ids, y.response_ids) for ga, gb in zip(a, b) for x, y in zip(ga, gb)]
    return sum(x == y for x, y in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="back-to-back (before, after) pairs per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    direct = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    think = AutoModelForCausalLM.from_pretrained(THINK_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    think_tokenizer = AutoTokenizer.from_pretrained(THINK_DIR)
    prompts = prompts_of(tokenizer, args.prompts, seed=3)
    eos = (int(direct.config.eos_token_id),)
    settings = {  # name: (model, prompts, stop ids, params)
        "tiny preset (14 new, EOS)": (direct, prompts, eos, SamplingParams(max_new_tokens=14, n=args.samples)),
        "long (48 new, no EOS)": (direct, prompts, (), SamplingParams(max_new_tokens=48, n=args.samples)),
        "think preset (72 new, EOS)": (think, prompts_of(think_tokenizer, args.prompts // 2, seed=3),
                                       (int(think.config.eos_token_id),),
                                       SamplingParams(max_new_tokens=72, n=args.samples, temperature=0.7)),
    }
    variants = {
        "after": {},
        "after, no shared prefix": dict(share_prefix=False),
        "after, static buffers": dict(decode_mode="static", compile_step=False),
    }
    print(f"rollout throughput, embedded tiny models, {args.prompts} prompts (think: half) x {args.samples} samples, "
          f"{args.threads} thread(s), {platform.machine()}, {args.pairs} back-to-back pairs, median")
    print(f"{'setting':<28}{'candidate':<26}{'before tok/s':>13}{'cand tok/s':>12}{'ratio':>8}{'same tokens':>13}")
    rows = []
    for setting, (model, prompts, stop, params) in settings.items():
        before = BeforeEngine(model, eos_token_ids=stop, compact_fraction=0.5)
        for name, options in variants.items():
            after = HFEngine(model, eos_token_ids=stop, **options)
            never_compact = HFEngine(model, eos_token_ids=stop, compact_fraction=0.0, **options)
            reference = BeforeEngine(model, eos_token_ids=stop, compact_fraction=0.0)
            same = same_share(timed(reference, prompts, params, 1)[2], timed(never_compact, prompts, params, 1)[2])
            timed(before, prompts, params, 0), timed(after, prompts, params, 0)  # warm-up
            rates_before, rates_after, ratios = [], [], []
            for pair in range(args.pairs):
                s_b, n_b, _ = timed(before, prompts, params, pair)
                s_a, n_a, _ = timed(after, prompts, params, pair)
                rates_before.append(n_b / s_b)
                rates_after.append(n_a / s_a)
                ratios.append((n_a / s_a) / (n_b / s_b))
            row = dict(setting=setting, candidate=name, before_tok_s=round(statistics.median(rates_before)),
                       after_tok_s=round(statistics.median(rates_after)), ratio=round(statistics.median(ratios), 2),
                       same_tokens_without_compaction=round(same, 4))
            rows.append(row)
            print(f"{setting:<28}{name:<26}{row['before_tok_s']:>13}{row['after_tok_s']:>12}{row['ratio']:>8.2f}"
                  f"{same:>13.1%}")
    print(json.dumps({"bench": "rollout", "models": [MODEL_DIR, THINK_DIR], "threads": args.threads, "pairs": args.pairs,
                      "rows": rows}))


if __name__ == "__main__":
    main()
