"""Is a thinking checkpoint a good base for RL? Its held-out responses, greedy and sampled, measured.

For each temperature (0 = greedy) it samples one response per held-out problem (the trainer's own
rollout path: the hf engine) and prints
- accuracy (the Countdown verifier on the answer),
- candidates per response (think lines) and response length in tokens,
- arithmetic right (fastzero.tasks.countdown.traces: share of think equations whose value is right),
- answer = last candidate (the answer's expression is the last line's chain, up to regrouping),
- checks right (a line's check "bigger-smaller=d" is the distance from its stated value to the target),
- leads in order (line i starts with the prompt's i-th number, as the traces do) and repeated lines,
- stops on a hit / goes on after a miss (what the stop decision does where it has a choice),
- search success (some candidate reaches the target), and the "stop at the first hit" ceiling:
  the share whose think block has a line with check 0 whose chain is a correct answer, i.e. what the
  same responses would score if the model stopped at its first "=0" and copied that line.
These are what RL needs from the base: sampled arithmetic, checks and copying sharp, and a ceiling
well above the accuracy. Prints one JSON line at the end.

    python bench/probe_thinking_base.py                                  # the embedded model
    python bench/probe_thinking_base.py --model DIR --temperatures 0,0.7,1.0 --n 500
"""
from __future__ import annotations

import argparse
import json
import re

import torch

from fastzero.tasks.countdown.reference import extract_answer, reference_score
from fastzero.tasks.countdown.traces import equations, parse_tree, regrouped, think_block, trace_metrics


def think_lines(response: str) -> list[list]:
    """The equations of each think line (a v4 line holds chain, chain, check)."""
    think = think_block(response)
    return [equations(line) for line in think.split("\n")] if think is not None else []


def copies_last_candidate(response: str) -> bool | None:
    """Whether the answer's expression is the last line's chain (None: no chain or no answer)."""
    lines, answer = think_lines(response), extract_answer(response)
    if not lines or len(lines[-1]) < 2 or answer is None:
        return None
    tree = regrouped(parse_tree(answer))
    return tree is not None and any(tree == regrouped(parse_tree(r)) for r in lines[-1][1].readings)


def check_right(line: list, target: int) -> bool | None:
    """Is the line's third equation the distance from its stated value to the target? (None: no check)"""
    if len(line) < 3:
        return None
    stated = line[1].stated
    return line[2].right and line[2].lhs in (f"{stated}-{target}", f"{target}-{stated}") and line[2].stated >= 0


def stop_choices(response: str) -> tuple[list[bool], list[bool]]:
    """(stopped after each line whose check is 0, went on after each line whose check is not), lines 1-2."""
    lines = think_lines(response)
    after_hit, after_miss = [], []
    for i, line in enumerate(lines[:2]):
        if len(line) >= 3:
            last = i == len(lines) - 1
            (after_hit if line[2].stated == 0 else after_miss).append(last if line[2].stated == 0 else not last)
    return after_hit, after_miss


def leads_in_order(response: str, numbers) -> bool:
    """Does line i start with the prompt's i-th number?"""
    lines = [line for line in (think_block(response) or "").split("\n") if line]
    return all(i < len(numbers) and re.split(r"[+\-*/]", line, maxsplit=1)[0] == str(numbers[i])
               for i, line in enumerate(lines))


def first_hit_ceiling(response: str, numbers, target: int) -> bool:
    """Would stopping at the first line whose check is 0 and answering its chain be correct?"""
    for line in think_lines(response):
        if len(line) >= 3 and line[2].stated == 0:
            return any(reference_score(f"<answer>{r}</answer>", numbers, target) == 1.0 for r in line[1].readings)
    return False


def probe(model_dir: str, temperatures: list[float], n: int, max_new_tokens: int, seed: int) -> dict:
    from transformers import AutoModelForCausalLM

    from fastzero.episodes import trim_stop
    from fastzero.rollout import SamplingParams, make_engine
    from fastzero.tasks.countdown.prompts import render_prompt
    from fastzero.tiny.__main__ import eval_problems
    from fastzero.tiny.corpus import ProblemRanges
    from fastzero.tiny.tokenizer import EOS, PAD
    from tokenizers import Tokenizer

    recipe = json.load(open(f"{model_dir}/recipe.json"))
    p = recipe["problems"]
    problems = eval_problems(ProblemRanges(p["min_value"], p["max_value"], p["min_target"], p["max_target"]),
                             n, recipe["held_out"]["seed"])
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = tokenizer.token_to_id(EOS)
    engine = make_engine("hf", model=model, eos_token_ids=(eos,), seed=seed, max_batch_size=250,
                         pad_token_id=tokenizer.token_to_id(PAD))
    prompts = [tokenizer.encode(render_prompt("compact", q.numbers, q.target)).ids for q in problems]
    out = {}
    for temperature in temperatures:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop_token_ids=(eos,))
        with torch.no_grad():
            groups = engine.generate(prompts, params)
        ids = trim_stop([g[0].response_ids for g in groups], (eos,))
        texts = [tokenizer.decode(r, skip_special_tokens=False) for r in ids]
        numbers, targets = [q.numbers for q in problems], [q.target for q in problems]
        row = trace_metrics(texts, numbers, targets)
        copies = [c for c in map(copies_last_candidate, texts) if c is not None]
        checks = [c for t, q in zip(texts, problems) for line in think_lines(t)
                  if (c := check_right(line, q.target)) is not None]
        choices = [stop_choices(t) for t in texts]
        hits, misses = [s for h, _ in choices for s in h], [s for _, m in choices for s in m]
        lines = [(think_block(t) or "").split("\n") for t in texts]
        row.update({
            "accuracy": sum(reference_score(t, q.numbers, q.target) == 1.0 for t, q in zip(texts, problems)) / n,
            "candidates": sum(map(len, lines)) / n,
            "length": sum(map(len, ids)) / n,
            "answer_is_last_candidate": sum(copies) / max(1, len(copies)),
            "checks_right": sum(checks) / max(1, len(checks)),
            "leads_in_order": sum(leads_in_order(t, q.numbers) for t, q in zip(texts, problems)) / n,
            "repeated_lines": sum(len(set(ls)) < len(ls) for ls in lines) / n,
            "stops_on_hit": sum(hits) / max(1, len(hits)),
            "goes_on_after_miss": sum(misses) / max(1, len(misses)),
            "first_hit_ceiling": sum(first_hit_ceiling(t, q.numbers, q.target) for t, q in zip(texts, problems)) / n,
        })
        out[str(temperature)] = row
        print(f"T {temperature}: " + "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in row.items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastzero/assets/tiny-countdown-think")
    parser.add_argument("--temperatures", default="0,0.7,1.0")
    parser.add_argument("--n", type=int, default=500, help="held-out problems (the first N)")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    result = probe(args.model, temperatures, args.n, args.max_new_tokens, args.seed)
    print(json.dumps({"bench": "probe_thinking_base", "model": args.model, **result}))


if __name__ == "__main__":
    main()
