"""Is a thinking checkpoint a good base for RL? Its held-out responses, greedy and sampled, measured.

For each temperature (0 = greedy) it samples one response per held-out problem (the trainer's own
rollout path: the hf engine) and prints
- accuracy (the Countdown verifier on the answer),
- candidates per response (think lines) and response length in tokens,
- arithmetic right (fastzero.tasks.countdown.traces: share of think equations whose value is right),
- answer = last candidate (the answer's expression is the last equation's chain, up to regrouping),
- hit marks right (a line carries the mark exactly when its stated value is the target),
- search success (some candidate reaches the target), and the "stop at the first hit" ceiling:
  the share whose think block has a marked candidate that is a correct answer, i.e. what the same
  responses would score if the model stopped at its first mark and copied that candidate.
These are what RL needs from the base: sampled arithmetic and copying sharp, and a ceiling well above
the accuracy. Prints one JSON line at the end.

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


def copies_last_candidate(response: str) -> bool | None:
    """Whether the answer's expression is the last think equation's chain (None: no equation/answer)."""
    think, answer = think_block(response), extract_answer(response)
    found = equations(think) if think is not None else []
    if not found or answer is None:
        return None
    tree = regrouped(parse_tree(answer))
    return tree is not None and any(tree == regrouped(parse_tree(r)) for r in found[-1].readings)


def marks_right(response: str, target: int, mark: str) -> list[bool]:
    """Per think line with a stated final value: the mark is there exactly when that value is the target."""
    think = think_block(response) or ""
    result = []
    if not mark.strip():
        return result
    for line in think.split("\n"):
        value = re.search(r"=\s*(-?\d+)\s*(" + re.escape(mark.strip()) + r")?\s*$", line)
        if value:
            result.append((value.group(2) is not None) == (int(value.group(1)) == target))
    return result


def first_mark_ceiling(response: str, numbers, target: int, mark: str) -> bool:
    """Would stopping at the first marked line and answering its chain be correct?"""
    think = think_block(response) or ""
    for line in think.split("\n"):
        if mark.strip() and line.rstrip().endswith(mark.strip()):
            found = equations(line)
            readings = found[-1].readings if found else ()
            return any(reference_score(f"<answer>{r}</answer>", numbers, target) == 1.0 for r in readings)
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
    mark = recipe["corpus"]["traces"].get("hit_mark", "")
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
        marks = [m for t, q in zip(texts, problems) for m in marks_right(t, q.target, mark)]
        row.update({
            "accuracy": sum(reference_score(t, q.numbers, q.target) == 1.0 for t, q in zip(texts, problems)) / n,
            "candidates": sum((think_block(t) or "").count("\n") + 1 for t in texts) / n,
            "length": sum(map(len, ids)) / n,
            "answer_is_last_candidate": sum(copies) / max(1, len(copies)),
            "first_mark_ceiling": sum(first_mark_ceiling(t, q.numbers, q.target, mark)
                                      for t, q in zip(texts, problems)) / n,
        })
        if marks:
            row["marks_right"] = sum(marks) / len(marks)
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
