"""What would the stop decision alone be worth on a thinking base? Greedy decoding with it forced.

Decodes the held-out problems greedily, but overrides the one choice RL is meant to learn, the token
after each candidate line (after its check "bigger-smaller=d"):
- `--mode truth`: stop (`</think>`) exactly when the line's stated chain value is the target, else go
  on (newline) - the ceiling of "search until a hit, then copy it" for this model's own candidates;
- `--mode check`: stop exactly when the model's own check says 0 - what the check is worth.
Prints the accuracy and the signature (fastzero.tasks.countdown.traces) and three responses.

    python bench/probe_forced_stop.py --model fastzero/assets/tiny-countdown-think --mode truth --n 300
"""
from __future__ import annotations

import argparse

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from fastzero.tasks.countdown.prompts import render_prompt
from fastzero.tasks.countdown.reference import reference_score
from fastzero.tasks.countdown.traces import trace_metrics
from fastzero.tiny.__main__ import eval_problems
from fastzero.tiny.corpus import ProblemRanges
from fastzero.tiny.tokenizer import EOS, PAD


class ForcedStop(LogitsProcessor):
    """Rewrites the scores at each line end of the think block (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, targets: list[int], mode: str):
        ids = {t: tokenizer.token_to_id(t) for t in ("\n", "</think>", "<think>", "=")}
        self.nl, self.end, self.think, self.eq = ids.values()
        self.tokenizer, self.targets, self.mode = tokenizer, targets, mode

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for b, row in enumerate(input_ids.tolist()):
            if self.end in row or self.think not in row:
                continue
            body = row[row.index(self.think) + 1:]
            line = body[len(body) - body[::-1].index(self.nl):] if self.nl in body else body
            values = [self.tokenizer.id_to_token(line[i + 1]) for i, t in enumerate(line[:-1]) if t == self.eq]
            if len(values) != 3 or line[-2] != self.eq:  # not right after the check's value
                continue
            hit = values[1] == str(self.targets[b]) if self.mode == "truth" else values[2] == "0"
            last_line = body.count(self.nl) >= 2  # the traces write at most three lines
            scores[b, :] = float("-inf")
            scores[b, self.end if hit or last_line else self.nl] = 0.0
        return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastzero/assets/tiny-countdown-think")
    parser.add_argument("--mode", choices=("truth", "check"), default="truth")
    parser.add_argument("--n", type=int, default=300, help="held-out problems (the first N)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    problems = eval_problems(ProblemRanges(), args.n, 1000)
    texts = []
    for start in range(0, len(problems), 100):
        chunk = problems[start:start + 100]  # prompts are all 8 tokens: no padding
        ids = torch.tensor([tokenizer.encode(render_prompt("compact", p.numbers, p.target)).ids for p in chunk])
        force = ForcedStop(tokenizer, [p.target for p in chunk], args.mode)
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=args.max_new_tokens,
                                 pad_token_id=tokenizer.token_to_id(PAD), eos_token_id=tokenizer.token_to_id(EOS),
                                 logits_processor=LogitsProcessorList([force]))
        texts += [tokenizer.decode(o[ids.shape[1]:].tolist(), skip_special_tokens=False).split(EOS)[0] for o in out]
    accuracy = sum(reference_score(t, p.numbers, p.target) == 1.0 for t, p in zip(texts, problems)) / len(problems)
    row = trace_metrics(texts, [p.numbers for p in problems], [p.target for p in problems])
    print(f"{args.mode}: forced-stop greedy accuracy {accuracy:.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    for text in texts[:3]:
        print(repr(text))


if __name__ == "__main__":
    main()
